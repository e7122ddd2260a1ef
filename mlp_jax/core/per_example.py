"""Per-example gradients, their norms, and clipped means from the analytic formulas, (E13)-(E15).

Each example's gradient of l_i alone (no 1/m, no penalty) is a set of rank-one outer products,
(E13):

    dl_i/dW_l = a_{l-1,i} delta_{l,i}^T,   dl_i/db_l = delta_{l,i}

where delta_{l,i} is row i of the error signal of (E10) started from yhat_i - y_i. So its squared
Frobenius norm is a product of two vector norms, (E15):

    ||dl_i/dW_l||^2 + ||dl_i/db_l||^2 = (||a_{l-1,i}||^2 + 1) ||delta_{l,i}||^2

and a per-example weighting c_i of the gradients is a row scaling of the error signal:
sum_i c_i dl_i/dW_l = A_{l-1}^T (c * Delta_l). Norms and clipped means therefore cost one forward
and one backward pass and never materialise an (m, n, d) tensor.
"""

from typing import Any, NamedTuple, Optional, Tuple

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike, DTypeLike

from mlp_jax.core import eager, validation
from mlp_jax.core.backprop import (backprop_errors, layer_grads, losses_and_errors,
                                   mean_with_penalty)
from mlp_jax.core.model import Dense, Params, forward_pass
from mlp_jax.core.network import DEFAULT_OUTPUT, SOURCE, Network, make_network


class LayerNorms(NamedTuple):
  """Per-example gradient norms of one layer's leaves, (E15): each of shape (m,)."""
  w: jax.Array  # ||dl_i/dW_l||_F
  b: jax.Array  # ||dl_i/db_l||


def example_errors(params: Params, x: jax.Array, y: jax.Array, compute_dtype=None,
                    net: Network = SOURCE):
  """Forward pass and per-example error signals.

  Returns:
    (activations, (delta_1, ..., delta_L), losses): the inputs of every layer, the error of
    every layer for each example alone, (E13), and the per-example losses l_i, (m,).
  """
  logits, activations, derivatives = forward_pass(params, x, compute_dtype, net)
  losses, top = losses_and_errors(net, logits, y)  # (m, K): (E7) per example, or (E22)-(E25)
  return (activations, backprop_errors(params, activations, top, compute_dtype, derivatives),
          losses)


def _per_sample_grads(params: Params, x: jax.Array, y: jax.Array,
                      net: Network = SOURCE) -> Params:
  activations, deltas, _ = example_errors(params, x, y, net=net)
  return tuple(
      Dense(w=jnp.einsum("mi,mj->mij", a, delta), b=delta)
      for a, delta in zip(activations, deltas))


_PER_SAMPLE_GRADS = eager.compile_call(_per_sample_grads)


def per_sample_grads(params: Params, x: ArrayLike, y: ArrayLike, *,
                     chunk_size: Optional[int] = None, activation: Any = "relu",
                     output: str = DEFAULT_OUTPUT) -> Params:
  """Gradients of each l_i alone, (E13): every leaf gains a leading axis of size m.

  Args:
    params: tuple of `Dense`.
    x: features (m, n); y: integer labels (m,) (or the targets of `output`).
    chunk_size: if given, examples are processed `chunk_size` at a time (`jax.lax.map`), so the
      working memory beyond the (m, ...) result is bounded by the chunk, not the batch.
    activation, output: the network, as for `loss_and_grads`.

  Returns:
    A tuple of `Dense(w=(m, fan_in, fan_out), b=(m, fan_out))`. The batch gradient of (E6) is
    their mean plus (lambda/m) W, (E14).
  """
  net = make_network(activation, output)
  if chunk_size is None:
    return eager.checked_call(_PER_SAMPLE_GRADS, params, x, y, net=net)
  chunk_size = validation.check_int(chunk_size, "chunk_size")
  return eager.checked_call(_PER_SAMPLE_GRADS_CHUNKED, params, x, y, chunk_size=chunk_size,
                            net=net)


def _per_sample_grads_chunked(params, x, y, chunk_size: int, net: Network = SOURCE):
  one = lambda xy: jax.tree.map(  # noqa: E731
      lambda g: g[0], _per_sample_grads(params, xy[0][None], xy[1][None], net))
  return jax.lax.map(one, (x, y), batch_size=chunk_size)


_PER_SAMPLE_GRADS_CHUNKED = eager.compile_call(_per_sample_grads_chunked,
                                               static_argnames=("chunk_size",))


def layer_sq_norms(activations, deltas) -> Tuple[Tuple[jax.Array, jax.Array], ...]:
  """Per layer: (||a_i||^2 ||delta_i||^2, ||delta_i||^2), each (m,), (E15)."""
  return tuple(
      (jnp.sum(a * a, axis=1) * jnp.sum(d * d, axis=1), jnp.sum(d * d, axis=1))
      for a, d in zip(activations, deltas))


