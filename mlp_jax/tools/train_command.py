"""`mlp-jax train`: the command line's settings checked, the data prepared, `mj.fit` run into a
run folder (`run_folder`), and the finished run reported.

Heavy modules (JAX, the data) are imported inside the functions: `mlp-jax --help` stays fast,
and `cli.main` sets up its signal handling before any of them loads.
"""

from __future__ import annotations

import argparse
import os
import sys

from mlp_jax.errors import InputError, optional_import, printable
from mlp_jax.tables import text_block
from mlp_jax.tools import interrupts
from mlp_jax.tools.run_folder import NONFINITE

EXAMPLES_TRAIN = """examples:
  mlp-jax train                       # 256-256-10 on the bundled USPS digits (about 15 s)
  mlp-jax train --augment --shifts 8 --epochs 60
  mlp-jax train --dataset digits --epochs 300
  mlp-jax train --data zip.train.gz --out runs/esl    # USPS from the ESL text files
  mlp-jax train --hidden 512 128 --out runs/deep      # ... then, after Ctrl-C: add --resume
  mlp-jax train --activation tanh                     # another hidden activation
  mlp-jax train --config runs/deep/config.json --seed 1   # the same settings, another seed
  mlp-jax train --devices all --batch-size 256      # data-parallel over every local device
  mlp-jax train --devices all --coordinator host0:1234 --num-processes 2 --process-id 0
"""


def add_parser(sub, fmt) -> "argparse.ArgumentParser":
  """The `train` subcommand's parser, added to `sub` (argparse subparsers), help laid out by the
  formatter class `fmt`."""
  from mlp_jax.io import data  # the choices below are the library's own lists
  from mlp_jax.training import optimizers
  t = sub.add_parser("train", help="train a network and evaluate it on the test set",
                     epilog=EXAMPLES_TRAIN, formatter_class=fmt)
  t.add_argument("--config", metavar="RUN.json",
                 help="replay the settings a run recorded (its config.json or metrics.json); "
                      "options given here override them")
  t.add_argument("--dataset", choices=data.DATASETS, default="usps",
                 help="usps: the 16x16 USPS digits bundled with the package, or the file of "
                      "--data; digits: scikit-learn's 8x8 digits; synthetic: Gaussian clusters")
  t.add_argument("--data", help="a USPS file instead of the bundled copy: HDF5 (usps.h5) or "
                                "ESL text (zip.train[.gz])")
  t.add_argument("--hidden", type=int, nargs="+", default=[256], help="hidden widths")
  t.add_argument("--activation", default="relu", metavar="NAME[,NAME...]",
                 help="hidden activation: relu (the source's), identity, logistic, tanh, "
                      "leaky_relu (slope 0.01; leaky_relu:SLOPE for another), gelu, gelu_tanh; "
                      "or one per hidden layer, comma-separated (tanh,relu)")
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
  return t


# Defaults of the options that only some runs use: None in the parser, so that giving one where
# it has no effect is an error rather than silently ignored.
DEFAULTS = {"shifts": 4, "num_samples": 2000, "clip_norm": 1.0, "noise_multiplier": 1.1,
            "delta": 1e-5}


def train_config(args) -> dict:
  """The run's configuration from the command line; raises `InputError` naming the option.
  Options a run does not use are None (and refused if given). The settings of `mj.fit` are
  checked by `fit_settings`, against the data."""
  from mlp_jax.tools import run_folder
  from mlp_jax.training.settings import MAX_SEED

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
  need(0 <= args.split_seed <= MAX_SEED,
       f"--split-seed: expected an int in 0..{MAX_SEED}, got {args.split_seed}")
  need(0 <= args.val_fraction < 1,
       f"--val-fraction: expected a fraction in [0, 1), got {args.val_fraction:g}")
  need(all(h >= 1 for h in args.hidden), f"--hidden: expected widths >= 1, got {args.hidden}")
  need(0 < args.lr < float("inf"), f"--lr: expected a finite value > 0, got {args.lr:g}")
  need(config["num_samples"] is None or config["num_samples"] >= 10,
       f"--num-samples: expected an int >= 10, got {config['num_samples']}")
  config["activation"] = activation_spec(args.activation, len(args.hidden))
  if args.dp:
    optional_import("dp_accounting", "dp", "--dp")  # before a run starts, not after an epoch
  return config


def network_option(activation: str, num_hidden: int, output: str = "softmax_cross_entropy"):
  """The checked `Network` of --activation (a name, leaky_relu:SLOPE, or comma-separated, one
  per hidden layer) and --output, for `num_hidden` hidden layers; errors name the option."""
  from mlp_jax.core.network import check_network, make_network
  parts = [part.strip() for part in str(activation).split(",")]
  net = make_network(parts[0] if len(parts) == 1 else parts, output,
                     activation_name="--activation", output_name="--output")
  return check_network(net, num_hidden + 1, "--activation")


def activation_spec(text: str, num_hidden: int) -> str:
  """--activation checked for `num_hidden` hidden layers and written as the network records
  it: "tanh", "leaky_relu:0.2", or one per layer comma-separated ("tanh,relu")."""
  spec = network_option(text, num_hidden).record()["activation"]
  return spec if isinstance(spec, str) else ",".join(spec)


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



