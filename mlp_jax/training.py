"""Training on the analytic gradients: a compiled step, a compiled epoch, and `fit`.

    step  = make_train_step(optax.adam(1e-3), l2=1e-4)     # one minibatch, jitted, donating
    epoch = make_epoch(optax.adam(1e-3), batch_size=128)   # a whole shuffled epoch, one call
    result = fit(params, train, optimizer=optax.adam(1e-3), epochs=20, val=val)

Every gradient comes from `gradients._loss_and_grads`, (E7)-(E12); jax.grad is never called.

The epoch is one `jax.lax.scan` over minibatches of a permutation drawn inside the compiled call
from a PRNG key, with the data resident on the device, so a step costs no Python dispatch and no
host sync. When the batch size does not divide the number of examples, the permutation is padded
to whole batches and the padding rows are masked out: the last minibatch is the r = N mod B
remaining examples exactly (its loss and gradient are those of (E6) with m = r), no data is
dropped, and the same compiled step serves it. A non-finite loss or gradient is found after the
epoch (each step's loss and the final state are checked), and `fit` then replays the epoch from
its start to report the first bad step with the parameters from before it.
"""

import dataclasses
import functools
import time
from typing import Callable, Dict, List, NamedTuple, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mlp_jax import distributed, privacy, validation
from mlp_jax.errors import InputError, NonFiniteError
from mlp_jax.gradients import _loss_and_grads
from mlp_jax.loss import cross_entropy, l2_penalty, log_softmax
from mlp_jax.model import Params, forward, predict


OPTIMIZERS = ("sgd", "momentum", "adam")
SCHEDULES = ("constant", "cosine")


