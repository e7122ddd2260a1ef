"""The `mlp-jax` command: train, evaluate, check.

Each subcommand parses its arguments and calls the library; errors the library raises on
purpose (bad files, bad data, bad arguments) end the command with a one-line message and exit
status 2, before anything is written to the output folder.
"""

import argparse
import csv
import io
import json
import os
import sys
import time
from typing import List, Optional

EXAMPLES_TRAIN = """examples:
  mlp-jax train                                  # 64-256-10 on the bundled 8x8 digits
  mlp-jax train --dataset usps --data ../shared/data/usps/usps.h5 --epochs 40
  mlp-jax train --dataset usps --data zip.train.gz --augment --shifts 8 --schedule cosine
  mlp-jax train --hidden 512 128 --l2 1e-4 --out runs/deep --resume
  mlp-jax train --devices all --batch-size 256      # data-parallel over every local device
  mlp-jax train --devices all --coordinator host0:1234 --num-processes 2 --process-id 0
"""
EXAMPLES_EVALUATE = """examples:
  mlp-jax evaluate runs/digits/checkpoint.npz
  mlp-jax evaluate runs/usps/checkpoint.npz --dataset usps --data usps.h5
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
  keys = sorted({k for r in history for k in r}, key=lambda k: (k != "epoch", k))
  out = io.StringIO()
  writer = csv.DictWriter(out, fieldnames=keys)
  writer.writeheader()
  writer.writerows(history)
  return out.getvalue()


def _table(rows: List[List[str]]) -> str:
  from mlp_jax.tables import text_table
  return "\n".join(text_table(rows, rule=False))


def _check_same_schedule(path: str, saved: dict, args) -> None:
  """A resumed run must continue the learning-rate schedule it was started with."""
  from mlp_jax.errors import InputError
  schedule = saved.get("schedule", "constant")
  if schedule != args.schedule:
    raise InputError(f"--resume: {path} was trained with --schedule {schedule}, this run asks "
                     f"for --schedule {args.schedule}")
  if schedule == "cosine" and saved.get("epochs") != args.epochs:
    raise InputError(f"--resume: the cosine schedule of {path} spans {saved.get('epochs')} "
                     f"epochs; resume it with --epochs {saved.get('epochs')}")


def cmd_train(args) -> int:
  import jax
  import jax.numpy as jnp
  import mlp_jax as mj
  from mlp_jax.io import checkpoint, data
  from mlp_jax.tools import plots
  from mlp_jax.training import distributed, privacy

  mesh = None
  if (args.coordinator or args.num_processes is not None or args.process_id is not None
      or os.environ.get(distributed.ENV_COORDINATOR)):
    coordinator = None if args.coordinator == "auto" else args.coordinator  # auto: JAX detects
    distributed.initialize_distributed(coordinator, args.num_processes, args.process_id,
                                       timeout_s=args.init_timeout)
    mesh = distributed.make_mesh(args.devices or "all")  # several processes: one mesh over all
  elif args.devices is not None:
    mesh = distributed.make_mesh(args.devices)
  primary = distributed.is_primary()  # only process 0 writes files

  if args.shifts != 4 and not args.augment:
    raise mj.InputError(f"--shifts {args.shifts}: only used with --augment")
  splits = data.prepare(args.dataset, args.data, val_fraction=args.val_fraction,
                        seed=args.seed, augment=args.augment, num_samples=args.num_samples,
                        scaling=args.scaling, shifts=args.shifts)
  sizes = (splits.train.x.shape[1],) + tuple(args.hidden) + (splits.num_classes,)
  config = {k: v for k, v in vars(args).items() if k not in ("func", "command")}
  config["layer_sizes"] = list(sizes)
  optimizer = mj.make_optimizer(
      args.optimizer, args.lr, schedule=args.schedule,
      total_steps=args.epochs * mj.steps_per_epoch(splits.train.x.shape[0], args.batch_size))
  out = args.out
  ckpt_path = os.path.join(out, "checkpoint.npz")
  params = mj.init_params(jax.random.PRNGKey(args.seed), sizes)
  opt_state, start_epoch, history = None, 0, []
  if args.resume and os.path.exists(ckpt_path):
    ckpt = checkpoint.load_checkpoint(ckpt_path)
    _check_same_schedule(ckpt_path, ckpt.config, args)
    checkpoint.check_compatible(ckpt, sizes)
    opt_state = checkpoint.restore_opt_state(ckpt, optimizer.init(params), ckpt_path)
    params, start_epoch = ckpt.params, ckpt.epoch
    history = ckpt.extra.get("history", [])
    print(f"resuming from {ckpt_path} at epoch {start_epoch}")
  if primary:
    os.makedirs(out, exist_ok=True)
  scaler_extra = {"scaler_mean": splits.scaler.mean.tolist(),
                  "scaler_scale": splits.scaler.scale.tolist()}

  progress = None
  if not args.no_progress and primary:
    from tqdm import tqdm
    progress = tqdm(total=args.epochs, initial=start_epoch, unit="epoch", desc="train",
                    file=sys.stderr)

  def on_epoch_end(epoch, p, s, record):
    if primary:
      checkpoint.save_checkpoint(
          ckpt_path, p, s, epoch=epoch, config=config, rng_key=jax.random.PRNGKey(args.seed),
          extra={"history": history_so_far + [record], **scaler_extra})
    history_so_far.append(record)
    if progress is not None:
      extra = {"eps": f"{record['epsilon']:.2f}"} if "epsilon" in record else {}
      progress.set_postfix(loss=f"{record['train_loss']:.4f}",
                           val_acc=f"{100 * record.get('val_acc', float('nan')):.2f}%", **extra)
      progress.update(1)

  history_so_far = list(history)
  dp = None
  if args.dp:
    dp = privacy.check_dp_config(
        privacy.DPConfig(args.clip_norm, args.noise_multiplier, args.delta))
  start = time.perf_counter()
  val = (splits.val.x, splits.val.y) if splits.val is not None else None
  compute_dtype = jnp.bfloat16 if args.bf16 else None
  try:
    result = mj.fit(params, (splits.train.x, splits.train.y), optimizer=optimizer,
                    epochs=args.epochs, batch_size=args.batch_size, l2=args.l2, seed=args.seed,
                    val=val, patience=args.patience, opt_state=opt_state,
                    start_epoch=start_epoch, history=history, on_epoch_end=on_epoch_end, dp=dp,
                    track_train_accuracy=True,
                    compute_dtype=compute_dtype, mesh=mesh)
  except mj.NonFiniteError as err:
    # The checkpoint of the last good epoch stays; the offending batch is kept for inspection.
    if primary:
      write_atomic(os.path.join(out, "nonfinite_batch.json"), json.dumps(
          {"epoch": err.epoch, "step": err.step, "batch_indices": err.batch_indices.tolist(),
           "message": str(err)}))
    kept = (f"; last good checkpoint kept at {ckpt_path}" if os.path.exists(ckpt_path)
            else "; no epoch had finished, so no checkpoint was written")
    raise mj.NonFiniteError(
        f"{err} (offending batch in {out}/nonfinite_batch.json{kept})") from err
  seconds = time.perf_counter() - start
  if progress is not None:
    progress.close()
  test_loss, test_acc = mj.evaluate(result.params, splits.test.x, splits.test.y, args.l2)
  counts = mj.confusion_matrix(result.params, splits.test.x, splits.test.y)
  if not primary:
    return 0
  # The checkpoint holds the returned (best) parameters, for `mlp-jax evaluate`.
  checkpoint.save_checkpoint(
      ckpt_path, result.params, result.opt_state, epoch=result.best_epoch, config=config,
      rng_key=jax.random.PRNGKey(args.seed), extra={"history": result.history, **scaler_extra})
  metrics = {"config": config, "history": result.history, "best_epoch": result.best_epoch,
             "stopped_early": result.stopped_early, "test_loss": test_loss,
             "test_accuracy": test_acc, "train_seconds": seconds,
             "train_examples": int(splits.train.x.shape[0]),
             "test_examples": int(splits.test.x.shape[0]),
             "device": str(jax.devices()[0].device_kind), "confusion": counts.tolist(),
             "num_devices": 1 if mesh is None else mesh.size,
             "num_processes": jax.process_count()}
  write_atomic(os.path.join(out, "metrics.json"), json.dumps(metrics, indent=1))
  write_atomic(os.path.join(out, "metrics.csv"), _history_csv(result.history))
  plots.plot_curves(result.history, os.path.join(out, "curves.png"))
  plots.plot_confusion(counts, os.path.join(out, "confusion.png"))
  last = result.history[-1] if result.history else {}
  print(_table([
      ["dataset", f"{args.dataset} ({splits.train.x.shape[0]} train, "
                  f"{0 if splits.val is None else splits.val.x.shape[0]} val, "
                  f"{splits.test.x.shape[0]} test)"],
      ["network", "-".join(map(str, sizes)) + f", {args.optimizer} lr={args.lr:g}"
                  + (" cosine" if args.schedule == "cosine" else "") + ", "
                  f"l2={args.l2:g}, batch={args.batch_size}"],
      ["epochs", f"{len(result.history)} (best {result.best_epoch}"
                 f"{', stopped early' if result.stopped_early else ''})"],
      ["train loss", f"{last.get('train_loss', float('nan')):.4f}"],
      ["val accuracy", f"{100 * last['val_acc']:.2f}%" if "val_acc" in last else "-"],
      ["test accuracy", f"{100 * test_acc:.2f}%"],
  ] + ([["privacy", f"({last['epsilon']:.2f}, {args.delta:g})-DP, C={args.clip_norm:g}, "
                    f"sigma={args.noise_multiplier:g}"]] if dp is not None else []) + [
      ["train time", f"{seconds:.1f} s"],
      ["output", out],
  ]))
  return 0


def cmd_evaluate(args) -> int:
  import numpy as np
  import mlp_jax as mj
  from mlp_jax.io import checkpoint, data

  ckpt = checkpoint.load_checkpoint(args.checkpoint)
  cfg = ckpt.config
  dataset = args.dataset or cfg.get("dataset", "digits")
  path = args.data or cfg.get("data")
  splits, _ = data.load_splits(dataset, path, seed=cfg.get("seed", 0),
                               num_samples=cfg.get("num_samples", 2000))
  scaler = data.Scaler(np.asarray(ckpt.extra["scaler_mean"], np.float32),
                       np.asarray(ckpt.extra["scaler_scale"], np.float32))
  x = data.apply_scaler(scaler, splits.test.x)  # the training run's scaler, nothing refitted
  checkpoint.check_compatible(ckpt, (x.shape[1],) + tuple(mj.layer_sizes(ckpt.params)[1:]))
  y = splits.test.y
  counts = mj.confusion_matrix(ckpt.params, x, y)
  acc = np.trace(counts) / counts.sum()
  per_class = np.diag(counts) / np.maximum(counts.sum(1), 1)
  print(f"{args.checkpoint}: {dataset} test set, {counts.sum()} examples")
  print(f"accuracy {100 * acc:.2f}%")
  print(_table([["class"] + [str(i) for i in range(len(per_class))],
                ["accuracy %"] + [f"{100 * a:.1f}" for a in per_class]]))
  print("confusion matrix (rows: true, columns: predicted)")
  print(_table([[""] + [str(i) for i in range(len(counts))]] +
               [[str(i)] + [str(c) for c in row] for i, row in enumerate(counts)]))
  return 0


def cmd_check(args) -> int:
  import contextlib
  import jax
  import jax.numpy as jnp
  import mlp_jax as mj

  x64 = jax.enable_x64(True) if args.dtype == "float64" else contextlib.nullcontext()
  with x64:
    sizes = (args.features,) + tuple(args.hidden) + (args.classes,)
    params = mj.init_params(jax.random.PRNGKey(args.seed), sizes, jnp.dtype(args.dtype))
    key_x, key_y = jax.random.split(jax.random.PRNGKey(args.seed + 1))
    x = jax.random.uniform(key_x, (args.m, args.features), jnp.dtype(args.dtype))
    y = jax.random.randint(key_y, (args.m,), 0, args.classes)
    if args.grads is None:
      report = mj.check_gradients(params, x, y, args.l2)
    else:
      from mlp_jax.tools.diagnosis import diagnose
      report = diagnose(load_function(args.grads), params, x, y, args.l2)
  print(report)
  return 0 if report.passed else 1


def load_function(spec: str):
  """`module:function` or `path/to/file.py:function` -> the function."""
  import importlib
  import importlib.util
  from mlp_jax.errors import InputError
  module_name, _, attr = spec.rpartition(":")
  if not module_name or not attr:
    raise InputError(f"--grads: expected module:function or file.py:function, got {spec!r}")
  try:
    if module_name.endswith(".py"):
      spec_ = importlib.util.spec_from_file_location("user_grads", module_name)
      if spec_ is None:
        raise ImportError(f"cannot load {module_name}")
      module = importlib.util.module_from_spec(spec_)
      spec_.loader.exec_module(module)
    else:
      module = importlib.import_module(module_name)
  except (ImportError, OSError, SyntaxError) as err:
    raise InputError(f"--grads: cannot import {module_name}: {err}") from err
  fn = getattr(module, attr, None)
  if not callable(fn):
    raise InputError(f"--grads: {module_name} has no function {attr!r}")
  return fn


def build_parser() -> argparse.ArgumentParser:
  from mlp_jax.io import data  # the choices below are the library's own lists
  from mlp_jax.training import optimizers
  parser = argparse.ArgumentParser(
      prog="mlp-jax", description="Train and check MLPs with hand-derived gradients in JAX.")
  sub = parser.add_subparsers(dest="command", required=True)
  fmt = argparse.RawDescriptionHelpFormatter

  t = sub.add_parser("train", help="train a network and evaluate it on the test set",
                     epilog=EXAMPLES_TRAIN, formatter_class=fmt)
  t.add_argument("--dataset", choices=data.DATASETS, default="digits",
                 help="digits: scikit-learn's bundled 8x8 digits (default); usps: the 16x16 "
                      "USPS digits from --data; synthetic: Gaussian clusters")
  t.add_argument("--data", help="USPS file: HDF5 (usps.h5) or ESL text (zip.train[.gz])")
  t.add_argument("--hidden", type=int, nargs="+", default=[256], help="hidden widths (256)")
  t.add_argument("--l2", type=float, default=1e-4, help="penalty lambda of (E6) (1e-4)")
  t.add_argument("--optimizer", choices=optimizers.OPTIMIZERS, default="adam")
  t.add_argument("--lr", type=float, default=1e-3, help="learning rate (1e-3)")
  t.add_argument("--schedule", choices=optimizers.SCHEDULES, default="constant",
                 help="learning rate: constant (default), or cosine decay from --lr to 0 over "
                      "--epochs")
  t.add_argument("--batch-size", type=int, default=128)
  t.add_argument("--epochs", type=int, default=30)
  t.add_argument("--seed", type=int, default=0)
  t.add_argument("--val-fraction", type=float, default=0.1,
                 help="fraction of the training set held out for validation (0.1)")
  t.add_argument("--patience", type=int, help="early stopping after N epochs without a "
                                              "lower validation loss")
  t.add_argument("--augment", action="store_true",
                 help="add copies of the training images shifted by one pixel (x5 data; x9 "
                      "with --shifts 8)")
  t.add_argument("--shifts", type=int, choices=[4, 8], default=4,
                 help="with --augment: 4 shifts (up/down/left/right, x5 data) or 8 (also the "
                      "diagonals, x9)")
  t.add_argument("--scaling", choices=data.SCALINGS, default="global",
                 help="input scaling fitted on the training part: one mean/std for all pixels "
                      "(global, default), per feature, or none")
  t.add_argument("--num-samples", type=int, default=2000, help="synthetic dataset size")
  t.add_argument("--dp", action="store_true",
                 help="DP-SGD: Poisson-sampled batches, per-example clipping, Gaussian noise; "
                      "reports epsilon each epoch")
  t.add_argument("--clip-norm", type=float, default=1.0, help="DP clip norm C (1.0)")
  t.add_argument("--noise-multiplier", type=float, default=1.1, help="DP noise sigma (1.1)")
  t.add_argument("--delta", type=float, default=1e-5, help="DP delta (1e-5)")
  t.add_argument("--out", default="runs/latest", help="output folder (runs/latest)")
  t.add_argument("--resume", action="store_true",
                 help="continue from OUT/checkpoint.npz if it exists")
  t.add_argument("--bf16", action="store_true",
                 help="mixed precision: bfloat16 GEMM inputs, float32 parameters, "
                      "accumulation and softmax")
  t.add_argument("--no-progress", action="store_true", help="no progress bar")
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
                 help="multi-process: seconds to wait for the coordinator and the others (300)")
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
  c.add_argument("--features", type=int, default=256)
  c.add_argument("--hidden", type=int, nargs="+", default=[256])
  c.add_argument("--classes", type=int, default=10)
  c.add_argument("--m", type=int, default=37, help="batch size (37: differs from the widths)")
  c.add_argument("--l2", type=float, default=0.1)
  c.add_argument("--dtype", choices=["float32", "float64"], default="float64")
  c.add_argument("--seed", type=int, default=0)
  c.add_argument("--grads", metavar="MODULE:FUNCTION",
                 help="diagnose your own gradient function grad_fn(params, x, y, l2) -> tuple "
                      "of Dense (float64, several draws): which parameter is wrong, where, and "
                      "the likely mistake")
  c.set_defaults(func=cmd_check)
  return parser


def main(argv: Optional[List[str]] = None) -> int:
  args = build_parser().parse_args(argv)
  from mlp_jax.errors import MLPJaxError
  try:
    return args.func(args)
  except MLPJaxError as err:
    print(f"mlp-jax: error: {err}", file=sys.stderr)
    return 2


if __name__ == "__main__":
  sys.exit(main())
