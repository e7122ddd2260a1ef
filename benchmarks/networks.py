"""Loss + gradients and per-example norms of every network: analytic against jax.grad.

    python benchmarks/networks.py [--quick] [--out DIR] [--sizes M ...] [--rounds R]

On the source's shape (256-256-10, float32, lambda = 1e-3, He-normal weights from seed 0, inputs
standard normal), for every hidden activation (`sorted(mj.ACTIVATIONS)`, leaky_relu at its
default slope) with the softmax output, every output (`sorted(mj.OUTPUTS)`) with ReLU, and two
mixed networks (tanh + squared error, GELU + sigmoid), at m = 128 and 4096 (--quick: m = 64):

  analytic   `backprop.objective_and_grads_jit(params, x, y, l2, net=net)`: the loss (E6) and
             its hand-derived gradient, (E7)-(E12) with (E16)-(E25), without input checks
  jax.grad   `jax.jit(jax.value_and_grad(objective), static net)`: the same loss and gradient
             by reverse-mode autodiff of `core.objective.objective` (both return loss and
             gradient; the oracle's `grad_objective` returns the gradient alone)
  norms      `per_example.GLOBAL_NORMS.plain(params, x, y, net=net)`: the m per-example
             gradient norms (E15) by the rank-one identity, one forward and one backward pass

Targets per output: int labels (m,) in 0..9 (softmax), 0/1 indicators (m, 10) as floats
(sigmoid), standard normal values (m, 10) (squared error), Poisson(2) counts (m, 10) as floats
(Poisson). The three functions are timed in turns at each (network, m), so that a slow spell of
a shared machine hits them all: per round, each runs WARMUP untimed calls and then `block` timed
ones back to back, each blocked until ready (medians over all rounds). The ratios are of
medians from the same run. Targets: analytic / jax.grad <= 1.05, norms / analytic <= 1.0.
Before timing, the analytic gradient is checked against jax.grad's, and the norms of the first
64 rows against the norms of `vmap(grad)` per-example gradients (max relative errors, listed).
"""

import argparse
import os
import sys
import time
from typing import Callable, Dict, List, Tuple

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

import mlp_jax as mj  # noqa: E402
from mlp_jax.core import backprop, per_example  # noqa: E402
from mlp_jax.core.network import make_network  # noqa: E402
from mlp_jax.core.objective import objective  # noqa: E402
from mlp_jax.oracle import autodiff as oracle  # noqa: E402

LAYERS = (256, 256, 10)
SIZES = [128, 4096]
QUICK_SIZES = [64]
L2 = 1e-3
SOFTMAX = "softmax_cross_entropy"
MIXED = [("tanh", "identity_squared_error"), ("gelu", "sigmoid_binary_cross_entropy")]
GRAD_TARGET = 1.05   # analytic / jax.grad at most this
NORMS_TARGET = 1.0   # norms / analytic at most this
CHECK_ROWS = 64      # rows whose norms are checked against vmap(grad)
WARMUP = 2           # untimed calls before each turn's timed block

IMPLS = {
    "analytic": "backprop.objective_and_grads_jit(params, x, y, l2, net=net): loss (E6) and "
                "hand-derived gradient, no input checks",
    "autodiff": "jax.jit(jax.value_and_grad(core.objective.objective), static_argnames=net): "
                "loss and gradient by autodiff",
    "norms": "per_example.GLOBAL_NORMS.plain(params, x, y, net=net): per-example gradient "
             "norms (E15), rank-one",
}

value_and_grad = jax.jit(jax.value_and_grad(objective), static_argnames=("compute_dtype", "net"))


def networks() -> List[Tuple[str, str]]:
  """(activation, output) pairs: every activation with softmax, every output with ReLU (the
  source's network once), then the mixed ones."""
  pairs = [(a, SOFTMAX) for a in sorted(mj.ACTIVATIONS)]
  pairs += [("relu", o) for o in sorted(mj.OUTPUTS) if o != SOFTMAX]
  return pairs + MIXED


def targets(output: str, m: int, k: int, seed: int = 1) -> jax.Array:
  """Targets of the kind `output` takes, m rows and k outputs (real ones float32)."""
  rng = np.random.default_rng(seed)
  if output == SOFTMAX:
    return jnp.asarray(rng.integers(0, k, m).astype(np.int32))
  draw = {"sigmoid_binary_cross_entropy": lambda: rng.integers(0, 2, (m, k)),
          "identity_squared_error": lambda: rng.standard_normal((m, k)),
          "poisson_log_link": lambda: rng.poisson(2.0, (m, k))}[output]
  return jnp.asarray(draw().astype(np.float32))


def inputs(m: int, n: int, seed: int = 0) -> jax.Array:
  """Standard normal inputs (m, n), float32."""
  return jnp.asarray(np.random.default_rng(seed).standard_normal((m, n)).astype(np.float32))


def time_in_turns(fns: Dict[str, Callable[[], object]], rounds: int, block: int) -> Dict:
  """{name: timing dict (seconds)}: per round, each fn runs WARMUP untimed calls then `block`
  timed ones, each blocked until ready."""
  times = {name: [] for name in fns}
  for _ in range(rounds):
    for name, fn in fns.items():
      for _ in range(WARMUP):
        jax.block_until_ready(fn())
      for _ in range(block):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times[name].append(time.perf_counter() - t0)
  return {name: common.summarize(t) for name, t in times.items()}


def max_rel(actual, reference) -> float:
  """The largest relative error of a leaf of `actual` against `reference`'s."""
  return max(mj.relative_error(np.asarray(u), np.asarray(v))
             for u, v in zip(jax.tree.leaves(actual), jax.tree.leaves(reference)))


