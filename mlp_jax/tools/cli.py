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

EXAMPLES_TRAIN = """examples:
  mlp-jax train                       # 256-256-10 on the bundled USPS digits (about 15 s)
  mlp-jax train --augment --shifts 8 --epochs 60
  mlp-jax train --dataset digits --epochs 300
  mlp-jax train --data zip.train.gz --out runs/esl    # USPS from the ESL text files
  mlp-jax train --hidden 512 128 --out runs/deep      # ... then, after Ctrl-C: add --resume
  mlp-jax train --config runs/deep/config.json --seed 1   # the same settings, another seed
  mlp-jax train --devices all --batch-size 256      # data-parallel over every local device
  mlp-jax train --devices all --coordinator host0:1234 --num-processes 2 --process-id 0
"""
EXAMPLES_EVALUATE = """examples:
  mlp-jax evaluate runs/deep/checkpoint.npz
  mlp-jax evaluate runs/esl/checkpoint.npz --data zip.train.gz
"""
EXAMPLES_CHECK = """examples:
  mlp-jax check                                  # the 256-256-10 network, float64
  mlp-jax check --hidden 512 128 --m 13 --l2 0.5 --dtype float32
  mlp-jax check --grads my_backprop.py:grads     # diagnose a hand-written gradient
"""


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
  from mlp_jax.io import data  # the choices below are the library's own lists
  from mlp_jax.tools.eval_commands import cmd_check, cmd_evaluate
  from mlp_jax.tools.train_command import cmd_train
  from mlp_jax.training import optimizers
  parser = argparse.ArgumentParser(
      prog="mlp-jax", description="Train and check MLPs with hand-derived gradients in JAX.")
  parser.add_argument("--version", action="version", version=f"mlp-jax {mlp_jax.__version__}")
  sub = parser.add_subparsers(dest="command", required=True)
  fmt = _HelpFormatter

  t = sub.add_parser("train", help="train a network and evaluate it on the test set",
                     epilog=EXAMPLES_TRAIN, formatter_class=fmt)
  parser.train_parser = t  # for --config, which sets its defaults
  t.add_argument("--config", metavar="RUN.json",
                 help="replay the settings a run recorded (its config.json or metrics.json); "
                      "options given here override them")
  t.add_argument("--dataset", choices=data.DATASETS, default="usps",
                 help="usps: the 16x16 USPS digits bundled with the package, or the file of "
                      "--data; digits: scikit-learn's 8x8 digits; synthetic: Gaussian clusters")
  t.add_argument("--data", help="a USPS file instead of the bundled copy: HDF5 (usps.h5) or "
                                "ESL text (zip.train[.gz])")
  t.add_argument("--hidden", type=int, nargs="+", default=[256], help="hidden widths")
  t.add_argument("--l2", type=float, default=0.1, help="penalty lambda of (E6)")
  t.add_argument("--optimizer", choices=optimizers.OPTIMIZERS, default="momentum",
                 help="momentum: Nesterov, 0.9")
  t.add_argument("--lr", type=float, default=0.1, help="learning rate")
  t.add_argument("--schedule", choices=optimizers.SCHEDULES, default="cosine",
                 help="learning rate: constant, or cosine decay from --lr to 0 over --epochs")
  t.add_argument("--batch-size", type=int, default=128, help="minibatch size")
  t.add_argument("--epochs", type=int, default=200, help="epochs in all")
  t.add_argument("--seed", type=int, default=0,
                 help="initialisation and shuffling (0..2**32-1)")
  t.add_argument("--split-seed", type=int, default=0,
                 help="which rows are held out: the test part of --dataset digits and "
                      "synthetic, the --val-fraction part, the synthetic data itself; "
                      "independent of --seed, so that seeds compare on the same rows")
  t.add_argument("--val-fraction", type=float, default=0.0,
                 help="fraction of the training set held out for validation")
  t.add_argument("--patience", type=int, help="early stopping after N epochs without a "
                                              "lower validation loss")
  t.add_argument("--augment", action="store_true",
                 help="add copies of the training images shifted by one pixel (x5 data; x9 "
                      "with --shifts 8)")
  t.add_argument("--shifts", type=int, choices=[4, 8],
                 help="with --augment: 4 shifts (up/down/left/right, x5 data) or 8 (also the "
                      "diagonals, x9); 4 by default")
  t.add_argument("--scaling", choices=data.SCALINGS, default="global",
                 help="input scaling fitted on the training part: one mean/std for all pixels "
                      "(global), per feature, or none")
  t.add_argument("--num-samples", type=int, help="synthetic dataset size; 2000 by default")
  t.add_argument("--dp", action="store_true",
                 help="DP-SGD: Poisson-sampled batches, per-example clipping, Gaussian noise; "
                      "reports epsilon each epoch")
  t.add_argument("--clip-norm", type=float, help="with --dp: clip norm C; 1.0 by default")
  t.add_argument("--noise-multiplier", type=float,
                 help="with --dp: noise sigma; 1.1 by default")
  t.add_argument("--delta", type=float, help="with --dp: delta; 1e-5 by default")
  t.add_argument("--out", help="output folder, which must be new or empty (default: a new "
                               "runs/DATASET-DATE-TIME)")
  t.add_argument("--resume", action="store_true",
                 help="continue the run in --out from its checkpoint, with the same settings "
                      "(more --epochs allowed with a constant schedule); a new run if it has "
                      "none yet")
  t.add_argument("--overwrite", action="store_true",
                 help="replace the run in --out (its outputs are removed first)")
  t.add_argument("--bf16", action="store_true",
                 help="mixed precision: bfloat16 GEMM inputs, float32 parameters, "
                      "accumulation and softmax")
  t.add_argument("--no-progress", action="store_true",
                 help="no progress bar (there is none when stderr is not a terminal)")
  t.add_argument("--devices", metavar="N|all",
                 help="data-parallel over N devices, or all (the batch size must divide "
                      "across them); several processes: all of theirs by default")
  t.add_argument("--coordinator", metavar="HOST:PORT",
                 help="multi-process: address of process 0 (or MLP_JAX_COORDINATOR); auto: "
                      "detected by JAX (Cloud TPU, SLURM, Open MPI)")
  t.add_argument("--num-processes", type=int,
                 help="multi-process: how many (or MLP_JAX_NUM_PROCESSES)")
  t.add_argument("--process-id", type=int,
                 help="multi-process: this one's index; 0 writes the outputs "
                      "(or MLP_JAX_PROCESS_ID)")
  t.add_argument("--init-timeout", type=float, default=300,
                 help="multi-process: seconds to wait for the coordinator and the others")
  t.set_defaults(func=cmd_train)

  e = sub.add_parser("evaluate", help="accuracy, per-class accuracy and confusion matrix",
                     epilog=EXAMPLES_EVALUATE, formatter_class=fmt)
  e.add_argument("checkpoint")
  e.add_argument("--dataset", choices=data.DATASETS,
                 help="defaults to the dataset the checkpoint was trained on")
  e.add_argument("--data", help="USPS file, as for train")
  e.set_defaults(func=cmd_evaluate)

  c = sub.add_parser("check", help="analytic gradients vs jax.grad vs finite differences; "
                                   "exit status 1 if a bar is missed",
                     epilog=EXAMPLES_CHECK, formatter_class=fmt)
  c.add_argument("--features", type=int, default=256, help="input width n")
  c.add_argument("--hidden", type=int, nargs="+", default=[256], help="hidden widths")
  c.add_argument("--classes", type=int, default=10, help="classes K")
  c.add_argument("--m", type=int, default=37, help="batch size (differs from the widths)")
  c.add_argument("--l2", type=float, default=0.1, help="penalty lambda of (E6)")
  c.add_argument("--dtype", choices=["float32", "float64"],
                 help="dtype of the check (default: float64; --grads is always float64)")
  c.add_argument("--seed", type=int, default=0, help="of the parameters and data")
  c.add_argument("--grads", metavar="MODULE:FUNCTION",
                 help="diagnose your own gradient function grad_fn(params, x, y, l2) -> tuple "
                      "of Dense (float64, several draws): which parameter is wrong, where, and "
                      "the likely mistake")
  c.set_defaults(func=cmd_check)
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
      from mlp_jax.tools.train_command import replayed_config
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
