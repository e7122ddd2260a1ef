"""One training epoch on USPS against its peers and its GEMM floor, and where its time goes.

    python benchmarks/epoch.py [--quick] [--no-profile] [--no-widths]

Every column trains the same network (256 -> hidden -> 10, float32) for one epoch over the same
7291 training images with SGD, momentum 0.9, learning rate 0.1 and lambda = 1e-4:

  mlp_jax        `mj.make_epoch`: the shuffled epoch as one compiled `lax.scan`
  NumPy loop     numpy_backprop.py's hand-written backprop and a NumPy momentum update, the
                 same kind of shuffled batches (short last batch included)
  scikit-learn   `MLPClassifier(solver="sgd")`, one `partial_fit` (one epoch)
  GEMM floor     the epoch's GEMMs alone through NumPy/OpenBLAS: `numpy_backprop.gemms_alone`
                 for every batch of the epoch, on preallocated outputs

The columns are timed in turns, so that a slow spell of the shared machine hits them all: per
round, each column runs four untimed epochs and then four timed ones back to back, as in a
training loop (medians over the rounds; see WARMUP for why). Tables:

  1. ms per epoch at B = 32, 128, 512 and the ratios against mlp_jax (medians, and again from
     each column's fastest epoch);
  2. the same at B = 128 for hidden widths 256, 1024, 4096 (GEMM-bound as it grows);
  3. what each change to the epoch bought: the mlp_jax epoch with the later changes undone
     (the shuffle of `training/permutation.py`, XLA's region-analysis copy insertion), timed in
     turns, after checking that all variants give the same parameters bit for bit;
  4. unless --no-profile, where the compiled epoch's time goes, per step, at B = 32, 128, 512
     (epoch_profile.py): a `jax.profiler` trace of XLA's CPU thunks, each thunk classed by the
     HLO it runs (GEMMs, the minibatch gather, the rest of the gradient, the optimizer, the
     shuffle, other: the loop's own bookkeeping) and the rest of the epoch's wall time, spent
     in no thunk: XLA waking its other thread to run the next thunk (hand-offs), and the part of
     an Eigen GEMM that runs on the thread pool after its thunk has returned: XLA runs the
     products with a transposed left operand, A^T Delta, that way (the other GEMMs are YNNPACK
     thunks, which return when their work is done); the trace cannot tell the two apart.

Writes results/epoch[_quick].json and .md, and results/epoch[_quick].png (time per epoch vs
batch size, a line per column) when matplotlib is installed.
"""

import argparse
import collections
import contextlib
import json
import os
import sys
import time
import warnings
from typing import Dict, List, Sequence

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
import numpy_backprop as nb  # noqa: E402
from epoch_profile import CATEGORIES, profile  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

import mlp_jax as mj  # noqa: E402
from mlp_jax.training import epoch as training  # noqa: E402

LR, MOMENTUM, L2 = 0.1, 0.9, 1e-4
# Per column and round: WARMUP untimed epochs, then BLOCK timed ones, all back to back. After
# another library's turn (or any pause of 50 ms or more), XLA's epochs run slow until its
# threads are busy again (`reproduce/epoch_experiments.py after-pause`: 37.5, 46.5, 37.5, 29.3 ms
# for the 1st to 4th epoch after a NumPy epoch, 32.0 back to back). A training loop pays that once;
# one timed epoch per turn would measure it every time.
WARMUP, BLOCK = 4, 4
BATCHES = (32, 128, 512)
WIDTHS = (256, 1024, 4096)
COLUMNS = ("mlp_jax", "numpy", "sklearn", "floor")
LABELS = {"mlp_jax": "mlp_jax scanned epoch", "numpy": "NumPy backprop loop",
          "sklearn": "scikit-learn MLPClassifier", "floor": "GEMMs alone, NumPy (floor)"}


def optimizer():
  return optax.sgd(LR, momentum=MOMENTUM)


class MlpJax:
  """`mj.make_epoch` on device-resident data; the parameters carry over from epoch to epoch."""

  def __init__(self, init, x, y, batch):
    self.opt = optimizer()
    self.epoch_fn = mj.make_epoch(self.opt, batch, L2)
    self.x, self.y = jnp.asarray(x), jnp.asarray(y)
    self.params = jax.tree.map(jnp.asarray, init)
    self.state = self.opt.init(self.params)
    self.e = 0

  def __call__(self):
    self.params, self.state, stats = self.epoch_fn(self.params, self.state, self.x, self.y,
                                                   training.epoch_key(0, self.e))
    self.e += 1
    jax.block_until_ready((self.params, stats))


