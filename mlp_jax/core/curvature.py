"""Curvature from the analytic backward pass: the diagonals of the generalised Gauss-Newton
matrix (GGN) and of the Hessian, per-example GGN diagonals and Kronecker factors, (E28)-(E33).

The GGN of the objective is (1/m) sum_i J_i^T H_i J_i + (lambda/m) I on the weights, with J_i the
Jacobian of the logits z_i and H_i the output Hessian, (E28). Any factor H_i = S_i S_i^T turns it
into a sum of squares: each of the C columns of S is an error at the logits that the recursion
(E10) carries down like E / m, (E29):

    Delta_l^c = (Delta_{l+1}^c W_{l+1}^T) * g_l'(H_l),   Delta_L^c = S^c     (C, m, d_l)
    diag GGN(W_l) = (1/m) (A_{l-1} * A_{l-1})^T sum_c (Delta_l^c * Delta_l^c) + lambda/m
    diag GGN(b_l) = (1/m) 1^T sum_c (Delta_l^c * Delta_l^c)

The logits' and the top hidden layer's sums over c have closed forms (diag H, and
g'^2 * diag(W H W^T)), so the columns are carried only to the layers below: for a 2-layer
network the exact diagonal costs about one gradient. One sampled label, whose error e has
E[e e^T] = H, gives a Monte-Carlo estimate with one column instead of C (E30). The Hessian adds, at every hidden layer, the
activation's second derivative times the gradient reaching it (E31), (E32); Kronecker factors
are the second moments of the layers' inputs and of the columns, (E33).
"""

from typing import Any, List, NamedTuple, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from mlp_jax.core import eager, validation
from mlp_jax.core.backprop import backprop_errors
from mlp_jax.core.model import Dense, Params, affine, prng_key
from mlp_jax.core.network import DEFAULT_OUTPUT, SOURCE, Network, make_network


class KroneckerFactors(NamedTuple):
  """One layer's Kronecker factors, (E33): its GGN block over (W_l; b_l) is about kron(a, g).

  `a` is the second moment of the layer's input with a constant 1 appended for the bias (its
  last row and column); kron(a[:-1, :-1], g) is the block of W_l flattened row-major (the order
  of `w.reshape(-1)`), and g (= a[-1, -1] g) the block of b_l.
  """
  a: jax.Array  # (fan_in + 1, fan_in + 1): (1/m) sum_i [a_i; 1] [a_i; 1]^T
  g: jax.Array  # (fan_out, fan_out): (1/m) sum_i sum_c delta_i^c delta_i^c^T


def forward_with_pre(params: Params, x: jax.Array, net: Network = SOURCE,
                     ) -> Tuple[jax.Array, Tuple[jax.Array, ...], Tuple[jax.Array, ...]]:
  """(E1)-(E3), keeping the pre-activations: (z, (x, a_1, ..., a_{L-1}), (h_1, ..., h_{L-1}))."""
  activations: List[jax.Array] = [x]
  pre: List[jax.Array] = []
  for layer, act in zip(params[:-1], net.hidden(len(params) - 1)):
    pre.append(affine(layer, activations[-1]))
    activations.append(act.forward(pre[-1]))
  return affine(params[-1], activations[-1]), tuple(activations), tuple(pre)


def derivatives_of(net: Network, activations: Sequence[jax.Array],
                   pre: Sequence[jax.Array]) -> Tuple[jax.Array, ...]:
  """g_l'(h_l) of every hidden layer as the backward pass applies it (a bool mask for ReLU)."""
  return tuple(act.backward_factor(h, a)
               for act, h, a in zip(net.hidden(len(pre)), pre, activations[1:]))


def column_errors(params: Params, derivatives: Sequence[jax.Array],
                  columns: jax.Array) -> Tuple[jax.Array, ...]:
  """(E29) Every column of errors at the logits, (C, m, K), carried down by (E10): per layer
  the (C, m, d_l) columns Delta_l^c, each step one GEMM of C m rows (`backprop_errors` with
  the derivatives broadcast over the columns)."""
  return backprop_errors(params, (), columns, masks=tuple(d[None] for d in derivatives))


def diagonal_from(params: Params, activations: Sequence[jax.Array],
                  pre_diagonals: Sequence[jax.Array], l2: ArrayLike, m: ArrayLike) -> Params:
  """(E29), (E32) A parameter diagonal from each layer's per-example diagonal over its
  pre-activations, d_l (m, d_l): (1/m) (A * A)^T d_l + lambda/m for W_l, (1/m) 1^T d_l for b_l.
  """
  decay = jnp.asarray(l2, params[0].w.dtype) / m
  return tuple(Dense(w=jnp.square(a).T @ d / m + decay, b=d.sum(axis=0) / m)
               for a, d in zip(activations, pre_diagonals))


