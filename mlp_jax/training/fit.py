"""`fit`: a training run as a plain loop of compiled epochs, resumable exactly.

    result = fit(params, (x, y), optimizer=optax.adam(1e-3), epochs=20, val=(xv, yv))
    more = fit(params, (x, y), optimizer=optax.adam(1e-3), epochs=30, val=(xv, yv),
               resume=result.state)       # epochs 21..30, as if never stopped

Each epoch is one compiled call (`epoch.epoch_program`); around it, small steps: check the epoch
was finite (else replay it to name the first bad step), record the epoch, update early stopping
and the privacy ledger, hand the `RunState` to the caller, and stop when asked.
"""

import dataclasses
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh
from jax.typing import ArrayLike, DTypeLike

from mlp_jax.core import eager, validation
from mlp_jax.core.model import Params
from mlp_jax.core.network import DEFAULT_OUTPUT, SOURCE, check_network
from mlp_jax.errors import InputError, InputTypeError, NonFiniteError, ResumeError
from mlp_jax.io.pytree_file import match_template
from mlp_jax.training import accounting, calibration, distributed, privacy
from mlp_jax.training.epoch import EpochProgram, epoch_key, epoch_program
from mlp_jax.training.evaluation import evaluate_checked, score_name
from mlp_jax.training.optimizers import OptimizerLike, as_optimizer, steps_per_epoch
from mlp_jax.training.run import (Best, RunState, check_more_epochs, check_unchanged, new_run,
                                  result_params)
from mlp_jax.training.settings import FitSettings, check_settings

# Fresh buffers for a whole pytree in one compiled call (one dispatch, not one per leaf).
_copy_tree = jax.jit(lambda tree: jax.tree.map(jnp.copy, tree))

def _first_bad_step(step, plan, params, opt_state, x, y, key, sample_weight=None):
  """Replays an epoch from its start, step by step, until a loss, gradient or update is not
  finite. Returns (step index, indices of its rows, params and opt_state from before it)."""
  indices, mask, step_keys = plan(key, x.shape[0])
  step = jax.jit(step)
  for i in range(indices.shape[0]):
    new_params, new_state, loss, grads = step(params, opt_state, x, y, indices[i], mask[i],
                                              step_keys[i], sample_weight)
    if not bool(jnp.isfinite(loss) & eager.all_finite((grads, new_params, new_state))):
      return i, np.asarray(indices[i])[np.asarray(mask[i])], params, opt_state
    params, opt_state = new_params, new_state
  return indices.shape[0] - 1, np.asarray(indices[-1])[np.asarray(mask[-1])], params, opt_state


@dataclasses.dataclass
class FitResult:
  """What `fit` returns."""
  params: Params                    # the best epoch's with `patience`, else the last epoch's
  opt_state: optax.OptState
  # One dict per epoch: epoch, train_loss, val_loss, val_acc, ... train_loss (the mean over the
  # epoch's steps) and val_loss are the objective (E6) at the run's l2, penalty included:
  # val_loss is `evaluate(params, *val, l2)[0]`, not the bare cross-entropy of `l2=0`.
  history: List[Dict[str, float]]
  best_epoch: int                   # the epoch whose parameters were returned (1-based)
  stopped_early: bool
  state: Optional[RunState] = None  # the whole run, to save (`run.save_run`) or resume
  interrupted: bool = False         # `should_stop` ended the run before `epochs`


