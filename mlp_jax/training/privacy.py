"""DP-SGD on the analytic per-example gradients: Poisson sampling, clipping, noise, the ledger.

One DP-SGD step, with C the clip norm, sigma the noise multiplier and B = qN the expected batch:

    g~ = (1/B) [ sum_{i in batch} min(1, C/||g_i||) g_i + N(0, sigma^2 C^2 I) ] + (lambda/B) W

The clipped sum costs one forward and one backward pass, (E13)-(E15) (see `per_example`); the
penalty gradient is added after clipping and noising, since it does not depend on the data.

A run keeps a ledger of its steps (`LedgerEntry`: mechanism and count, non-private steps
included) and reports epsilon from the whole ledger (`accounting`), so a resumed run accounts
for every step. With a target epsilon instead of a noise multiplier, `calibration` chooses it.

Batches are drawn by Poisson sampling (each example independently with probability q = B/N),
truncated to a fixed capacity so that the compiled step has one shape; the privacy accountant
(Google's `dp-accounting`, PLD) accounts for exactly this mechanism with its
`TruncatedSubsampledGaussianDpEvent`.

Adaptive clipping (`DPConfig.target_quantile`; Andrew, Thakkar, McMahan, Ramaswamy,
"Differentially Private Learning with Adaptive Clipping", NeurIPS 2021, as TF-Privacy's
QuantileAdaptiveClipSumQuery): each step also releases the noisy fraction of members at most C,

    b~ = (sum_{i in batch} (1[||g_i|| <= C] - 1/2) + N(0, sigma_b^2)) / B + 1/2

and moves C toward the gamma-quantile of the norms, C <- C exp(-eta_C (b~ - gamma)). The step's
gradient is clipped at the old C and noised with sigma_g C, sigma_g^-2 = sigma^-2 - (2 sigma_b)^-2,
so the two queries together are one Gaussian mechanism of multiplier sigma, the one the ledger
accounts. C lives in the optimizer state (`AdaptiveClipState`, see `dp_optimizer`).
"""

import functools
import math
from typing import Any, Callable, NamedTuple, Optional, Tuple

import jax
import jax.numpy as jnp
import optax
from jax.typing import ArrayLike, DTypeLike

from mlp_jax.core import validation
from mlp_jax.core.backprop import mean_with_penalty
from mlp_jax.core.network import SOURCE, Network
from mlp_jax.core.model import Params
from mlp_jax.core.objective import penalised_mean
from mlp_jax.core.per_example import clipped_grad_sum
from mlp_jax.errors import InputError, InputTypeError


class DPConfig(NamedTuple):
  """DP-SGD settings. Give the noise multiplier, or a target epsilon to choose it for the run
  (`accounting.calibrate_noise_multiplier`); `target_quantile` turns on adaptive clipping."""
  clip_norm: float = 1.0                     # C: per-example norm bound (adaptive: the first)
  noise_multiplier: Optional[float] = None   # sigma: noise std is sigma * C on the clipped sum
  delta: float = 1e-5                        # the delta of the reported (epsilon, delta)
  target_epsilon: Optional[float] = None     # choose sigma so the run spends at most this
  target_quantile: Optional[float] = None    # adaptive clipping: C tracks this norm quantile
  clip_learning_rate: float = 0.2            # eta_C: C <- C exp(-eta_C (b - target_quantile))
  count_noise_multiplier: Optional[float] = None  # sigma_b of the clipped count (None: B / 20)

  @property
  def adaptive(self) -> bool:
    """Whether the clip norm adapts (`target_quantile` is set)."""
    return self.target_quantile is not None


# The fields after `delta` and their defaults: a record writes them only when one is set, so the
# records of earlier runs keep their bytes (and still resume).
_EXTRA_FIELDS = DPConfig._fields[3:]


def dp_record(dp: DPConfig) -> list:
  """`dp` as a run's record keeps it: (C, sigma, delta), then the later fields when any is not
  its default."""
  default = DPConfig()
  extra = any(getattr(dp, f) != getattr(default, f) for f in _EXTRA_FIELDS)
  return list(dp) if extra else list(dp[:3])


