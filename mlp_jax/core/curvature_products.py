"""GGN-vector and Hessian-vector products from the analytic passes, (E34)-(E35).

A product with a direction v (shaped like the parameters) is the derivative of the gradient
(E8)-(E12) along v: a forward pass that carries the tangents of every layer (the R-operator),

    dH_l = dA_{l-1} W_l + A_{l-1} V_l + 1 v_{b,l}^T,   dA_l = g_l'(H_l) * dH_l,   dA_0 = 0

then the backward pass and its tangent, started from E / m and H dZ / m (H the output Hessian,
(E28)). The Gauss-Newton product keeps the tangent of the errors alone (E34); the Hessian
product adds the three terms where the gradient depends on the parameters other than through
the logits: dA^T Delta, Delta V^T, and the activations' second derivatives (E35). Each costs
about two gradients and never forms a matrix.
"""

from typing import Any, List, Optional

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from mlp_jax.core import eager, validation
from mlp_jax.core.model import Dense, Params, affine
from mlp_jax.core.network import DEFAULT_OUTPUT, SOURCE, Network, make_network
from mlp_jax.errors import InputError, InputTypeError


def curvature_product(params: Params, x: jax.Array, y: jax.Array, v: Params, l2: ArrayLike,
                      full: bool, net: Network = SOURCE) -> Params:
  """(E34) G v, or (E35) with `full` H v, for the objective (E6): traceable, no checks."""
  m = x.shape[0]
  hidden = net.hidden(len(params) - 1)
  acts: List[jax.Array] = [x]
  tangents: List[Optional[jax.Array]] = [None]         # dA_l; dA_0 = 0
  pre, pre_tangents, slopes = [], [], []
  for layer, t, act in zip(params[:-1], v[:-1], hidden):
    h = affine(layer, acts[-1])
    dh = acts[-1] @ t.w + t.b[None, :]
    dh = dh if tangents[-1] is None else dh + tangents[-1] @ layer.w
    a = act.forward(h)
    slopes.append(act.derivative(h, a))
    pre.append(h)
    pre_tangents.append(dh)
    acts.append(a)
    tangents.append(slopes[-1] * dh)
  z = affine(params[-1], acts[-1])
  dz = acts[-1] @ v[-1].w + v[-1].b[None, :]
  dz = dz if tangents[-1] is None else dz + tangents[-1] @ params[-1].w
  delta = net.out.error(z, y) / m                       # (E7), (E22)-(E25)
  d_delta = net.out.hessian_vp(z, dz) / m               # (E28)
  decay = jnp.asarray(l2, params[0].w.dtype) / m
  out: List[Dense] = []
  for l in range(len(params) - 1, -1, -1):
    gw = acts[l].T @ d_delta + decay * v[l].w
    if full and tangents[l] is not None:
      gw = gw + tangents[l].T @ delta
    out.append(Dense(w=gw, b=d_delta.sum(axis=0)))
    if l == 0:
      break
    w = params[l].w
    d_beta = d_delta @ w.T
    beta = delta @ w.T
    if full:
      d_beta = d_beta + delta @ v[l].w.T
    d_delta = d_beta * slopes[l - 1]
    if full and not hidden[l - 1].piecewise_linear:
      h = pre[l - 1]
      d_delta = d_delta + beta * hidden[l - 1].second_derivative(h, acts[l]) * pre_tangents[l - 1]
    delta = beta * slopes[l - 1]
  return tuple(out[::-1])


PRODUCT = eager.compile_call(curvature_product, static_argnames=("full",))


def check_direction(v: Any, params: Params, name: str = "v") -> Params:
  """`v` as a tuple of `Dense` with the shapes of `params`, in their dtype, or an error naming
  the first leaf that differs."""
  if not isinstance(v, (tuple, list)) or not all(isinstance(t, Dense) for t in v):
    raise InputTypeError(f"{name}: expected a tuple of Dense like params, got "
                         f"{type(v).__name__}")
  if len(v) != len(params):
    raise InputError(f"{name}: expected {len(params)} layers like params, got {len(v)}")
  for i, (t, p) in enumerate(zip(v, params)):
    for leaf in ("w", "b"):
      got, want = jnp.shape(getattr(t, leaf)), getattr(p, leaf).shape
      if got != want:
        raise InputError(f"{name}: layer {i} {leaf} must have the shape of params' {want}, "
                         f"got {got}")
  v = validation.check_params(v)
  dtype = params[0].w.dtype
  return tuple(Dense(w=t.w.astype(dtype), b=t.b.astype(dtype)) for t in v)


def _product(params, x, y, v, l2, full, activation, output):
  params = validation.check_params(params)
  v = check_direction(v, params)
  return eager.checked_call(PRODUCT, params, x, y, v, l2, l2=l2, full=full,
                            net=make_network(activation, output))


def ggn_vector_product(params: Params, x: ArrayLike, y: ArrayLike, v: Params,
                       l2: ArrayLike = 0.0, *, activation: Any = "relu",
                       output: str = DEFAULT_OUTPUT) -> Params:
  """G v: the generalised Gauss-Newton matrix of the objective (E6) times a direction v,
  (E34), shaped like `params`; lambda/m v on the weights. G is positive semi-definite, so
  conjugate gradients and Hessian-free optimisers take it where the Hessian may be indefinite.

  Args:
    params: tuple of `Dense`; x: features (m, n); y: the targets of `output`.
    v: a direction shaped like `params` (a tuple of `Dense`).
    l2: the penalty lambda >= 0.
    activation, output: the network, as for `loss_and_grads`.
  """
  return _product(params, x, y, v, l2, False, activation, output)


def hessian_vector_product(params: Params, x: ArrayLike, y: ArrayLike, v: Params,
                           l2: ArrayLike = 0.0, *, activation: Any = "relu",
                           output: str = DEFAULT_OUTPUT) -> Params:
  """H v: the Hessian of the objective (E6) times a direction v, (E35), shaped like `params`.
  Arguments as for `ggn_vector_product`."""
  return _product(params, x, y, v, l2, True, activation, output)