def fit_settings(args, config: dict, splits):
  """The run's `FitSettings` from the command line, checked against its data (one place, the
  library's): a bad value is named as the option (`--batch-size`)."""
  import mlp_jax as mj
  from mlp_jax.tools import run_folder
  from mlp_jax.training.settings import check_settings
  settings = mj.FitSettings(
      batch_size=args.batch_size, l2=args.l2, seed=args.seed, patience=args.patience,
      compute_dtype="bfloat16" if args.bf16 else None, track_train_accuracy=True,
      activation=network_option(config["activation"], len(args.hidden)).activation,
      dp=mj.DPConfig(config["clip_norm"], config["noise_multiplier"], config["delta"])
      if args.dp else None)
  return check_settings(settings, splits.train.x.shape[0],
                        None if splits.val is None else splits.val.x.shape[0],
                        spell=run_folder.flag)


def cmd_train(args, signals) -> int:
  import time

  import jax
  import mlp_jax as mj
  from mlp_jax.io import data
  from mlp_jax.tools.run_folder import RunFolder, default_out
  from mlp_jax.training import multihost

  config = train_config(args)
  mesh = _mesh(args)
  primary = multihost.is_primary()  # only process 0 writes files
  if args.resume and args.out is None:
    raise mj.InputError("--resume: give the run's folder with --out")
  out = default_out(args.dataset) if args.out is None else args.out
  folder = RunFolder.open(out, resume=args.resume, overwrite=args.overwrite, primary=primary)
  splits = data.prepare(args.dataset, config["data"], val_fraction=args.val_fraction,
                        seed=args.split_seed, augment=args.augment,
                        num_samples=config["num_samples"],
                        scaling=args.scaling, shifts=config["shifts"])
  num_train = splits.train.x.shape[0]
  settings = fit_settings(args, config, splits)
  sizes = (splits.train.x.shape[1],) + tuple(args.hidden) + (splits.num_classes,)
  config.update(out=str(out), layer_sizes=list(sizes),
                devices=None if mesh is None else mesh.size,
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
          val=None if splits.val is None else (splits.val.x, splits.val.y), settings=settings,
          resume=None if folder.saved is None else folder.saved.state, mesh=mesh,
          on_epoch_end=progress, should_stop=signals.stop.is_set)
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
  from mlp_jax.training import distributed, multihost
  if (args.coordinator or args.num_processes is not None or args.process_id is not None
      or os.environ.get(multihost.ENV_COORDINATOR)):
    coordinator = None if args.coordinator == "auto" else args.coordinator  # auto: JAX detects
    multihost.initialize_distributed(coordinator, args.num_processes, args.process_id,
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
  if primary:
    folder.save_nonfinite(err)
  kept = (f"; last good checkpoint kept at {folder.checkpoint}" if folder.checkpoint.exists()
          else "; no epoch had finished, so no checkpoint was written")
  return err.with_message(f"{err} (offending batch in {folder.path}/{NONFINITE}{kept})")


def _report(args, config, splits, result, seconds, folder, mesh) -> None:
  """Test accuracy, metrics.json/.csv, plots and the summary table of a finished run."""
  import jax
  import mlp_jax as mj
  activation = network_option(config["activation"], len(args.hidden)).activation
  test_loss, test_acc = mj.evaluate(result.params, splits.test.x, splits.test.y, args.l2,
                                    activation=activation)
  counts = mj.confusion_matrix(result.params, splits.test.x, splits.test.y,
                               activation=activation)
  history, out = result.history, folder.path
  # fit's last record holds the whole run's epsilon, from its ledger at --delta.
  epsilon = history[-1]["epsilon"] if args.dp else None
  metrics = {"loss_definition": LOSS_DEFINITION, "config": config, "history": history,
             "best_epoch": result.best_epoch,
             "stopped_early": result.stopped_early, "test_loss": test_loss,
             "test_accuracy": test_acc, "train_seconds": seconds, "epsilon": epsilon,
             "train_examples": int(splits.train.x.shape[0]),
             "test_examples": int(splits.test.x.shape[0]),
             "device": str(jax.devices()[0].device_kind), "confusion": counts.tolist(),
             "num_devices": 1 if mesh is None else mesh.size,
             "num_processes": jax.process_count()}
  folder.save_metrics(metrics)
  try:
    folder.save_plots(history, counts)
  except mj.MissingDependencyError as e:
    print(f"mlp-jax: no plots: {printable(e)}", file=sys.stderr)
  last = history[-1]
  print(text_block([
      ["dataset", f"{args.dataset} ({splits.train.x.shape[0]} train, "
                  f"{0 if splits.val is None else splits.val.x.shape[0]} val, "
                  f"{splits.test.x.shape[0]} test)"],
      ["network", "-".join(map(str, config["layer_sizes"]))
                  + ("" if config["activation"] == "relu" else f" {config['activation']}")
                  + f", {args.optimizer} "
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
