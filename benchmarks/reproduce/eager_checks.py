"""What the eager calls' value checks cost a user's loop (ratios within one run).

Per call, in an eager loop on the 256-256-10 network: `mj.loss_and_grads` plus an optax SGD
update, and `mj.per_sample_grad_norms`; each with the value checks on (the default), inside
`mj.value_checks(False)`, and as the unchecked compiled core. Medians of 7 interleaved
repetitions.

    python benchmarks/reproduce/eager_checks.py [OUT.json]  # default results/eager_checks.json

The "before the switch" rows of docs/architecture.md came from this script as it stood at commit
352347a (`git show 352347a:benchmarks/eager_checks.py`), which could also run on the layout of
commit de89e98; this version runs on the current layout only.
"""

import argparse
import os
import sys
import time

# benchmarks/, one folder up: the shared harness (common.py)
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import common  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

import mlp_jax as mj  # noqa: E402
from mlp_jax.core import backprop, per_example  # noqa: E402

GRADS_CORE, NORMS_CORE = backprop.objective_and_grads_jit, per_example.GLOBAL_NORMS.plain

SIZES = ((32, 300), (256, 200), (2048, 40))  # (m, calls per timed loop)
REPEATS = 7


def batch(m, seed=0):
  rng = np.random.default_rng(seed)
  return (jnp.asarray(rng.standard_normal((m, 256)).astype(np.float32)),
          jnp.asarray(rng.integers(0, 10, m).astype(np.int32)))


def grads_loop(fn, params, x, y, calls):
  """A user's eager training loop: gradient, optax update, next call."""
  opt = optax.sgd(0.01)
  state = opt.init(params)
  for _ in range(calls):
    _, grads = fn(params, x, y, 1e-3)
    updates, state = opt.update(grads, state)
    params = optax.apply_updates(params, updates)
  jax.block_until_ready(params)


def norms_loop(fn, params, x, y, calls):
  for _ in range(calls):
    out = fn(params, x, y)
  jax.block_until_ready(out)


def checks_off(fn):
  def call(*args):
    with mj.value_checks(False):
      return fn(*args)
  return call


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("out", nargs="?", default=os.path.join(common.RESULTS, "eager_checks.json"),
                      help="the JSON file to write (default: benchmarks/results/eager_checks.json)")
  args = parser.parse_args()
  variants = {"grads_checked": (grads_loop, mj.loss_and_grads),
              "grads_unchecked_core": (grads_loop, GRADS_CORE),
              "norms_checked": (norms_loop, mj.per_sample_grad_norms),
              "norms_unchecked_core": (norms_loop, NORMS_CORE),
              "grads_checks_off": (grads_loop, checks_off(mj.loss_and_grads)),
              "norms_checks_off": (norms_loop, checks_off(mj.per_sample_grad_norms))}
  params = mj.init_params(jax.random.PRNGKey(0))
  results = {}
  for m, calls in SIZES:
    x, y = batch(m)
    for loop, fn in variants.values():
      loop(fn, params, x, y, 3)  # compile
    times = {name: [] for name in variants}
    for _ in range(REPEATS):
      for name, (loop, fn) in variants.items():
        start = time.perf_counter()
        loop(fn, params, x, y, calls)
        times[name].append((time.perf_counter() - start) / calls * 1e6)
    med = {name: common.summarize(t)["median"] for name, t in times.items()}
    results[m] = med
    ratios = {f"{kind} {mode}": med[f"{kind}_{mode}"] / med[f"{kind}_unchecked_core"]
              for kind in ("grads", "norms") for mode in ("checked", "checks_off")}
    print(f"m={m}: " + ", ".join(f"{k} {v:.1f} us" for k, v in med.items()))
    print("   vs the unchecked core: " + ", ".join(f"{k} {v:.3f}x" for k, v in ratios.items()))
  common.write_json(args.out, {"device": jax.devices()[0].device_kind, "jax": jax.__version__,
                               "us_per_call_median": results})


if __name__ == "__main__":
  main()
