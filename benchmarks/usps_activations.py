"""USPS test accuracy of the source's network with each hidden activation, the recipe otherwise
the default one of `mlp-jax train`.

Protocol: for every activation of `mj.ACTIVATIONS`, `mlp-jax train --activation A --seed S` with
every other option at its default (256-256-10, Nesterov momentum 0.9, lr 0.1 on a cosine to 0
over 200 epochs, lambda 0.1, batch 128, global scaling, no validation split, the final epoch's
parameters), run in this process through the command line's own entry point, for seeds 0, 1
and 2; the table gives the test accuracy of seed 0 (the default run's) and the range over the
three. Nothing is tuned per activation: the recipe was chosen for ReLU (benchmarks/accuracy.py),
so the other rows say how each activation does on that recipe, not at its best.

    python benchmarks/usps_activations.py [--quick] [--out DIR] [--seeds 0 1 2]
"""

import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

import mlp_jax as mj  # noqa: E402
from mlp_jax.tools import cli  # noqa: E402

SEEDS = (0, 1, 2)
QUICK = dict(activations=["relu", "tanh"], seeds=(0,), epochs=2)


def run_once(activation: str, seed: int, epochs: int, folder: str) -> dict:
  """One `mlp-jax train` run; its metrics.json."""
  out = os.path.join(folder, f"{activation}-{seed}")
  argv = ["train", "--activation", activation, "--seed", str(seed), "--out", out,
          "--no-progress"] + ([] if epochs is None else ["--epochs", str(epochs)])
  status = cli.main(argv)
  if status != 0:
    raise SystemExit(f"mlp-jax {' '.join(argv)} exited with {status}")
  with open(os.path.join(out, "metrics.json"), encoding="utf-8") as f:
    return json.load(f)


def main() -> None:
  parser = common.add_args(argparse.ArgumentParser(description=__doc__.split("\n")[0]))
  parser.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
  args = parser.parse_args()
  activations = QUICK["activations"] if args.quick else sorted(mj.ACTIVATIONS)
  seeds = QUICK["seeds"] if args.quick else tuple(args.seeds)
  epochs = QUICK["epochs"] if args.quick else None
  rows, records = [], {}
  with tempfile.TemporaryDirectory() as folder:
    for activation in activations:
      accs, seconds = [], []
      for seed in seeds:
        start = time.perf_counter()
        metrics = run_once(activation, seed, epochs, folder)
        seconds.append(time.perf_counter() - start)
        accs.append(metrics["test_accuracy"])
        print(f"{activation} seed {seed}: test accuracy {100 * accs[-1]:.2f}%", flush=True)
      records[activation] = {"seeds": list(seeds), "test_accuracy": accs, "seconds": seconds,
                             "epochs": metrics["config"]["epochs"]}
      rows.append([activation, f"{100 * accs[0]:.2f}",
                   f"{100 * min(accs):.2f}–{100 * max(accs):.2f}",
                   f"{sum(seconds) / len(seconds):.0f}"])
  title = "### USPS test accuracy by hidden activation (mlp-jax train's recipe)\n\n"
  table = title + common.markdown_table(
      ["activation", f"test accuracy %, seed {seeds[0]}", f"range over seeds {list(seeds)}",
       "s per run"], rows)
  payload = {"quick": args.quick, "machine": common.machine(), "protocol": __doc__,
             "results": records}
  common.write_results(common.result_name("usps_activations", args.quick), payload, table,
                       args.out)


if __name__ == "__main__":
  main()
