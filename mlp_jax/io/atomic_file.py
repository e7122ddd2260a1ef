"""All-or-nothing file writes: a crash or a kill leaves the old file or the new one, never half.

    with atomic_write("out/metrics.json", "w") as f:
      f.write(text)

The data goes to a temporary file in the target's folder, is flushed and fsync'ed, gets the mode a
newly created file would have, and is moved onto the target with `os.replace` (atomic on POSIX
and Windows); the folder is then fsync'ed so the rename survives a power loss. On any exception,
KeyboardInterrupt included, the temporary file is removed and the target is untouched. A process
killed mid-write can leave a stale `.NAME.*.tmp` beside the target; it is never read.
"""

import contextlib
import os
import pathlib
import tempfile


@contextlib.contextmanager
def atomic_write(path, mode: str = "wb"):
  """Yields a file object (binary "wb" or text "w") that replaces `path` when the block ends."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
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
