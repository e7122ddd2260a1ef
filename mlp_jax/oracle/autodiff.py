"""The oracle: JAX's own autodiff of the objective (E6), batch and per example.

These are the references the analytic gradients (E7)-(E15) are proven against in the tests, the
gradient check and the diagnosis; nothing on the training path calls them.
"""

import functools
from typing import Any, Optional, TypeVar

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike, DTypeLike

from mlp_jax.core import validation
from mlp_jax.core.model import Params, forward
from mlp_jax.core.network import DEFAULT_OUTPUT, SOURCE, Network, make_network
from mlp_jax.core.objective import objective

T = TypeVar("T")

grad_objective = jax.jit(jax.grad(objective), static_argnames=("compute_dtype", "net"))


def autodiff_grads(params: Params, x: ArrayLike, y: ArrayLike, l2: ArrayLike = 0.0, *,
                   compute_dtype: Optional[DTypeLike] = None, activation: Any = "relu",
                   output: str = DEFAULT_OUTPUT,
                   sample_weight: Optional[ArrayLike] = None) -> Params:
  """`jax.grad` of the loss (E6) (or (E26) with `sample_weight`) with respect to the
  parameters: the oracle. Arguments as for `loss_and_grads`.

  With `compute_dtype`, the forward GEMMs take inputs of that dtype, as in `loss_and_grads`.
  """
  net = make_network(activation, output)
  params, x, y, l2 = validation.check_batch(params, x, y, l2, net=net)
  weights = validation.check_sample_weight(sample_weight, params, x.shape[0])
  return grad_objective(params, x, y, l2, compute_dtype=compute_dtype, net=net, weights=weights)


def example_loss(params: Params, x_i: jax.Array, y_i: jax.Array,
                 net: Network = SOURCE) -> jax.Array:
  """l_i of one example (x_i of shape (n,), a scalar label or a target row (K,)), (E5) or the
  output's loss: no mean, no penalty."""
  return net.out.loss(forward(params, x_i[None], net), y_i[None])[0]


@functools.partial(jax.jit, static_argnames="net")
def _per_sample_autodiff(params: Params, x: jax.Array, y: jax.Array,
                         net: Network = SOURCE) -> Params:
  """jit(vmap(grad(l_i))), without the API's checks."""
  return jax.vmap(jax.grad(example_loss), in_axes=(None, 0, 0, None))(params, x, y, net)


def autodiff_per_sample_grads(params: Params, x: ArrayLike, y: ArrayLike, *,
                              activation: Any = "relu",
                              output: str = DEFAULT_OUTPUT) -> Params:
  """`jax.vmap(jax.grad(l_i))`: per-example gradients by autodiff, the oracle for (E13)."""
  net = make_network(activation, output)
  params, x, y, _ = validation.check_batch(params, x, y, net=net)
  return _per_sample_autodiff(params, x, y, net=net)


def to_float64(tree: T) -> T:
  """Every leaf of `tree` as a float64 JAX array (call inside `jax.enable_x64(True)`)."""
  return jax.tree.map(lambda a: jnp.asarray(np.asarray(a, np.float64)), tree)
