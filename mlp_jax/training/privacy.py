"""DP-SGD on the analytic per-example gradients: Poisson sampling, clipping, noise, accounting.

One DP-SGD step, with C the clip norm, sigma the noise multiplier and B = qN the expected batch:

    g~ = (1/B) [ sum_{i in batch} min(1, C/||g_i||) g_i + N(0, sigma^2 C^2 I) ] + (lambda/B) W

The clipped sum costs one forward and one backward pass, (E13)-(E15) (see `per_example`); the
penalty gradient is added after clipping and noising, since it does not depend on the data.

A run keeps a ledger of its steps (`LedgerEntry`: mechanism and count, non-private steps
included) and reports epsilon from the whole ledger, so a resumed run accounts for every step.

Batches are drawn by Poisson sampling (each example independently with probability q = B/N),
truncated to a fixed capacity so that the compiled step has one shape; the privacy accountant
(Google's `dp-accounting`, PLD) accounts for exactly this mechanism with its
`TruncatedSubsampledGaussianDpEvent`.
"""

import functools
import math
from typing import Callable, NamedTuple, Optional, Tuple

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike, DTypeLike

from mlp_jax.core import validation
from mlp_jax.core.backprop import mean_with_penalty
from mlp_jax.core.network import SOURCE, Network
from mlp_jax.core.model import Params
from mlp_jax.core.objective import penalised_mean
from mlp_jax.core.per_example import clipped_grad_sum
from mlp_jax.errors import optional_import


class DPConfig(NamedTuple):
  """DP-SGD settings."""
  clip_norm: float          # C: per-example gradient norm bound
  noise_multiplier: float   # sigma: noise std is sigma * C on the clipped sum
  delta: float = 1e-5       # the delta of the reported (epsilon, delta)


def check_dp_config(dp: DPConfig, spell: Callable[[str], str] = str) -> DPConfig:
  """Clip norm > 0 and finite, noise multiplier >= 0 and finite, delta in (0, 1); a bad one is
  named as `spell(field)` says (e.g. "--clip-norm" on the command line)."""
  return DPConfig(
      float(validation.check_real(dp.clip_norm, spell("clip_norm"), open_low=True)),
      float(validation.check_real(dp.noise_multiplier, spell("noise_multiplier"))),
      float(validation.check_real(dp.delta, spell("delta"), open_low=True, high=1.0)))


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


def noisy_clipped_grads(params: Params, x: jax.Array, y: jax.Array, mask: jax.Array,
                        key: jax.Array, l2: ArrayLike, dp: DPConfig, batch_size: int,
                        compute_dtype: Optional[DTypeLike] = None,
                        net: Network = SOURCE) -> Tuple[jax.Array, Params]:
  """(loss, g~): the DP-SGD gradient of the module docstring on one padded batch.

  `mask` (m,) in the parameters' dtype marks the batch's members; the sum is divided by the
  expected batch size B = `batch_size`, not by the number of members (which would leak it).
  """
  dtype = params[0].w.dtype
  sums, _, losses = clipped_grad_sum(params, x, y, dp.clip_norm, mask, compute_dtype, net)
  leaves, treedef = jax.tree.flatten(sums)
  keys = jax.random.split(key, len(leaves))
  std = jnp.asarray(dp.noise_multiplier * dp.clip_norm, dtype)
  noisy = jax.tree.unflatten(treedef, [
      g + std * jax.random.normal(k, g.shape, dtype) for g, k in zip(leaves, keys)])
  return (penalised_mean(losses, params, l2, batch_size, mask),
          mean_with_penalty(noisy, params, l2, batch_size))


def _accounting():
  """dp-accounting's PLD module (the `dp` extra), or `MissingDependencyError` saying so."""
  return optional_import("dp_accounting.pld", "dp", "privacy accounting (--dp, dp_epsilon)")


# dp-accounting's PLDAccountant defaults, which `dp_epsilon` reproduces step for step.
_PLD_INTERVAL = 1e-4


