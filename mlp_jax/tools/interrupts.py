"""Ctrl-C and SIGTERM for the `mlp-jax` command: stop after the epoch, or at once, in one line.

    with interrupts.handled() as signals:     # first thing in main(), before JAX is imported
      ...                                     # a signal here stops the command at once
      with signals.graceful(describe):        # around training
        fit(..., should_stop=signals.stop.is_set)

The rules: outside `graceful`, SIGINT (Ctrl-C) or SIGTERM ends the command at once with one line
on stderr and exit status 128 + the signal's number (130, 143). Inside, the first one sets `stop`
(training ends after the current epoch, its checkpoint saved) and says so; a second ends the
command at once, printing `describe()`.

Why not Python's own handlers: CPython runs them in the main thread between bytecodes, so they
wait for a compiled epoch that runs for seconds inside XLA, and a KeyboardInterrupt raised while
JAX imports or inside a garbage-collector callback is lost or surfaces as a traceback. Here the
Python-level handler does nothing; `signal.set_wakeup_fd` has the C-level handler write each
signal's number to a socket, and a watcher thread acts on it at once. "At once" is `os._exit`,
the same as a `kill -9`: every file the command writes is replaced atomically (written beside it,
then renamed), so the last checkpoint stays whole. Standard library only, so that it can be set up
before anything heavy is imported.
"""

import contextlib
import os
import signal
import socket
import sys
import threading
from typing import Callable, Iterator, Optional

HANDLED = (signal.SIGINT, signal.SIGTERM)  # both exist on every platform Python runs on
WORDS = {signal.SIGINT: "interrupted", signal.SIGTERM: "terminated"}


def exit_status(signum: int) -> int:
  """The shell's status for a command ended by signal `signum`: 128 + its number."""
  return 128 + int(signum)


def word(signum: Optional[int]) -> str:
  """'interrupted' for SIGINT, 'terminated' for SIGTERM."""
  return WORDS.get(signum, "interrupted")


class Signals:
  """What the command received: `stop` is set by the first signal during training, and
  `signum` is that signal's number (None until then)."""

  def __init__(self):
    self.stop = threading.Event()
    self.signum: Optional[int] = None
    self._describe: Optional[Callable[[], str]] = None  # set while training: graceful first
    self._lock = threading.Lock()

  @contextlib.contextmanager
  def graceful(self, describe: Callable[[], str]) -> Iterator["Signals"]:
    """Within the block, the first signal sets `stop`; a second ends the command at once with
    the line `describe()` (called from the watcher thread: keep it to reading plain values)."""
    self._describe = describe
    try:
      yield self
    finally:
      self._describe = None

  def receive(self, signum: int) -> None:
    """Acts on one signal (from the watcher thread, or directly in tests)."""
    with self._lock:
      describe = self._describe
      if describe is not None and not self.stop.is_set():
        self.signum = signum
        self.stop.set()
        again = "Ctrl-C" if signum == signal.SIGINT else "SIGTERM"
        _say(f"mlp-jax: {word(signum)}: stopping after this epoch ({again} again to stop at "
             "once)")
        return
      line = describe() if describe is not None else (
          f"mlp-jax: {word(signum)}; files written before are intact")
      _say(line)
      os._exit(exit_status(signum))


def _say(line: str) -> None:
  """One line on stderr, written straight to the file descriptor: no Python buffer or lock that
  the main thread might hold."""
  prefix = "\n" if _stderr_is_terminal() else ""  # after a progress bar's partial line
  try:
    os.write(2, (prefix + line + "\n").encode("utf-8", "backslashreplace"))
  except OSError:
    pass


def _stderr_is_terminal() -> bool:
  try:
    return os.isatty(2)
  except OSError:
    return False


def _noop(signum, frame) -> None:
  """The Python-level handler: the watcher thread does the work (see the module docstring)."""


def _watch(sock: socket.socket, signals: Signals) -> None:
  while True:
    try:
      data = sock.recv(64)
    except OSError:
      return
    if not data:  # the other end was closed: the command is done
      return
    for signum in data:
      if signum in HANDLED:
        signals.receive(signum)


@contextlib.contextmanager
def handled() -> Iterator[Signals]:
  """Routes SIGINT and SIGTERM to a `Signals` for the duration of the block, then restores the
  process's previous handlers. Off the main thread (where Python cannot set handlers) it yields a
  `Signals` that nothing sets."""
  signals = Signals()
  if threading.current_thread() is not threading.main_thread():
    yield signals
    return
  reader, writer = socket.socketpair()
  writer.setblocking(False)
  watcher = threading.Thread(target=_watch, args=(reader, signals), name="mlp-jax-signals",
                             daemon=True)
  watcher.start()
  previous = {s: signal.getsignal(s) for s in HANDLED}
  previous_fd = signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
  for s in HANDLED:
    if previous[s] is not signal.SIG_IGN:  # ignored by the parent (nohup, `cmd &`): kept so
      signal.signal(s, _noop)
  try:
    yield signals
  finally:
    for s, handler in previous.items():
      signal.signal(s, handler if handler is not None else signal.SIG_DFL)
    signal.set_wakeup_fd(previous_fd)
    writer.close()  # the watcher reads the end of the stream and returns
    watcher.join(timeout=5)
    reader.close()
    sys.stderr.flush()
