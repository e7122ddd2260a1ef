"""Test accuracy of the source's network (one hidden layer of 256 ReLU units) and objective (E6).

Protocol, fixed before any test figure was seen: for each task, a grid of input scaling,
optimizer, learning rate and lambda is trained with early stopping (patience on the validation
loss) on validation splits carved from the training set (10%, split seeds 0 and 1); the
configuration with the best mean validation accuracy is chosen; it is then trained again on the
whole training set for the mean of its best epochs, and that model alone is evaluated on the test
set, once. Tasks: USPS, USPS with one-pixel shift augmentation of the training images, and the
bundled 8x8 digits (20% held out).

    python benchmarks/accuracy.py [--quick] [--usps PATH]
"""

import argparse
import itertools
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

import jax  # noqa: E402
import optax  # noqa: E402

import mlp_jax as mj  # noqa: E402
from mlp_jax import data  # noqa: E402

OPTIMIZERS = {
    "adam": lambda lr: optax.adam(lr),
    "momentum": lambda lr: optax.sgd(lr, momentum=0.9, nesterov=True),
    "sgd": lambda lr: optax.sgd(lr),
}
GRID = {  # input scaling x (optimizer, learning rate) x lambda
    "scaling": ["global", "feature"],
    "opt": [("adam", 1e-3), ("adam", 3e-4), ("momentum", 0.03), ("sgd", 0.1)],
    "l2": [1e-4, 1.0, 3.0],
}
QUICK_GRID = {"scaling": ["global"], "opt": [("adam", 1e-3)], "l2": [1.0]}


def _train(spec, scaling, opt_name, lr, l2, seed, split_seed, epochs, patience, batch_size,
           val_fraction):
  prepared = data.prepare(val_fraction=val_fraction, seed=split_seed, scaling=scaling, **spec)
  sizes = (prepared.train.x.shape[1], 256, prepared.num_classes)
  val = None if prepared.val is None else (prepared.val.x, prepared.val.y)
  start = time.perf_counter()
  result = mj.fit(mj.init_params(jax.random.PRNGKey(seed), sizes),
                  (prepared.train.x, prepared.train.y), optimizer=OPTIMIZERS[opt_name](lr),
                  epochs=epochs, batch_size=batch_size, l2=l2, seed=seed, val=val,
                  patience=patience if val is not None else None)
  return prepared, result, time.perf_counter() - start


def run_task(name, spec, grid, epochs, patience, batch_size, seed, split_seeds):
  trials = []
  for scaling, (opt_name, lr), l2 in itertools.product(grid["scaling"], grid["opt"], grid["l2"]):
    runs = []
    for split_seed in split_seeds:
      prepared, result, seconds = _train(spec, scaling, opt_name, lr, l2, seed, split_seed,
                                         epochs, patience, batch_size, 0.1)
      best = result.history[result.best_epoch - 1]
      runs.append({"split_seed": split_seed, "val_acc": best["val_acc"],
                   "val_loss": best["val_loss"], "best_epoch": result.best_epoch,
                   "epochs_run": len(result.history), "seconds": seconds})
    trial = {"scaling": scaling, "optimizer": opt_name, "lr": lr, "l2": l2, "runs": runs,
             "val_acc": sum(r["val_acc"] for r in runs) / len(runs),
             "val_loss": sum(r["val_loss"] for r in runs) / len(runs),
             "best_epoch": round(sum(r["best_epoch"] for r in runs) / len(runs)),
             "seconds": sum(r["seconds"] for r in runs)}
    trials.append(trial)
    print(f"  {name}: {scaling} scaling, {opt_name} lr={lr:g} l2={l2:g}: mean val "
          f"{100 * trial['val_acc']:.2f}% (best epochs {[r['best_epoch'] for r in runs]}, "
          f"{trial['seconds']:.1f} s)", flush=True)
  chosen = max(trials, key=lambda t: (t["val_acc"], -t["val_loss"]))
  # Train the chosen configuration on the whole training set, then touch the test set once.
  prepared, result, seconds = _train(spec, chosen["scaling"], chosen["optimizer"], chosen["lr"],
                                     chosen["l2"], seed, seed, chosen["best_epoch"], None,
                                     batch_size, 0.0)
  test_loss, test_acc = mj.evaluate(result.params, prepared.test.x, prepared.test.y)
  command = (f"mlp-jax train --dataset {spec['dataset']}"
             + (f" --data {os.path.relpath(spec['path'])}" if "path" in spec else "")
             + (" --augment" if spec.get("augment") else "")
             + f" --scaling {chosen['scaling']} --optimizer {chosen['optimizer']}"
             f" --lr {chosen['lr']:g} --l2 {chosen['l2']:g} --batch-size {batch_size}"
             f" --epochs {chosen['best_epoch']} --val-fraction 0 --seed {seed}")
  return {"task": name, "train_examples": int(prepared.train.x.shape[0]),
          "test_examples": int(prepared.test.x.shape[0]), "chosen": chosen,
          "final_train_seconds": seconds, "test_acc": test_acc, "test_loss": test_loss,
          "trials": trials, "command": command,
          "search_seconds": sum(t["seconds"] for t in trials)}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="one configuration, few epochs")
  parser.add_argument("--usps", default=common.USPS_DEFAULT, help="USPS file (usps.h5)")
  parser.add_argument("--out", default=common.RESULTS)
  args = parser.parse_args()
  grid = QUICK_GRID if args.quick else GRID
  tasks = [("digits", dict(dataset="digits"), 20 if args.quick else 300, 30)]
  if os.path.exists(args.usps):
    tasks += [("usps", dict(dataset="usps", path=args.usps), 5 if args.quick else 100, 15),
              ("usps+augment", dict(dataset="usps", path=args.usps, augment=True),
               2 if args.quick else 60, 10)]
  else:
    print(f"skipping USPS: {args.usps} not found")
  results = []
  for name, spec, epochs, patience in tasks:
    results.append(run_task(name, spec, grid, epochs, patience, 128, 0,
                            (0,) if args.quick else (0, 1)))
  rows = [[r["task"], r["train_examples"], r["chosen"]["scaling"],
           f"{r['chosen']['optimizer']} lr={r['chosen']['lr']:g}",
           f"{r['chosen']['l2']:g}", r["chosen"]["best_epoch"],
           f"{100 * r['chosen']['val_acc']:.2f}", f"**{100 * r['test_acc']:.2f}**",
           f"{r['final_train_seconds']:.1f}", f"{r['search_seconds']:.0f}"] for r in results]
  md = common.markdown_table(
      ["task", "train rows", "scaling", "chosen optimizer", "lambda", "epochs",
       "mean val acc %", "test acc %", "final training s", "whole search s"], rows)
  md += "\n\nCommands that retrain the chosen models:\n\n" + "\n".join(
      f"    {r['command']}" for r in results)
  common.write_results("accuracy" + ("_quick" if args.quick else ""),
                       {"machine": common.machine(), "quick": args.quick, "results": results},
                       md, args.out)


if __name__ == "__main__":
  main()
