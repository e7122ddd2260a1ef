"""The noise multiplier for a target epsilon, and the noise a run trains with.

`calibrate_noise_multiplier` finds the sigma that spends a target epsilon over a planned run:
a bisection on a coarse grid of the privacy loss (1e-2: milliseconds a step, its epsilon an
upper bound of the fine grid's), then secant steps on the accountant's own grid (1e-4) until
the run's epsilon is at most the target and within 1 % of it. `planned_dp` gives `fit` the
noise of a run with a target: calibrated at its start, the saved run's own on a resume, and the
whole run's epsilon checked against the target before any epoch.
"""

import math
from typing import Optional

from mlp_jax.core import validation
from mlp_jax.errors import InputError, ResumeError
from mlp_jax.training.accounting import INTERVAL, Accountant, ledger_epsilon
from mlp_jax.training.optimizers import steps_per_epoch
from mlp_jax.training.privacy import DPConfig, Ledger, add_to_ledger, ledger_entry

COARSE_INTERVAL = 1e-2        # the grid of the first search
NOISE_RANGE = (0.3, 100.0)    # the noise multipliers searched
CALIBRATION_TOLERANCE = 0.01  # calibrated: target (1 - this) <= epsilon <= target


def _planned_epsilon(sigma: float, delta: float, num_examples: int, batch_size: int,
                     steps: int, ledger: Ledger, interval: float) -> float:
  """epsilon of `ledger` and then `steps` steps of noise `sigma` (batch B of N), on `interval`."""
  entry = ledger_entry(steps, DPConfig(1.0, sigma, delta), num_examples, batch_size)
  planned = add_to_ledger(ledger, entry)
  if interval == INTERVAL:
    return ledger_epsilon(planned, delta)
  return Accountant(delta, interval).epsilon(planned)


def _bisect(spend, target: float, low: float, high: float, rel: float) -> float:
  """The bracket's upper end, once high / low - 1 <= rel, of a bisection (in log sigma) for
  spend(sigma) <= target; spend decreases in sigma, spend(high) <= target < spend(low)."""
  while high / low - 1 > rel:
    mid = math.sqrt(low * high)
    low, high = (low, mid) if spend(mid) <= target else (mid, high)
  return high


def calibrate_noise_multiplier(target_epsilon: float, delta: float, num_examples: int,
                               batch_size: int, steps: int, ledger: Ledger = (), *,
                               name: str = "target_epsilon") -> float:
  """The noise multiplier sigma with which `ledger` and then `steps` DP-SGD steps (expected
  batch `batch_size` of `num_examples`, truncated Poisson sampling) spend an epsilon at most
  `target_epsilon` and within `CALIBRATION_TOLERANCE` (1 %) of it, at `delta`.

  A bisection on the coarse grid brackets sigma (its epsilon is an upper bound of the fine
  grid's), then the accountant's own grid moves it, in log-log secant steps, into the band.

  Raises:
    InputError: the target cannot be met within `NOISE_RANGE`: too small for these steps even
      at the largest noise, or larger than the smallest noise spends (named as `name` says).
  """
  target = float(validation.check_real(target_epsilon, name, open_low=True))
  low, high = NOISE_RANGE
  plan = (delta, int(num_examples), int(batch_size), int(steps), tuple(ledger))

  def spend(sigma: float, interval: float = INTERVAL) -> float:
    return _planned_epsilon(sigma, *plan, interval)

  what = (f"{steps} steps of expected batch {batch_size} out of {num_examples} examples at "
          f"delta={delta:g}")
  if spend(low, COARSE_INTERVAL) < target * (1 - CALIBRATION_TOLERANCE):
    raise InputError(f"{name}={target:g}: {what} spend less even at the smallest noise "
                     f"multiplier searched, {low:g}; give a noise multiplier instead")
  top = spend(high)
  if top > target:
    raise InputError(f"{name}={target:g} cannot be met: {what} spend epsilon={top:.3g} "
                     f"even at noise multiplier {high:g}; train fewer steps (epochs)")
  sigma = _bisect(lambda s: spend(s, COARSE_INTERVAL), target, low, high, 1e-3)
  return _refine(spend, target, sigma, high, top)


def _refine(spend, target: float, sigma: float, high: float, high_eps: float) -> float:
  """A sigma whose epsilon is in the band [target (1 - tolerance), target] on the fine grid,
  from a first guess: secant steps on log epsilon against log sigma toward the band's middle, kept
  inside a bracket that shrinks around it (bisection when a step would leave it)."""
  aim = target * (1 - CALIBRATION_TOLERANCE / 2)
  low = NOISE_RANGE[0]                             # spends too much
  points = [(high, high_eps)]
  for _ in range(40):
    eps = spend(sigma)
    if target * (1 - CALIBRATION_TOLERANCE) <= eps <= target:
      return sigma
    if eps > target:
      low = sigma
    else:
      high, high_eps = sigma, eps
    points.append((sigma, eps))
    (s0, e0), (s1, e1) = sorted(points[-2:])
    guess = None
    if 0 < e1 < e0 < math.inf and s1 > s0:
      slope = math.log(e1 / e0) / math.log(s1 / s0)
      guess = s1 * math.exp(math.log(aim / e1) / slope)
    sigma = guess if guess is not None and low < guess < high else math.sqrt(low * high)
  raise InputError(f"target epsilon {target:g}: calibration did not settle between noise "
                   f"multipliers {low:g} and {high:g}")


def planned_dp(dp: Optional[DPConfig], num_examples: int, batch_size: int, epochs: int,
               resume=None, *, name: str = "target_epsilon") -> Optional[DPConfig]:
  """`dp` with the noise multiplier a run of `epochs` epochs trains with: as given, or (with a
  target epsilon and no noise given) calibrated for the whole run, or for a resumed run the
  saved run's own. With a target, the run's planned epsilon (its ledger so far and the epochs
  still to train) must be at most the target. `resume` is the `RunState` a run resumes from;
  errors name the target as `name` says.

  Raises:
    InputError: a given noise multiplier spends more than the target over the run.
    ResumeError: resuming to `epochs` would spend more than the saved run's target.
  """
  if dp is None or dp.target_epsilon is None:
    return dp
  steps = steps_per_epoch(num_examples, batch_size)
  ledger, remaining = (), epochs
  if resume is not None:
    ledger, remaining = tuple(resume.ledger), max(epochs - resume.epochs_done, 0)
    saved = (resume.settings or {}).get("dp")
    if dp.noise_multiplier is None and saved and saved[1] is not None:
      dp = dp._replace(noise_multiplier=float(saved[1]))  # calibrated once, at the start
  if dp.noise_multiplier is None:
    sigma = calibrate_noise_multiplier(dp.target_epsilon, dp.delta, num_examples, batch_size,
                                       steps * remaining, ledger, name=name)
    return dp._replace(noise_multiplier=sigma)
  spent = _planned_epsilon(dp.noise_multiplier, dp.delta, num_examples, batch_size,
                           steps * remaining, ledger, INTERVAL)
  if spent > dp.target_epsilon:
    error = InputError if resume is None else ResumeError
    raise error(f"{name}={dp.target_epsilon:g}: {epochs} epochs at noise multiplier "
                f"{dp.noise_multiplier:g} spend epsilon={spent:.4g}; train fewer epochs"
                + ("" if resume is None else " (the resumed run's noise was calibrated for "
                   "fewer)"))
  return dp
