"""The library's exception types.

Every error raised on purpose by mlp_jax derives from `MLPJaxError`, so a caller can catch
them all at once; each also derives from the built-in type a Python user would expect
(`ValueError`, `TypeError`, ...), so ordinary `except ValueError` code keeps working.
"""

import types
from typing import TYPE_CHECKING, Any, Optional

if TYPE_CHECKING:
  import numpy as np


class MLPJaxError(Exception):
  """Base class of every error mlp_jax raises on purpose."""


class InputError(MLPJaxError, ValueError):
  """An argument has the wrong shape, value range, or non-finite entries."""


class InputTypeError(MLPJaxError, TypeError):
  """An argument has the wrong type or dtype."""


class DataFileError(MLPJaxError, ValueError):
  """A data file is missing, unreadable, truncated, or not in a known format."""


class CheckpointError(MLPJaxError, ValueError):
  """A checkpoint is missing, corrupt, of another format version, or does not match."""


class NonFiniteError(MLPJaxError, FloatingPointError):
  """Training produced a NaN or Inf loss or gradient.

  `fit` sets where and what: `epoch` (1-based) and `step` (1-based, within that epoch) of the
  bad step, `batch_indices` (the training set's rows in that batch), and `params` and
  `opt_state`, the last good ones from before that step. None where not known.
  """

  def __init__(self, message: str, *, epoch: Optional[int] = None, step: Optional[int] = None,
               batch_indices: "Optional[np.ndarray]" = None, params: Any = None,
               opt_state: Any = None):
    super().__init__(message)
    self.epoch, self.step, self.batch_indices = epoch, step, batch_indices
    self.params, self.opt_state = params, opt_state

  def with_message(self, message: str) -> "NonFiniteError":
    """The same error (every field kept) told in other words, e.g. with where files went."""
    return NonFiniteError(message, epoch=self.epoch, step=self.step,
                          batch_indices=self.batch_indices, params=self.params,
                          opt_state=self.opt_state)


class MissingDependencyError(MLPJaxError, ImportError):
  """A feature needs an optional dependency that is not installed (the message says which extra
  installs it)."""


def optional_import(module: str, extra: str, feature: str) -> types.ModuleType:
  """`import module`, or `MissingDependencyError` saying `pip install 'mlp_jax[extra]'`."""
  import importlib
  try:
    return importlib.import_module(module)
  except ImportError as e:
    raise MissingDependencyError(f"{feature} needs {module.split('.')[0]}, which is not "
                                 f"installed: pip install 'mlp_jax[{extra}]'") from e


def require(module: str, extra: str, feature: str) -> None:
  """That `module` is installed, found without importing it (dp-accounting takes two seconds to
  import); else the `MissingDependencyError` of `optional_import`."""
  import importlib.util
  try:
    found = importlib.util.find_spec(module) is not None
  except (ImportError, ValueError):  # a parent missing, or a module blocked in sys.modules
    found = False
  if not found:
    raise MissingDependencyError(f"{feature} needs {module}, which is not installed: "
                                 f"pip install 'mlp_jax[{extra}]'")


class ResumeError(MLPJaxError, ValueError):
  """A resume asks for a setting other than the saved run's, or there is nothing to resume."""


class StorageError(MLPJaxError, OSError):
  """The file system refused a read or write (permission, disk full, name too long, not a
  regular file); nothing was half-written and earlier files are intact."""


def printable(text: object) -> str:
  """`str(text)` with control characters (newline, tab, escape, ...) written as Python escapes
  (`\\n`, `\\t`, `\\x1b`): a message or a path with such characters in it stays one line on a
  terminal and in a log. Letters of every script are kept as they are."""
  text = str(text)
  if text.isprintable():
    return text
  return "".join(c if c.isprintable() or c == " " else repr(c)[1:-1] for c in text)


def one_line(text: object, limit: int = 200) -> str:
  """`text` with whitespace runs collapsed to single spaces, cut to `limit` characters."""
  text = " ".join(str(text).split())
  return text if len(text) <= limit else text[:limit - 3] + "..."


def describe(exc: BaseException) -> str:
  """`Type: message` of an underlying exception, on one line: the cause quoted in an error."""
  message = one_line(exc)
  return f"{type(exc).__name__}: {message}" if message else type(exc).__name__