def fit(params: Params, train: Tuple[ArrayLike, ArrayLike], *,
        optimizer: OptimizerLike, epochs: int, batch_size: int = 128,
        l2: ArrayLike = 0.0, seed: int = 0, val: Optional[Tuple[ArrayLike, ArrayLike]] = None,
        patience: Optional[int] = None, resume: Optional[RunState] = None,
        on_epoch_end: Optional[Callable[[RunState], None]] = None,
        should_stop: Optional[Callable[[], bool]] = None,
        compute_dtype: Optional[DTypeLike] = None, dp: Optional[privacy.DPConfig] = None,
        mesh: Optional[Mesh] = None, track_train_accuracy: bool = False,
        shuffle: bool = True, activation: Any = "relu", output: str = DEFAULT_OUTPUT,
        settings: Optional[FitSettings] = None) -> FitResult:
  """Trains with the compiled epoch: shuffling, validation each epoch, optional early stopping.

  Args:
    params: initial parameters (tuple of `Dense`); not modified. Ignored with `resume`.
    train: (x, y) training data, (N, n) floating and (N,) integer labels (or, for another
      `output`, its targets (N, K)).
    optimizer: an optax GradientTransformation, or a name "sgd", "momentum" or "adam" meaning
      `make_optimizer(name)`, its defaults: a constant learning rate of 1e-3 (for another rate
      or the cosine schedule, pass `make_optimizer(name, lr, ...)`).
    epochs: total number of epochs, >= 1 (with `resume`, counting those already done).
    batch_size: minibatch size in 1..N; the last short batch is kept (masked), see `make_epoch`.
    l2: the penalty lambda of (E6); the recorded `train_loss` and `val_loss` are (E6) at this
      lambda, penalty included (`evaluate(params, *val, l2)`; `l2=0` there is the bare mean
      cross-entropy).
    seed: shuffling seed in 0..2**32-1; epoch e uses `epoch_key(seed, e)`. Same seed, same
      machine: the same parameters bit for bit.
    val: optional (x, y) validation data: loss (E6) at `l2` and accuracy (`val_acc`; `val_r2`
      for a regression output, see `evaluation.score_name`) are recorded each epoch.
    patience: with `val`, stop after this many epochs (>= 1) without a lower validation loss
      and return the parameters of the best epoch.
    resume: a `RunState` (`result.state`, or `run.load_run`) to continue from. Every
      setting above but `epochs` must be the saved run's, else `ResumeError`; a run that is
      finished or stopped early trains nothing. The continuation is bit-identical to a run that
      never stopped (same machine, same optimizer).
    on_epoch_end: called as `on_epoch_end(state)` with the `RunState` after each epoch, e.g. to
      checkpoint it or draw progress. Its arrays are donated to the next epoch: copy them (e.g.
      to numpy) to keep them.
    should_stop: called after each epoch (after `on_epoch_end`); True ends the run there, with
      `interrupted` set in the result. E.g. a flag set by a SIGINT handler.
    compute_dtype: optional GEMM dtype, e.g. jnp.bfloat16.
    dp: train with DP-SGD (see `privacy`); each epoch's record then holds `epsilon`, the privacy
      spent by the whole run so far at `dp.delta`, from its ledger.
    mesh: data-parallel over this 1-D device mesh (`distributed.make_mesh`), see `make_epoch`;
      the returned parameters are replicated on its devices.
    track_train_accuracy: also record `train_acc`, the accuracy on the whole training set after
      each epoch (one more forward pass over it).
    shuffle: False takes the rows in order every epoch (not with `dp`).
    activation, output: the network trained (as for `loss_and_grads`): the source's ReLU and
      softmax by default. Recorded in the run, so a resume keeps it.
    settings: the settings above (batch_size, l2, seed, patience, compute_dtype, dp, shuffle,
      track_train_accuracy, activation, output) as one `FitSettings` value, instead of one by
      one (not both).

  Raises:
    NonFiniteError: a step produced a NaN/Inf loss or gradient; it carries `.epoch`, `.step`,
      `.batch_indices` (the rows of the offending batch) and `.params` (the last good ones).
    ResumeError: `resume` was trained with other settings, or with more epochs than `epochs`.
  """
  optimizer = as_optimizer(optimizer)
  settings = _one_value(settings, FitSettings(
      batch_size=batch_size, l2=l2, seed=seed, patience=patience, compute_dtype=compute_dtype,
      dp=dp, shuffle=shuffle, track_train_accuracy=track_train_accuracy, activation=activation,
      output=output))
  params = validation.check_params(params if resume is None else resume.params)
  net = check_network(settings.network, len(params))
  x, y = validation.check_pair(params, train, "train", net)
  val = None if val is None else validation.check_pair(params, val, "val", net)
  validation.check_int(epochs, "epochs")
  num_val = None if val is None else val[0].shape[0]
  settings = check_settings(settings, x.shape[0], num_val)  # the one check of the settings
  settings = dataclasses.replace(settings, dp=calibration.planned_dp(  # a target epsilon's noise
      settings.dp, x.shape[0], settings.batch_size, epochs, resume))
  optimizer = privacy.dp_optimizer(optimizer, settings.dp)  # adaptive clipping: C in its state
  record = settings.record(x.shape[0], num_val, 1 if mesh is None else mesh.size)
  if resume is None:
    # Own copies of both (an optimizer state may alias the parameters): the epoch donates them.
    state = new_run(*_copy_tree((params, optimizer.init(params))), record)
  else:
    # A run of the source's network records none (its record keeps the bytes it always had).
    network = {"network": SOURCE.record()}
    check_unchanged(network | dict(resume.settings), network | record, "the resumed run")
    opt_state = resume.opt_state
    if isinstance(opt_state, list):  # leaves, as `load_run` returns them
      opt_state = match_template(opt_state, jax.eval_shape(optimizer.init, params),
                                 "the resumed run's optimizer state", ResumeError)
    state = resume._replace(params=_copy_tree(resume.params), opt_state=_copy_tree(opt_state))
    if check_more_epochs(state, epochs, "the resumed run") is not None:
      return _result(state, interrupted=False)
  program = epoch_program(optimizer, settings, mesh)
  if mesh is not None:
    x, y, val, params, opt_state, best = distributed.replicate(
        (x, y, val, state.params, state.opt_state, state.best.params), mesh)  # once
    state = state._replace(params=params, opt_state=opt_state,
                           best=state.best._replace(params=best))
  stop_accounting = _prefetch_epsilon(state, settings, x.shape[0], epochs)
  try:
    while state.epochs_done < epochs and not state.stopped_early:
      state = train_epoch(program, state, x, y, settings.seed)[0]
      state = _record_epoch(state, x, y, val, settings)
      if on_epoch_end is not None:
        on_epoch_end(state)
      if should_stop is not None and should_stop() and state.epochs_done < epochs:
        return _result(state, interrupted=not state.stopped_early)
  finally:
    stop_accounting()
  return _result(state, interrupted=False)


