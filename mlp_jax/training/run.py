"""A training run's state: everything a resume needs to continue exactly, and the resume rules.

    result = fit(params, train, optimizer=opt, epochs=10)            # a new run
    later = fit(params, train, optimizer=opt, epochs=20, resume=result.state)

`RunState` is what `fit` carries from epoch to epoch and hands to `on_epoch_end`; saved with
`save_run` and read back with `load_run` (a file of `pytree_file.save_pytree`), a resumed run
continues bit for bit as if it had never stopped: the same parameters, optimizer state,
early-stopping counters and privacy ledger. A resume that would change the run (another batch
size, lambda, seed, DP setting, ...) is refused with a `ResumeError` naming the setting, the
saved value and the asked one.
"""

import math
import os
import pathlib
from typing import Any, Callable, Dict, Mapping, NamedTuple, Optional, Tuple, Union

import optax

from mlp_jax.core.model import Params
from mlp_jax.errors import ResumeError, describe
from mlp_jax.io import checkpoint, pytree_file
from mlp_jax.training.privacy import Ledger, LedgerEntry


class Best(NamedTuple):
  """Early-stopping state: the epoch of the lowest validation loss so far and its parameters."""
  epoch: int = 0                 # 1-based; 0 before any validated epoch
  val_loss: float = math.inf
  params: Any = None             # that epoch's parameters; kept only when `patience` is set
  epochs_since: int = 0          # epochs trained since `epoch`


class RunState(NamedTuple):
  """Everything about a run that its next epoch depends on, and its record so far."""
  params: Any                    # the parameters after `epochs_done` epochs
  opt_state: Any
  epochs_done: int
  history: Tuple[dict, ...]      # one record per epoch: epoch, train_loss, val_loss, ...
  best: Best
  stopped_early: bool
  ledger: Ledger                 # every step's privacy mechanism (`privacy.LedgerEntry`)
  settings: Mapping[str, Any]    # what `fit` was called with that a resume must keep


def new_run(params: Params, opt_state: optax.OptState, settings: Mapping[str, Any]) -> RunState:
  """The state of a run before its first epoch."""
  return RunState(params, opt_state, 0, (), Best(), False, (), dict(settings))


def result_params(state: RunState) -> Any:
  """The parameters a run stands for: the best epoch's when early stopping kept them, else the
  latest."""
  return state.params if state.best.params is None else state.best.params


def check_unchanged(saved: Mapping[str, Any], asked: Mapping[str, Any], where: str,
                    spell: Callable[[str], str] = lambda key: key) -> None:
  """Raises `ResumeError` at the first setting of `asked` whose value differs from `saved`.

  `where` names the saved run in the message; `spell(key)` names a setting as the caller's user
  knows it (e.g. "--batch-size").
  """
  for key, value in asked.items():
    before = saved.get(key)
    if _normal(before) != _normal(value):
      raise ResumeError(f"{where} was trained with {spell(key)} {_show(before)}, this run asks "
                        f"for {_show(value)}; a resume must keep it (start a new run instead)")


def _normal(value):
  """Tuples as lists, as they come back from a JSON checkpoint."""
  if isinstance(value, (list, tuple)):
    return [_normal(v) for v in value]
  return value


def _show(value) -> str:
  if value is None:
    return "(none)"
  if isinstance(value, bool):
    return "on" if value else "off"
  if isinstance(value, (list, tuple)):
    return " ".join(_show(v) for v in value)
  return f"{value:g}" if isinstance(value, float) else str(value)


def check_more_epochs(state: RunState, epochs: int, where: str) -> Optional[str]:
  """None when the run has epochs left to train up to `epochs` in all; else the line that says
  why it trains nothing (finished or stopped early). Fewer epochs than done is a `ResumeError`."""
  if state.stopped_early:
    return (f"{where} stopped early at epoch {state.epochs_done} (best epoch "
            f"{state.best.epoch}); nothing to train")
  if epochs < state.epochs_done:
    raise ResumeError(f"{where} has already trained {state.epochs_done} epochs, more than the "
                      f"{epochs} asked")
  if epochs == state.epochs_done:
    return f"{where} finished: {state.epochs_done} of {epochs} epochs done; nothing to train"
  return None


