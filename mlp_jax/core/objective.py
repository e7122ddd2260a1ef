"""The objective: the output's loss plus the L2 penalty, (E4)-(E6) and (E26).

    L = (1/m) sum_i l_i + (lambda / 2m) sum_l ||W_l||_F^2,   l_i = -log softmax(z_i)[y_i]

for the source's network; another output (`outputs`) brings its own l_i, and per-example
weights s_i make it sum_i s_i l_i / sum_i s_i with m = sum_i s_i in the penalty, (E26). Biases
are not penalised. Softmax is evaluated through a log-sum-exp shifted by the row maximum, so
logits of +-1e4 give finite values.
"""

from typing import Any, Optional

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike, DTypeLike

from mlp_jax.core import validation
from mlp_jax.core.model import Params, forward_activations
from mlp_jax.core.network import DEFAULT_OUTPUT, SOURCE, Network, make_network
from mlp_jax.core.outputs import cross_entropy, log_softmax  # noqa: F401 (E4), (E5) live there


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
              compute_dtype: Optional[DTypeLike] = None, net: Network = SOURCE,
              weights: Optional[jax.Array] = None) -> jax.Array:
  """(E6), or (E26) with per-example `weights` (m,), without input checks: the function the
  oracle differentiates.

  `compute_dtype` (e.g. bfloat16) casts the forward GEMMs' inputs as `loss_and_grads` does.
  """
  z, _ = forward_activations(params, x, compute_dtype, net)
  m = x.shape[0] if weights is None else weights.sum()
  return penalised_mean(net.out.loss(z, y), params, l2, m, weights)


def loss(params: Params, x: ArrayLike, y: ArrayLike, l2: ArrayLike = 0.0, *,
         activation: Any = "relu", output: str = DEFAULT_OUTPUT,
         sample_weight: Optional[ArrayLike] = None) -> jax.Array:
  """The training objective L of (E6): the mean loss plus lambda/(2m) sum ||W||^2.

  Args:
    params: tuple of `Dense`.
    x: features, (m, n), floating.
    y: the targets `output` takes: integer class labels (m,) in 0..K-1 for softmax (the
      default); real values (m, K) for the others (`outputs.OUTPUTS`).
    l2: the penalty lambda >= 0.
    activation: the hidden layers' activation, or one per hidden layer (`network`).
    output: the output layer and its loss (`outputs.OUTPUTS`).
    sample_weight: optional per-example weights s_i >= 0 (m,): the weighted mean (E26).

  Returns:
    A scalar of the parameters' dtype.
  """
  net = make_network(activation, output)
  params, x, y, l2 = validation.check_batch(params, x, y, l2, net=net)
  weights = validation.check_sample_weight(sample_weight, params, x.shape[0])
  return objective(params, x, y, l2, net=net, weights=weights)