def _epoch_entry(settings: FitSettings, num_examples: int) -> privacy.LedgerEntry:
  """The privacy ledger's entry of one epoch (its steps, and the mechanism with DP)."""
  return privacy.ledger_entry(steps_per_epoch(num_examples, settings.batch_size), settings.dp,
                              num_examples, settings.batch_size)


def _prefetch_epsilon(state: RunState, settings: FitSettings, num_examples: int,
                      epochs: int) -> Callable[[], None]:
  """With DP, starts the accountant on the ledgers the coming epochs will have, so that each
  epoch's epsilon is ready when the epoch ends (`accounting.prefetch`); returns its stop."""
  if settings.dp is None:
    return lambda: None
  entry, ledger, ledgers = _epoch_entry(settings, num_examples), tuple(state.ledger), []
  for _ in range(epochs - state.epochs_done):
    ledger = privacy.add_to_ledger(ledger, entry)
    ledgers.append(ledger)
  return accounting.prefetch(ledgers, settings.dp.delta)


def _one_value(settings: Optional[FitSettings], loose: FitSettings) -> FitSettings:
  """`settings` when given (then every loose argument must be left at its default), else the
  loose arguments as one value."""
  if settings is None:
    return loose
  if not isinstance(settings, FitSettings):
    raise InputTypeError(f"settings: expected a FitSettings, got {type(settings).__name__}")
  default = FitSettings()
  given = [f.name for f in dataclasses.fields(FitSettings)
           if getattr(loose, f.name) is not getattr(default, f.name)
           and bool(np.any(getattr(loose, f.name) != getattr(default, f.name)))]
  if given:
    raise InputError(f"settings: given together with {', '.join(given)}; pass each setting "
                     "once (in settings, or as an argument)")
  return settings


