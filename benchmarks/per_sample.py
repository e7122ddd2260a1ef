"""Per-example gradient norms and clipped means (E13)-(E15) against vmap(grad), by batch size.

On the source's network (256-256-10, float32): mlp_jax's rank-one norms and clipped mean (one
forward and one backward pass) and a plain gradient (the baseline), against per-example
gradients by `jax.vmap(jax.grad(l_i))` materialised, the same then clipped the way the JAX DP
example does it (optax.tree.norm per example, scale, mean), and jax_privacy's clipped gradient
when it is installed. Time ratios, and the memory XLA plans for each compiled function
(temp + output bytes of `memory_analysis()`): O(m(n + d)) against O(m n d).

    python benchmarks/per_sample.py [--quick] [--out DIR]
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
import optax  # noqa: E402

import mlp_jax as mj  # noqa: E402
from mlp_jax.core import backprop, per_example  # noqa: E402
from mlp_jax.io import data  # noqa: E402
from mlp_jax.oracle import autodiff  # noqa: E402
from mlp_jax.core.objective import objective  # noqa: E402
from mlp_jax.core.model import Dense  # noqa: E402

LAYERS = (256, 256, 10)
SIZES = [64, 256, 1024, 4096]
QUICK_SIZES = [64, 256]
CLIP_QUANTILE = 0.5  # C is this quantile of the per-example norms at init: half are clipped
L2 = 1e-3

IMPLS = {
    "grads": "backprop.objective_and_grads_jit: the analytic batch gradient (E7)-(E12), baseline",
    "norms": "per_example.GLOBAL_NORMS.plain: rank-one per-example norms (E15)",
    "clipped": "per_example.CLIPPED_MEAN.plain: clipped mean by row-scaled errors (E13)-(E15)",
    "vmap": "jax.jit(jax.vmap(jax.grad(l_i))): per-example gradients materialised",
    "vmap_clip": "one jit: vmap(grad) per-example gradients, optax.tree.norm each, scale, mean, "
                 "+ penalty",
    "jax_privacy": "jax.jit(jax_privacy.clipped_grad(l_i, normalize_by=m)) + penalty",
    "grads_api": "mj.grads: the baseline through the public API (per-call input checks)",
    "norms_api": "mj.per_sample_grad_norms (public API)",
    "clipped_api": "mj.clipped_mean_grads (public API)",
}


vmap_grads = autodiff._per_sample_autodiff  # jit(vmap(grad(l_i))), without the API's checks


def with_penalty(mean, params, l2, m):
  """The batch gradient of (E6) from the clipped data term: + (lambda/m) W on the weights."""
  return tuple(Dense(w=g.w + (l2 / m) * p.w, b=g.b) for g, p in zip(mean, params))


@jax.jit
def vmap_clip(params, x, y, clip_norm, l2):
  """The JAX DP example's way: per-example gradients, their norms, scale, mean, + penalty."""
  per_ex = vmap_grads(params, x, y)
  norms = jax.vmap(optax.tree.norm)(per_ex)
  scale = jnp.minimum(1.0, clip_norm / jnp.maximum(norms, 1e-12))
  mean = jax.tree.map(lambda g: jnp.tensordot(scale, g, axes=1) / x.shape[0], per_ex)
  return with_penalty(mean, params, l2, x.shape[0])


def jax_privacy_fn(m, clip_norm):
  """jit of jax_privacy.clipped_grad on the one-example loss, plus the penalty; None if absent."""
  try:
    import jax_privacy
  except Exception as e:  # not installed, or broken
    return None, f"jax_privacy not importable ({type(e).__name__}: {e})"
  clipped = jax_privacy.clipped_grad(objective, l2_clip_norm=clip_norm, batch_argnums=(1, 2),
                                     normalize_by=float(m))

  @jax.jit
  def fn(params, x, y, l2):
    return with_penalty(clipped(params, x, y), params, l2, x.shape[0])
  return fn, f"jax_privacy {getattr(jax_privacy, '__version__', '?')}"


