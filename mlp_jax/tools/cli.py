"""The `mlp-jax` command: train, evaluate, check.

Each subcommand parses its arguments and calls the library; errors the library raises on
purpose (bad files, bad data, bad arguments) end the command with a one-line message and exit
status 2, before anything is written to the output folder.

At module level it imports only the standard library and `mlp_jax.errors`: `main` sets up the signal handling first
(`interrupts`), so that a Ctrl-C while JAX and the rest import is seen.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

# Standard library only, like this module: the exception types and message helpers, and the
# signal handling that `main` sets up first.
from mlp_jax.errors import (InputError, MLPJaxError, StorageError, describe, optional_import,
                            printable)
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


def write_atomic(path: str, text: str) -> None:
  """Writes text to path through a temporary file and a rename: all or nothing."""
  from mlp_jax.io.atomic_file import atomic_write
  with atomic_write(path, "w") as f:
    f.write(text)


def _history_csv(history) -> str:
  import csv
  import io
  keys = sorted({k for r in history for k in r}, key=lambda k: (k != "epoch", k))
  out = io.StringIO()
  writer = csv.DictWriter(out, fieldnames=keys)
  writer.writeheader()
  writer.writerows(history)
  return out.getvalue()


def _table(rows: list[list[str]]) -> str:
  from mlp_jax.tables import text_table
  return "\n".join(text_table(rows, rule=False))


# Defaults of the options that only some runs use: None in the parser, so that giving one where
# it has no effect is an error rather than silently ignored.
DEFAULTS = {"shifts": 4, "num_samples": 2000, "clip_norm": 1.0, "noise_multiplier": 1.1,
            "delta": 1e-5}
EXIT_ERROR, EXIT_STORAGE, EXIT_PIPE = 2, 74, 141  # 74: EX_IOERR of sysexits.h; 141: 128 + SIGPIPE


def train_config(args) -> dict:
  """The run's configuration from the command line, every value checked; raises `InputError`
  naming the option. Options a run does not use are None (and refused if given)."""
  from mlp_jax.tools import run_folder
  from mlp_jax.training.fit import MAX_SEED

  def need(ok, message):
    if not ok:
      raise InputError(message)

  uses = {"data": args.dataset == "usps", "num_samples": args.dataset == "synthetic",
          "shifts": args.augment, "clip_norm": args.dp, "noise_multiplier": args.dp,
          "delta": args.dp}
  needs = {"data": "--dataset usps", "num_samples": "--dataset synthetic",
           "shifts": "--augment", "clip_norm": "--dp", "noise_multiplier": "--dp",
           "delta": "--dp"}
  config = {k: v for k, v in vars(args).items() if k not in ("func", "command")}
  for key, used in uses.items():
    flag = run_folder.flag(key)
    need(used or config[key] is None, f"{flag} {config[key]}: only used with {needs[key]}")
    if used and config[key] is None:
      config[key] = DEFAULTS.get(key)
  need(args.epochs >= 1, f"--epochs: expected an int >= 1, got {args.epochs}")
  need(args.batch_size >= 1, f"--batch-size: expected an int >= 1, got {args.batch_size}")
  need(0 <= args.seed <= MAX_SEED, f"--seed: expected an int in 0..{MAX_SEED}, got {args.seed}")
  need(0 <= args.split_seed <= MAX_SEED,
       f"--split-seed: expected an int in 0..{MAX_SEED}, got {args.split_seed}")
  need(0 <= args.val_fraction < 1,
       f"--val-fraction: expected a fraction in [0, 1), got {args.val_fraction:g}")
  need(args.patience is None or args.patience >= 1,
       f"--patience: expected an int >= 1, got {args.patience}")
  need(args.patience is None or args.val_fraction > 0,
       "--patience: early stopping needs a validation set (--val-fraction > 0)")
  need(all(h >= 1 for h in args.hidden), f"--hidden: expected widths >= 1, got {args.hidden}")
  need(0 < args.lr < float("inf"), f"--lr: expected a finite value > 0, got {args.lr:g}")
  need(0 <= args.l2 < float("inf"), f"--l2: expected a finite value >= 0, got {args.l2:g}")
  need(config["num_samples"] is None or config["num_samples"] >= 10,
       f"--num-samples: expected an int >= 10, got {config['num_samples']}")
  if args.dp:
    optional_import("dp_accounting", "dp", "--dp")  # before a run starts, not after an epoch
    need(0 < config["clip_norm"] < float("inf"),
         f"--clip-norm: expected a finite value > 0, got {config['clip_norm']:g}")
    need(0 <= config["noise_multiplier"] < float("inf"),
         f"--noise-multiplier: expected a finite value >= 0, got {config['noise_multiplier']:g}")
    need(0 < config["delta"] < 1, f"--delta: expected a value in (0, 1), got {config['delta']:g}")
  return config


# What the losses a run records mean (metrics.json says it beside them).
LOSS_DEFINITION = ("train_loss (mean over the epoch's steps), val_loss and test_loss are the "
                   "objective (E6) at the run's --l2: mean cross-entropy + l2/(2m) * sum of "
                   "squared weights, as mj.evaluate(params, x, y, l2) gives; l2=0 there is the "
                   "cross-entropy alone")


# Keys of a recorded configuration that are not replayed: where and how the run was kept, and
# what was derived from the data.
NOT_REPLAYED = ("out", "resume", "overwrite", "config", "layer_sizes", "train_sha256", "devices")


def replayed_config(path, train_parser) -> dict:
  """The settings recorded in a run's config.json or metrics.json, as `train` defaults."""
  import json

  from mlp_jax.tools import run_folder
  try:
    with open(path, encoding="utf-8") as f:
      recorded = json.load(f)
  except (OSError, ValueError) as e:
    raise InputError(f"--config {path}: cannot read a JSON file ({e})") from e
  if isinstance(recorded, dict) and isinstance(recorded.get("config"), dict):
    recorded = recorded["config"]  # a metrics.json: its settings are under "config"
  if not isinstance(recorded, dict):
    raise InputError(f"--config {path}: expected a JSON object of settings")
  known = {a.dest for a in train_parser._actions}
  unknown = sorted(set(recorded) - known - set(NOT_REPLAYED))
  if unknown:
    raise InputError(f"--config {path}: unknown settings {', '.join(unknown)}")
  return {k: v for k, v in recorded.items() if k not in NOT_REPLAYED} | {
      "split_seed": run_folder.split_seed(recorded)}