def agreement(params, x, y, net) -> Dict[str, float]:
  """Max relative errors: analytic loss and gradient vs jax.grad's, norms of the first
  CHECK_ROWS rows vs those of vmap(grad)."""
  loss, grads = backprop.objective_and_grads_jit(params, x, y, L2, net=net)
  ref_loss, ref_grads = value_and_grad(params, x, y, L2, net=net)
  rows = min(CHECK_ROWS, x.shape[0])
  norms = per_example.GLOBAL_NORMS.plain(params, x[:rows], y[:rows], net=net)
  ref_norms = jax.vmap(optax.tree.norm)(
      oracle._per_sample_autodiff(params, x[:rows], y[:rows], net=net))
  return {"loss": mj.relative_error(np.asarray(loss), np.asarray(ref_loss)),
          "grads": max_rel(grads, ref_grads),
          "norms": mj.relative_error(np.asarray(norms), np.asarray(ref_norms))}


def run_config(activation: str, output: str, m: int, rounds: int, block: int) -> Dict:
  """Timings, ratios and agreement at one (network, m)."""
  net = make_network(activation, output)
  params = mj.init_params(jax.random.PRNGKey(0), LAYERS)
  x, y = inputs(m, LAYERS[0]), targets(output, m, LAYERS[-1])
  fns = {
      "analytic": lambda: backprop.objective_and_grads_jit(params, x, y, L2, net=net),
      "autodiff": lambda: value_and_grad(params, x, y, L2, net=net),
      "norms": lambda: per_example.GLOBAL_NORMS.plain(params, x, y, net=net),
  }
  first = {}
  for name, fn in fns.items():  # compiles, reported, not timed
    start = time.perf_counter()
    jax.block_until_ready(fn())
    first[name] = time.perf_counter() - start
  check = agreement(params, x, y, net)
  stats = time_in_turns(fns, rounds, block)
  grad_ratio = stats["analytic"]["median"] / stats["autodiff"]["median"]
  norms_ratio = stats["norms"]["median"] / stats["analytic"]["median"]
  return {"activation": activation, "output": output, "m": m, "timings": stats,
          "first_call": first, "agreement": check,
          "analytic_over_autodiff": grad_ratio, "grad_target_met": grad_ratio <= GRAD_TARGET,
          "norms_over_analytic": norms_ratio, "norms_target_met": norms_ratio <= NORMS_TARGET}


def markdown(results: List[Dict], rounds: int, block: int, notes: List[str]) -> str:
  yes = lambda ok: "yes" if ok else "**no**"
  rows = [[f"{r['activation']} / {r['output']}", r["m"],
           common.ms_spread(r["timings"]["analytic"]), common.ms_spread(r["timings"]["autodiff"]),
           f"{r['analytic_over_autodiff']:.2f}", yes(r["grad_target_met"]),
           common.ms_spread(r["timings"]["norms"]), f"{r['norms_over_analytic']:.2f}",
           yes(r["norms_target_met"])] for r in results]
  check_rows = [[f"{r['activation']} / {r['output']}", r["m"]]
                + [f"{v:.1e}" for v in r["agreement"].values()] for r in results]
  met = sum(r["grad_target_met"] for r in results), sum(r["norms_target_met"] for r in results)
  n, d, k = LAYERS
  lines = [f"### Loss + gradients and per-example norms by network, {n}-{d}-{k}, float32: "
           f"ms per call, median [p10-p90] ({rounds} rounds of {block} calls each, in turns)\n",
           common.markdown_table(
               ["network (activation / output)", "m", "analytic", "jax.grad",
                "analytic / jax.grad", f"<= {GRAD_TARGET}", "norms", "norms / analytic",
                f"<= {NORMS_TARGET}"], rows),
           f"\nTargets met: analytic / jax.grad <= {GRAD_TARGET} in {met[0]} of {len(results)}; "
           f"norms / analytic <= {NORMS_TARGET} in {met[1]} of {len(results)}.",
           "\n### Agreement, max relative error (loss, gradient vs jax.grad; norms of the first "
           f"{CHECK_ROWS} rows vs vmap(grad))\n",
           common.markdown_table(["network", "m", "loss", "gradient", "norms"], check_rows)]
  if notes:
    lines += ["", *[f"- {x}" for x in notes]]
  return "\n".join(lines)


def main():
  parser = common.add_args(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
  parser.add_argument("--sizes", type=int, nargs="+", help="batch sizes (default: 128 4096)")
  parser.add_argument("--rounds", type=int, help="rounds of timed calls (default: 7; 2 quick)")
  args = parser.parse_args()
  sizes = args.sizes or (QUICK_SIZES if args.quick else SIZES)
  rounds, block = (2, 3) if args.quick else (7, 10)
  rounds = args.rounds or rounds
  notes = []
  busy = common.busy_note()
  if busy:
    notes.append(busy)
  results = []
  for activation, output in networks():
    for m in sizes:
      start = time.perf_counter()
      results.append(run_config(activation, output, m, rounds, block))
      print(f"  {activation} / {output} m={m}: {time.perf_counter() - start:.1f} s", flush=True)
  if args.quick:
    notes.append("--quick: few repetitions; timings are only a smoke test")
  payload = {"machine": common.machine(), "quick": args.quick, "layers": list(LAYERS),
             "l2": L2, "rounds": rounds, "block": block, "warmup": WARMUP, "impls": IMPLS,
             "targets": {"analytic_over_autodiff": GRAD_TARGET,
                         "norms_over_analytic": NORMS_TARGET},
             "notes": notes, "results": results}
  common.write_results(common.result_name("networks", args.quick), payload,
                       markdown(results, rounds, block, notes), args.out)


if __name__ == "__main__":
  main()