class NumpyLoop:
  """The hand-written NumPy backprop with SGD + momentum (optax.sgd's trace form), in place."""

  def __init__(self, init, x, y, batch):
    self.x, self.y, self.batch = x, y, batch
    self.params = nb.from_jax(init)
    self.trace = [np.zeros_like(p) for layer in self.params for p in layer]
    self.rng = np.random.default_rng(0)

  def __call__(self):
    perm = self.rng.permutation(self.x.shape[0])
    for start in range(0, len(perm), self.batch):
      idx = perm[start:start + self.batch]
      _, grads = nb.loss_and_grads(self.params, self.x[idx], self.y[idx], L2)
      leaves = [p for layer in self.params for p in layer]
      for p, g, t in zip(leaves, [g for layer in grads for g in layer], self.trace):
        t *= MOMENTUM
        t += g
        p -= LR * t


class Sklearn:
  """scikit-learn's MLPClassifier: SGD with (non-Nesterov) momentum, one partial_fit = one epoch
  of shuffled minibatches."""

  def __init__(self, init, x, y, batch):
    from sklearn.neural_network import MLPClassifier
    self.x, self.y = x, y
    self.clf = MLPClassifier(
        hidden_layer_sizes=(init[0].w.shape[1],), solver="sgd", momentum=MOMENTUM,
        nesterovs_momentum=False, learning_rate_init=LR, alpha=L2, batch_size=batch,
        shuffle=True, random_state=0)
    with warnings.catch_warnings():
      warnings.simplefilter("ignore")
      self.clf.partial_fit(x[:batch], y[:batch], classes=np.arange(10))

  def __call__(self):
    with warnings.catch_warnings():
      warnings.simplefilter("ignore")
      self.clf.partial_fit(self.x, self.y)


class Floor:
  """The epoch's GEMMs alone: those of every full batch and of the short last one."""

  def __init__(self, init, x, y, batch):
    sizes = mj.layer_sizes(init)
    full, rest = divmod(x.shape[0], batch)
    self.calls = [nb.gemms_alone(sizes, batch)] * full + (
        [nb.gemms_alone(sizes, rest)] if rest else [])

  def __call__(self):
    for call in self.calls:
      call()


RUNNERS = {"mlp_jax": MlpJax, "numpy": NumpyLoop, "sklearn": Sklearn, "floor": Floor}


def time_columns(x, y, hidden: int, batch: int, rounds: int, block: int = BLOCK,
                 columns=COLUMNS) -> Dict:
  """{column: timing dict (seconds)} of single epochs: in each round every column runs `WARMUP`
  untimed epochs, then `block` timed ones, back to back."""
  init = mj.init_params(jax.random.PRNGKey(0), (x.shape[1], hidden, 10))
  runners = {c: RUNNERS[c](init, x, y, batch) for c in columns}
  times = collections.defaultdict(list)
  for _ in range(rounds):
    for c, run in runners.items():
      for _ in range(WARMUP):  # compiles (first round); gets this column's threads going
        run()
      for _ in range(block):
        t0 = time.perf_counter()
        run()
        times[c].append(time.perf_counter() - t0)
  return {c: common.summarize(t) for c, t in times.items()}


# ---- what each change of the epoch bought ---------------------------------------------------------

ABLATION = {
    "before": "jax.random.permutation, default XLA options",
    "+ shuffle": "+ the shuffle from one-operand sorts",
    "+ in-place W": "+ region-analysis copy insertion (the library now)",
}


@contextlib.contextmanager
def _undone(variant: str):
  """The library's epoch pieces with the changes after `variant` undone, while inside."""
  permutation, options = training.permutation, training.compiler_options
  if variant == "before":
    training.permutation = lambda key, n: jax.random.permutation(key, n)
  if variant in ("before", "+ shuffle"):
    training.compiler_options = lambda mesh=None: None
  try:
    yield
  finally:
    training.permutation, training.compiler_options = permutation, options


