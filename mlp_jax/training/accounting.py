"""(epsilon, delta) of a privacy ledger, composed incrementally as a run trains.

The accountant is the privacy loss distribution (PLD) of Google's `dp-accounting`: one DP-SGD
step's PLD (`TruncatedSubsampledGaussianDpEvent`, see `privacy`) is a pmf on a grid of 1e-4 in
the privacy loss, one per direction of adjacency, built by dp-accounting once per distinct step
(seconds: it evaluates ~3e5 grid points one by one). A ledger composes its steps: k steps of one
mechanism are that pmf convolved with itself k times, done as a k-th power in the Fourier domain
with the output window cut by a Chernoff bound and its cut-off tails (at most 1e-15) counted as
infinite loss, as dp-accounting's `self_compose` does.

`Accountant` keeps the composition of the last ledger it saw in the Fourier domain, so the
epsilon after one more epoch costs one product, one inverse FFT and one scan of the pmf (tens of
milliseconds), where composing the whole ledger anew cost a second. Its epsilon is
dp-accounting's `PLDAccountant` epsilon of the same events to within floating-point roundoff of
the FFTs (2.4e-10 relative after the README run's 780 steps; the tests hold 1e-8, far inside
the grid's own discretisation error, about 3e-7 there), and, with the pessimistic rounding of
the grid, an upper bound on the true epsilon. `prefetch` runs it on a background thread ahead
of the epochs that will need it.
"""

import functools
import math
import threading
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np

from mlp_jax.core import validation
from mlp_jax.errors import MissingDependencyError, optional_import
from mlp_jax.io.array_cache import ArrayCache
from mlp_jax.training.privacy import DPConfig, Ledger, LedgerEntry, check_dp_config, ledger_entry

INTERVAL = 1e-4          # the loss grid of the accountant (dp-accounting's PLDAccountant default)
TAIL = 1e-15             # mass a composition may cut from its tails (counted as infinite loss)
# The orders t of the Chernoff bounds P(loss >= u) <= E[exp(t loss)] exp(-t u), per unit of loss:
# from 1e-2 to 1e3 (dp-accounting's 40 orders stop below 1, which leaves windows several times
# wider than the mass they hold; the bound holds at every order, these only cut closer).
_ORDERS = np.concatenate([-np.geomspace(1e-2, 1e3, 36), np.geomspace(1e-2, 1e3, 36)])


def _pld_module():
  """dp-accounting's PLD module (the `dp` extra), or `MissingDependencyError` saying so."""
  return optional_import("dp_accounting.pld", "dp", "privacy accounting (--dp, dp_epsilon)")


class Pmf(NamedTuple):
  """One direction of a step's PLD: probs[j] is the mass of loss (lower + j) * interval."""
  lower: int
  probs: np.ndarray   # float64 (size,)
  infinity: float     # the mass of infinite loss


class StepPLD(NamedTuple):
  """The PLD of one step: its pmfs (remove, add) and, for each, the log
  moment generating function of the grid index at `_ORDERS * interval` (Chernoff bounds)."""
  pmfs: Tuple[Pmf, ...]
  log_mgfs: Tuple[np.ndarray, ...]
  size: int            # the longest pmf's length
  interval: float      # the grid


def _log_mgf(pmf: Pmf, orders: np.ndarray) -> np.ndarray:
  """log E[exp(t K)] of the grid index K = lower + j, at each order t (over the finite part)."""
  j = np.flatnonzero(pmf.probs > 0)
  weights = pmf.probs[j]
  j = j.astype(np.float64)
  out = np.empty(orders.size)
  for i, t in enumerate(orders):  # one row at a time: a (72, 3e5) matrix is 170 MB
    exponent = t * j
    top = exponent.max()
    out[i] = t * pmf.lower + top + math.log(float(np.exp(exponent - top) @ weights))
  return out


@functools.lru_cache(maxsize=32)
def step_pld(dataset_size: int, sampling_probability: float, batch_capacity: int,
             noise_multiplier: float, interval: float = INTERVAL) -> StepPLD:
  """The PLD of one truncated Poisson-subsampled Gaussian step, from dp-accounting: the costly
  part of the accounting, built once per distinct step, kept in this process and in the
  on-disk `ArrayCache` (`MLP_JAX_CACHE`; off: built in every process)."""
  version = _dp_accounting_version()
  key = (f"mlp_jax step PLD 1: dp-accounting {version}, truncated subsampled Gaussian, "
         f"N={dataset_size}, q={sampling_probability!r}, capacity={batch_capacity}, "
         f"sigma={noise_multiplier!r}, interval={interval!r}, orders={_ORDERS.tolist()!r}")
  # Calibration's coarse steps too: each is quick to build, but building needs dp-accounting,
  # whose import takes two seconds.
  cache = ArrayCache.from_environment("pld")
  arrays = None if cache is None else cache.get(key)
  if arrays is None:
    arrays = _build_step_pld(dataset_size, sampling_probability, batch_capacity,
                             noise_multiplier, interval)
    if cache is not None:
      cache.put(key, arrays)
  pmfs = tuple(Pmf(int(arrays[f"lower{d}"]), arrays[f"probs{d}"], float(arrays[f"infinity{d}"]))
               for d in range(int(arrays["directions"])))
  return StepPLD(pmfs, tuple(arrays[f"log_mgf{d}"] for d in range(len(pmfs))),
                 max(p.probs.size for p in pmfs), interval)