def check_dp_config(dp: DPConfig, spell: Callable[[str], str] = str) -> DPConfig:
  """Clip norm > 0 and finite; a noise multiplier (>= 0, finite) or a target epsilon (> 0,
  finite) or both (the noise then must spend at most the target); delta in (0, 1); target
  quantile in (0, 1), clip learning rate > 0 and count noise multiplier > 0 when given. A bad
  one is named as `spell(field)` says (e.g. "--clip-norm" on the command line)."""
  if not isinstance(dp, DPConfig):
    raise InputTypeError(f"{spell('dp')}: expected a DPConfig, got {type(dp).__name__}")
  sigma, target = dp.noise_multiplier, dp.target_epsilon
  if sigma is None and target is None:
    raise InputError(f"{spell('noise_multiplier')} / {spell('target_epsilon')}: give one (the "
                     f"noise, or the epsilon to choose it for), got neither")

  def optional(value, name, **bounds):
    return None if value is None else float(validation.check_real(value, spell(name), **bounds))

  return DPConfig(
      float(validation.check_real(dp.clip_norm, spell("clip_norm"), open_low=True)),
      optional(sigma, "noise_multiplier"),
      float(validation.check_real(dp.delta, spell("delta"), open_low=True, high=1.0)),
      optional(target, "target_epsilon", open_low=True),
      optional(dp.target_quantile, "target_quantile", open_low=True, high=1.0),
      float(validation.check_real(dp.clip_learning_rate, spell("clip_learning_rate"),
                                  open_low=True)),
      optional(dp.count_noise_multiplier, "count_noise_multiplier", open_low=True))


def batch_capacity(batch_size: int, num_examples: Optional[int] = None) -> int:
  """Fixed capacity of a Poisson batch of expected size B: B + 4 sqrt(B) (+1), truncation beyond;
  at most `num_examples` when given. The sampler and the accountant both take it from here."""
  capacity = int(batch_size + math.ceil(4 * math.sqrt(batch_size)) + 1)
  return capacity if num_examples is None else min(capacity, int(num_examples))


def poisson_batches(key: jax.Array, num_examples: int, batch_size: int,
                    num_steps: int) -> Tuple[jax.Array, jax.Array]:
  """Truncated Poisson-sampled batches for `num_steps` steps.

  Each example enters each step's batch independently with probability q = batch_size / N; a
  batch with more than `batch_capacity(batch_size)` members keeps a uniformly random subset of
  that size.

  Returns:
    (indices, mask): int32 (num_steps, capacity) and bool (num_steps, capacity); the mask marks
    the sampled members (the rest of each row is padding).
  """
  q = batch_size / num_examples
  capacity = batch_capacity(batch_size, num_examples)

  def one(k: jax.Array) -> Tuple[jax.Array, jax.Array]:
    k_in, k_order = jax.random.split(k)
    chosen = jax.random.uniform(k_in, (num_examples,)) < q
    priority = jnp.where(chosen, jax.random.uniform(k_order, (num_examples,)), 2.0)
    neg, idx = jax.lax.top_k(-priority, capacity)  # the chosen, in random order, then the rest
    return idx.astype(jnp.int32), -neg < 2.0

  return jax.vmap(one)(jax.random.split(key, num_steps))


def count_noise_std(dp: DPConfig, batch_size: int) -> float:
  """sigma_b, the std of the noise on the clipped count: `dp.count_noise_multiplier`, or B / 20
  (the paper's choice) for B = `batch_size` when None."""
  sigma_b = dp.count_noise_multiplier
  return batch_size / 20 if sigma_b is None else float(sigma_b)


def gradient_noise_multiplier(dp: DPConfig, batch_size: int) -> float:
  """sigma_g, the noise multiplier of the clipped gradient sum: sigma = `dp.noise_multiplier`
  itself without adaptive clipping, else (sigma^-2 - (2 sigma_b)^-2)^(-1/2) (0 for sigma = 0).

  Raises:
    InputError: adaptive, and sigma_b <= sigma / 2 (the count would spend all of sigma).
  """
  sigma = dp.noise_multiplier
  if not dp.adaptive or not sigma:  # None: not yet chosen for a target epsilon
    return sigma
  sigma_b = count_noise_std(dp, batch_size)
  if 2 * sigma_b <= sigma:
    given = ("" if dp.count_noise_multiplier is not None
             else f" (the default batch_size / 20 for batch_size {batch_size})")
    raise InputError(f"count_noise_multiplier: expected more than noise_multiplier / 2 = "
                     f"{sigma / 2:g}, so that noise is left for the gradient, got "
                     f"{sigma_b:g}{given}")
  return (sigma ** -2 - (2 * sigma_b) ** -2) ** -0.5