def rel(a, b):
  return max(mj.relative_error(np.asarray(u), np.asarray(v))
             for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def run_size(m, clip, timing, privacy_fn_for):
  ds = data.make_synthetic(m, LAYERS[0], LAYERS[-1], seed=0)
  x, y = jnp.asarray(ds.x), jnp.asarray(ds.y)
  params = mj.init_params(jax.random.PRNGKey(0), LAYERS)
  privacy = privacy_fn_for(m, clip)
  jitted = {  # name -> (jitted function, args): timed and memory-analysed
      "grads": (backprop.objective_and_grads_jit, (params, x, y, L2)),
      "norms": (per_example.GLOBAL_NORMS.plain, (params, x, y)),
      "clipped": (per_example.CLIPPED_MEAN.plain, (params, x, y, clip, L2)),
      "vmap": (vmap_grads, (params, x, y)),
      "vmap_clip": (vmap_clip, (params, x, y, clip, L2)),
  }
  if privacy is not None:
    jitted["jax_privacy"] = (privacy, (params, x, y, L2))
  fns = {name: (lambda f=f, a=a: f(*a)) for name, (f, a) in jitted.items()}
  fns.update(grads_api=lambda: mj.grads(params, x, y, l2=L2),
             norms_api=lambda: mj.per_sample_grad_norms(params, x, y),
             clipped_api=lambda: mj.clipped_mean_grads(params, x, y, clip, l2=L2))
  out = {}
  for name, fn in fns.items():
    start = time.perf_counter()
    first = jax.block_until_ready(fn())
    first_call = time.perf_counter() - start
    out[name] = dict(common.time_call(fn, **timing), impl=name, m=m, first_call=first_call)
    if name in jitted:
      out[name]["memory"] = common.planned_bytes(*jitted[name][0:1], *jitted[name][1])
    if name == "clipped":
      clipped = first
    if name == "norms":
      norms = first
  # The implementations must agree before their times mean anything.
  check = {"clipped_vs_vmap_clip": rel(clipped, vmap_clip(params, x, y, clip, L2)),
           "norms_vs_vmap": float(np.max(np.abs(
               np.asarray(norms) - np.asarray(jax.vmap(optax.tree.norm)(vmap_grads(params, x, y))))
               / np.asarray(norms))),
           "fraction_clipped": float(np.mean(np.asarray(norms) > clip))}
  if privacy is not None:
    check["clipped_vs_jax_privacy"] = rel(clipped, privacy(params, x, y, L2))
  return out, check


RATIOS = [("norms / grads", "norms", "grads"), ("clipped / grads", "clipped", "grads"),
          ("vmap / norms", "vmap", "norms"), ("vmap+clip / clipped", "vmap_clip", "clipped"),
          ("jax_privacy / clipped", "jax_privacy", "clipped")]


def slopes(results):
  """Planned bytes per extra example, between the smallest and the largest m, per function."""
  ms = sorted(results)
  lo, hi = ms[0], ms[-1]
  out = {}
  for name in results[hi]:
    mem_lo, mem_hi = results[lo][name].get("memory"), results[hi][name].get("memory")
    if mem_lo and mem_hi and hi > lo:
      out[name] = (mem_hi["peak_extra"] - mem_lo["peak_extra"]) / (hi - lo)
  return out


def markdown(results, clip, slope, checks, notes):
  ms = sorted(results)
  names = [n for n in ("grads", "norms", "clipped", "vmap", "vmap_clip", "jax_privacy")
           if n in results[ms[0]]]
  api = ("grads_api", "norms_api", "clipped_api")
  time_rows = [[m] + [common.ms_spread(results[m][n]) for n in names]
               + [common.ms(results[m][n]["median"]) for n in api] for m in ms]
  ratio_rows = [[m] + [f"{results[m][a]['median'] / results[m][b]['median']:.2f}"
                       if a in results[m] else "-" for _, a, b in RATIOS] for m in ms]
  mib = lambda b: f"{b / 2 ** 20:.2f}"
  mem_rows = [[m] + [mib(results[m][n]["memory"]["peak_extra"]) if results[m][n].get("memory")
                     else "-" for n in names] for m in ms]
  n, d, k = LAYERS
  mem_rows.append(["bytes / example (slope)"] + [f"{slope[x]:.0f}" if x in slope else "-"
                                                 for x in names])
  check_rows = [[m] + [f"{v:.2g}" for v in checks[m].values()] for m in ms]
  lines = [f"### {'-'.join(map(str, LAYERS))}, float32, C={clip:.3g}: time per call, ms, median "
           "[p10-p90]\n",
           common.markdown_table(["m"] + names + ["mj.grads (API)", "mj.per_sample_grad_norms "
                                                  "(API)", "mj.clipped_mean_grads (API)"],
                                 time_rows),
           "\n### Time ratios (medians, compiled cores)\n",
           common.markdown_table(["m"] + [r[0] for r in RATIOS], ratio_rows),
           "\n### Memory XLA plans: temp + output, MiB\n",
           common.markdown_table(["m"] + names, mem_rows),
           f"\nReference, float32: activations and errors m(n + d + K) x 4 = {4 * (n + d + k)} "
           f"bytes/example; per-example gradients m(nd + d + dK + K) x 4 = "
           f"{4 * (n * d + d + d * k + k)} bytes/example.",
           "\n### Agreement (max relative error) and fraction of examples clipped\n",
           common.markdown_table(["m"] + list(checks[ms[0]]), check_rows)]
  if notes:
    lines += ["", *[f"- {x}" for x in notes]]
  return "\n".join(lines)


def main():
  parser = common.add_args(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
  parser.add_argument("--no-jax-privacy", action="store_true")
  parser.add_argument("--sizes", type=int, nargs="+", help="batch sizes (default: all)")
  args = parser.parse_args()
  sizes = args.sizes or (QUICK_SIZES if args.quick else SIZES)
  timing = (dict(repeats=5, warmup=1, min_seconds=0.05) if args.quick
            else dict(repeats=15, warmup=2, min_seconds=1.0, max_seconds=10.0))
  notes = []
  busy = common.busy_note()
  if busy:
    notes.append(busy)
  privacy_version = None
  if args.no_jax_privacy:
    notes.append("jax_privacy skipped (--no-jax-privacy)")
    privacy_fn_for = lambda m, clip: None
  else:
    probe, why = jax_privacy_fn(1, 1.0)
    if probe is None:
      notes.append(why + "; skipped")
      privacy_fn_for = lambda m, clip: None
    else:
      privacy_version = why
      privacy_fn_for = lambda m, clip: jax_privacy_fn(m, clip)[0]
  probe = data.make_synthetic(256, LAYERS[0], LAYERS[-1], seed=0)
  clip = float(np.quantile(np.asarray(mj.per_sample_grad_norms(
      mj.init_params(jax.random.PRNGKey(0), LAYERS), probe.x, probe.y)), CLIP_QUANTILE))
  results, checks = {}, {}
  for m in sizes:
    start = time.perf_counter()
    results[m], checks[m] = run_size(m, clip, timing, privacy_fn_for)
    print(f"  m={m}: {time.perf_counter() - start:.1f} s", flush=True)
  slope = slopes(results)
  if args.quick:
    notes.append("--quick: few repetitions; timings are only a smoke test")
  payload = {"machine": common.machine(jax_privacy=privacy_version), "quick": args.quick,
             "layers": list(LAYERS), "clip_norm": clip, "clip_quantile": CLIP_QUANTILE,
             "l2": L2, "timing": timing,
             "impls": IMPLS, "notes": notes, "bytes_per_example_slope": slope,
             "checks": {str(m): c for m, c in checks.items()},
             "results": [r for m in sizes for r in results[m].values()]}
  common.write_results(common.result_name("per_sample", args.quick), payload,
                       markdown(results, clip, slope, checks, notes), args.out)


if __name__ == "__main__":
  main()
