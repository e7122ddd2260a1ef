"""Test accuracy of the source's network (one hidden layer of 256 ReLU units) and objective (E6).

For each task, a small grid of optimizer, learning rate and lambda is trained with early
stopping on a validation split carved from the training set (10%, seed 0); the configuration
with the best validation accuracy is chosen, and only its parameters are evaluated on the test
set, once. Tasks: USPS, USPS with one-pixel shift augmentation, the bundled 8x8 digits (20% held
out).

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


def run_task(name, spec, grid, epochs, patience, batch_size, seed):
  trials = []
  for scaling, (opt_name, lr), l2 in itertools.product(grid["scaling"], grid["opt"], grid["l2"]):
    prepared = data.prepare(val_fraction=0.1, seed=seed, scaling=scaling, **spec)
    sizes = (prepared.train.x.shape[1], 256, prepared.num_classes)
    start = time.perf_counter()
    result = mj.fit(mj.init_params(jax.random.PRNGKey(seed), sizes),
                    (prepared.train.x, prepared.train.y), optimizer=OPTIMIZERS[opt_name](lr),
                    epochs=epochs, batch_size=batch_size, l2=l2, seed=seed,
                    val=(prepared.val.x, prepared.val.y), patience=patience)
    seconds = time.perf_counter() - start
    best = result.history[result.best_epoch - 1]
    trials.append({"scaling": scaling, "optimizer": opt_name, "lr": lr, "l2": l2,
                   "val_acc": best["val_acc"],
                   "val_loss": best["val_loss"], "best_epoch": result.best_epoch,
                   "epochs_run": len(result.history), "seconds": seconds,
                   "params": result.params, "test": prepared.test})
    print(f"  {name}: {scaling} scaling, {opt_name} lr={lr:g} l2={l2:g}: val {100 * best['val_acc']:.2f}% "
          f"(epoch {result.best_epoch}/{len(result.history)}, {seconds:.1f} s)", flush=True)
  chosen = max(trials, key=lambda t: (t["val_acc"], -t["val_loss"]))
  test = chosen["test"]
  test_loss, test_acc = mj.evaluate(chosen["params"], test.x, test.y)  # the one test evaluation
  for t in trials:
    del t["params"], t["test"]
  return {"task": name, "train_examples": int(prepared.train.x.shape[0]),
          "val_examples": int(prepared.val.x.shape[0]),
          "test_examples": int(test.x.shape[0]), "chosen": chosen,
          "test_acc": test_acc, "test_loss": test_loss, "trials": trials,
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
    results.append(run_task(name, spec, grid, epochs, patience, 128, 0))
  rows = [[r["task"], r["train_examples"], r["chosen"]["scaling"],
           f"{r['chosen']['optimizer']} lr={r['chosen']['lr']:g}",
           f"{r['chosen']['l2']:g}", f"{r['chosen']['best_epoch']}/{r['chosen']['epochs_run']}",
           f"{100 * r['chosen']['val_acc']:.2f}", f"**{100 * r['test_acc']:.2f}**",
           f"{r['chosen']['seconds']:.1f}", f"{r['search_seconds']:.0f}"] for r in results]
  md = common.markdown_table(
      ["task", "train rows", "scaling", "chosen optimizer", "lambda", "best epoch / run", "val acc %",
       "test acc %", "chosen run s", "whole search s"], rows)
  common.write_results("accuracy" + ("_quick" if args.quick else ""),
                       {"machine": common.machine(), "quick": args.quick, "results": results},
                       md, args.out)


if __name__ == "__main__":
  main()