def clipped_count(norms: jax.Array, clip_norm: ArrayLike, mask: jax.Array) -> jax.Array:
  """sum_i (1[||g_i|| <= C] - 1/2) over the batch's members (`mask` > 0): the count of the
  adaptive clip norm, shifted so that one example changes it by at most 1/2. norms, mask: (m,);
  returns a scalar in the mask's dtype."""
  below = (norms <= jnp.asarray(clip_norm, norms.dtype)).astype(mask.dtype) - 0.5
  return jnp.sum(jnp.where(mask > 0, below, 0))


def next_clip_norm(clip_norm: ArrayLike, count: ArrayLike, batch_size: int, dp: DPConfig,
                   key: jax.Array) -> jax.Array:
  """The next step's clip norm C exp(-eta_C (b~ - gamma)), b~ = (count + N(0, sigma_b^2)) / B
  + 1/2 kept in [0, 1]: the geometric update of the module docstring.

  Args:
    clip_norm: C, a scalar; count: `clipped_count` of the batch at C; batch_size: the expected
    batch size B; dp: gamma, eta_C and sigma_b (`count_noise_std`); key: the count's noise.

  Returns:
    The new C, a scalar in the dtype of `clip_norm`.
  """
  clip_norm = jnp.asarray(clip_norm)
  noise = count_noise_std(dp, batch_size) * jax.random.normal(key, (), clip_norm.dtype)
  below = jnp.clip((count + noise) / batch_size + 0.5, 0, 1)
  step = dp.clip_learning_rate * (below - dp.target_quantile)
  return (clip_norm * jnp.exp(-step)).astype(clip_norm.dtype)


def noisy_clipped_grads(params: Params, x: jax.Array, y: jax.Array, mask: jax.Array,
                        key: jax.Array, l2: ArrayLike, dp: DPConfig, batch_size: int,
                        compute_dtype: Optional[DTypeLike] = None,
                        net: Network = SOURCE,
                        clip_norm: Optional[ArrayLike] = None) -> Tuple[jax.Array, Params]:
  """(loss, g~): the DP-SGD gradient of the module docstring on one padded batch.

  `mask` (m,) in the parameters' dtype marks the batch's members; the sum is divided by the
  expected batch size B = `batch_size`, not by the number of members (which would leak it).
  `clip_norm`: this step's C (a traced scalar, with adaptive clipping), else `dp.clip_norm`;
  the noise has std sigma_g C (`gradient_noise_multiplier`).
  """
  return noisy_clipped_grads_and_count(params, x, y, mask, key, l2, dp, batch_size,
                                       compute_dtype, net, clip_norm)[:2]


def noisy_clipped_grads_and_count(params: Params, x: jax.Array, y: jax.Array, mask: jax.Array,
                                  key: jax.Array, l2: ArrayLike, dp: DPConfig, batch_size: int,
                                  compute_dtype: Optional[DTypeLike] = None,
                                  net: Network = SOURCE, clip_norm: Optional[ArrayLike] = None,
                                  ) -> Tuple[jax.Array, Params, jax.Array]:
  """(loss, g~, count): `noisy_clipped_grads`, and the batch's `clipped_count` at C (not yet
  noised: `next_clip_norm` adds its noise), a scalar in the parameters' dtype."""
  dtype = params[0].w.dtype
  clip = dp.clip_norm if clip_norm is None else clip_norm
  sums, norms, losses = clipped_grad_sum(params, x, y, clip, mask, compute_dtype, net)
  leaves, treedef = jax.tree.flatten(sums)
  keys = jax.random.split(key, len(leaves))
  std = jnp.asarray(gradient_noise_multiplier(dp, batch_size) * clip, dtype)
  noisy = jax.tree.unflatten(treedef, [
      g + std * jax.random.normal(k, g.shape, dtype) for g, k in zip(leaves, keys)])
  return (penalised_mean(losses, params, l2, batch_size, mask),
          mean_with_penalty(noisy, params, l2, batch_size),
          clipped_count(norms, clip, mask.astype(dtype)))


