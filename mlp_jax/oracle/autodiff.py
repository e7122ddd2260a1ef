"""The oracle: JAX's own autodiff of the objective (E6), batch and per example.

These are the references the analytic gradients (E7)-(E15) are proven against in the tests, the
gradient check and the diagnosis; nothing on the training path calls them.
"""

from typing import Optional, TypeVar

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike, DTypeLike

from mlp_jax.core import validation
from mlp_jax.core.model import Params, forward
from mlp_jax.core.objective import cross_entropy, log_softmax, objective

T = TypeVar("T")

grad_objective = jax.jit(jax.grad(objective), static_argnames="compute_dtype")


def autodiff_grads(params: Params, x: ArrayLike, y: ArrayLike, l2: ArrayLike = 0.0, *,
                   compute_dtype: Optional[DTypeLike] = None) -> Params:
  """`jax.grad` of the loss (E6) with respect to the parameters: the oracle.

  With `compute_dtype`, the forward GEMMs take inputs of that dtype, as in `loss_and_grads`.
  """
  params, x, y, l2 = validation.check_batch(params, x, y, l2)
  return grad_objective(params, x, y, l2, compute_dtype=compute_dtype)


def example_loss(params: Params, x_i: jax.Array, y_i: jax.Array) -> jax.Array:
  """l_i of one example (x_i of shape (n,), scalar label), (E5): no mean, no penalty."""
  return cross_entropy(log_softmax(forward(params, x_i[None])), y_i[None])[0]


_per_sample_autodiff = jax.jit(jax.vmap(jax.grad(example_loss), in_axes=(None, 0, 0)))


def autodiff_per_sample_grads(params: Params, x: ArrayLike, y: ArrayLike) -> Params:
  """`jax.vmap(jax.grad(l_i))`: per-example gradients by autodiff, the oracle for (E13)."""
  params, x, y, _ = validation.check_batch(params, x, y)
  return _per_sample_autodiff(params, x, y)


def to_float64(tree: T) -> T:
  """Every leaf of `tree` as a float64 JAX array (call inside `jax.enable_x64(True)`)."""
  return jax.tree.map(lambda a: jnp.asarray(np.asarray(a, np.float64)), tree)
