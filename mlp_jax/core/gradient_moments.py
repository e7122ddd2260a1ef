"""First-order statistics of the per-example gradients from one backward pass, (E27).

Each example's weight gradient is a rank-one product a_{l-1,i} delta_{l,i}^T, (E13), so a sum
over examples of its entries squared is one more GEMM on squared factors, (E27):

    sum_i (dl_i/dW_l)^2 = (A_{l-1} * A_{l-1})^T (Delta_l * Delta_l)       (d_{l-1}, d_l)
    sum_i (dl_i/db_l)^2 = 1^T (Delta_l * Delta_l)                         (d_l,)

with Delta_l the per-example error signals of (E10) (no 1/m) and `*` elementwise. The mean of
the per-example gradients is the data term of (E14), A_{l-1}^T Delta_l / m, and their variance
per parameter is the second moment less the squared mean. Nothing of size (m, d_{l-1}, d_l)
is formed: the statistics cost one forward pass and two GEMMs per layer.
"""

from typing import Any, NamedTuple, Tuple

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from mlp_jax.core import eager
from mlp_jax.core.model import Dense, Params
from mlp_jax.core.network import DEFAULT_OUTPUT, SOURCE, Network, make_network
from mlp_jax.core.per_example import LayerNorms, example_errors, layer_sq_norms


class GradientMoments(NamedTuple):
  """Statistics over a batch of the per-example gradients g_i = dl_i/dtheta (no penalty),
  (E27). `mean`, `sum_squared` and `variance` are shaped like the parameters."""
  mean: Params                         # (1/m) sum_i g_i: the data term of the gradient, (E14)
  sum_squared: Params                  # sum_i g_i^2, elementwise
  variance: Params                     # (1/m) sum_i g_i^2 - mean^2 (the population variance)
  layer_sq_norms: Tuple[LayerNorms, ...]  # per layer, ||dl_i/dW_l||^2 and ||dl_i/db_l||^2, (m,)


def moments_of(params: Params, x: jax.Array, y: jax.Array,
               net: Network = SOURCE) -> GradientMoments:
  """`GradientMoments` of a batch, (E27), without checks: traceable."""
  m = x.shape[0]
  activations, deltas, _ = example_errors(params, x, y, net=net)
  mean = tuple(Dense(w=a.T @ d / m, b=d.sum(axis=0) / m) for a, d in zip(activations, deltas))
  sum_squared = tuple(Dense(w=jnp.square(a).T @ jnp.square(d), b=jnp.square(d).sum(axis=0))
                      for a, d in zip(activations, deltas))
  # E[g^2] - E[g]^2 may round below 0 where the variance is nil: clamp it there.
  variance = jax.tree.map(lambda s, g: jnp.maximum(s / m - jnp.square(g), 0), sum_squared, mean)
  norms = tuple(LayerNorms(w=w2, b=b2) for w2, b2 in layer_sq_norms(activations, deltas))
  return GradientMoments(mean, sum_squared, variance, norms)


MOMENTS = eager.compile_call(moments_of)  # .plain: the unchecked core the benchmarks time
SUM_SQUARED = eager.compile_call(
    lambda params, x, y, net=SOURCE: moments_of(params, x, y, net).sum_squared)
VARIANCE = eager.compile_call(
    lambda params, x, y, net=SOURCE: moments_of(params, x, y, net).variance)


def gradient_moments(params: Params, x: ArrayLike, y: ArrayLike, *, activation: Any = "relu",
                     output: str = DEFAULT_OUTPUT) -> GradientMoments:
  """The per-example gradients' mean, sum of squares, variance and per-layer squared norms,
  (E27), (E15), from one forward and one backward pass.

  Args:
    params: tuple of `Dense`.
    x: features (m, n); y: the targets of `output` (integer labels (m,) for softmax).
    activation, output: the network, as for `loss_and_grads`.

  Returns:
    A `GradientMoments`. For a noise-to-signal ratio per parameter, `variance / mean**2`;
    for the examples that dominate the variance, `layer_sq_norms`.
  """
  return eager.checked_call(MOMENTS, params, x, y, net=make_network(activation, output))


def sum_grad_squared(params: Params, x: ArrayLike, y: ArrayLike, *, activation: Any = "relu",
                     output: str = DEFAULT_OUTPUT) -> Params:
  """sum_i (dl_i/dtheta)^2 elementwise, (E27): shaped like `params` (what Adam's second moment
  and the empirical Fisher's diagonal are made of). Arguments as for `gradient_moments`."""
  return eager.checked_call(SUM_SQUARED, params, x, y, net=make_network(activation, output))


def grad_variance(params: Params, x: ArrayLike, y: ArrayLike, *, activation: Any = "relu",
                  output: str = DEFAULT_OUTPUT) -> Params:
  """The variance over the batch of each parameter's per-example gradient, (E27):
  (1/m) sum_i g_i^2 - ((1/m) sum_i g_i)^2, shaped like `params`. Arguments as for
  `gradient_moments`."""
  return eager.checked_call(VARIANCE, params, x, y, net=make_network(activation, output))

