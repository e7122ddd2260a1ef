"""Draws the benchmark results as PNGs next to their JSON files.

    grads[_quick].json      -> grads[_quick].png: time vs batch size, log-log, a panel per
                               (dtype, network), a line per implementation (band: p10-p90)
    train[_quick].json      -> train[_quick].png: test accuracy vs cumulative training seconds,
                               a panel per dataset, a line per implementation
    per_sample[_quick].json -> per_sample[_quick].png: time and planned memory vs m

    python benchmarks/plot.py [--dir DIR]
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

import matplotlib  # noqa: E402
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

GRAD_LABELS = {"analytic": "analytic (jit)", "autodiff": "jax.grad (jit)",
               "analytic_api": "mj.loss_and_grads (API)", "adam_analytic": "Adam step, analytic",
               "adam_autodiff": "Adam step, jax.grad", "numpy": "NumPy backprop",
               "torch": "PyTorch eager", "gemms_alone": "GEMMs alone, NumPy (floor)",
               "gemms_alone_jax": "GEMMs alone, jitted JAX (floor)"}


def _panels(count, width=5.5, height=4.2):
  cols = min(count, 2)
  rows = -(-count // cols)
  fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)
  for ax in axes.flat[count:]:
    ax.set_visible(False)
  return fig, list(axes.flat)


def _title(payload, what):
  m = payload.get("machine", {})
  quick = " (--quick)" if payload.get("quick") else ""
  return f"{what}{quick}: {m.get('processor', '?')}, {m.get('cpu_count', '?')} cores, " \
         f"jax {m.get('jax', '?')}, {m.get('date', '')[:10]}"


def plot_grads(payload, path):
  results = payload["results"]
  groups = list(dict.fromkeys((r["dtype"], tuple(r["layers"])) for r in results))
  fig, axes = _panels(len(groups))
  for ax, (dtype, layers) in zip(axes, groups):
    rows = [r for r in results if r["dtype"] == dtype and tuple(r["layers"]) == layers]
    for impl in dict.fromkeys(r["impl"] for r in rows):
      pts = sorted((r["m"], r["median"], r["p10"], r["p90"]) for r in rows if r["impl"] == impl)
      m, med, lo, hi = (list(v) for v in zip(*pts))
      style = "--" if impl.startswith("gemms_alone") else "-"
      line, = ax.plot(m, [1e3 * t for t in med], style, marker="o", ms=3,
                      label=GRAD_LABELS.get(impl, impl))
      ax.fill_between(m, [1e3 * t for t in lo], [1e3 * t for t in hi], color=line.get_color(),
                      alpha=0.15, lw=0)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("batch size m")
    ax.set_ylabel("ms per call (median)")
    ax.set_title(f"{'-'.join(map(str, layers))}, {dtype}")
    ax.grid(True, which="both", alpha=0.3)
  axes[0].legend(fontsize=7)
  fig.suptitle(_title(payload, "loss + gradients"), fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def plot_train(payload, path):
  results = payload["results"]
  datasets = list(dict.fromkeys(r["dataset"] for r in results))
  fig, axes = _panels(len(datasets))
  for ax, dataset in zip(axes, datasets):
    for r in (r for r in results if r["dataset"] == dataset):
      t = [e["cumulative_seconds"] for e in r["epochs"]]
      acc = [100 * e["test_acc"] for e in r["epochs"]]
      ax.plot(t, acc, marker="o", ms=2.5, label=r["impl"])
    ax.set_xscale("log")
    ax.set_xlabel("cumulative training seconds (warm-up excluded)")
    ax.set_ylabel("test accuracy %")
    first = next(r for r in results if r["dataset"] == dataset)
    ax.set_title(f"{dataset}: batch {first['batch_size']}, {first['epochs_run']} epochs")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
  fig.suptitle(_title(payload, "time to accuracy"), fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def plot_per_sample(payload, path):
  results = [r for r in payload["results"] if not r["impl"].endswith("_api")]
  fig, (ax_t, ax_m) = _panels(2)
  for impl in dict.fromkeys(r["impl"] for r in results):
    rows = sorted((r for r in results if r["impl"] == impl), key=lambda r: r["m"])
    m = [r["m"] for r in rows]
    ax_t.plot(m, [1e3 * r["median"] for r in rows], marker="o", ms=3, label=impl)
    if all(r.get("memory") for r in rows):
      ax_m.plot(m, [r["memory"]["peak_extra"] / 2 ** 20 for r in rows], marker="o", ms=3,
                label=impl)
  for ax, label in ((ax_t, "ms per call (median)"), (ax_m, "XLA temp + output, MiB")):
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("batch size m")
    ax.set_ylabel(label)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
  ax_t.set_title("time")
  ax_m.set_title("planned memory")
  fig.suptitle(_title(payload, f"per-example gradients, {'-'.join(map(str, payload['layers']))}"),
               fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


PLOTS = {"grads": plot_grads, "train": plot_train, "per_sample": plot_per_sample}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--dir", default=common.RESULTS, help="folder holding the JSON files")
  args = parser.parse_args()
  drawn = []
  for name, draw in PLOTS.items():
    for stem in (name, name + "_quick"):
      source = os.path.join(args.dir, stem + ".json")
      if not os.path.exists(source):
        continue
      with open(source) as f:
        payload = json.load(f)
      target = os.path.join(args.dir, stem + ".png")
      draw(payload, target)
      drawn.append(target)
      print(f"wrote {target}")
  if not drawn:
    print(f"no benchmark JSON in {args.dir}")
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
