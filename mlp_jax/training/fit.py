"""`fit`: epochs of the compiled epoch, with validation, early stopping and a history.

    result = fit(params, (x, y), optimizer=optax.adam(1e-3), epochs=20, val=(xv, yv))

A non-finite loss or gradient is found after each epoch (each step's loss and the final state are
checked); `fit` then replays the epoch from its start to report the first bad step with the
parameters from before it.
"""

import dataclasses
import time
from typing import Callable, Dict, List, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mlp_jax.core import checks
from mlp_jax.core.model import Params
from mlp_jax.errors import InputError, NonFiniteError
from mlp_jax.training import distributed, privacy
from mlp_jax.training.epoch import build_epoch, epoch_key
from mlp_jax.training.evaluation import evaluate_checked
from mlp_jax.training.optimizers import steps_per_epoch

# Fresh buffers for a whole pytree in one compiled call (one dispatch, not one per leaf).
_copy_tree = jax.jit(lambda tree: jax.tree.map(jnp.copy, tree))


def _first_bad_step(step, plan, params, opt_state, x, y, key):
  """Replays an epoch from its start, step by step, until a loss, gradient or update is not
  finite. Returns (step index, indices of its rows, params and opt_state from before it)."""
  indices, mask, step_keys = plan(key, x.shape[0])
  step = jax.jit(step)
  for i in range(indices.shape[0]):
    new_params, new_state, loss, grads = step(params, opt_state, x, y, indices[i], mask[i],
                                              step_keys[i])
    if not bool(jnp.isfinite(loss) & checks.all_finite((grads, new_params, new_state))):
      return i, np.asarray(indices[i])[np.asarray(mask[i])], params, opt_state
    params, opt_state = new_params, new_state
  return indices.shape[0] - 1, np.asarray(indices[-1])[np.asarray(mask[-1])], params, opt_state


@dataclasses.dataclass
class FitResult:
  """What `fit` returns."""
  params: Params
  opt_state: optax.OptState
  history: List[Dict[str, float]]   # one dict per epoch: epoch, train_loss, val_loss, val_acc, ...
  best_epoch: int                   # the epoch whose parameters were returned (1-based)
  stopped_early: bool


def fit(params: Params, train, *, optimizer: optax.GradientTransformation, epochs: int,
        batch_size: int = 128, l2=0.0, seed: int = 0, val=None,
        patience: Optional[int] = None, opt_state=None, start_epoch: int = 0,
        history: Optional[List[Dict[str, float]]] = None,
        on_epoch_end: Optional[Callable[[int, Params, optax.OptState, Dict], None]] = None,
        compute_dtype=None, dp: Optional[privacy.DPConfig] = None, mesh=None,
        track_train_accuracy: bool = False) -> FitResult:
  """Trains with the compiled epoch: shuffling, validation each epoch, optional early stopping.

  Args:
    params: initial parameters (tuple of `Dense`); not modified.
    train: (x, y) training data, (N, n) floating and (N,) integer.
    optimizer: an optax GradientTransformation.
    epochs: total number of epochs (counting those before `start_epoch` when resuming).
    batch_size: minibatch size; the last short batch is kept (masked), see `make_epoch`.
    l2: the penalty lambda of (E6).
    seed: shuffling seed; epoch e uses `epoch_key(seed, e)`. Same seed, same machine: the same
      parameters bit for bit.
    val: optional (x, y) validation data: loss and accuracy are recorded each epoch.
    patience: with `val`, stop after this many epochs without a lower validation loss and return
      the parameters of the best epoch.
    opt_state, start_epoch, history: to resume (from a checkpoint): the optimizer state, the
      number of epochs already done, and their history.
    on_epoch_end: called as `on_epoch_end(epoch, params, opt_state, record)` after each epoch
      (1-based epoch), e.g. to checkpoint or to draw a progress bar. The arrays it gets are
      donated to the next epoch: copy them (e.g. to numpy) to keep them.
    compute_dtype: optional GEMM dtype, e.g. jnp.bfloat16.
    track_train_accuracy: also record `train_acc`, the accuracy on the whole training set after
      each epoch (one more forward pass over it).
    dp: train with DP-SGD (see `privacy`); each epoch's record then holds `epsilon`, the
      privacy spent so far at `dp.delta`.
    mesh: data-parallel over this 1-D device mesh (`distributed.make_mesh`), see `make_epoch`;
      the returned parameters are replicated on its devices.

  Raises:
    NonFiniteError: a step produced a NaN/Inf loss or gradient; it carries `.epoch`, `.step`,
      `.batch_indices` (the rows of the offending batch) and `.params` (the last good ones).
  """
  params = checks.check_params(params)
  x, y = checks.check_pair(params, train, "train")
  val = None if val is None else checks.check_pair(params, val, "val")
  if patience is not None and val is None:
    raise InputError("patience: early stopping needs validation data (val=...)")
  checks.check_real(l2, "l2")
  params = jax.tree.map(jnp.array, params)  # our own buffers: the epoch donates them
  opt_state = optimizer.init(params) if opt_state is None else jax.tree.map(jnp.array, opt_state)
  program = build_epoch(optimizer, batch_size, l2, compute_dtype, dp, mesh)
  if mesh is not None:
    x, y, params, opt_state = distributed.replicate((x, y, params, opt_state), mesh)  # once
  history = list(history or [])
  best_loss = min((r.get("val_loss", float("inf")) for r in history), default=float("inf"))
  best_params, best_epoch, since_best, stopped = params, start_epoch, 0, False
  for e in range(start_epoch, epochs):
    start = time.perf_counter()
    key = epoch_key(seed, e)
    start_state = _copy_tree((params, opt_state))  # the epoch donates its input
    params, opt_state, stats = program.epoch(params, opt_state, x, y, key)
    finite = np.asarray(stats.finite)
    if not (finite.all() and bool(stats.state_finite)):
      step, rows, good_params, good_state = _first_bad_step(program.step, program.plan,
                                                            *start_state, x, y, key)
      err = NonFiniteError(
          f"non-finite loss or gradient at epoch {e + 1}, step {step + 1} of {finite.size}; "
          f"parameters kept from before that step")
      err.epoch, err.step, err.batch_indices = e + 1, step + 1, rows
      err.params, err.opt_state = good_params, good_state
      raise err
    record = {"epoch": e + 1, "train_loss": float(np.mean(np.asarray(stats.losses))),
              "epoch_seconds": time.perf_counter() - start}
    if val is not None:
      record["val_loss"], record["val_acc"] = evaluate_checked(params, *val, l2)
    if track_train_accuracy:
      record["train_acc"] = evaluate_checked(params, x, y, l2)[1]
    if dp is not None:
      steps = (e + 1) * steps_per_epoch(x.shape[0], batch_size)
      record["epsilon"] = privacy.dp_epsilon(dp, x.shape[0], batch_size, steps)
    history.append(record)
    if on_epoch_end is not None:
      on_epoch_end(e + 1, params, opt_state, record)
    if val is not None and patience is not None:
      if record["val_loss"] < best_loss:
        # A copy: the next epoch donates (invalidates) the buffers of `params`.
        best_params = _copy_tree(params)
        best_loss, best_epoch, since_best = record["val_loss"], e + 1, 0
      else:
        since_best += 1
        if since_best >= patience:
          stopped = True
          break
  if patience is None or val is None:
    best_params, best_epoch = params, (history[-1]["epoch"] if history else start_epoch)
  return FitResult(best_params, opt_state, history, best_epoch, stopped)
