"""The autodiff routes to the curvature of (E28)-(E35): what the analytic versions are proven
against in the tests, and timed against in `benchmarks/curvature.py`.

    autodiff_ggn_diagonal           vmap over examples and over the C columns of S of jax.vjp
    autodiff_hessian_diagonal       the diagonal of jax.hessian (small networks: P x P memory)
    autodiff_ggn_matrix             (1/m) sum_i J_i^T H_i J_i from jax.jacfwd (small networks)
    autodiff_ggn_vector_product     jax.jvp of the logits, H, jax.vjp
    autodiff_hessian_vector_product jax.jvp of jax.grad

All take a checked (params, x, y) and a `Network`, and are jitted with the network static.
"""

import functools

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree
from jax.typing import ArrayLike

from mlp_jax.core.model import Dense, Params, forward
from mlp_jax.core.network import SOURCE, Network
from mlp_jax.core.objective import objective


def _with_decay(tree: Params, params: Params, l2: ArrayLike, m: int) -> Params:
  """tree + lambda/m params on the weights: the penalty's part of a product with `params`."""
  decay = jnp.asarray(l2, params[0].w.dtype) / m
  return tuple(Dense(w=g.w + decay * p.w, b=g.b) for g, p in zip(tree, params))


def _output_hessians(net: Network, z: jax.Array, y: jax.Array) -> jax.Array:
  """jax.hessian of each example's loss in its logits: (m, K, K)."""
  one = lambda zi, yi: net.out.loss(zi[None], yi[None])[0]  # noqa: E731
  return jax.vmap(jax.hessian(one))(z, y)


def _sqrt_psd(h: jax.Array) -> jax.Array:
  """S with S S^T = h for a symmetric PSD (K, K), by its eigendecomposition: (K, K)."""
  values, vectors = jnp.linalg.eigh(h)
  return vectors * jnp.sqrt(jnp.maximum(values, 0))[None, :]


@functools.partial(jax.jit, static_argnames=("net", "chunk"))
def autodiff_ggn_diagonal(params: Params, x: jax.Array, y: jax.Array, l2: ArrayLike = 0.0,
                          net: Network = SOURCE, chunk: int = 64) -> Params:
  """diag (1/m) sum_i J_i^T H_i J_i + lambda/m: per example, one jax.vjp of z_i per column of
  a square root of jax.hessian's H_i, squared and summed; `chunk` examples at a time."""
  def one(xy):
    xi, yi = xy
    zi, pullback = jax.vjp(lambda p: forward(p, xi[None], net)[0], params)
    h = jax.hessian(lambda z: net.out.loss(z[None], yi[None])[0])(zi)
    rows = jax.vmap(lambda s: pullback(s)[0])(_sqrt_psd(h).T)
    return jax.tree.map(lambda r: jnp.sum(jnp.square(r), axis=0), rows)
  per = jax.lax.map(one, (x, y), batch_size=chunk)
  mean = jax.tree.map(lambda d: d.mean(axis=0), per)
  return _with_decay(mean, jax.tree.map(jnp.ones_like, params), l2, x.shape[0])


@functools.partial(jax.jit, static_argnames=("net",))
def autodiff_hessian_diagonal(params: Params, x: jax.Array, y: jax.Array, l2: ArrayLike = 0.0,
                              net: Network = SOURCE) -> Params:
  """The diagonal of jax.hessian of the objective over the flattened parameters."""
  flat, unravel = ravel_pytree(params)
  h = jax.hessian(lambda f: objective(unravel(f), x, y, l2, net=net))(flat)
  return unravel(jnp.diagonal(h))


@functools.partial(jax.jit, static_argnames=("net",))
def autodiff_ggn_matrix(params: Params, x: jax.Array, y: jax.Array, l2: ArrayLike = 0.0,
                        net: Network = SOURCE) -> jax.Array:
  """The whole GGN (P, P) over `ravel_pytree(params)`'s order, lambda/m on the weights."""
  flat, unravel = ravel_pytree(params)
  z = forward(params, x, net)
  jac = jax.jacfwd(lambda f: forward(unravel(f), x, net))(flat)  # (m, K, P)
  ggn = jnp.einsum("mkp,mkl,mlq->pq", jac, _output_hessians(net, z, y), jac) / x.shape[0]
  decay, _ = ravel_pytree(_with_decay(jax.tree.map(jnp.zeros_like, params),
                                      jax.tree.map(jnp.ones_like, params), l2, x.shape[0]))
  return ggn + jnp.diag(decay)


@functools.partial(jax.jit, static_argnames=("net",))
def autodiff_ggn_vector_product(params: Params, x: jax.Array, y: jax.Array, v: Params,
                                l2: ArrayLike = 0.0, net: Network = SOURCE) -> Params:
  """G v by jax.jvp of the logits, each example's H from jax.hessian, and jax.vjp."""
  z, dz = jax.jvp(lambda p: forward(p, x, net), (params,), (v,))
  h_dz = jnp.einsum("mkl,ml->mk", _output_hessians(net, z, y), dz)
  _, pullback = jax.vjp(lambda p: forward(p, x, net), params)
  return _with_decay(pullback(h_dz / x.shape[0])[0], v, l2, x.shape[0])


@functools.partial(jax.jit, static_argnames=("net",))
def autodiff_hessian_vector_product(params: Params, x: jax.Array, y: jax.Array, v: Params,
                                    l2: ArrayLike = 0.0, net: Network = SOURCE) -> Params:
  """H v as jax.jvp of jax.grad of the objective (forward over reverse)."""
  grad = jax.grad(lambda p: objective(p, x, y, l2, net=net))
  return jax.jvp(grad, (params,), (v,))[1]