# ---------------------------------------------------------------------------- a run's file


class SavedRun(NamedTuple):
  """What `load_run` returns."""
  state: RunState   # opt_state as a list of leaves: `fit(resume=...)` restores its structure
  config: dict      # the caller's configuration (e.g. the command line of `mlp-jax train`)
  arrays: dict      # the caller's extra arrays, {name: array} (e.g. the input scaler)


def save_run(path: Union[str, os.PathLike], state: RunState, *, config: Optional[dict] = None,
             arrays: Optional[Dict[str, Any]] = None) -> pathlib.Path:
  """Writes a whole `RunState` (parameters, optimizer state, best epoch's parameters, history,
  early-stopping state, privacy ledger, settings), with a caller's `config` dict and named
  `arrays`, to `path` atomically (`pytree_file.save_pytree`). `load_run` reads it back and
  `fit(resume=...)` continues it."""
  run = {"epochs_done": int(state.epochs_done), "history": [dict(r) for r in state.history],
         "best": {"epoch": int(state.best.epoch), "val_loss": float(state.best.val_loss),
                  "epochs_since": int(state.best.epochs_since),
                  "has_params": state.best.params is not None},
         "stopped_early": bool(state.stopped_early),
         "ledger": [list(e) for e in state.ledger], "settings": dict(state.settings)}
  tree = {"params": state.params, "opt_state": state.opt_state,
          "best_params": state.best.params, "arrays": dict(arrays or {})}
  return pytree_file.save_pytree(path, tree, {"kind": "run", "run": run,
                                             "config": pytree_file.json_dict("config", config)})


def load_run(path: Union[str, os.PathLike], *, params_template: Any = None) -> SavedRun:
  """Reads and verifies a file of `save_run`. Parameters come back as for
  `checkpoint.load_checkpoint`; the optimizer state as a list of leaves, put in the optimizer's
  structure by `fit`.

  Raises:
    CheckpointError: as `load_checkpoint`, or the file is not a run, or its record disagrees
      with itself (epochs done, history and ledger).
  """
  path = pathlib.Path(path)
  leaves, meta = pytree_file.load_pytree(path)
  if meta.get("kind") != "run":
    raise pytree_file.file_error(path, "holds no training run (it was not written by save_run "
                                "or mlp-jax train)")
  try:
    run, best = meta["run"], meta["run"]["best"]
    ledger = tuple(LedgerEntry(*e) for e in run["ledger"])
    params = checkpoint.named_params(path, pytree_file.subtree(leaves, "params"),
                                     params_template)
    best_params = (checkpoint.named_params(path, pytree_file.subtree(leaves, "best_params"),
                                           params_template) if best["has_params"] else None)
    state = RunState(params, list(pytree_file.subtree(leaves, "opt_state").values()),
                     int(run["epochs_done"]), tuple(dict(r) for r in run["history"]),
                     Best(int(best["epoch"]), float(best["val_loss"]), best_params,
                          int(best["epochs_since"])),
                     bool(run["stopped_early"]), ledger, dict(run["settings"]))
    config = dict(meta["config"])
  except (KeyError, TypeError, ValueError) as e:
    raise pytree_file.file_error(path, f"bad run metadata ({describe(e)})") from e
  steps = sum(e.steps for e in ledger)
  if len(state.history) != state.epochs_done or (state.epochs_done > 0) != (steps > 0):
    raise pytree_file.file_error(path, f"inconsistent run: {state.epochs_done} epochs done, "
                                f"{len(state.history)} in the history, {steps} steps in the "
                                "ledger")
  arrays = {name[2:-2]: a
            for name, a in pytree_file.subtree(leaves, "arrays").items()}  # "['mean']" -> mean
  return SavedRun(state, config, arrays)