def cmd_train(args, signals) -> int:
  import time

  import jax
  import mlp_jax as mj
  from mlp_jax.io import data
  from mlp_jax.tools.run_folder import RunFolder, default_out
  from mlp_jax.training import distributed

  config = train_config(args)
  mesh = _mesh(args)
  primary = distributed.is_primary()  # only process 0 writes files
  if args.resume and args.out is None:
    raise mj.InputError("--resume: give the run's folder with --out")
  out = default_out(args.dataset) if args.out is None else args.out
  folder = RunFolder.open(out, resume=args.resume, overwrite=args.overwrite, primary=primary)
  splits = data.prepare(args.dataset, config["data"], val_fraction=args.val_fraction,
                        seed=args.split_seed, augment=args.augment,
                        num_samples=config["num_samples"],
                        scaling=args.scaling, shifts=config["shifts"])
  num_train = splits.train.x.shape[0]
  if args.batch_size > num_train:
    raise mj.InputError(f"--batch-size: expected at most {num_train}, the training set's size, "
                        f"got {args.batch_size}")
  sizes = (splits.train.x.shape[1],) + tuple(args.hidden) + (splits.num_classes,)
  config.update(out=str(out), layer_sizes=list(sizes), devices=None if mesh is None else mesh.size,
                train_sha256=data.fingerprint(splits.train))
  done = folder.check_resume(config, args.epochs)
  if done is not None:
    print(printable(done))
    return 0
  if folder.saved is not None:
    print(f"resuming {printable(folder.checkpoint)} after epoch {folder.saved.state.epochs_done}")
  optimizer = mj.make_optimizer(args.optimizer, args.lr, schedule=args.schedule,
                                total_steps=args.epochs * mj.steps_per_epoch(num_train,
                                                                             args.batch_size))
  folder.start(config, {"scaler_mean": splits.scaler.mean, "scaler_scale": splits.scaler.scale})
  progress = _progress(args, folder, primary)
  resume_hint = f"continue with the same command and --resume --out {printable(out)}"

  def stopped_at_once() -> str:  # a second Ctrl-C or SIGTERM, in the middle of an epoch
    kept = (f"{printable(folder.checkpoint)} holds epoch {progress.saved_epochs}; {resume_hint}"
            if progress.saved_epochs else "no epoch had finished, so there is nothing to resume")
    return f"mlp-jax: {interrupts.word(signals.signum)} during epoch {progress.epochs + 1}; {kept}"

  start = time.perf_counter()
  try:
    with signals.graceful(stopped_at_once):
      result = mj.fit(
          mj.init_params(jax.random.PRNGKey(args.seed), sizes),
          (splits.train.x, splits.train.y), optimizer=optimizer, epochs=args.epochs,
          batch_size=args.batch_size, l2=args.l2, seed=args.seed,
          val=None if splits.val is None else (splits.val.x, splits.val.y),
          patience=args.patience, resume=None if folder.saved is None else folder.saved.state,
          on_epoch_end=progress, should_stop=signals.stop.is_set, track_train_accuracy=True,
          compute_dtype=jax.numpy.bfloat16 if args.bf16 else None, mesh=mesh,
          dp=mj.DPConfig(config["clip_norm"], config["noise_multiplier"], config["delta"])
          if args.dp else None)
  except mj.NonFiniteError as err:
    raise _non_finite(err, folder, primary) from err
  finally:
    progress.close()
  if result.interrupted:
    print(f"mlp-jax: {interrupts.word(signals.signum)} after epoch {result.state.epochs_done} "
          f"of {args.epochs}; {printable(folder.checkpoint)} holds it; {resume_hint}",
          file=sys.stderr)
    return interrupts.exit_status(signals.signum)
  if primary:
    _report(args, config, splits, result, time.perf_counter() - start, folder, mesh)
  return 0