def ablation(x, y, batch: int, rounds: int) -> Dict:
  """{variant: timing} of the mlp_jax epoch with each change undone, timed in turns, after
  checking that every variant's epoch yields the same parameters bit for bit."""
  x, y = jnp.asarray(x), jnp.asarray(y)
  opt = optimizer()
  init = mj.init_params(jax.random.PRNGKey(0))
  runs, results = {}, {}
  for variant in ABLATION:
    with _undone(variant):  # built anew (not make_epoch's cached program), traced, compiled
      epoch_fn = training.build_epoch(opt, mj.FitSettings(batch_size=batch, l2=L2)).epoch
      params = jax.tree.map(jnp.copy, init)
      params, state, _ = epoch_fn(params, opt.init(params), x, y, training.epoch_key(0, 0))
    results[variant] = jax.tree.map(np.asarray, params)
    runs[variant] = [epoch_fn, params, state]
  first = jax.tree.leaves(results["before"])
  for variant, tree in results.items():
    assert all(a.tobytes() == b.tobytes() for a, b in zip(first, jax.tree.leaves(tree))), variant
  return time_in_turns(runs, x, y, rounds * BLOCK)


def time_in_turns(runs: Dict[str, list], x, y, epochs: int) -> Dict:
  """{name: timing dict (seconds)} of `epochs` epochs of every run, the runs in turns: epoch r
  of each, then epoch r + 1, epoch r shuffled with `epoch_key(0, r + 1)`.

  `runs` maps a name to [epoch_fn, params, opt_state]: a compiled (donating) epoch and the state
  it goes on from, replaced in the list after every epoch.
  """
  times = {name: [] for name in runs}
  for r in range(epochs):
    for name, run in runs.items():
      t0 = time.perf_counter()
      run[1], run[2], stats = run[0](run[1], run[2], x, y, training.epoch_key(0, r + 1))
      jax.block_until_ready((run[1], stats))
      times[name].append(time.perf_counter() - t0)
  return {name: common.summarize(t) for name, t in times.items()}


# ---- output --------------------------------------------------------------------------------------

def _ratio(a, b):
  return f"{a / b:.2f}x"


def epoch_rows(results: Sequence[Dict], key: str, stat: str = "median") -> List[List]:
  rows = []
  for r in results:
    t = {c: r["timings"][c][stat] for c in r["timings"]}
    row = [r[key]] + [common.ms(t[c]) for c in COLUMNS if c in t]
    row.append(_ratio(t["mlp_jax"], t["floor"]) if "floor" in t else "")
    row.append(_ratio(t["sklearn"], t["mlp_jax"]) if "sklearn" in t else "")
    row.append(_ratio(t["numpy"], t["mlp_jax"]) if "numpy" in t else "")
    rows.append(row)
  return rows


def markdown(payload: Dict) -> str:
  m = payload["machine"]
  out = [f"# One USPS epoch ({m['date']}, {m['processor']}, {m['cpu_count']} cores, "
         f"jax {m['jax']}; {payload['rounds']} rounds of {BLOCK} epochs per column, medians, "
         "ms)", ""]
  header = ["mlp_jax", "NumPy loop", "scikit-learn", "GEMM floor", "mlp_jax / floor",
            "sklearn / mlp_jax", "NumPy / mlp_jax"]
  out.append(common.markdown_table(["batch"] + header, epoch_rows(payload["batches"], "batch")))
  out += ["", "The same from each column's fastest epoch (minimum over all timed epochs; a "
          "shared machine's slow spells move it least):", ""]
  out.append(common.markdown_table(["batch"] + header,
                                   epoch_rows(payload["batches"], "batch", "min")))
  if payload.get("widths"):
    out += ["", "Hidden width at B = 128:", ""]
    out.append(common.markdown_table(["hidden"] + header,
                                     epoch_rows(payload["widths"], "hidden")))
  if payload.get("ablation"):
    out += ["", "What each change bought (mlp_jax epoch, ms, the variants timed in turns; "
            "all give bit-identical parameters):", ""]
    rows = [[a["batch"]] + [common.ms(a["timings"][v]["median"]) for v in ABLATION]
            + [_ratio(a["timings"]["before"]["median"],
                      a["timings"]["+ in-place W"]["median"])] for a in payload["ablation"]]
    out.append(common.markdown_table(["batch"] + [ABLATION[v] for v in ABLATION]
                                     + ["before / now"], rows))
  if payload.get("profile"):
    out += ["", "Where the compiled epoch's time goes (us per step, in a jax.profiler trace; "
            "the trace slows the epoch, see the last two columns):", ""]
    rows = [[p["batch_size"]] + [f"{p['us_per_step'][c]:.1f}" for c in CATEGORIES]
            + [f"{p['traced_ms_per_epoch']:.1f}", f"{p['untraced_ms_per_epoch']:.1f}"]
            for p in payload["profile"]]
    out.append(common.markdown_table(["batch"] + list(CATEGORIES)
                                     + ["traced ms/epoch", "untraced ms/epoch"], rows))
  return "\n".join(out)


