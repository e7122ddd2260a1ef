"""Loss, score (accuracy or R^2) and the confusion matrix of a model on a whole dataset."""

import functools
from typing import Any, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from mlp_jax.core import validation
from mlp_jax.core.model import Params, forward, predict
from mlp_jax.core.network import DEFAULT_OUTPUT, SOURCE, Network, make_network
from mlp_jax.core.objective import l2_penalty


def score_name(net: Network) -> str:
  """What `evaluate` scores a network's predictions by, as `fit`'s records name it: "acc" (the
  fraction of examples predicted right: the class, or every label of a multilabel example) for
  classification outputs, "r2" (the coefficient of determination, averaged over the outputs, as
  scikit-learn's regressors score) for regression outputs."""
  return net.out.score


def _hits(net: Network, z: jax.Array, y: jax.Array, keep: jax.Array) -> jax.Array:
  """Per chunk: the examples predicted right (int), or for regression the squared residuals
  of every output, (K,)."""
  if net.output == DEFAULT_OUTPUT:
    return (keep & (jnp.argmax(z, axis=1) == y)).sum(dtype=jnp.int32)
  if score_name(net) == "acc":
    right = jnp.all((z > 0) == (y > 0.5), axis=1)
    return (keep & right).sum(dtype=jnp.int32)
  residual = net.out.predict(z) - y
  return jnp.where(keep[:, None], jnp.square(residual), 0).sum(axis=0)


@functools.partial(jax.jit, static_argnames=("chunk", "net"))
def _sums(params, x, y, chunk=8192, net=SOURCE):
  """The summed loss and `_hits` over (x, y), in chunks of `chunk` rows."""
  n = x.shape[0]
  pad = -n % chunk
  xs = jnp.pad(x, ((0, pad), (0, 0))).reshape(-1, chunk, x.shape[1])
  ys = jnp.pad(y, ((0, pad),) + ((0, 0),) * (y.ndim - 1)).reshape((-1, chunk) + y.shape[1:])
  keep = (jnp.arange(n + pad) < n).reshape(-1, chunk)

  def body(total, batch):
    xb, yb, kb = batch
    logits = forward(params, xb, net)
    loss = jnp.where(kb, net.out.loss(logits, yb), 0).sum()
    return (total[0] + loss, total[1] + _hits(net, logits, yb, kb)), None

  hits = (jnp.zeros((), jnp.int32) if score_name(net) == "acc"
          else jnp.zeros((params[-1].w.shape[1],), x.dtype))
  init = (jnp.zeros((), x.dtype), hits)
  (loss, hits), _ = jax.lax.scan(body, init, (xs, ys, keep))
  return loss, hits


def evaluate(params: Params, x: ArrayLike, y: ArrayLike, l2: ArrayLike = 0.0, *,
             activation: Any = "relu", output: str = DEFAULT_OUTPUT) -> Tuple[float, float]:
  """(loss, score) on a whole dataset (x (m, n), y the output's targets), evaluated in
  fixed-size chunks.

  The loss is the objective (E6) at the given `l2`: the mean loss plus lambda/(2m)
  sum ||W||^2. `fit`'s `val_loss` is this at the run's lambda, so pass that lambda to reproduce
  it; the default `l2=0` gives the bare mean loss. The score is the accuracy for the source's
  network (the fraction of rows whose argmax logit is the label); see `score_name` for the
  others. `activation`, `output`: the network, as for `loss_and_grads`.
  """
  net = make_network(activation, output)
  return evaluate_checked(*validation.check_batch(params, x, y, l2, net=net), net)


def evaluate_checked(params: Params, x: jax.Array, y: jax.Array,
                     l2: ArrayLike, net: Network = SOURCE) -> Tuple[float, float]:
  """`evaluate` on arrays already checked (and on the device): no pass over x for validation."""
  loss, hits = _sums(params, x, y, chunk=min(8192, x.shape[0]), net=net)
  m = x.shape[0]
  mean_loss = float(loss) / m + float(l2_penalty(params, l2, m))
  if score_name(net) == "acc":
    return mean_loss, int(hits) / m
  return mean_loss, r2_score(np.asarray(hits, np.float64), np.asarray(y, np.float64))


def r2_score(residual_squares: np.ndarray, y: np.ndarray) -> float:
  """1 - SS_res / SS_tot per output, averaged over the outputs (scikit-learn's `r2_score`, its
  "uniform_average"; an output with no variance scores 1 if predicted exactly, else 0)."""
  total = np.square(y - y.mean(axis=0)).sum(axis=0)
  safe = np.where(total > 0, total, 1.0)
  scores = np.where(total > 0, 1 - residual_squares / safe,
                    np.where(residual_squares == 0, 1.0, 0.0))
  return float(scores.mean())


_predict_jit = jax.jit(predict, static_argnames="net")  # one program per shape, reused


def confusion_matrix(params: Params, x: ArrayLike, y: ArrayLike,
                     num_classes: Optional[int] = None, *,
                     activation: Any = "relu") -> np.ndarray:
  """counts[true, predicted] over a dataset, int64 (K, K), of a softmax classifier whose hidden
  layers use `activation` (as for `loss_and_grads`)."""
  net = make_network(activation)
  params, x, y, _ = validation.check_batch(params, x, y, net=net)
  k = params[-1].w.shape[1] if num_classes is None else num_classes
  pred = np.asarray(_predict_jit(params, x, net=net))
  counts = np.zeros((k, k), np.int64)
  np.add.at(counts, (np.asarray(y), pred), 1)
  return counts