def _mesh(args):
  """The device mesh of `--devices` and the multi-process options, or None."""
  from mlp_jax.training import distributed
  if (args.coordinator or args.num_processes is not None or args.process_id is not None
      or os.environ.get(distributed.ENV_COORDINATOR)):
    coordinator = None if args.coordinator == "auto" else args.coordinator  # auto: JAX detects
    distributed.initialize_distributed(coordinator, args.num_processes, args.process_id,
                                       timeout_s=args.init_timeout)
    return distributed.make_mesh(args.devices or "all")  # several processes: one mesh over all
  return None if args.devices is None else distributed.make_mesh(args.devices)


def _progress(args, folder, primary):
  """The `on_epoch_end` of a run: save the run state, then advance the progress bar. Counts the
  epochs done and saved (read by the signal watcher when a run is stopped at once)."""
  bar = None
  done = 0 if folder.saved is None else folder.saved.state.epochs_done
  if not args.no_progress and primary and sys.stderr.isatty():  # no \r frames in log files
    from tqdm import tqdm
    bar = tqdm(total=args.epochs, initial=done, unit="epoch", desc="train", file=sys.stderr)

  class Progress:
    epochs = saved_epochs = done

    def __call__(self, state):
      self.epochs = state.epochs_done
      folder.save(state)
      self.saved_epochs = state.epochs_done
      if bar is not None:
        record = state.history[-1]
        extra = {"eps": f"{record['epsilon']:.2f}"} if "epsilon" in record else {}
        bar.set_postfix(loss=f"{record['train_loss']:.4f}",
                        val_acc=f"{100 * record.get('val_acc', float('nan')):.2f}%", **extra)
        bar.update(1)

    def close(self):
      if bar is not None:
        bar.close()

  return Progress()


def _non_finite(err, folder, primary):
  """The error to show for a run that produced NaN/Inf: the offending batch is written beside
  the checkpoint of the last good epoch, which stays."""
  import json

  import mlp_jax as mj
  if primary:
    write_atomic(folder.path / "nonfinite_batch.json", json.dumps(
        {"epoch": err.epoch, "step": err.step, "batch_indices": err.batch_indices.tolist(),
         "message": str(err)}))
  kept = (f"; last good checkpoint kept at {folder.checkpoint}" if folder.checkpoint.exists()
          else "; no epoch had finished, so no checkpoint was written")
  shown = mj.NonFiniteError(f"{err} (offending batch in {folder.path}/nonfinite_batch.json{kept})")
  shown.epoch, shown.step, shown.batch_indices = err.epoch, err.step, err.batch_indices
  shown.params, shown.opt_state = err.params, err.opt_state
  return shown