def _squares(columns: Tuple[jax.Array, ...]) -> Tuple[jax.Array, ...]:
  return tuple(jnp.sum(jnp.square(c), axis=0) for c in columns)


def sampled_errors(net: Network, z: jax.Array, key: jax.Array, samples: int) -> jax.Array:
  """(E30) The output errors of `samples` labels drawn from the model's own predictive
  distribution, divided by sqrt(samples): (samples, m, K) columns whose outer products average
  to the output Hessian H."""
  keys = jax.random.split(key, samples)
  errors = jax.vmap(lambda k: net.out.error(z, net.out.sample(k, z)))(keys)
  return errors / jnp.sqrt(jnp.asarray(samples, z.dtype))


def _ggn_columns(params, x, net, key=None, samples=1):
  """The layers' inputs and the GGN columns of every layer: exact (E29) or sampled (E30), for
  the Kronecker factors and the sampled diagonal."""
  z, activations, pre = forward_with_pre(params, x, net)
  top = net.out.hessian_sqrt(z) if key is None else sampled_errors(net, z, key, samples)
  return activations, column_errors(params, derivatives_of(net, activations, pre), top)


def pre_diagonals(params: Params, x: jax.Array, y: jax.Array, net: Network = SOURCE,
                  hessian: bool = False) -> Tuple[Tuple[jax.Array, ...], Any]:
  """Each example's GGN diagonal (E29), or with `hessian` its Hessian diagonal (E32), over
  every layer's pre-activations, d_l (m, d_l), and the layers' inputs.

  The Hessian over h_l is D_l W_{l+1} Hess(h_{l+1}) W_{l+1}^T D_l + diag(g_l''(h_l) * beta_l),
  beta_l = dl_i/da_l. Its GGN part is read in closed form for the logits and the top hidden
  layer (diag H and g'^2 * diag(W H W^T), `Output.hessian_sandwich`), and carried as the
  columns of (E29) to the layers below; the second term is diagonal and enters d_l as is, and
  the layers below as |rho|^(1/2) columns with the sign of rho. Piecewise-linear layers add
  nothing: there the Hessian's diagonal is the GGN's.
  """
  z, activations, pre = forward_with_pre(params, x, net)
  hidden, out = net.hidden(len(pre)), net.out
  diagonals = [out.hessian_sandwich(z, jnp.eye(z.shape[1], dtype=z.dtype))]  # diag H
  columns = out.hessian_sqrt(z) if len(pre) > 1 else None  # (C, m, K), for layers below
  signs: Optional[jax.Array] = None                    # (C, m); None while all are +1
  delta = out.error(z, y)                              # dl_i/dh of the current layer
  for l in range(len(pre) - 1, -1, -1):
    w, act, h, a = params[l + 1].w, hidden[l], pre[l], activations[l + 1]
    slope = act.derivative(h, a)
    if columns is not None:                            # (E10) on every column
      columns = jnp.einsum("cmk,dk->cmd", columns, w) * slope[None]
    if l == len(pre) - 1:                              # closed form: g'^2 * diag(W H W^T)
      d = out.hessian_sandwich(z, w) * jnp.square(slope)
    else:
      squares = jnp.square(columns)
      d = jnp.sum(squares if signs is None else signs[:, :, None] * squares, axis=0)
    if hessian and not act.piecewise_linear:
      beta = delta @ w.T
      rho = act.second_derivative(h, a) * beta         # (E31) the activation's own curvature
      d = d + rho
      if l > 0:                                        # the layers below see it as columns
        eye = jnp.eye(rho.shape[1], dtype=rho.dtype)
        new = eye[:, None, :] * jnp.sqrt(jnp.abs(rho))[None]
        old = jnp.ones(columns.shape[:2], rho.dtype) if signs is None else signs
        signs = jnp.concatenate([old, jnp.sign(rho).T])
        columns = jnp.concatenate([columns, new])
      delta = beta * slope
    elif hessian:
      delta = (delta @ w.T) * slope
    diagonals.append(d)
  return tuple(diagonals[::-1]), activations


def _ggn_diagonal(params, x, y, l2, key=None, samples=1, net=SOURCE):
  if key is None:
    diagonals, activations = pre_diagonals(params, x, y, net)
  else:
    activations, columns = _ggn_columns(params, x, net, key, samples)
    diagonals = _squares(columns)
  return diagonal_from(params, activations, diagonals, l2, x.shape[0])


def _per_sample_ggn_diagonals(params, x, y, net=SOURCE):
  diagonals, activations = pre_diagonals(params, x, y, net)
  return tuple(Dense(w=jnp.einsum("mi,mj->mij", jnp.square(a), d), b=d)
               for a, d in zip(activations, diagonals))


def _hessian_diagonal(params, x, y, l2, net=SOURCE):
  diagonals, activations = pre_diagonals(params, x, y, net, hessian=True)
  return diagonal_from(params, activations, diagonals, l2, x.shape[0])