class AdaptiveClipState(NamedTuple):
  """The optimizer state of a run with adaptive clipping (`dp_optimizer`)."""
  inner: optax.OptState  # the wrapped optimizer's state
  clip_norm: jax.Array   # C of the next step, a scalar in the parameters' dtype


class _AdaptiveClipOptimizer(optax.GradientTransformation):
  """The type of `dp_optimizer`'s wrappers, so that wrapping one again gives it back."""
  __slots__ = ()


@functools.lru_cache(maxsize=32)
def dp_optimizer(optimizer: optax.GradientTransformation,
                 dp: Optional[DPConfig]) -> optax.GradientTransformation:
  """The optimizer to init and train with under `dp`: `optimizer` itself unless `dp` adapts the
  clip norm; then one whose state is `AdaptiveClipState(optimizer.init(params), C0)`, C0 =
  `dp.clip_norm` as a scalar in the parameters' dtype, and whose update is `optimizer`'s with C
  passed through (`step.step_body` puts the next C in). Cached: the same (optimizer, dp) gives
  the same object, so the compiled epoch kept for it is found again."""
  if dp is None or not dp.adaptive or isinstance(optimizer, _AdaptiveClipOptimizer):
    return optimizer

  def init(params: Params) -> AdaptiveClipState:
    dtype = jax.tree.leaves(params)[0].dtype
    return AdaptiveClipState(optimizer.init(params), jnp.asarray(dp.clip_norm, dtype))

  def update(updates: Params, state: AdaptiveClipState, params: Optional[Params] = None,
             **extra: Any) -> Tuple[Params, AdaptiveClipState]:
    updates, inner = optimizer.update(updates, state.inner, params, **extra)
    return updates, AdaptiveClipState(inner, state.clip_norm)

  return _AdaptiveClipOptimizer(init, update)


class LedgerEntry(NamedTuple):
  """`steps` consecutive optimizer steps of one mechanism. `noise_multiplier` None: the steps
  were not private (plain minibatch SGD), and no (epsilon, delta) holds for a run that has any."""
  steps: int
  noise_multiplier: Optional[float] = None  # sigma
  clip_norm: Optional[float] = None         # C (recorded; epsilon depends on sigma only)
  dataset_size: int = 0                     # N
  sampling_probability: float = 0.0         # q = B / N
  batch_capacity: int = 0                   # the truncation of the Poisson batches
  # sigma_b of adaptive clipping's count (recorded: its share of sigma, see the module docstring)
  count_noise_multiplier: Optional[float] = None


Ledger = Tuple[LedgerEntry, ...]


def ledger_entry(steps: int, dp: Optional[DPConfig], num_examples: int,
                 batch_size: int) -> LedgerEntry:
  """The entry of `steps` steps trained with `dp` (None: non-private) on N = `num_examples`;
  with adaptive clipping, the count's sigma_b too (`count_noise_std`)."""
  if dp is None:
    return LedgerEntry(int(steps))
  return LedgerEntry(int(steps), float(dp.noise_multiplier), float(dp.clip_norm),
                     int(num_examples), batch_size / num_examples,
                     batch_capacity(batch_size, num_examples),
                     count_noise_std(dp, batch_size) if dp.adaptive else None)


def add_to_ledger(ledger: Ledger, entry: LedgerEntry) -> Ledger:
  """The ledger with `entry` appended, merged into the last entry when the mechanism is the
  same (so a run of one mechanism is one entry, whatever its epochs and resumes)."""
  ledger = tuple(LedgerEntry(*e) for e in ledger)
  if ledger and ledger[-1][1:] == entry[1:]:
    return ledger[:-1] + (ledger[-1]._replace(steps=ledger[-1].steps + entry.steps),)
  return ledger + (entry,)
