"""The multilayer perceptron: parameters, initialisation and the forward pass, (E1)-(E3).

Parameters are a tuple of `Dense` layers, a pytree that optax, `jax.tree_util`, sharding and
checkpointing handle with no glue. Inputs are rows: `x` has shape (m, n), layer l maps
(m, fan_in) to (m, fan_out) by `x @ w + b`, every layer but the last is followed by its
activation (ReLU in the source's network; `network.Network` names the others), and the last
layer's output are the logits `z` of shape (m, K), which the output layer (`outputs`) maps to
predictions.
"""

import functools
from typing import Any, List, NamedTuple, Optional, Sequence, Tuple, Union, overload

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike, DTypeLike

from mlp_jax.core.network import SOURCE, Network
from mlp_jax.errors import InputError, InputTypeError


class Dense(NamedTuple):
  """One affine layer `x @ w + b`."""
  w: jax.Array  # (fan_in, fan_out)
  b: jax.Array  # (fan_out,)


Params = Tuple[Dense, ...]

SOURCE_LAYER_SIZES = (256, 256, 10)  # the source's network: 256 pixels, 256 hidden, 10 classes


def init_params(
    key: Union[jax.Array, int],
    layer_sizes: Sequence[int] = SOURCE_LAYER_SIZES,
    dtype: DTypeLike = jnp.float32,
) -> Params:
  """He-normal initialisation: w ~ N(0, 2 / fan_in), b = 0.

  Args:
    key: a PRNG key (`jax.random.PRNGKey(seed)` or a typed `jax.random.key(seed)`), or an int
      seed, meaning `jax.random.PRNGKey(seed)`: `init_params(0)` is `init_params(PRNGKey(0))`.
    layer_sizes: widths (n, d_1, ..., K); at least an input and an output width.
    dtype: floating dtype of every leaf (float64 needs `jax_enable_x64`).

  Returns:
    A tuple of `len(layer_sizes) - 1` `Dense` layers.
  """
  sizes = tuple(int(s) for s in layer_sizes)
  if len(sizes) < 2 or any(s < 1 for s in sizes):
    raise InputError(
        f"layer_sizes must hold at least two positive widths, got {tuple(layer_sizes)!r}")
  if not jnp.issubdtype(dtype, jnp.floating):
    raise InputTypeError(f"dtype must be a floating dtype, got {jnp.dtype(dtype)}")
  return _init_params(prng_key(key), sizes, jnp.dtype(dtype))


def prng_key(key: Any) -> jax.Array:
  """`key` as one PRNG key: a key (raw uint32 data or typed) as given, a Python or NumPy int
  as `jax.random.PRNGKey(key)`; anything else, a batch of keys included, is an error."""
  if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
    if not -2**63 <= int(key) < 2**63:
      raise InputError(f"key: expected a PRNG key or an int seed in -2**63..2**63-1, got {key}")
    return jax.random.PRNGKey(key)
  try:
    typed = (key if jax.dtypes.issubdtype(getattr(key, "dtype", None), jax.dtypes.prng_key)
             else jax.random.wrap_key_data(key))
  except (TypeError, ValueError):  # not key data: another dtype, or no array at all
    typed = None
  if typed is None or jnp.ndim(typed) != 0:
    given = (f"an array of dtype {key.dtype} and shape {tuple(key.shape)}"
             if hasattr(key, "dtype") and hasattr(key, "shape") else type(key).__name__)
    raise InputTypeError(f"key: expected a PRNG key or an int seed, got {given}")
  return key


@functools.partial(jax.jit, static_argnums=(1, 2))
def _init_params(key: jax.Array, sizes: Tuple[int, ...], dtype: jnp.dtype) -> Params:
  """`init_params` as one compiled program per network: one compile instead of one per op and
  shape. The barrier keeps the scaling out of the sampler's fusion, so the weights are bit for
  bit those of `jax.random.normal(k, shape) * scale` run op by op (tests/test_model.py)."""
  keys = jax.random.split(key, len(sizes) - 1)
  return tuple(
      Dense(
          w=jax.lax.optimization_barrier(jax.random.normal(k, (fan_in, fan_out), dtype))
          * jnp.sqrt(2.0 / fan_in).astype(dtype),
          b=jnp.zeros((fan_out,), dtype),
      )
      for k, fan_in, fan_out in zip(keys, sizes[:-1], sizes[1:]))


