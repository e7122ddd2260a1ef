"""A training run's state: everything a resume needs to continue exactly, and the resume rules.

    result = fit(params, train, optimizer=opt, epochs=10)            # a new run
    later = fit(params, train, optimizer=opt, epochs=20, resume=result.state)

`RunState` is what `fit` carries from epoch to epoch and hands to `on_epoch_end`; saved with
`checkpoint.save_run` and read back with `load_run`, a resumed run continues bit for bit as if
it had never stopped: the same parameters, optimizer state, early-stopping counters and privacy
ledger. A resume that would change the run (another batch size, lambda, seed, DP setting, ...)
is refused with a `ResumeError` naming the setting, the saved value and the asked one.
"""

import math
from typing import Any, Callable, Mapping, NamedTuple, Optional, Sequence, Tuple

import jax
import numpy as np
import optax

from mlp_jax.core import checks
from mlp_jax.core.model import Params
from mlp_jax.errors import ResumeError
from mlp_jax.training.privacy import Ledger


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


def match_template(leaves: Sequence[Any], template: Any, what: str) -> Any:
  """`leaves` (a flat list) in `template`'s structure, after checking their number, shapes and
  dtypes against its leaves (arrays or `jax.ShapeDtypeStruct`s); else `ResumeError`."""
  expected = jax.tree.leaves(template)
  if len(leaves) != len(expected):
    raise ResumeError(f"{what} does not match: the file holds {len(leaves)} leaves, "
                      f"{len(expected)} expected")
  for i, (leaf, want) in enumerate(zip(leaves, expected)):
    if np.shape(leaf) != np.shape(want):
      raise ResumeError(f"{what} does not match: leaf {i} has shape {np.shape(leaf)} in the "
                        f"file, {np.shape(want)} expected")
    have, need = _dtype(leaf), _dtype(want)
    if have != need:
      raise ResumeError(f"{what} does not match: leaf {i} has dtype {have} in the file, {need} "
                        "expected")
  return jax.tree.unflatten(jax.tree.structure(template), list(leaves))


def _dtype(leaf):
  """A leaf's dtype; typed PRNG keys keep theirs (NumPy cannot name it)."""
  return leaf.dtype if hasattr(leaf, "dtype") else checks.dtype_of(leaf)


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