def plot(payload: Dict, path: str) -> None:
  try:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
  except ImportError:
    print("matplotlib not installed: no plot")
    return
  fig, ax = plt.subplots(figsize=(6, 4.2))
  batches = [r["batch"] for r in payload["batches"]]
  for c in COLUMNS:
    med = [1e3 * r["timings"][c]["median"] for r in payload["batches"]]
    lo = [1e3 * r["timings"][c]["p10"] for r in payload["batches"]]
    hi = [1e3 * r["timings"][c]["p90"] for r in payload["batches"]]
    ax.plot(batches, med, marker="o", label=LABELS[c])
    ax.fill_between(batches, lo, hi, alpha=0.2)
  ax.set_xscale("log", base=2)
  ax.set_xticks(batches, [str(b) for b in batches])
  ax.set_xlabel("batch size")
  ax.set_ylabel("ms per USPS epoch (median, band p10-p90)")
  ax.set_ylim(bottom=0)
  ax.set_title(f"One epoch, 256-256-10, SGD+momentum ({payload['machine']['cpu_count']} cores)",
               fontsize=9)
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  print(f"wrote {path}")


def main():
  parser = common.add_args(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
  parser.add_argument("--rounds", type=int, default=5,
                      help=f"rounds of {BLOCK} timed epochs per column")
  parser.add_argument("--no-profile", dest="profile", action="store_false")
  parser.add_argument("--no-widths", dest="widths", action="store_false")
  parser.add_argument("--no-ablation", dest="ablation", action="store_false")
  parser.add_argument("--render", metavar="JSON",
                      help="print the tables of an earlier run's JSON and redraw its plot")
  args = parser.parse_args()
  if args.render:
    with open(args.render) as f:
      payload = json.load(f)
    print(markdown(payload))
    plot(payload, os.path.splitext(args.render)[0] + ".png")
    return
  rounds = 2 if args.quick else args.rounds
  train = mj.data.prepare("usps", val_fraction=0.0).train
  x, y = np.asarray(train.x), np.asarray(train.y)
  if args.quick:
    x, y = x[:1000], y[:1000]
  busy = common.busy_note()
  if busy:
    print(busy)
  payload = {"machine": common.machine(), "rounds": rounds, "lr": LR, "momentum": MOMENTUM,
             "l2": L2, "num_examples": int(x.shape[0]), "batches": [], "widths": [],
             "ablation": [], "profile": []}
  for batch in BATCHES:
    timings = time_columns(x, y, 256, batch, rounds)
    payload["batches"].append({"batch": batch, "timings": timings})
    print(f"B={batch}: " + ", ".join(f"{c} {common.ms(t['median'])} ms"
                                     for c, t in timings.items()), flush=True)
  if args.widths:
    for hidden in WIDTHS[:2] if args.quick else WIDTHS:
      timings = time_columns(x, y, hidden, 128, max(2, rounds // 2), block=2)
      payload["widths"].append({"hidden": hidden, "timings": timings})
      print(f"hidden={hidden}: " + ", ".join(f"{c} {common.ms(t['median'])} ms"
                                             for c, t in timings.items()), flush=True)
  if args.ablation:
    for batch in BATCHES:
      timings = ablation(x, y, batch, rounds)
      payload["ablation"].append({"batch": batch, "timings": timings})
      print(f"ablation B={batch}: " + ", ".join(f"{v} {common.ms(t['median'])} ms"
                                                for v, t in timings.items()), flush=True)
  if args.profile and jax.default_backend() == "cpu":
    for batch in BATCHES:
      payload["profile"].append(profile(x, y, batch, optimizer(), L2,
                                         epochs=2 if args.quick else 5))
  payload["busy"] = busy
  name = common.result_name("epoch", args.quick)
  common.write_results(name, payload, markdown(payload), args.out)
  plot(payload, os.path.join(args.out, name + ".png"))


if __name__ == "__main__":
  main()
