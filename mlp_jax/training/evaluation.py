"""Loss, accuracy and the confusion matrix of a model on a whole dataset."""

import functools
from typing import Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from mlp_jax.core import validation
from mlp_jax.core.model import Params, forward, predict
from mlp_jax.core.objective import cross_entropy, l2_penalty, log_softmax


@functools.partial(jax.jit, static_argnames="chunk")
def _sums(params, x, y, chunk=8192):
  """Summed cross-entropy and correct predictions over (x, y), in chunks of `chunk` rows."""
  n = x.shape[0]
  pad = -n % chunk
  xs = jnp.pad(x, ((0, pad), (0, 0))).reshape(-1, chunk, x.shape[1])
  ys = jnp.pad(y, (0, pad)).reshape(-1, chunk)
  keep = (jnp.arange(n + pad) < n).reshape(-1, chunk)

  def body(total: Tuple[jax.Array, jax.Array], batch: Tuple[jax.Array, jax.Array, jax.Array]
           ) -> Tuple[Tuple[jax.Array, jax.Array], None]:
    xb, yb, kb = batch
    logits = forward(params, xb)
    ce = jnp.where(kb, cross_entropy(log_softmax(logits), yb), 0).sum()
    correct = (kb & (jnp.argmax(logits, axis=1) == yb)).sum(dtype=jnp.int32)
    return (total[0] + ce, total[1] + correct), None

  init = (jnp.zeros((), x.dtype), jnp.zeros((), jnp.int32))
  (ce, correct), _ = jax.lax.scan(body, init, (xs, ys, keep))
  return ce, correct


def evaluate(params: Params, x: ArrayLike, y: ArrayLike,
             l2: ArrayLike = 0.0) -> Tuple[float, float]:
  """(loss, accuracy) on a whole dataset (x (m, n), y (m,)), evaluated in fixed-size chunks.

  The loss is the objective (E6) at the given `l2`: mean cross-entropy plus lambda/(2m)
  sum ||W||^2. `fit`'s `val_loss` is this at the run's lambda, so pass that lambda to reproduce
  it; the default `l2=0` gives the bare mean cross-entropy. Accuracy is the fraction of rows
  whose argmax logit is the label.
  """
  return evaluate_checked(*validation.check_batch(params, x, y, l2))


def evaluate_checked(params: Params, x: jax.Array, y: jax.Array,
                     l2: ArrayLike) -> Tuple[float, float]:
  """`evaluate` on arrays already checked (and on the device): no pass over x for validation."""
  ce, correct = _sums(params, x, y, chunk=min(8192, x.shape[0]))
  m = x.shape[0]
  return float(ce) / m + float(l2_penalty(params, l2, m)), int(correct) / m


_predict_jit = jax.jit(predict)  # one compiled program per shape, reused across calls


def confusion_matrix(params: Params, x: ArrayLike, y: ArrayLike,
                     num_classes: Optional[int] = None) -> np.ndarray:
  """counts[true, predicted] over a dataset, int64 (K, K)."""
  params, x, y, _ = validation.check_batch(params, x, y)
  k = params[-1].w.shape[1] if num_classes is None else num_classes
  pred = np.asarray(_predict_jit(params, x))
  counts = np.zeros((k, k), np.int64)
  np.add.at(counts, (np.asarray(y), pred), 1)
  return counts