def _layer_norms(params, x, y, net=SOURCE):
  activations, deltas, _ = example_errors(params, x, y, net=net)
  return tuple(LayerNorms(w=jnp.sqrt(w2), b=jnp.sqrt(b2))
               for w2, b2 in layer_sq_norms(activations, deltas))


def per_sample_layer_norms(params: Params, x: ArrayLike, y: ArrayLike, *,
                           activation: Any = "relu",
                           output: str = DEFAULT_OUTPUT) -> Tuple[LayerNorms, ...]:
  """Each example's gradient norm per leaf, (E15): a tuple of `LayerNorms(w=(m,), b=(m,))`.

  `w` holds ||dl_i/dW_l||_F = ||a_{l-1,i}|| ||delta_{l,i}|| and `b` holds ||delta_{l,i}||,
  computed without forming the per-example gradients. For diagnostics: which layer dominates.
  `activation`, `output`: the network, as for `loss_and_grads`.
  """
  return eager.checked_call(_LAYER_NORMS, params, x, y, net=make_network(activation, output))


_LAYER_NORMS = eager.compile_call(_layer_norms)


def _global_norms(activations, deltas) -> jax.Array:
  return jnp.sqrt(sum(w2 + b2 for w2, b2 in layer_sq_norms(activations, deltas)))


def _global_norms_of(params, x, y, net=SOURCE):
  activations, deltas, _ = example_errors(params, x, y, net=net)
  return _global_norms(activations, deltas)


# .plain: the unchecked core the benchmarks time
GLOBAL_NORMS = eager.compile_call(_global_norms_of)


def per_sample_grad_norms(params: Params, x: ArrayLike, y: ArrayLike, *,
                          activation: Any = "relu", output: str = DEFAULT_OUTPUT) -> jax.Array:
  """The global L2 norm, over all parameters, of each example's gradient of l_i, (E15); (m,).

  Equals `optax.global_norm` of each slice of `per_sample_grads`, at the cost of one forward and
  one backward pass, never materialising the per-example gradients. `activation`, `output`: the
  network, as for `loss_and_grads`.
  """
  return eager.checked_call(GLOBAL_NORMS, params, x, y, net=make_network(activation, output))


def clip_factors(norms: jax.Array, clip_norm: ArrayLike) -> jax.Array:
  """min(1, C / ||g_i||), with 1 where ||g_i|| <= C (so a zero gradient stays untouched)."""
  clip_norm = jnp.asarray(clip_norm, norms.dtype)
  return jnp.where(norms > clip_norm, clip_norm / jnp.where(norms > 0, norms, 1), 1)


def clipped_grad_sum(params: Params, x: jax.Array, y: jax.Array, clip_norm: ArrayLike,
                     mask: Optional[jax.Array] = None, compute_dtype: Optional[DTypeLike] = None,
                     net: Network = SOURCE) -> Tuple[Params, jax.Array, jax.Array]:
  """sum_i w_i min(1, C/||g_i||) g_i, with the norms and losses; no checks, traceable.

  The sum is A_{l-1}^T (c * Delta_l) per layer: the per-example weights c_i scale the rows of the
  error signal (E10) before the weight-gradient GEMMs of (E8)/(E11).

  Args:
    mask: optional (m,) weights w_i (0 drops a padding row); all ones by default.

  Returns:
    (sums, norms, losses): a params-shaped tuple of sums, and (m,) gradient norms ||g_i|| and
    losses l_i.
  """
  activations, deltas, losses = example_errors(params, x, y, compute_dtype, net)
  norms = _global_norms(activations, deltas)
  c = clip_factors(norms, clip_norm)
  c = c if mask is None else c * mask
  weighted = tuple(c[:, None] * d for d in deltas)
  return layer_grads(params, activations, weighted, 0.0, 1, compute_dtype), norms, losses


def _clipped_mean(params, x, y, clip_norm, l2, net=SOURCE):
  total, _, _ = clipped_grad_sum(params, x, y, clip_norm, net=net)
  return mean_with_penalty(total, params, l2, x.shape[0])


# .plain: the unchecked core the benchmarks time
CLIPPED_MEAN = eager.compile_call(_clipped_mean)


def clipped_mean_grads(params: Params, x: ArrayLike, y: ArrayLike, clip_norm: ArrayLike,
                       l2: ArrayLike = 0.0, *, activation: Any = "relu",
                       output: str = DEFAULT_OUTPUT) -> Params:
  """Mean of per-example gradients clipped to norm C, plus the penalty gradient of (E6).

      (1/m) sum_i min(1, C/||g_i||) g_i + (lambda/m) W,   g_i = dl_i/dtheta, (E13)-(E15)

  One forward and one backward pass; with C = inf it equals `grads` (pass a large C).
  `activation`, `output`: the network, as for `loss_and_grads`.

  Returns:
    A tuple of `Dense` shaped like `params`.
  """
  validation.check_real(clip_norm, "clip_norm", open_low=True)
  return eager.checked_call(CLIPPED_MEAN, params, x, y, clip_norm, l2, l2=l2,
                            net=make_network(activation, output))