@functools.lru_cache(maxsize=1)
def _dp_accounting_version() -> str:
  """dp-accounting's version, read without importing it (a second or so); not installed: the
  error naming the `dp` extra."""
  from importlib import metadata
  try:
    return metadata.version("dp-accounting")
  except metadata.PackageNotFoundError:
    _pld_module()
    raise


def _build_step_pld(dataset_size: int, sampling_probability: float, batch_capacity: int,
                    noise_multiplier: float, interval: float) -> Dict[str, np.ndarray]:
  """dp-accounting's PLD of the step as arrays: per direction d, its grid start `lower{d}`,
  `probs{d}`, `infinity{d}` and `log_mgf{d}` at `_ORDERS`; and the number of `directions`."""
  pld = _pld_module().privacy_loss_distribution.from_truncated_subsampled_gaussian_mechanism(
      dataset_size=dataset_size, sampling_probability=sampling_probability,
      truncated_batch_size=batch_capacity, noise_multiplier=noise_multiplier,
      value_discretization_interval=interval)
  arrays = {}
  for d, pmf in enumerate(_dense_pmfs(pld)):
    arrays.update({f"lower{d}": np.asarray(pmf.lower, np.int64), f"probs{d}": pmf.probs,
                   f"infinity{d}": np.asarray(pmf.infinity, np.float64),
                   f"log_mgf{d}": _log_mgf(pmf, _ORDERS * interval)})
  arrays["directions"] = np.asarray(d + 1)
  return arrays


def _dense_pmfs(pld) -> List[Pmf]:
  """A dp-accounting PLD's pmfs (remove, add) as `Pmf`s. These are its
  private attributes (it has no public accessor): a release that renames them is one clear
  error, and tests/test_accounting.py compares every result with its `PLDAccountant`."""
  try:  # a symmetric PLD's one pmf serves both directions, as in dp-accounting's composition
    directions = [pld._pmf_remove, pld._pmf_remove if pld._symmetric else pld._pmf_add]
    dense = [p.to_dense_pmf() for p in directions]
    return [Pmf(int(p._lower_loss), np.asarray(p._probs, np.float64), float(p._infinity_mass))
            for p in dense]
  except AttributeError as e:
    raise MissingDependencyError(
        f"dp-accounting {_dp_accounting_version()} keeps its privacy loss distributions in "
        f"another form than the accountant reads ({e}); install a release this one was tested "
        f"with: pip install 'dp-accounting>=0.4.4,<0.7'") from e


def epsilon_of_pmf(lower: int, probs: np.ndarray, infinity: float, interval: float,
                   delta: float, floor: Optional[float] = None) -> float:
  """The smallest epsilon >= 0 whose hockey-stick divergence is at most delta, of the pmf with
  mass probs[j] at loss (lower + j) * interval: dp-accounting's `get_epsilon_for_delta`, its
  scan from the largest loss down done with cumulative sums.

  The scan ends where it first meets a loss at most the epsilon it has found: with `floor` (a
  guess at epsilon, e.g. the last epoch's), the losses from `floor` up are scanned first, and
  the whole pmf only when the scan does not end among them. The result is the same."""
  if infinity > delta:
    return math.inf
  if floor is not None:
    first = min(max(math.ceil(floor / interval) - lower, 0), probs.size)
    found = _scan(lower + first, probs[first:], infinity, interval, delta, whole=False)
    if found is not None:
      return found
  return _scan(lower, probs, infinity, interval, delta, whole=True)


