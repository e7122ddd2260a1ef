"""Output layers and their losses, each with its hand-derived output error beside it,
(E4)-(E5), (E7) and (E22)-(E26), and its output Hessian, (E28).

    out = OUTPUTS["sigmoid_binary_cross_entropy"]
    yhat = out.predict(z)        # (m, K) probabilities or values from the last layer's z
    l = out.loss(z, y)           # (m,) each example's loss, computed stably from z
    e = out.error(z, y)          # (m, K) dl_i/dz_i: the output error that (E7) is for softmax

Every pairing here is a canonical link, so the error is the prediction minus the target
(divided by K for the squared error, whose loss is a mean over the K outputs): the recursion
(E10) and the gradients (E8)-(E12) stay one code path whatever the output. The batch objective
with per-example weights s_i is (E26): sum_i s_i l_i / sum_i s_i plus lambda / (2 sum_i s_i)
times sum ||W||^2, `objective.penalised_mean(l, params, l2, m=sum(s), weights=s)`; with s = 1
it is (E6).
"""

import math
from typing import Callable, Dict, NamedTuple, Optional

import jax
import jax.numpy as jnp


def log_softmax(logits: jax.Array) -> jax.Array:
  """Row-wise log softmax(z), (E4), computed stably; shape (m, K)."""
  shifted = logits - jax.lax.stop_gradient(logits.max(axis=1, keepdims=True))
  return shifted - jnp.log(jnp.exp(shifted).sum(axis=1, keepdims=True))


def cross_entropy(log_probs: jax.Array, y: jax.Array) -> jax.Array:
  """Per-example loss l_i = -log yhat_{i, y_i}, (E5); shape (m,)."""
  return -jnp.take_along_axis(log_probs, y[:, None], axis=1)[:, 0]


def output_error(log_probs: jax.Array, y: jax.Array) -> jax.Array:
  """dl_i/dz_i = yhat_i - y_i for every row, (E7); shape (m, K)."""
  return jnp.exp(log_probs) - jax.nn.one_hot(y, log_probs.shape[1], dtype=log_probs.dtype)


class Output(NamedTuple):
  """An output layer: its prediction, its per-example loss, their output error, and the
  targets it takes (class labels, or real values in [low, high])."""
  name: str
  predict: Callable[[jax.Array], jax.Array]           # z (m, K) -> yhat (m, K)
  loss: Callable[[jax.Array, jax.Array], jax.Array]   # (z, y) -> l (m,)
  error: Callable[[jax.Array, jax.Array], jax.Array]  # (z, y) -> dl/dz (m, K)
  targets: str                                        # what y holds, for the messages
  decide: Callable[[jax.Array], jax.Array]            # z (m, K) -> what `mj.predict` returns
  labels: bool = False       # y: int class indices (m,) in 0..K-1; else real values (m, K)
  low: float = -math.inf     # real targets: the least value allowed
  high: float = math.inf     # real targets: the greatest value allowed
  score: str = "acc"         # how predictions are scored: "acc" (classification) or "r2"
  # The output Hessian H_i = d^2 l_i / dz_i^2 (K, K) of every example, (E28), in three forms:
  hessian_vp: Optional[Callable[[jax.Array, jax.Array], jax.Array]] = None  # (z, v) -> H v
  hessian_sqrt: Optional[Callable[[jax.Array], jax.Array]] = None  # z -> S (C, m, K), H = S S^T
  sample: Optional[Callable[[jax.Array, jax.Array], jax.Array]] = None  # (key, z) -> y ~ model
  # (z, w (d, K)) -> (m, d): w_k^T H_i w_k for every row w_k of w and example i, (E29)
  hessian_sandwich: Optional[Callable[[jax.Array, jax.Array], jax.Array]] = None


def softmax_cross_entropy() -> Output:
  """(E22) yhat = softmax(z), l = -log yhat_t for the class t of the example; e = yhat - onehot(t),
  (E7). y: int labels (m,) in 0..K-1. Decides the most probable class, (m,)."""
  return Output("softmax_cross_entropy", jax.nn.softmax,
                lambda z, y: cross_entropy(log_softmax(z), y),
                lambda z, y: output_error(log_softmax(z), y), "class labels (m,) in 0..K-1",
                lambda z: jnp.argmax(z, axis=-1), labels=True, hessian_vp=_softmax_hvp,
                hessian_sqrt=_softmax_sqrt, hessian_sandwich=_softmax_sandwich,
                sample=lambda key, z: jax.random.categorical(key, z, axis=1).astype(jnp.int32))


def _softmax_hvp(z: jax.Array, v: jax.Array) -> jax.Array:
  """(E28) H v = p * v - p (p . v) for softmax with cross-entropy, H = diag(p) - p p^T."""
  p = jax.nn.softmax(z)
  return p * v - p * jnp.sum(p * v, axis=1, keepdims=True)


def _softmax_sqrt(z: jax.Array) -> jax.Array:
  """(E28) S with S S^T = diag(p) - p p^T: column c is sqrt(p_c) (e_c - p); (K, m, K)."""
  p = jax.nn.softmax(z)
  eye = jnp.eye(z.shape[1], dtype=z.dtype)
  return jnp.sqrt(p).T[:, :, None] * (eye[:, None, :] - p[None])


