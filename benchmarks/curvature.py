"""Gradient statistics and curvature (E27)-(E35) against one gradient and their autodiff routes.

On the source's network (256-256-10, float32), at m = 128, 1024 and 4096: each quantity of
`mj.gradient_moments`, `mj.ggn_diagonal` (exact and one sampled label), `mj.hessian_diagonal`,
`mj.per_sample_ggn_diagonals`, `mj.kronecker_factors` and the two products, timed (compiled
cores, no input checks) against the analytic gradient, and against its autodiff route:
jit(vmap(grad)) then squares and variance for the first-order statistics, jax.vjp per example
and per column of the output Hessian's square root for the GGN diagonal, jax.jvp + jax.vjp for
the GGN-vector product, jax.jvp of jax.grad for the Hessian-vector product. jax.hessian's
diagonal does not fit for this network (P = 68,362 parameters: a P x P float32 Hessian is
18.7 GB), so it is timed on a 64-32-10 network beside the analytic one. Memory: the bytes XLA
plans (temp + output of `memory_analysis()`) per example, the slope between the smallest and the
largest m. Every pair is checked to agree before its times are kept.

    python benchmarks/curvature.py [--quick] [--out DIR]
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import mlp_jax as mj  # noqa: E402
from mlp_jax.core import backprop, curvature, curvature_products, gradient_moments  # noqa: E402
from mlp_jax.io import data  # noqa: E402
from mlp_jax.oracle import autodiff  # noqa: E402
from mlp_jax.oracle import curvature as routes  # noqa: E402

LAYERS = (256, 256, 10)
SMALL_LAYERS = (64, 32, 10)
SIZES = [128, 1024, 4096]
QUICK_SIZES = [128, 512]
L2 = 1e-3
PER_SAMPLE_GGN_MAX_M = 1024  # its output is m x P floats: 1.1 GB at m = 4096

KEY = jax.random.PRNGKey(0)

# name -> (what it is, jitted function of (params, x, y, v)); the analytic ones first.
ANALYTIC = {
    "grads": ("the analytic gradient (E7)-(E12), the baseline",
              jax.jit(lambda p, x, y, v: backprop.objective_and_grads(p, x, y, L2)[1])),
    "moments": ("gradient_moments: mean, sum of squares, variance, layer norms (E27)",
                jax.jit(lambda p, x, y, v: gradient_moments.moments_of(p, x, y))),
    "sum_squared": ("sum_grad_squared alone (E27)",
                    jax.jit(lambda p, x, y, v: gradient_moments.SUM_SQUARED.plain(p, x, y))),
    "variance": ("grad_variance alone (E27)",
                 jax.jit(lambda p, x, y, v: gradient_moments.VARIANCE.plain(p, x, y))),
    "ggn_diag": ("ggn_diagonal, exact (E29)",
                 jax.jit(lambda p, x, y, v: curvature.GGN_DIAGONAL.plain(p, x, y, L2, None))),
    "ggn_mc": ("ggn_diagonal, one sampled label (E30)",
               jax.jit(lambda p, x, y, v: curvature.GGN_DIAGONAL.plain(p, x, y, L2, KEY))),
    "hessian_diag": ("hessian_diagonal (E32); = GGN for ReLU",
                     jax.jit(lambda p, x, y, v: curvature.HESSIAN_DIAGONAL.plain(p, x, y, L2))),
    "per_sample_ggn": ("per_sample_ggn_diagonals (E29), m x P output",
                       jax.jit(lambda p, x, y, v: curvature.PER_SAMPLE_GGN.plain(p, x, y))),
    "kflr": ("kronecker_factors, exact columns (E33)",
             jax.jit(lambda p, x, y, v: curvature.KRONECKER.plain(p, x, y, None))),
    "kfac": ("kronecker_factors, one sampled label (E33)",
             jax.jit(lambda p, x, y, v: curvature.KRONECKER.plain(p, x, y, KEY))),
    "ggn_vp": ("ggn_vector_product (E34)", jax.jit(
        lambda p, x, y, v: curvature_products.curvature_product(p, x, y, v, L2, False))),
    "hvp": ("hessian_vector_product (E35)", jax.jit(
        lambda p, x, y, v: curvature_products.curvature_product(p, x, y, v, L2, True))),
}


@jax.jit
def vmap_moments(p, x, y, v):
  """The autodiff route to (E27): per-example gradients by jit(vmap(grad)), then reductions."""
  per = autodiff._per_sample_autodiff(p, x, y)
  return (jax.tree.map(lambda g: g.mean(0), per), jax.tree.map(lambda g: (g * g).sum(0), per),
          jax.tree.map(lambda g: g.var(0), per))


AUTODIFF = {  # name -> (what it is, jitted function, the analytic quantity it is compared to)
    "vmap_moments": ("jit(vmap(grad)) per-example gradients, then mean, squares, variance",
                     vmap_moments, "moments"),
    "vjp_ggn_diag": ("per example, jax.vjp of z_i for each of the K columns of sqrt(H_i)",
                     jax.jit(lambda p, x, y, v: routes.autodiff_ggn_diagonal(p, x, y, L2)),
                     "ggn_diag"),
    "jvp_vjp_ggn_vp": ("jax.jvp of the logits, H, jax.vjp", jax.jit(
        lambda p, x, y, v: routes.autodiff_ggn_vector_product(p, x, y, v, L2)), "ggn_vp"),
    "jvp_grad_hvp": ("jax.jvp of jax.grad (forward over reverse)", jax.jit(
        lambda p, x, y, v: routes.autodiff_hessian_vector_product(p, x, y, v, L2)), "hvp"),
}


def rel(a, b):
  return max(mj.relative_error(np.asarray(u), np.asarray(w))
             for u, w in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def timed(fn, args, timing):
  start = time.perf_counter()
  first = jax.block_until_ready(fn(*args))
  first_call = time.perf_counter() - start
  stats = common.time_call(lambda: fn(*args), **timing)
  return first, dict(stats, first_call=first_call, memory=common.planned_bytes(fn, *args))


def batch(m, layers):
  ds = data.make_synthetic(m, layers[0], layers[-1], seed=0)
  params = mj.init_params(0, layers)
  return params, jnp.asarray(ds.x), jnp.asarray(ds.y), mj.init_params(1, layers)


def run_size(m, timing):
  args = batch(m, LAYERS)
  out, values, checks = {}, {}, {}
  for name, (_, fn) in ANALYTIC.items():
    if name == "per_sample_ggn" and m > PER_SAMPLE_GGN_MAX_M:
      continue
    values[name], out[name] = timed(fn, args, timing)
  for name, (_, fn, analytic) in AUTODIFF.items():
    value, out[name] = timed(fn, args, timing)
    got = values[analytic]
    got = got[:3] if analytic == "moments" else got
    checks[f"{analytic} vs {name}"] = rel(got, value)
  return out, checks


def run_hessian(m, timing):
  """The jax.hessian diagonal against the analytic one on a network where it fits."""
  args = batch(m, SMALL_LAYERS)
  ours = jax.jit(lambda p, x, y, v: curvature.HESSIAN_DIAGONAL.plain(p, x, y, L2))
  theirs = jax.jit(lambda p, x, y, v: routes.autodiff_hessian_diagonal(p, x, y, L2))
  grads = ANALYTIC["grads"][1]
  results = {}
  for name, fn in (("grads", grads), ("hessian_diag", ours), ("jax_hessian_diag", theirs)):
    results[name] = timed(fn, args, timing)
  check = rel(results["hessian_diag"][0], results["jax_hessian_diag"][0])
  return {k: v[1] for k, v in results.items()}, check


TARGETS = [  # (label, numerator, denominator, at most)
    ("sum_squared / grads <= 1.5", "sum_squared", "grads", 1.5),
    ("variance / grads <= 1.5", "variance", "grads", 1.5),
    ("moments / grads <= 1.5", "moments", "grads", 1.5),
    ("ggn_diag / grads <= K/2 + 1 = 6", "ggn_diag", "grads", 6.0),
    ("vmap_moments / moments >= 50 (m = 1024)", "vmap_moments", "moments", None),
    ("vjp_ggn_diag / ggn_diag >= 50 (m = 1024)", "vjp_ggn_diag", "ggn_diag", None),
]


def markdown(results, checks, slope, small, notes):
  ms = sorted(results)
  names = [n for n in list(ANALYTIC) + list(AUTODIFF) if n in results[ms[0]]]
  rows = []
  for n in names:
    row = [n]
    for m in ms:
      r = results[m].get(n)
      row.append("-" if r is None else
                 f"{common.ms(r['median'])} ({r['median'] / results[m]['grads']['median']:.2f}x)")
    row.append(f"{slope[n]:.0f}" if n in slope else "-")
    rows.append(row)
  route_rows = [[n, analytic] + [f"{results[m][n]['median'] / results[m][analytic]['median']:.0f}x"
                                 for m in ms]
                for n, (_, _, analytic) in AUTODIFF.items()]
  target_rows = []
  for label, a, b, most in TARGETS:
    ratios = {m: results[m][a]["median"] / results[m][b]["median"] for m in ms}
    target_rows.append([label] + [f"{ratios[m]:.2f}" for m in ms])
  small_times, small_check = small
  lines = [f"### {'-'.join(map(str, LAYERS))}, float32: time per call, ms (and x one gradient); "
           "bytes planned per example\n",
           common.markdown_table(["quantity"] + [f"m = {m}" for m in ms] + ["bytes / example"],
                                 rows),
           "\n### Each autodiff route against the analytic quantity (time ratio)\n",
           common.markdown_table(["autodiff route", "analytic"] + [f"m = {m}" for m in ms],
                                 route_rows),
           "\n### The issue's targets (ratios of medians)\n",
           common.markdown_table(["target"] + [f"m = {m}" for m in ms], target_rows),
           f"\n### jax.hessian's diagonal on {'-'.join(map(str, SMALL_LAYERS))} (where it fits), "
           f"m = {SMALL_M}\n",
           common.markdown_table(["quantity", "ms", "x one gradient"],
                                 [[n, common.ms(r["median"]),
                                   f"{r['median'] / small_times['grads']['median']:.1f}"]
                                  for n, r in small_times.items()]),
           f"\nAgreement with jax.hessian: max relative error {small_check:.2g}.",
           "\n### Agreement, analytic against autodiff (max relative error per leaf)\n",
           common.markdown_table(["m"] + list(checks[ms[0]]),
                                 [[m] + [f"{v:.2g}" for v in checks[m].values()] for m in ms])]
  if notes:
    lines += ["", *[f"- {x}" for x in notes]]
  return "\n".join(lines)


SMALL_M = 256


def slopes(results):
  ms = sorted(results)
  out = {}
  for name in results[ms[-1]]:
    present = [m for m in ms if name in results[m] and results[m][name].get("memory")]
    if len(present) >= 2:
      lo, hi = present[0], present[-1]
      out[name] = ((results[hi][name]["memory"]["peak_extra"]
                    - results[lo][name]["memory"]["peak_extra"]) / (hi - lo))
  return out


def main():
  parser = common.add_args(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
  parser.add_argument("--sizes", type=int, nargs="+", help="batch sizes (default: all)")
  args = parser.parse_args()
  sizes = args.sizes or (QUICK_SIZES if args.quick else SIZES)
  timing = (dict(repeats=3, warmup=1, min_seconds=0.02) if args.quick
            else dict(repeats=11, warmup=2, min_seconds=1.0, max_seconds=8.0))
  notes = [n for n in (common.busy_note(),) if n]
  results, checks = {}, {}
  for m in sizes:
    start = time.perf_counter()
    results[m], checks[m] = run_size(m, timing)
    print(f"  m={m}: {time.perf_counter() - start:.1f} s", flush=True)
  small = run_hessian(SMALL_M, timing)
  slope = slopes(results)
  if args.quick:
    notes.append("--quick: few repetitions; timings are only a smoke test")
  notes.append(f"per_sample_ggn is not run above m = {PER_SAMPLE_GGN_MAX_M}: its output alone "
               "is m x 68,362 floats")
  payload = {"machine": common.machine(), "quick": args.quick, "layers": list(LAYERS),
             "l2": L2, "timing": timing, "notes": notes,
             "analytic": {k: v[0] for k, v in ANALYTIC.items()},
             "autodiff": {k: v[0] for k, v in AUTODIFF.items()},
             "bytes_per_example_slope": slope,
             "checks": {str(m): c for m, c in checks.items()},
             "results": {str(m): r for m, r in results.items()},
             "hessian_small": {"layers": list(SMALL_LAYERS), "m": SMALL_M, "results": small[0],
                               "max_rel_error": small[1]}}
  common.write_results(common.result_name("curvature", args.quick), payload,
                       markdown(results, checks, slope, small, notes), args.out)


if __name__ == "__main__":
  main()
