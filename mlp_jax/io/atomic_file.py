"""All-or-nothing file writes: a crash or a kill leaves the old file or the new one, never half.

    with atomic_write("out/metrics.json", "w") as f:
      f.write(text)

The data goes to a temporary file in the target's folder, is flushed and fsync'ed, gets the mode a
newly created file would have, and is moved onto the target with `os.replace` (atomic on POSIX
and Windows); the folder is then fsync'ed so the rename survives a power loss. On any exception,
KeyboardInterrupt included, the temporary file is removed and the target is untouched; an
`OSError` of the file system becomes one `StorageError` naming the file and the reason. A process
killed mid-write can leave a stale `.NAME.*.tmp` beside the target; it is never read.
"""

import contextlib
import errno
import os
import pathlib
import tempfile
from typing import IO, Any, Iterator, Union

from mlp_jax.errors import StorageError, describe


@contextlib.contextmanager
def atomic_write(path: Union[str, os.PathLike], mode: str = "wb") -> Iterator[IO[Any]]:
  """Yields a file object (binary "wb" or text "w") that replaces `path` when the block ends.

  Raises:
    StorageError: the file system refused (no permission, disk full, name too long, a parent
      that is a file, ...); the message names `path` and the reason, and `path` is untouched.
  """
  path = pathlib.Path(path)
  with storage_errors(path):
    make_folder(path.parent)
    tmp = tempfile.NamedTemporaryFile(mode, dir=path.parent, prefix=f".{path.name}.",
                                      suffix=".tmp", delete=False)
    try:
      with tmp:
        yield tmp
        tmp.flush()
        os.fsync(tmp.fileno())
      os.chmod(tmp.name, _new_file_mode())
      os.replace(tmp.name, path)
    except BaseException:
      try:
        os.unlink(tmp.name)
      except OSError:
        pass
      raise
    _fsync_dir(path.parent)


def make_folder(path: Union[str, os.PathLike]) -> pathlib.Path:
  """`path` as a folder, created with its parents if missing; `StorageError` if it cannot be."""
  path = pathlib.Path(path)
  with storage_errors(path):
    if path.exists() and not path.is_dir():
      raise FileExistsError(errno.EEXIST, "exists and is not a folder", str(path))
    path.mkdir(parents=True, exist_ok=True)
  return path


@contextlib.contextmanager
def storage_errors(path: Union[str, os.PathLike]) -> Iterator[None]:
  """Turns an `OSError` in the block into one `StorageError` naming `path` and the reason."""
  try:
    yield
  except StorageError:
    raise
  except OSError as e:
    reason = e.strerror or describe(e)
    code = f" [{errno.errorcode[e.errno]}]" if e.errno in errno.errorcode else ""
    raise StorageError(f"cannot write {path}: {reason}{code}; it is left as it was") from e


def _fsync_dir(directory: pathlib.Path) -> None:
  """Makes a rename in `directory` durable (POSIX; a no-op elsewhere)."""
  if os.name != "posix":
    return
  fd = os.open(directory, os.O_RDONLY)
  try:
    os.fsync(fd)
  finally:
    os.close(fd)


def _new_file_mode() -> int:
  """0o666 less the umask, the mode `open` gives a new file (a temp file starts as 0o600)."""
  try:
    with open("/proc/self/status", encoding="ascii") as f:
      for line in f:
        if line.startswith("Umask:"):
          return 0o666 & ~int(line.split()[1], 8)
  except (OSError, ValueError):
    pass
  return 0o644