def _softmax_sandwich(z: jax.Array, w: jax.Array) -> jax.Array:
  """(E29) w_k^T (diag(p) - p p^T) w_k = p . w_k^2 - (p . w_k)^2 for every row w_k of w (d, K):
  two GEMMs, (m, d)."""
  p = jax.nn.softmax(z)
  return p @ jnp.square(w).T - jnp.square(p @ w.T)


def _diagonal_sandwich(h: Callable[[jax.Array], jax.Array]) -> Callable:
  """(E29) w_k^T diag(h(z)) w_k = h(z) . w_k^2 for a diagonal output Hessian: one GEMM."""
  return lambda z, w: h(z) @ jnp.square(w).T


def _diagonal_sqrt(d: jax.Array) -> jax.Array:
  """(E28) S = diag(sqrt d) for a diagonal output Hessian diag(d), d (m, K): (K, m, K)."""
  eye = jnp.eye(d.shape[1], dtype=d.dtype)
  return eye[:, None, :] * jnp.sqrt(d)[None]


def sigmoid_binary_cross_entropy() -> Output:
  """(E23) yhat_k = sigma(z_k), one independent probability per output (binary: K = 1;
  multilabel: K labels). l = sum_k [-y_k log yhat_k - (1 - y_k) log(1 - yhat_k)]
  = sum_k [softplus(z_k) - y_k z_k], the form computed (finite for any z); e = yhat - y, since
  softplus' = sigma. y: (m, K) in [0, 1] (0/1 indicators). Decides 1[yhat_k > 1/2] = 1[z_k > 0],
  int (m, K)."""
  def loss(z, y):
    return jnp.sum(jax.nn.softplus(z) - y * z, axis=1)

  def curvature(z):  # (E28) H = diag(yhat (1 - yhat))
    s = jax.nn.sigmoid(z)
    return s * (1 - s)

  return Output("sigmoid_binary_cross_entropy", jax.nn.sigmoid, loss,
                lambda z, y: jax.nn.sigmoid(z) - y, "indicators (m, K) in [0, 1]",
                lambda z: (z > 0).astype(jnp.int32), low=0.0, high=1.0,
                hessian_vp=lambda z, v: curvature(z) * v,
                hessian_sqrt=lambda z: _diagonal_sqrt(curvature(z)),
                hessian_sandwich=_diagonal_sandwich(curvature),
                sample=lambda key, z: jax.random.bernoulli(key, jax.nn.sigmoid(z)).astype(z.dtype))


def identity_squared_error() -> Output:
  """(E24) yhat = z, l = (1/2K) sum_k (z_k - y_k)^2, half the mean over the K outputs (the loss
  scikit-learn's MLPRegressor reports); e = (yhat - y) / K. y: real (m, K). Decides yhat."""
  def loss(z, y):
    return 0.5 * jnp.mean(jnp.square(z - y), axis=1)

  def sample(key, z):  # the Gaussian whose negative log-likelihood is the loss: variance K
    return z + math.sqrt(z.shape[1]) * jax.random.normal(key, z.shape, z.dtype)

  return Output("identity_squared_error", lambda z: z, loss, lambda z, y: (z - y) / z.shape[1],
                "real values (m, K)", lambda z: z, score="r2",
                hessian_vp=lambda z, v: v / z.shape[1],  # (E28) H = I / K
                hessian_sqrt=lambda z: _diagonal_sqrt(jnp.full_like(z, 1 / z.shape[1])),
                hessian_sandwich=_diagonal_sandwich(lambda z: jnp.full_like(z, 1 / z.shape[1])),
                sample=sample)


def poisson_log_link() -> Output:
  """(E25) yhat = exp(z), l = sum_k [y_k log(y_k / yhat_k) - y_k + yhat_k] (the Poisson
  deviance / 2, zero at yhat = y; y log y is 0 at y = 0) = sum_k [e^{z_k} - y_k z_k + y_k log y_k
  - y_k]; e = e^z - y = yhat - y. y: counts or rates (m, K), >= 0. Decides yhat."""
  def loss(z, y):
    return jnp.sum(jnp.exp(z) - y * z + jax.scipy.special.xlogy(y, y) - y, axis=1)

  return Output("poisson_log_link", jnp.exp, loss, lambda z, y: jnp.exp(z) - y,
                "counts (m, K) >= 0", jnp.exp, low=0.0, score="r2",
                hessian_vp=lambda z, v: jnp.exp(z) * v,  # (E28) H = diag(yhat)
                hessian_sqrt=lambda z: _diagonal_sqrt(jnp.exp(z)),
                hessian_sandwich=_diagonal_sandwich(jnp.exp),
                sample=lambda key, z: jax.random.poisson(key, jnp.exp(z)).astype(z.dtype))


def weighted_top_error(error: jax.Array, sample_weight: jax.Array) -> jax.Array:
  """(E26) The error the backward pass starts from, for the objective with per-example weights:
  s_i e_i / sum_i s_i for every row (E / m when every s_i = 1). Shapes (m, K), (m,)."""
  return error * (sample_weight / sample_weight.sum())[:, None].astype(error.dtype)


# Every output by name.
OUTPUTS: Dict[str, Output] = {
    "softmax_cross_entropy": softmax_cross_entropy(),
    "sigmoid_binary_cross_entropy": sigmoid_binary_cross_entropy(),
    "identity_squared_error": identity_squared_error(),
    "poisson_log_link": poisson_log_link(),
}