def _scan(lower: int, probs: np.ndarray, infinity: float, interval: float, delta: float,
          whole: bool) -> Optional[float]:
  """`epsilon_of_pmf`'s scan of the top of a pmf (all of it when `whole`); None when it runs
  out of losses before ending and is not `whole`."""
  if probs.size == 0:
    return None if not whole else (0.0 if infinity <= delta else math.inf)
  losses = (lower + np.arange(probs.size - 1, -1, -1, dtype=np.float64)) * interval
  p = probs[::-1]
  upper = infinity + np.cumsum(p)              # the masses after taking each loss in turn
  lower_mass = np.cumsum(np.exp(-losses) * p)
  before_up = np.concatenate([[infinity], upper[:-1]])
  before_low = np.concatenate([[0.0], lower_mass[:-1]])
  with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
    stop = ((before_up > delta) & (before_low > 0)
            & (np.log((before_up - delta) / before_low) >= losses))
  underflow = (upper >= delta) & (lower_mass == 0)  # exp(-loss) lost: a huge loss
  first_stop = int(np.argmax(stop)) if stop.any() else probs.size
  first_underflow = int(np.argmax(underflow)) if underflow.any() else probs.size
  if first_underflow < first_stop:
    return max(0.0, float(losses[first_underflow]))
  if first_stop < probs.size:  # the scan stops before this loss: the masses above it
    up, low = before_up[first_stop], before_low[first_stop]
  elif not whole:
    return None
  else:
    up, low = upper[-1], lower_mass[-1]
  return 0.0 if up <= low + delta else math.log((up - delta) / low)


def _fast_len(n: int) -> int:
  from scipy import fft
  return int(fft.next_fast_len(int(n), real=True))


class _Composition(NamedTuple):
  """A ledger's composition in the Fourier domain, one per direction of adjacency."""
  counts: Tuple[Tuple[Tuple, int], ...]  # (step key, steps) in ledger order
  length: int                            # the FFT length
  spectra: Tuple[np.ndarray, ...]        # the product of each step's rfft ** its count


class Accountant:
  """epsilon of growing ledgers at one delta, each composed from the last one's composition.

      accountant = Accountant(1e-5)
      for epoch ...: eps = accountant.epsilon(ledger)   # the ledger after the epoch

  A ledger that extends the last one (more steps of its mechanisms, or new ones appended) costs
  a product with the new steps' spectra; any other ledger is composed anew.
  """

  def __init__(self, delta: float, interval: float = INTERVAL):
    self.delta = float(validation.check_real(delta, "delta", open_low=True, high=1.0))
    self.interval = float(interval)
    self._last: Optional[_Composition] = None
    self._lock = threading.Lock()
    self._known: Dict[Ledger, float] = {}
    self._floors: Dict[int, float] = {}  # each direction's epsilon for the last ledger
    self._powers: Dict[Tuple, Tuple[np.ndarray, ...]] = {}  # (step, length, count) -> spectra

  def epsilon(self, ledger: Ledger) -> float:
    """epsilon of (epsilon, delta)-DP for every step in `ledger` (see the module docstring):
    inf when any step was non-private or had sigma = 0; 0 for no steps. Thread-safe; each
    ledger's epsilon is kept, so one `prefetch` computed is returned at once."""
    key = tuple(LedgerEntry(*e) for e in ledger)
    with self._lock:
      if key not in self._known:
        if len(self._known) > 4096:
          self._known.clear()
        self._known[key] = self._epsilon(key)
      return self._known[key]

  def _epsilon(self, ledger: Ledger) -> float:
    entries = [LedgerEntry(*e) for e in ledger if e[0] > 0]
    if not entries:
      return 0.0
    if any(e.noise_multiplier is None or e.noise_multiplier == 0 for e in entries):
      return math.inf
    counts = _merge([(_step_key(e), int(e.steps)) for e in entries])
    steps = {key: step_pld(*key, self.interval) for key, _ in counts}
    windows = [_window([(steps[k], c) for k, c in counts], d)
               for d in range(len(steps[counts[0][0]].pmfs))]
    needed = max([hi - lo + 1 for lo, hi, _ in windows] + [s.size for s in steps.values()])
    length = self._length(needed)
    grows = self._last is not None and _extends(counts, self._last.counts)
    spectra = self._spectra(counts, steps, length)
    floors = {}
    for d, (lo, hi, base) in enumerate(windows):
      circular = np.fft.irfft(spectra[d], length)
      start = (lo - base) % length  # the window, where the circular result holds it
      probs = np.concatenate([circular[start:], circular[:start]])[:hi - lo + 1]
      infinity = TAIL - math.expm1(sum(
          c * math.log1p(-steps[k].pmfs[d].infinity) for k, c in counts))
      floors[d] = epsilon_of_pmf(lo, probs, infinity, self.interval, self.delta,
                                 self._floors.get(d) if grows else None)  # it only grows
    self._floors = {d: e for d, e in floors.items() if math.isfinite(e)}
    return max(floors.values())

  def _length(self, needed: int) -> int:
    """The FFT length: the last one while it holds the window, else a quarter more than needed
    (so that a growing ledger changes it a few times, not every epoch)."""
    if self._last is not None and needed <= self._last.length:
      return self._last.length
    return _fast_len(needed * 1.25)

  def _spectra(self, counts, steps, length: int) -> Tuple[np.ndarray, ...]:
    """The product of the steps' spectra, from the last ledger's when this one extends it."""
    last = self._last
    start, have = None, {}
    if last is not None and last.length == length and _extends(counts, last.counts):
      start, have = last.spectra, dict(last.counts)
    out = list(start) if start is not None else None
    for key, count in counts:
      more = count - have.get(key, 0)
      if more == 0:
        continue
      factor = self._power(key, steps[key], length, more)
      out = factor if out is None else [o * f for o, f in zip(out, factor)]
    self._last = _Composition(counts, length, tuple(out))
    return self._last.spectra

  def _power(self, key: Tuple, step: StepPLD, length: int, count: int) -> Tuple[np.ndarray, ...]:
    """The step's spectra at `length`, to the power `count` (kept: an epoch adds the same count
    of the same step every time)."""
    if (key, length, count) not in self._powers:
      self._powers = {k: v for k, v in self._powers.items() if k[1] == length}  # one length
      spectra = self._powers.get((key, length, 1)) or tuple(
          np.fft.rfft(p.probs, length) for p in step.pmfs)
      self._powers[key, length, 1] = spectra
      self._powers[key, length, count] = tuple(f ** count for f in spectra)
    return self._powers[key, length, count]