def train_epoch(program: EpochProgram, state: RunState, x, y, seed: int,
                sample_weight=None) -> Tuple[RunState, np.ndarray]:
  """One compiled epoch of `program` (epoch `state.epochs_done` + 1, drawn from `seed`): the
  run state after it, its record begun (`train_loss`, the mean of the steps' losses), and the
  losses of its steps (num_batches,). A non-finite loss or state is replayed to name its first
  bad step (`NonFiniteError`). Arrays of `state` are donated."""
  start = time.perf_counter()
  key = epoch_key(seed, state.epochs_done)
  before = _copy_tree((state.params, state.opt_state))  # the epoch donates its input
  params, opt_state, stats = program.epoch(state.params, state.opt_state, x, y, key,
                                           sample_weight)
  finite = np.asarray(stats.finite)
  if not (finite.all() and bool(stats.state_finite)):
    step, rows, good_params, good_state = _first_bad_step(program.step, program.plan, *before,
                                                          x, y, key, sample_weight)
    epoch = state.epochs_done + 1
    raise NonFiniteError(f"non-finite loss or gradient at epoch {epoch}, step {step + 1} of "
                         f"{finite.size}; parameters kept from before that step", epoch=epoch,
                         step=step + 1, batch_indices=rows, params=good_params,
                         opt_state=good_state)
  losses = np.asarray(stats.losses)
  record = {"epoch": state.epochs_done + 1, "train_loss": float(np.mean(losses)),
            "epoch_seconds": time.perf_counter() - start}
  return state._replace(params=params, opt_state=opt_state, epochs_done=state.epochs_done + 1,
                        history=tuple(state.history) + (record,)), losses


def _record_epoch(state: RunState, x, y, val, settings: FitSettings) -> RunState:
  """The epoch's record completed (validation, training accuracy, epsilon), the privacy ledger
  and the early-stopping state brought up to date."""
  record = dict(state.history[-1])
  net = settings.network
  score = score_name(net)
  if val is not None:
    record["val_loss"], record[f"val_{score}"] = evaluate_checked(state.params, *val,
                                                                  settings.l2, net)
  if settings.track_train_accuracy:
    record[f"train_{score}"] = evaluate_checked(state.params, x, y, settings.l2, net)[1]
  if settings.dp is not None and settings.dp.adaptive:  # the clip norm of the next step
    record["clip_norm"] = float(state.opt_state.clip_norm)
  ledger = privacy.add_to_ledger(state.ledger, _epoch_entry(settings, x.shape[0]))
  if settings.dp is not None:
    record["epsilon"] = accounting.ledger_epsilon(ledger, settings.dp.delta)
  state = state._replace(history=tuple(state.history[:-1]) + (record,), ledger=ledger)
  if val is None:
    return state
  best = state.best
  if record["val_loss"] < best.val_loss:
    # A copy: the next epoch donates (invalidates) the buffers of `params`.
    kept = None if settings.patience is None else _copy_tree(state.params)
    best = Best(state.epochs_done, record["val_loss"], kept, 0)
  else:
    best = best._replace(epochs_since=best.epochs_since + 1)
  stopped = settings.patience is not None and best.epochs_since >= settings.patience
  return state._replace(best=best, stopped_early=stopped)


def _result(state: RunState, interrupted: bool) -> FitResult:
  best_epoch = state.best.epoch if state.best.params is not None else state.epochs_done
  return FitResult(result_params(state), state.opt_state, [dict(r) for r in state.history],
                   best_epoch, state.stopped_early, state, interrupted)
