"""The objective: softmax cross-entropy plus the L2 penalty, (E4)-(E6).

    L = (1/m) sum_i l_i + (lambda / 2m) sum_l ||W_l||_F^2,   l_i = -log softmax(z_i)[y_i]

Biases are not penalised. Softmax is evaluated through a log-sum-exp shifted by the row
maximum, so logits of +-1e4 give finite values.
"""

from typing import Optional

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike, DTypeLike

from mlp_jax.core import validation
from mlp_jax.core.model import Params, forward_activations


def log_softmax(logits: jax.Array) -> jax.Array:
  """Row-wise log softmax(z), (E4), computed stably; shape (m, K)."""
  shifted = logits - jax.lax.stop_gradient(logits.max(axis=1, keepdims=True))
  return shifted - jnp.log(jnp.exp(shifted).sum(axis=1, keepdims=True))


def cross_entropy(log_probs: jax.Array, y: jax.Array) -> jax.Array:
  """Per-example loss l_i = -log yhat_{i, y_i}, (E5); shape (m,)."""
  return -jnp.take_along_axis(log_probs, y[:, None], axis=1)[:, 0]


def l2_penalty(params: Params, l2: ArrayLike, m: ArrayLike) -> jax.Array:
  """(lambda / 2m) sum_l ||W_l||_F^2, the penalty of (E6); biases excluded."""
  dtype = params[0].w.dtype
  total = sum(jnp.sum(jnp.square(layer.w)) for layer in params)
  return jnp.asarray(l2, dtype) / (2 * m) * total


def penalised_mean(per_example: jax.Array, params: Params, l2: ArrayLike, m: ArrayLike,
                   weights: Optional[jax.Array] = None) -> jax.Array:
  """(1/m) sum_i w_i l_i + (lambda / 2m) sum_l ||W_l||^2: (E6) from the per-example losses.

  `weights` (m,) default to 1; m is the divisor (the batch size, the count of unmasked rows, or
  DP's expected batch size).
  """
  total = per_example.sum() if weights is None else (per_example * weights).sum()
  return total / m + l2_penalty(params, l2, m)


def objective(params: Params, x: jax.Array, y: jax.Array, l2: ArrayLike = 0.0,
              compute_dtype: Optional[DTypeLike] = None) -> jax.Array:
  """(E6) without input checks: the function the oracle differentiates.

  `compute_dtype` (e.g. bfloat16) casts the forward GEMMs' inputs as `loss_and_grads` does.
  """
  logits, _ = forward_activations(params, x, compute_dtype)
  return penalised_mean(cross_entropy(log_softmax(logits), y), params, l2, x.shape[0])


def loss(params: Params, x: ArrayLike, y: ArrayLike, l2: ArrayLike = 0.0) -> jax.Array:
  """The training objective L of (E6): mean cross-entropy plus lambda/(2m) sum ||W||^2.

  Args:
    params: tuple of `Dense`.
    x: features, (m, n), floating.
    y: integer class labels, (m,), in 0..K-1.
    l2: the penalty lambda >= 0.

  Returns:
    A scalar of the parameters' dtype.
  """
  params, x, y, l2 = validation.check_batch(params, x, y, l2)
  return objective(params, x, y, l2)