def _report(args, config, splits, result, seconds, folder, mesh) -> None:
  """Test accuracy, metrics.json/.csv, plots and the summary table of a finished run."""
  import json

  import jax
  import mlp_jax as mj
  from mlp_jax.tools import plots
  from mlp_jax.training import privacy
  test_loss, test_acc = mj.evaluate(result.params, splits.test.x, splits.test.y, args.l2)
  counts = mj.confusion_matrix(result.params, splits.test.x, splits.test.y)
  history, out = result.history, folder.path
  epsilon = (privacy.ledger_epsilon(result.state.ledger, config["delta"]) if args.dp else None)
  metrics = {"loss_definition": LOSS_DEFINITION, "config": config, "history": history,
             "best_epoch": result.best_epoch,
             "stopped_early": result.stopped_early, "test_loss": test_loss,
             "test_accuracy": test_acc, "train_seconds": seconds, "epsilon": epsilon,
             "train_examples": int(splits.train.x.shape[0]),
             "test_examples": int(splits.test.x.shape[0]),
             "device": str(jax.devices()[0].device_kind), "confusion": counts.tolist(),
             "num_devices": 1 if mesh is None else mesh.size,
             "num_processes": jax.process_count()}
  write_atomic(out / "metrics.json", json.dumps(metrics, indent=1))
  write_atomic(out / "metrics.csv", _history_csv(history))
  try:
    plots.plot_curves(history, out / "curves.png")
    plots.plot_confusion(counts, out / "confusion.png")
  except mj.MissingDependencyError as e:
    print(f"mlp-jax: no plots: {printable(e)}", file=sys.stderr)
  last = history[-1]
  print(_table([
      ["dataset", f"{args.dataset} ({splits.train.x.shape[0]} train, "
                  f"{0 if splits.val is None else splits.val.x.shape[0]} val, "
                  f"{splits.test.x.shape[0]} test)"],
      ["network", "-".join(map(str, config["layer_sizes"])) + f", {args.optimizer} "
                  f"lr={args.lr:g}" + (" cosine" if args.schedule == "cosine" else "") + ", "
                  f"l2={args.l2:g}, batch={args.batch_size}"],
      ["epochs", f"{len(history)} (best {result.best_epoch}"
                 f"{', stopped early' if result.stopped_early else ''})"],
      ["train loss", f"{last['train_loss']:.4f}"],
      ["val accuracy", f"{100 * last['val_acc']:.2f}%" if "val_acc" in last else "-"],
      ["test accuracy", f"{100 * test_acc:.2f}%"],
  ] + ([["privacy", f"({epsilon:.2f}, {config['delta']:g})-DP over all {len(history)} epochs, "
                    f"C={config['clip_norm']:g}, sigma={config['noise_multiplier']:g}"]]
       if args.dp else []) + [
      ["train time", f"{sum(r['epoch_seconds'] for r in history):.1f} s in epochs, "
                     f"{seconds:.1f} s this session"],
      ["output", printable(out)],
  ]))


def cmd_evaluate(args, signals) -> int:
  import numpy as np
  import mlp_jax as mj
  from mlp_jax.io import checkpoint, data
  from mlp_jax.tools import run_folder
  from mlp_jax.training.run import result_params

  saved = checkpoint.load_run(args.checkpoint)
  cfg, params = saved.config, result_params(saved.state)
  if "scaler_mean" not in saved.arrays or "dataset" not in cfg:
    raise mj.CheckpointError(f"checkpoint {args.checkpoint}: holds no mlp-jax train run "
                             "(no dataset or scaler); evaluate it in Python with mj.evaluate")
  dataset = args.dataset or cfg["dataset"]
  path = args.data or cfg.get("data")
  splits, _ = data.load_splits(dataset, path, seed=run_folder.split_seed(cfg),
                               num_samples=cfg.get("num_samples") or DEFAULTS["num_samples"])
  scaler = data.Scaler(np.asarray(saved.arrays["scaler_mean"]),
                       np.asarray(saved.arrays["scaler_scale"]))
  x = data.apply_scaler(scaler, splits.test.x)  # the training run's scaler, nothing refitted
  checkpoint.check_compatible(saved.state, (x.shape[1],) + tuple(mj.layer_sizes(params)[1:]))
  y = splits.test.y
  counts = mj.confusion_matrix(params, x, y)
  acc = np.trace(counts) / counts.sum()
  per_class = np.diag(counts) / np.maximum(counts.sum(1), 1)
  print(f"{printable(args.checkpoint)}: {dataset} test set, {counts.sum()} examples")
  print(f"accuracy {100 * acc:.2f}%")
  print(_table([["class"] + [str(i) for i in range(len(per_class))],
                ["accuracy %"] + [f"{100 * a:.1f}" for a in per_class]]))
  print("confusion matrix (rows: true, columns: predicted)")
  print(_table([[""] + [str(i) for i in range(len(counts))]] +
               [[str(i)] + [str(c) for c in row] for i, row in enumerate(counts)]))
  return 0


