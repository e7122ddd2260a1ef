"""What the eager calls' value checks cost a user's loop (ratios within one run).

Per call, in an eager loop on the 256-256-10 network: `mj.loss_and_grads` plus an optax SGD
update, and `mj.per_sample_grad_norms`; each with the value checks on (the default), inside
`mj.value_checks(False)`, and as the unchecked compiled core. Medians of 7 interleaved
repetitions.

    python benchmarks/eager_checks.py [OUT.json]   # default benchmarks/results/eager_checks.json
"""
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import mlp_jax as mj
from mlp_jax.core import backprop, per_example
core = backprop.objective_and_grads_jit

def make(m, seed=0):
  rng = np.random.default_rng(seed)
  return jnp.asarray(rng.standard_normal((m, 256)).astype(np.float32)), jnp.asarray(rng.integers(0, 10, m).astype(np.int32))

def user_loop(fn, params, x, y, n):
  opt = optax.sgd(0.01); s = opt.init(params); p = params
  for _ in range(n):
    loss, g = fn(p, x, y, 1e-3)
    u, s = opt.update(g, s); p = optax.apply_updates(p, u)
  jax.block_until_ready(p)

def norms_loop(fn, params, x, y, n):
  out = None
  for _ in range(n):
    out = fn(params, x, y)
  jax.block_until_ready(out)

unchecked = lambda p, x, y, l2: core(p, x, y, l2)
variants = {"grads_checked": (user_loop, mj.loss_and_grads), "grads_unchecked_core": (user_loop, unchecked),
            "norms_checked": (norms_loop, mj.per_sample_grad_norms), "norms_unchecked_core": (norms_loop, per_example._global_norms_jit)}
def off(fn):
  def g(*a):
    with mj.value_checks(False):
      return fn(*a)
  return g
variants["grads_checks_off"] = (user_loop, off(mj.loss_and_grads))
variants["norms_checks_off"] = (norms_loop, off(mj.per_sample_grad_norms))
params = mj.init_params(jax.random.PRNGKey(0))
res = {}
for m, n in ((32, 300), (256, 200), (2048, 40)):
  x, y = make(m)
  for name, (loop, fn) in variants.items():
    loop(fn, params, x, y, 3)  # compile
  times = {k: [] for k in variants}
  for rep in range(7):
    for name, (loop, fn) in variants.items():
      t = time.perf_counter(); loop(fn, params, x, y, n); times[name].append((time.perf_counter() - t) / n * 1e6)
  med = {k: float(np.median(v)) for k, v in times.items()}
  res[m] = med
  print(f"m={m}: " + ", ".join(f"{k} {v:.1f} us" for k, v in med.items()))
  print(f"   grads checked/unchecked {med['grads_checked']/med['grads_unchecked_core']:.3f}  norms checked/unchecked {med['norms_checked']/med['norms_unchecked_core']:.3f}"
        + f"  grads off/unchecked {med['grads_checks_off']/med['grads_unchecked_core']:.3f}"
        + f"  norms off/unchecked {med['norms_checks_off']/med['norms_unchecked_core']:.3f}")
out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "results",
                                                         "eager_checks.json")
with open(out, "w") as f:
  json.dump({"device": jax.devices()[0].device_kind, "jax": jax.__version__,
             "us_per_call_median": res}, f, indent=1)
