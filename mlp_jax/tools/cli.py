"""The `mlp-jax` command: its parser and `main`; the commands are `train_command.cmd_train` and
`eval_commands.cmd_evaluate` / `cmd_check`.

Each subcommand parses its arguments and calls the library; errors the library raises on
purpose (bad files, bad data, bad arguments) end the command with a one-line message and exit
status 2, before anything is written to the output folder.

At module level it imports only the standard library and `mlp_jax.errors`: `main` sets up the
signal handling first (`interrupts`), so that a Ctrl-C while JAX and the rest import is seen.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

# Standard library only, like this module: the exception types and message helpers, and the
# signal handling that `main` sets up first.
from mlp_jax.errors import MLPJaxError, StorageError, printable
from mlp_jax.tools import interrupts

if TYPE_CHECKING:
  import argparse



EXIT_ERROR, EXIT_STORAGE, EXIT_PIPE = 2, 74, 141  # 74: EX_IOERR of sysexits.h; 141: 128 + SIGPIPE


def build_parser() -> argparse.ArgumentParser:
  import argparse

  class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Examples kept as written; each option's help ends with its default, when it has one."""

    def _get_help_string(self, action):
      text = action.help or ""
      default = action.default
      if not (default is None or default is False or default == argparse.SUPPRESS
              or "%(default)" in text):
        shown = " ".join(map(str, default)) if isinstance(default, list) else "%(default)s"
        text += f" (default: {shown})"
      return text

  import mlp_jax
  from mlp_jax.tools import eval_commands, train_command, train_options
  parser = argparse.ArgumentParser(
      prog="mlp-jax", description="Train and check MLPs with hand-derived gradients in JAX.")
  parser.add_argument("--version", action="version", version=f"mlp-jax {mlp_jax.__version__}")
  sub = parser.add_subparsers(dest="command", required=True)
  parser.train_parser = train_options.add_parser(sub, _HelpFormatter)  # --config sets defaults
  parser.train_parser.set_defaults(func=train_command.cmd_train)
  eval_commands.add_evaluate_parser(sub, _HelpFormatter)
  eval_commands.add_check_parser(sub, _HelpFormatter)
  return parser


def main(argv: list[str] | None = None) -> int:
  """Runs one command. Exit status: 0 done; 1 a gradient check failed; 2 the input was refused
  (arguments, data, checkpoint, resume, a --grads function that raised) or training produced
  NaN/Inf; 74 a file could not be written (permission, disk full, ...); 130 interrupted (Ctrl-C),
  143 terminated (SIGTERM); 141 the reader of stdout went away (as for SIGPIPE). Errors are one
  line on stderr."""
  with interrupts.handled() as signals:  # before JAX is imported: Ctrl-C is never lost
    try:
      return _main(argv, signals)
    except BrokenPipeError:  # `mlp-jax evaluate ... | head -1`: end quietly, as SIGPIPE would
      _silence_stdout()
      return EXIT_PIPE


def _main(argv: list[str] | None, signals) -> int:
  parser = build_parser()
  try:
    args = parser.parse_args(argv)
    if getattr(args, "config", None):  # the recorded settings become defaults, then reparse
      from mlp_jax.tools.train_options import replayed_config
      parser.train_parser.set_defaults(**replayed_config(args.config, parser.train_parser))
      args = parser.parse_args(argv)
    from mlp_jax.io.compilation_cache import enable_compilation_cache
    enable_compilation_cache()  # a second run compiles nothing (MLP_JAX_COMPILATION_CACHE=off)
    code = args.func(args, signals)
    sys.stdout.flush()  # a closed pipe shows here, inside the command, not at exit
    return code
  except BrokenPipeError:
    raise
  except StorageError as err:
    print(f"mlp-jax: error: {printable(err)}", file=sys.stderr)
    return EXIT_STORAGE
  except MLPJaxError as err:
    print(f"mlp-jax: error: {printable(err)}", file=sys.stderr)
    return EXIT_ERROR
  except OSError as err:  # a fault of the OS not met on purpose
    print(f"mlp-jax: error: {printable(err)}", file=sys.stderr)
    return EXIT_STORAGE


def _silence_stdout() -> None:
  """Points stdout at the null device, so that the interpreter's last flush finds no closed
  pipe (which would print 'Exception ignored ... BrokenPipeError')."""
  try:
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, sys.stdout.fileno())
    os.close(null)
  except (OSError, ValueError):
    pass


if __name__ == "__main__":
  sys.exit(main())
