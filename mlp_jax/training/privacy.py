"""DP-SGD on the analytic per-example gradients: Poisson sampling, clipping, noise, accounting.

One DP-SGD step, with C the clip norm, sigma the noise multiplier and B = qN the expected batch:

    g~ = (1/B) [ sum_{i in batch} min(1, C/||g_i||) g_i + N(0, sigma^2 C^2 I) ] + (lambda/B) W

The clipped sum costs one forward and one backward pass, (E13)-(E15) (see `per_example`); the
penalty gradient is added after clipping and noising, since it does not depend on the data.

Batches are drawn by Poisson sampling (each example independently with probability q = B/N),
truncated to a fixed capacity so that the compiled step has one shape; the privacy accountant
(Google's `dp-accounting`, PLD) accounts for exactly this mechanism with its
`TruncatedSubsampledGaussianDpEvent`.
"""

import functools
import math
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp

from mlp_jax.core import checks
from mlp_jax.core.backprop import mean_with_penalty
from mlp_jax.core.model import Params
from mlp_jax.core.objective import penalised_mean
from mlp_jax.core.per_example import clipped_grad_sum


class DPConfig(NamedTuple):
  """DP-SGD settings."""
  clip_norm: float          # C: per-example gradient norm bound
  noise_multiplier: float   # sigma: noise std is sigma * C on the clipped sum
  delta: float = 1e-5       # the delta of the reported (epsilon, delta)


def check_dp_config(dp: DPConfig) -> DPConfig:
  """Clip norm > 0 and finite, noise multiplier >= 0 and finite, delta in (0, 1)."""
  return DPConfig(
      float(checks.check_real(dp.clip_norm, "clip_norm", open_low=True)),
      float(checks.check_real(dp.noise_multiplier, "noise_multiplier")),
      float(checks.check_real(dp.delta, "delta", open_low=True, high=1.0)))


def batch_capacity(batch_size: int, num_examples: Optional[int] = None) -> int:
  """Fixed capacity of a Poisson batch of expected size B: B + 4 sqrt(B) (+1), truncation beyond;
  at most `num_examples` when given. The sampler and the accountant both take it from here."""
  capacity = int(batch_size + math.ceil(4 * math.sqrt(batch_size)) + 1)
  return capacity if num_examples is None else min(capacity, int(num_examples))


def poisson_batches(key: jax.Array, num_examples: int, batch_size: int, num_steps: int):
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

  def one(k):
    k_in, k_order = jax.random.split(k)
    chosen = jax.random.uniform(k_in, (num_examples,)) < q
    priority = jnp.where(chosen, jax.random.uniform(k_order, (num_examples,)), 2.0)
    neg, idx = jax.lax.top_k(-priority, capacity)  # the chosen, in random order, then the rest
    return idx.astype(jnp.int32), -neg < 2.0

  return jax.vmap(one)(jax.random.split(key, num_steps))


def noisy_clipped_grads(params: Params, x, y, mask, key, l2, dp: DPConfig, batch_size: int,
                        compute_dtype=None):
  """(loss, g~): the DP-SGD gradient of the module docstring on one padded batch.

  `mask` (m,) in the parameters' dtype marks the batch's members; the sum is divided by the
  expected batch size B = `batch_size`, not by the number of members (which would leak it).
  """
  dtype = params[0].w.dtype
  sums, _, losses = clipped_grad_sum(params, x, y, dp.clip_norm, mask, compute_dtype)
  leaves, treedef = jax.tree.flatten(sums)
  keys = jax.random.split(key, len(leaves))
  std = jnp.asarray(dp.noise_multiplier * dp.clip_norm, dtype)
  noisy = jax.tree.unflatten(treedef, [
      g + std * jax.random.normal(k, g.shape, dtype) for g, k in zip(leaves, keys)])
  return (penalised_mean(losses, params, l2, batch_size, mask),
          mean_with_penalty(noisy, params, l2, batch_size))


# dp-accounting's PLDAccountant defaults, which `dp_epsilon` reproduces step for step.
_PLD_INTERVAL = 1e-4


@functools.lru_cache(maxsize=16)
def _step_pld(num_examples: int, q: float, capacity: int, sigma: float):
  """The privacy loss distribution of one truncated-subsampled Gaussian step: the costly part of
  the accounting (about 1.5 s), the same for every epoch of a run, so built once."""
  from dp_accounting import pld
  return pld.privacy_loss_distribution.from_truncated_subsampled_gaussian_mechanism(
      dataset_size=num_examples, sampling_probability=q, truncated_batch_size=capacity,
      noise_multiplier=sigma, value_discretization_interval=_PLD_INTERVAL)


def dp_epsilon(dp: DPConfig, num_examples: int, batch_size: int, steps: int) -> float:
  """epsilon of (epsilon, dp.delta)-DP after `steps` DP-SGD steps, by dp-accounting's PLD.

  The event is the Gaussian mechanism with noise multiplier sigma on truncated Poisson samples
  (probability B/N, capacity `batch_capacity(B, N)`), composed `steps` times: what
  `pld.PLDAccountant` computes for a `TruncatedSubsampledGaussianDpEvent` self-composed `steps`
  times, with the one-step distribution cached across calls (one call per epoch in `fit`).
  """
  from dp_accounting import pld

  dp = check_dp_config(dp)
  if steps == 0:
    return 0.0
  if dp.noise_multiplier == 0:
    return float("inf")
  step = _step_pld(int(num_examples), batch_size / num_examples,
                   batch_capacity(batch_size, num_examples), dp.noise_multiplier)
  total = pld.privacy_loss_distribution.identity(
      value_discretization_interval=_PLD_INTERVAL).compose(step.self_compose(steps))
  return float(total.get_epsilon_for_delta(dp.delta))