def _step_key(entry: LedgerEntry) -> Tuple[int, float, int, float]:
  """What fixes a step's PLD, as `step_pld` takes it (the clip norm does not)."""
  return (entry.dataset_size, entry.sampling_probability, entry.batch_capacity,
          entry.noise_multiplier)


def _merge(counts: Sequence[Tuple[Tuple, int]]) -> Tuple[Tuple[Tuple, int], ...]:
  """Counts of the same step added up (composition commutes), in order of first appearance."""
  merged: Dict[Tuple, int] = {}
  for key, count in counts:
    merged[key] = merged.get(key, 0) + count
  return tuple(merged.items())


def _extends(counts, last) -> bool:
  """Whether `counts` has every step of `last`, at least as many times."""
  now = dict(counts)
  return all(now.get(key, 0) >= count for key, count in last)


def _window(parts: List[Tuple[StepPLD, int]], d: int) -> Tuple[int, int, int]:
  """(lo, hi, base) grid indices of direction d's composition: the window outside which the
  mass is at most TAIL (Chernoff bounds, as dp-accounting's `compute_self_convolve_bounds`, at
  `_ORDERS`), and the index of the composition's first possible loss."""
  orders = _ORDERS * parts[0][0].interval
  log_mgf = sum(count * step.log_mgfs[d] for step, count in parts)
  base = sum(count * step.pmfs[d].lower for step, count in parts)
  top = base + sum(count * (step.pmfs[d].probs.size - 1) for step, count in parts)
  lo, hi = base, top
  with np.errstate(over="ignore", invalid="ignore"):
    bounds = (log_mgf + math.log(2 / TAIL)) / orders
  for t, bound in zip(orders, bounds):
    if not math.isfinite(bound):
      continue
    if t > 0:
      hi = min(hi, math.ceil(bound))
    else:
      lo = max(lo, math.floor(bound))
  return lo, hi, base


@functools.lru_cache(maxsize=4)
def _shared(delta: float) -> "Accountant":
  return Accountant(delta)


def ledger_epsilon(ledger: Ledger, delta: float) -> float:
  """epsilon of (epsilon, delta)-DP for every step in the ledger (see `Accountant.epsilon`), by
  one accountant kept per delta: a training loop that asks after every epoch pays for the new
  epoch's steps only."""
  delta = float(validation.check_real(delta, "delta", open_low=True, high=1.0))
  return _shared(delta).epsilon(ledger)


def prefetch(ledgers: Sequence[Ledger], delta: float) -> Callable[[], None]:
  """Starts computing the epsilon of each ledger, in order, on a background thread, for
  `ledger_epsilon` at `delta` to return at once: a training loop passes the ledgers its coming
  epochs will have, and the accounting (a step's distribution to build, then tens of
  milliseconds an epoch) runs while the epochs train. Returns a function that stops it before
  the next ledger. Errors are left for the loop's own call to raise."""
  accountant = _shared(float(validation.check_real(delta, "delta", open_low=True, high=1.0)))
  stop = threading.Event()

  def work() -> None:
    for ledger in ledgers:
      if stop.is_set():
        return
      try:
        accountant.epsilon(ledger)
      except Exception:  # the same call in the training loop raises it, where it belongs
        return

  threading.Thread(target=work, name="mlp_jax accountant", daemon=True).start()
  return stop.set


def dp_epsilon(dp: DPConfig, num_examples: int, batch_size: int, steps: int) -> float:
  """epsilon of (epsilon, dp.delta)-DP after `steps` DP-SGD steps of one setting: the
  `ledger_epsilon` of a one-entry ledger."""
  dp = check_dp_config(dp)
  return ledger_epsilon((ledger_entry(steps, dp, num_examples, batch_size),), dp.delta)