def make_optimizer(name: str = "adam", lr: float = 1e-3, *, schedule: str = "constant",
                   total_steps: Optional[int] = None) -> optax.GradientTransformation:
  """An optax optimizer by name: "sgd", "momentum" (Nesterov, 0.9) or "adam".

  schedule: "constant" keeps `lr`; "cosine" decays it from `lr` to 0 over `total_steps` steps
  (epochs x `steps_per_epoch`), so the run ends on a settled iterate rather than one taken at
  full step size. The step count lives in the optimizer state, so a resumed run continues the
  same schedule.
  """
  if name not in OPTIMIZERS:
    raise InputError(f"optimizer: expected one of {', '.join(OPTIMIZERS)}, got {name!r}")
  if schedule not in SCHEDULES:
    raise InputError(f"schedule: expected one of {', '.join(SCHEDULES)}, got {schedule!r}")
  try:
    lr = float(lr)
  except (TypeError, ValueError) as e:
    raise InputError(f"lr: expected a finite number > 0, got {lr!r}") from e
  if not (np.isfinite(lr) and lr > 0):
    raise InputError(f"lr: expected a finite number > 0, got {lr!r}")
  if schedule == "cosine":
    if total_steps is None or int(total_steps) < 1:
      raise InputError(f"total_steps: the cosine schedule needs a step count >= 1, "
                       f"got {total_steps!r}")
    lr = optax.cosine_decay_schedule(lr, int(total_steps))
  if name == "sgd":
    return optax.sgd(lr)
  if name == "momentum":
    return optax.sgd(lr, momentum=0.9, nesterov=True)
  return optax.adam(lr)


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
  """Optimizer steps in one epoch: ceil(N / B), the last batch short and masked (with DP: as
  many Poisson-sampled steps, one pass in expectation)."""
  return -(-int(num_examples) // int(batch_size))


def make_train_step(optimizer: optax.GradientTransformation, l2=0.0, *,
                    compute_dtype=None, mesh=None) -> Callable:
  """A jitted `step(params, opt_state, x, y) -> (params, opt_state, loss)`.

  The gradient is the analytic one, (E7)-(E12). The step compiles once per batch shape (lambda is
  closed over as a constant), and donates the buffers of `params` and `opt_state`: do not reuse
  the arrays passed in. Shapes and dtypes are checked when the step is traced.

  Args:
    optimizer: any optax GradientTransformation.
    l2: the penalty lambda of (E6).
    compute_dtype: optional GEMM dtype (e.g. jnp.bfloat16), see `loss_and_grads`.
    mesh: the batch's rows split over this device mesh and the results replicated on it; the
      compiled core of `distributed.make_data_parallel_step`, which places the inputs.
  """
  validation.check_l2(l2)
  jit_kwargs = {} if mesh is None else {"out_shardings": distributed.replicated(mesh)}

  @functools.partial(jax.jit, donate_argnums=(0, 1), **jit_kwargs)
  def step(params, opt_state, x, y):
    params, x, y, _ = validation.check_batch(params, x, y)
    if mesh is not None:
      x, y = distributed.shard_rows((x, y), mesh)
    loss, grads = _loss_and_grads(params, x, y, l2, compute_dtype)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  return step


def epoch_batches(key: jax.Array, num_examples: int, batch_size: int):
  """The shuffled minibatch indices and padding mask of one epoch.

  Returns:
    (indices, mask): int32 (num_batches, batch_size) and bool (num_batches, batch_size), with
    num_batches = ceil(num_examples / batch_size); the mask is False only on the padding that
    fills the last batch.
  """
  num_batches = steps_per_epoch(num_examples, batch_size)
  perm = jax.random.permutation(key, num_examples)
  pad = num_batches * batch_size - num_examples
  indices = jnp.concatenate([perm, perm[:pad]]) if pad else perm
  mask = jnp.arange(num_batches * batch_size) < num_examples
  return indices.reshape(num_batches, batch_size), mask.reshape(num_batches, batch_size)


def epoch_plan(key: jax.Array, num_examples: int, batch_size: int,
               dp: Optional[privacy.DPConfig] = None):
  """(indices, mask, step_keys) of the epoch drawn from `key`: the shuffled minibatches of
  `epoch_batches`, or with `dp` the Poisson-sampled ones of `privacy.poisson_batches`, and one
  PRNG key per step for the DP noise."""
  batch_key, noise_key = jax.random.split(key)
  if dp is None:
    indices, mask = epoch_batches(batch_key, num_examples, batch_size)
  else:
    indices, mask = privacy.poisson_batches(
        batch_key, num_examples, batch_size, steps_per_epoch(num_examples, batch_size))
  return indices, mask, jax.random.split(noise_key, indices.shape[0])


class EpochStats(NamedTuple):
  """What a compiled epoch returns beside the new state."""
  losses: jax.Array        # (num_batches,) loss of each step
  finite: jax.Array        # (num_batches,) bool: that step's loss is finite
  state_finite: jax.Array  # bool: every parameter and optimizer-state entry finite at the end


def _build_epoch(optimizer, batch_size, l2, compute_dtype, dp, mesh):
  """(epoch, step): the compiled epoch of `make_epoch`, and its step as a plain function
  `step(params, opt_state, x, y, idx, keep, step_key) -> (params, opt_state, loss, grads)`."""
  batch_size = validation.check_positive_int(batch_size, "batch_size")
  validation.check_l2(l2)
  dp = None if dp is None else privacy.check_dp_config(dp)
  jit_kwargs = {}
  if mesh is not None:
    distributed.check_divisible(batch_size, mesh)
    jit_kwargs["out_shardings"] = distributed.replicated(mesh)

  def step(params, opt_state, x, y, idx, keep, step_key):
    xb, yb, keep = x[idx], y[idx], keep.astype(params[0].w.dtype)
    if mesh is not None:
      xb, yb, keep = distributed.shard_rows((xb, yb, keep), mesh)
    if dp is None:
      loss, grads = _loss_and_grads(params, xb, yb, l2, compute_dtype, keep)
    else:
      loss, grads = privacy.noisy_clipped_grads(params, xb, yb, keep, step_key, l2, dp,
                                                batch_size, compute_dtype)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    if mesh is not None:
      params, opt_state = distributed.keep_replicated((params, opt_state), mesh)
    return params, opt_state, loss, grads

  def plan(key, num_examples):
    indices, mask, step_keys = epoch_plan(key, num_examples, batch_size, dp)
    if mesh is not None:
      indices, mask = distributed.pad_batches(indices, mask, mesh)
    return indices, mask, step_keys

  @functools.partial(jax.jit, donate_argnums=(0, 1), **jit_kwargs)
  def epoch(params, opt_state, x, y, key):
    def body(carry, batch):
      params, opt_state, loss, _ = step(*carry, x, y, *batch)
      return (params, opt_state), loss

    (params, opt_state), losses = jax.lax.scan(body, (params, opt_state), plan(key, x.shape[0]))
    return params, opt_state, EpochStats(losses, jnp.isfinite(losses),
                                         validation.all_finite((params, opt_state)))

  epoch = epoch if mesh is None else distributed.on_mesh(epoch, mesh)
  return epoch, step, plan


def make_epoch(optimizer: optax.GradientTransformation, batch_size: int, l2=0.0, *,
               compute_dtype=None, dp: Optional[privacy.DPConfig] = None,
               mesh=None) -> Callable:
  """A jitted `epoch(params, opt_state, x, y, key) -> (params, opt_state, EpochStats)`.

  One `lax.scan` over the minibatches of a permutation drawn from `key`. The short last batch
  is masked (see the module docstring), so one compilation serves any epoch of the same data
  shape. The scan checks nothing per step beyond its loss (a per-step guard over the parameters
  cost 10-25% at small batches); `EpochStats` says whether each loss and the final state are
  finite, and `fit` replays a failed epoch step by step to find the first bad step.

  With `dp`, the epoch is DP-SGD instead: ceil(N / B) steps on truncated Poisson-sampled batches
  of expected size B, each with the clipped, noised gradient of `privacy.noisy_clipped_grads`.

  With `mesh` (a 1-D `jax.sharding.Mesh` from `distributed.make_mesh`), data-parallel: the data,
  parameters and optimizer state are replicated on every device, each step's batch is sharded
  along "data" (`batch_size` must divide across the devices; DP batches are padded with masked
  rows to do so), and XLA all-reduces the gradient; the same batches and math as without it.
  """
  return _build_epoch(optimizer, batch_size, l2, compute_dtype, dp, mesh)[0]


def _first_bad_step(step, plan, params, opt_state, x, y, key):
  """Replays an epoch from its start, step by step, until a loss, gradient or update is not
  finite. Returns (step index, indices of its rows, params and opt_state from before it)."""
  indices, mask, step_keys = plan(key, x.shape[0])
  step = jax.jit(step)
  for i in range(indices.shape[0]):
    new_params, new_state, loss, grads = step(params, opt_state, x, y, indices[i], mask[i],
                                              step_keys[i])
    if not bool(jnp.isfinite(loss) & validation.all_finite((grads, new_params, new_state))):
      return i, np.asarray(indices[i])[np.asarray(mask[i])], params, opt_state
    params, opt_state = new_params, new_state
  return indices.shape[0] - 1, np.asarray(indices[-1])[np.asarray(mask[-1])], params, opt_state


@functools.partial(jax.jit, static_argnames="chunk")
def _sums(params, x, y, chunk=8192):
  """Summed cross-entropy and correct predictions over (x, y), in chunks of `chunk` rows."""
  n = x.shape[0]
  pad = -n % chunk
  xs = jnp.pad(x, ((0, pad), (0, 0))).reshape(-1, chunk, x.shape[1])
  ys = jnp.pad(y, (0, pad)).reshape(-1, chunk)
  keep = (jnp.arange(n + pad) < n).reshape(-1, chunk)

  def body(total, batch):
    xb, yb, kb = batch
    logits = forward(params, xb)
    ce = jnp.where(kb, cross_entropy(log_softmax(logits), yb), 0).sum()
    correct = (kb & (jnp.argmax(logits, axis=1) == yb)).sum(dtype=jnp.int32)
    return (total[0] + ce, total[1] + correct), None

  init = (jnp.zeros((), x.dtype), jnp.zeros((), jnp.int32))
  (ce, correct), _ = jax.lax.scan(body, init, (xs, ys, keep))
  return ce, correct


def evaluate(params: Params, x, y, l2=0.0) -> Tuple[float, float]:
  """(loss (E6), accuracy) on a whole dataset, evaluated in fixed-size chunks."""
  return _evaluate(*validation.check_batch(params, x, y, l2))


def _evaluate(params: Params, x: jax.Array, y: jax.Array, l2) -> Tuple[float, float]:
  """`evaluate` on arrays already checked (and on the device): no pass over x for checks."""
  ce, correct = _sums(params, x, y, chunk=min(8192, x.shape[0]))
  m = x.shape[0]
  return float(ce) / m + float(l2_penalty(params, l2, m)), int(correct) / m


_predict_jit = jax.jit(predict)  # one compiled program per shape, reused across calls


def confusion_matrix(params: Params, x, y, num_classes: Optional[int] = None) -> np.ndarray:
  """counts[true, predicted] over a dataset, int64 (K, K)."""
  params, x, y, _ = validation.check_batch(params, x, y)
  k = params[-1].w.shape[1] if num_classes is None else num_classes
  pred = np.asarray(_predict_jit(params, x))
  counts = np.zeros((k, k), np.int64)
  np.add.at(counts, (np.asarray(y), pred), 1)
  return counts


@dataclasses.dataclass
class FitResult:
  """What `fit` returns."""
  params: Params
  opt_state: optax.OptState
  history: List[Dict[str, float]]   # one dict per epoch: epoch, train_loss, val_loss, val_acc, ...
  best_epoch: int                   # the epoch whose parameters were returned (1-based)
  stopped_early: bool


# Fresh buffers for a whole pytree in one compiled call (one dispatch, not one per leaf).
_copy_tree = jax.jit(lambda tree: jax.tree.map(jnp.copy, tree))


def epoch_key(seed: int, epoch: int) -> jax.Array:
  """The shuffling key of an epoch (0-based): a pure function of (seed, epoch), so a resumed run
  draws the same permutations as an uninterrupted one."""
  return jax.random.fold_in(jax.random.PRNGKey(seed), epoch)


def _check_dataset(params, data, name):
  if not (isinstance(data, tuple) and len(data) == 2):
    raise InputError(f"{name}: expected a pair (x, y) or a Dataset, got {type(data).__name__}")
  x = validation.check_features(params, data[0], f"{name}.x")
  y = validation.check_labels(params, data[1], x.shape[0], f"{name}.y")
  return x, y


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
  params = validation.check_params(params)
  x, y = _check_dataset(params, tuple(train), "train")
  val = None if val is None else _check_dataset(params, tuple(val), "val")
  if patience is not None and val is None:
    raise InputError("patience: early stopping needs validation data (val=...)")
  validation.check_l2(l2)
  params = jax.tree.map(jnp.array, params)  # our own buffers: the epoch donates them
  opt_state = optimizer.init(params) if opt_state is None else jax.tree.map(jnp.array, opt_state)
  epoch_fn, step_fn, plan_fn = _build_epoch(optimizer, batch_size, l2, compute_dtype, dp, mesh)
  if mesh is not None:
    x, y, params, opt_state = distributed.replicate((x, y, params, opt_state), mesh)  # once
  history = list(history or [])
  best_loss = min((r.get("val_loss", float("inf")) for r in history), default=float("inf"))
  best_params, best_epoch, since_best, stopped = params, start_epoch, 0, False
  for e in range(start_epoch, epochs):
    start = time.perf_counter()
    key = epoch_key(seed, e)
    start_state = _copy_tree((params, opt_state))  # the epoch donates its input
    params, opt_state, stats = epoch_fn(params, opt_state, x, y, key)
    finite = np.asarray(stats.finite)
    if not (finite.all() and bool(stats.state_finite)):
      step, rows, good_params, good_state = _first_bad_step(step_fn, plan_fn, *start_state, x,
                                                            y, key)
      err = NonFiniteError(
          f"non-finite loss or gradient at epoch {e + 1}, step {step + 1} of {finite.size}; "
          f"parameters kept from before that step")
      err.epoch, err.step, err.batch_indices = e + 1, step + 1, rows
      err.params, err.opt_state = good_params, good_state
      raise err
    record = {"epoch": e + 1, "train_loss": float(np.mean(np.asarray(stats.losses))),
              "epoch_seconds": time.perf_counter() - start}
    if val is not None:
      record["val_loss"], record["val_acc"] = _evaluate(params, *val, l2)
    if track_train_accuracy:
      record["train_acc"] = _evaluate(params, x, y, l2)[1]
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