@functools.lru_cache(maxsize=16)
def _step_pld(num_examples: int, q: float, capacity: int, sigma: float):
  """The privacy loss distribution of one truncated-subsampled Gaussian step: the costly part of
  the accounting (about 1.5 s), the same for every epoch of a run, so built once."""
  pld = _accounting()
  return pld.privacy_loss_distribution.from_truncated_subsampled_gaussian_mechanism(
      dataset_size=num_examples, sampling_probability=q, truncated_batch_size=capacity,
      noise_multiplier=sigma, value_discretization_interval=_PLD_INTERVAL)


class LedgerEntry(NamedTuple):
  """`steps` consecutive optimizer steps of one mechanism. `noise_multiplier` None: the steps
  were not private (plain minibatch SGD), and no (epsilon, delta) holds for a run that has any."""
  steps: int
  noise_multiplier: Optional[float] = None  # sigma
  clip_norm: Optional[float] = None         # C (recorded; epsilon depends on sigma only)
  dataset_size: int = 0                     # N
  sampling_probability: float = 0.0         # q = B / N
  batch_capacity: int = 0                   # the truncation of the Poisson batches


Ledger = Tuple[LedgerEntry, ...]


def ledger_entry(steps: int, dp: Optional[DPConfig], num_examples: int,
                 batch_size: int) -> LedgerEntry:
  """The entry of `steps` steps trained with `dp` (None: non-private) on N = `num_examples`."""
  if dp is None:
    return LedgerEntry(int(steps))
  return LedgerEntry(int(steps), float(dp.noise_multiplier), float(dp.clip_norm),
                     int(num_examples), batch_size / num_examples,
                     batch_capacity(batch_size, num_examples))


def add_to_ledger(ledger: Ledger, entry: LedgerEntry) -> Ledger:
  """The ledger with `entry` appended, merged into the last entry when the mechanism is the
  same (so a run of one mechanism is one entry, whatever its epochs and resumes)."""
  ledger = tuple(LedgerEntry(*e) for e in ledger)
  if ledger and ledger[-1][1:] == entry[1:]:
    return ledger[:-1] + (ledger[-1]._replace(steps=ledger[-1].steps + entry.steps),)
  return ledger + (entry,)


def ledger_epsilon(ledger: Ledger, delta: float) -> float:
  """epsilon of (epsilon, delta)-DP for every step in the ledger, by dp-accounting's PLD.

  Each DP entry is the Gaussian mechanism with its sigma on truncated Poisson samples (its q,
  capacity and N), self-composed `steps` times: what `pld.PLDAccountant` computes for the
  composition of those `TruncatedSubsampledGaussianDpEvent`s, with each one-step distribution
  cached. inf when any step was non-private or had sigma = 0; 0 for no steps.
  """
  pld = _accounting()

  delta = float(validation.check_real(delta, "delta", open_low=True, high=1.0))
  entries = [LedgerEntry(*e) for e in ledger if e[0] > 0]
  if not entries:
    return 0.0
  if any(e.noise_multiplier is None or e.noise_multiplier == 0 for e in entries):
    return float("inf")
  total = pld.privacy_loss_distribution.identity(value_discretization_interval=_PLD_INTERVAL)
  for e in entries:
    step = _step_pld(e.dataset_size, e.sampling_probability, e.batch_capacity,
                     e.noise_multiplier)
    total = total.compose(step.self_compose(e.steps))
  return float(total.get_epsilon_for_delta(delta))


def dp_epsilon(dp: DPConfig, num_examples: int, batch_size: int, steps: int) -> float:
  """epsilon of (epsilon, dp.delta)-DP after `steps` DP-SGD steps of one setting: the
  `ledger_epsilon` of a one-entry ledger (see there)."""
  dp = check_dp_config(dp)
  return ledger_epsilon((ledger_entry(steps, dp, num_examples, batch_size),), dp.delta)
