"""`mlp-jax train`'s options: the parser, the configuration checked from it (each bad value
named as its option), a recorded configuration replayed (`--config`), and the run's settings.

Heavy modules are imported inside the functions, as in `train_command`.
"""

from __future__ import annotations

import argparse

from mlp_jax.errors import InputError, require


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
  t.add_argument("--clip-norm", type=float,
                 help="with --dp: clip norm C (the first one, with --target-quantile); 1.0 by "
                      "default")
  t.add_argument("--noise-multiplier", type=float,
                 help="with --dp: noise sigma; 1.1 by default, unless --target-epsilon")
  t.add_argument("--target-epsilon", type=float,
                 help="with --dp: choose the noise sigma for the run's epochs, batch and delta "
                      "so that it spends at most this epsilon (within 1%%)")
  t.add_argument("--target-quantile", type=float,
                 help="with --dp: adaptive clipping, the clip norm tracks this quantile of the "
                      "per-example gradient norms (e.g. 0.5), its noisy count paid from sigma")
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

  dp_options = ("clip_norm", "noise_multiplier", "delta", "target_epsilon", "target_quantile")
  uses = {"data": args.dataset == "usps", "num_samples": args.dataset == "synthetic",
          "shifts": args.augment, **{key: args.dp for key in dp_options}}
  needs = {"data": "--dataset usps", "num_samples": "--dataset synthetic",
           "shifts": "--augment", **{key: "--dp" for key in dp_options}}
  config = {k: v for k, v in vars(args).items() if k not in ("func", "command")}
  for key, used in uses.items():
    flag = run_folder.flag(key)
    need(used or config[key] is None, f"{flag} {config[key]}: only used with {needs[key]}")
    if used and config[key] is None and not (key == "noise_multiplier"
                                             and config.get("target_epsilon") is not None):
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
    require("dp_accounting", "dp", "--dp")  # before a run starts, not after an epoch
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
      dp=mj.DPConfig(config["clip_norm"], config["noise_multiplier"], config["delta"],
                     target_epsilon=config["target_epsilon"],
                     target_quantile=config["target_quantile"]) if args.dp else None)
  return check_settings(settings, splits.train.x.shape[0],
                        None if splits.val is None else splits.val.x.shape[0],
                        spell=run_folder.flag)


def with_planned_noise(settings, num_train: int, epochs: int, saved):
  """The settings with the noise of --target-epsilon chosen for the run (a resumed run keeps its
  own), before its folder is written: a target that cannot be met is refused first."""
  import dataclasses

  from mlp_jax.training import calibration
  dp = calibration.planned_dp(settings.dp, num_train, settings.batch_size, epochs,
                              None if saved is None else saved.state, name="--target-epsilon")
  return dataclasses.replace(settings, dp=dp)