def _kronecker_factors(params, x, y, key=None, samples=1, net=SOURCE):
  activations, columns = _ggn_columns(params, x, net, key, samples)
  m = x.shape[0]
  factors = []
  for a, c in zip(activations, columns):
    padded = jnp.concatenate([a, jnp.ones((m, 1), a.dtype)], axis=1)
    rows = c.reshape(-1, c.shape[-1])                  # the C m columns' rows, (C m, d_l)
    factors.append(KroneckerFactors(a=padded.T @ padded / m, g=rows.T @ rows / m))
  return tuple(factors)


GGN_DIAGONAL = eager.compile_call(_ggn_diagonal, static_argnames=("samples",))
PER_SAMPLE_GGN = eager.compile_call(_per_sample_ggn_diagonals)
HESSIAN_DIAGONAL = eager.compile_call(_hessian_diagonal)
KRONECKER = eager.compile_call(_kronecker_factors, static_argnames=("samples",))


def _sampling(key: Any, samples: int) -> Tuple[Optional[jax.Array], int]:
  """A checked (key, samples): no key means the exact quantity."""
  samples = validation.check_int(samples, "samples")
  return (None if key is None else prng_key(key)), samples


def ggn_diagonal(params: Params, x: ArrayLike, y: ArrayLike, l2: ArrayLike = 0.0, *,
                 key: Any = None, samples: int = 1, activation: Any = "relu",
                 output: str = DEFAULT_OUTPUT) -> Params:
  """The diagonal of the generalised Gauss-Newton matrix of the objective (E6), shaped like
  `params`: exact (E29), or with `key` a Monte-Carlo estimate from `samples` labels drawn from
  the model per example (E30), unbiased, at the cost of `samples` columns instead of C.

  The penalty's lambda/m is on the weights' entries (its Hessian; biases have none). For a
  piecewise-linear network (ReLU, the source's) it equals `hessian_diagonal`.

  Args:
    params: tuple of `Dense`; x: features (m, n); y: the targets of `output` (the GGN does not
      depend on them; they are checked).
    l2: the penalty lambda >= 0.
    key: None for the exact diagonal; a PRNG key or an int seed for the sampled one.
    samples: labels drawn per example with `key`.
    activation, output: the network, as for `loss_and_grads`.
  """
  key, samples = _sampling(key, samples)
  return eager.checked_call(GGN_DIAGONAL, params, x, y, l2, key, l2=l2, samples=samples,
                            net=make_network(activation, output))


def per_sample_ggn_diagonals(params: Params, x: ArrayLike, y: ArrayLike, *,
                             activation: Any = "relu", output: str = DEFAULT_OUTPUT) -> Params:
  """The GGN diagonal of each example's loss l_i alone, (E29) before the mean (no 1/m, no
  penalty): every leaf gains a leading axis of size m, `Dense(w=(m, fan_in, fan_out),
  b=(m, fan_out))`; their mean plus lambda/m on the weights is `ggn_diagonal`."""
  return eager.checked_call(PER_SAMPLE_GGN, params, x, y, net=make_network(activation, output))


def hessian_diagonal(params: Params, x: ArrayLike, y: ArrayLike, l2: ArrayLike = 0.0, *,
                     activation: Any = "relu", output: str = DEFAULT_OUTPUT) -> Params:
  """The diagonal of the Hessian of the objective (E6), (E32), shaped like `params`: the GGN's
  plus the hidden activations' second-derivative terms (E31), and lambda/m on the weights.
  Equal to `ggn_diagonal` for piecewise-linear activations (ReLU, leaky ReLU, identity).

  A smooth hidden layer above another hidden layer carries its d_l extra columns down, so for
  deep smooth networks the cost grows with the widths (the 2-layer network's does not).
  Arguments as for `ggn_diagonal`.
  """
  return eager.checked_call(HESSIAN_DIAGONAL, params, x, y, l2, l2=l2,
                            net=make_network(activation, output))


def kronecker_factors(params: Params, x: ArrayLike, y: ArrayLike, *, key: Any = None,
                      samples: int = 1, activation: Any = "relu",
                      output: str = DEFAULT_OUTPUT) -> Tuple[KroneckerFactors, ...]:
  """Each layer's Kronecker factors of the GGN, (E33): KFLR (exact columns, (E29)) without a
  `key`, K-FAC (one or `samples` sampled labels, (E30)) with one. The penalty is not in them:
  add lambda/m to the weights' block where a damped inverse needs it.

  Returns:
    A tuple of `KroneckerFactors(a=(fan_in + 1, fan_in + 1), g=(fan_out, fan_out))`, one per
    layer. For a single example, kron(a[:-1, :-1], g) is the exact GGN block of W_l.
  """
  key, samples = _sampling(key, samples)
  return eager.checked_call(KRONECKER, params, x, y, key, samples=samples,
                            net=make_network(activation, output))