def layer_sizes(params: Params) -> Tuple[int, ...]:
  """The widths (n, d_1, ..., K) of a parameter tuple."""
  return (params[0].w.shape[0],) + tuple(layer.w.shape[1] for layer in params)


def affine(layer: Dense, x: jax.Array, compute_dtype: Optional[DTypeLike] = None) -> jax.Array:
  """`x @ w + b` for rows of x, (E1)/(E3); GEMM inputs optionally cast to `compute_dtype`.

  With `compute_dtype` (e.g. bfloat16) the product is accumulated and returned in the
  parameters' dtype; the bias is added in that dtype too.
  """
  return matmul(x, layer.w, compute_dtype) + layer.b[None, :]


def matmul(a: jax.Array, b: jax.Array, compute_dtype: Optional[DTypeLike] = None) -> jax.Array:
  """`a @ b`, optionally with inputs cast to `compute_dtype` and the result in `a`'s dtype."""
  if compute_dtype is None:
    return a @ b
  out_dtype = jnp.result_type(a.dtype, b.dtype)
  return jnp.matmul(a.astype(compute_dtype), b.astype(compute_dtype),
                    preferred_element_type=out_dtype)


def forward_pass(
    params: Params, x: ArrayLike, compute_dtype: Optional[DTypeLike] = None,
    net: Network = SOURCE, with_derivatives: bool = True,
) -> Tuple[jax.Array, Tuple[ArrayLike, ...], Tuple[jax.Array, ...]]:
  """Forward pass keeping what the backward pass needs, (E1)-(E3) with the network's
  activations.

  Returns:
    (z, activations, derivatives): the last layer's output z (m, K), (E3); the input of every
    layer, `(x, a_1, ..., a_{L-1})` with a_l = g_l(h_l), (E1)-(E2); and g_l'(h_l) of every
    hidden layer, (m, d_l), (E16)-(E21), computed here where h_l is at hand (for ReLU the bool
    mask 1[a_l > 0] of (E10), `Activation.backward_factor`); empty with
    `with_derivatives=False`.
  """
  activations: List[Any] = [x]
  derivatives: List[jax.Array] = []
  for layer, act in zip(params[:-1], net.hidden(len(params) - 1)):
    h = affine(layer, activations[-1], compute_dtype)
    activations.append(act.forward(h))
    if with_derivatives:
      derivatives.append(act.backward_factor(h, activations[-1]))
  return (affine(params[-1], activations[-1], compute_dtype), tuple(activations),
          tuple(derivatives))


# The activations begin with x as passed: all `jax.Array`s for an array x.
@overload
def forward_activations(
    params: Params, x: jax.Array, compute_dtype: Optional[DTypeLike] = None,
    net: Network = SOURCE,
) -> Tuple[jax.Array, Tuple[jax.Array, ...]]: ...


@overload
def forward_activations(
    params: Params, x: ArrayLike, compute_dtype: Optional[DTypeLike] = None,
    net: Network = SOURCE,
) -> Tuple[jax.Array, Tuple[ArrayLike, ...]]: ...


def forward_activations(
    params: Params, x: ArrayLike, compute_dtype: Optional[DTypeLike] = None,
    net: Network = SOURCE,
) -> Tuple[jax.Array, Tuple[ArrayLike, ...]]:
  """`forward_pass` without the derivatives: (z, (x, a_1, ..., a_{L-1}))."""
  z, activations, _ = forward_pass(params, x, compute_dtype, net, with_derivatives=False)
  return z, activations


def forward(params: Params, x: ArrayLike, net: Network = SOURCE) -> jax.Array:
  """The last layer's output z (m, K) for inputs of shape (m, n), (E1)-(E3): the logits."""
  return forward_activations(params, x, net=net)[0]


def predict(params: Params, x: ArrayLike, net: Network = SOURCE) -> jax.Array:
  """What the network's output decides for each row of x: the class index (m,) for softmax,
  0/1 indicators (m, K) for sigmoid outputs, the predicted values (m, K) for regression."""
  return net.out.decide(forward(params, x, net))