def cmd_check(args, signals) -> int:
  import contextlib
  import jax
  import jax.numpy as jnp
  import mlp_jax as mj

  dtype = args.dtype or "float64"
  if args.grads is not None and dtype != "float64":
    raise mj.InputError(f"--dtype {dtype}: --grads is always diagnosed in float64 (its "
                        "parameters and data upcast), so that roundoff cannot hide a small "
                        "mistake; leave --dtype out")
  grad_fn = None if args.grads is None else load_function(args.grads)
  x64 = jax.enable_x64(True) if dtype == "float64" else contextlib.nullcontext()
  with x64:
    sizes = (args.features,) + tuple(args.hidden) + (args.classes,)
    params = mj.init_params(jax.random.PRNGKey(args.seed), sizes, jnp.dtype(dtype))
    key_x, key_y = jax.random.split(jax.random.PRNGKey(args.seed + 1))
    x = jax.random.uniform(key_x, (args.m, args.features), jnp.dtype(dtype))
    y = jax.random.randint(key_y, (args.m,), 0, args.classes)
    if grad_fn is None:
      report = mj.check_gradients(params, x, y, args.l2)
    else:
      from mlp_jax.tools.diagnosis import diagnose
      report = diagnose(grad_fn, params, x, y, args.l2)
  print(report)
  return 0 if report.passed else 1


def load_function(spec: str):
  """`module:function` or `path/to/file.py:function` -> the function, wrapped so that an
  exception it raises becomes one `InputError` naming it, the exception and the user's lines."""
  import functools
  import importlib
  import importlib.util
  module_name, _, attr = spec.rpartition(":")
  if not module_name or not attr:
    raise InputError(f"--grads: expected module:function or file.py:function, got "
                     f"{printable(repr(spec))}")
  try:
    if module_name.endswith(".py"):
      spec_ = importlib.util.spec_from_file_location("user_grads", module_name)
      if spec_ is None or spec_.loader is None:
        raise ImportError(f"cannot load {module_name}")
      module = importlib.util.module_from_spec(spec_)
      spec_.loader.exec_module(module)
    else:
      module = importlib.import_module(module_name)
  except (ImportError, OSError) as err:
    raise InputError(f"--grads: cannot import {printable(module_name)}: {printable(err)}") from err
  except Exception as err:  # noqa: BLE001 - the user's module raised while it was imported
    raise InputError(f"--grads: importing {printable(module_name)} raised "
                     f"{_user_exception(err)}") from err
  fn = getattr(module, attr, None)
  if not callable(fn):
    raise InputError(f"--grads: {printable(module_name)} has no function {printable(repr(attr))}")

  @functools.wraps(fn)
  def guarded(*args, **kwargs):
    try:
      return fn(*args, **kwargs)
    except Exception as err:  # noqa: BLE001 - whatever the user's code raised, reported as theirs
      raise InputError(f"--grads: your function {printable(spec)} raised "
                       f"{_user_exception(err)}") from err

  return guarded


def _shown_path(path: str) -> str:
  """`path` relative to the working folder when it lies under it, else as it is."""
  relative = os.path.relpath(path) if os.path.isabs(path) else path
  return path if relative.startswith("..") else relative


def _user_exception(err: BaseException) -> str:
  """`Type: message, at file.py:LINE in func (`source`)`, naming only the user's own frames
  (not this package's, the standard library's or an installed package's): where it was raised,
  then where that was called from."""
  import sysconfig
  import traceback
  library = [os.path.dirname(os.path.dirname(os.path.abspath(__file__)))]  # mlp_jax/
  library += [sysconfig.get_paths()[k] for k in ("stdlib", "platstdlib", "purelib", "platlib")]
  library = [os.path.abspath(p) + os.sep for p in library]
  if isinstance(err, SyntaxError) and err.filename:
    frames = [(err.filename, err.lineno, "<module>", (err.text or "").strip())]
  else:
    frames = [(f.filename, f.lineno, f.name, (f.line or "").strip())
              for f in traceback.extract_tb(err.__traceback__)
              if not os.path.abspath(f.filename).startswith(tuple(library))
              and not f.filename.startswith("<")]
  where = [f"{printable(_shown_path(file))}:{line} in {name}" + (f" ({printable(code)})" if code else "")
           for file, line, name, code in reversed(frames)]
  return describe(err) + (f", at {where[0]}" if where else "") + "".join(
      f", called from {w}" for w in where[1:])


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
