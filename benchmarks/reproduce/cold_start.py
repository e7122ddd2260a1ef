"""Cold start: whole fresh processes, from the interpreter's start to the first gradient.

    python benchmarks/reproduce/cold_start.py [--quick] [--runs 5]

Each variant is a fresh `python -c` process; the variants are run in turns (one of each per
round, `--runs` rounds), and the table gives each one's median wall time and its ratio to the
bare one:

  bare           `import jax` and one tiny op: what any JAX program pays
  mlp_jax        `import mlp_jax`, `init_params`, one `mj.grads` at m = 32; nothing cached
  op-by-op init  the same with the weights drawn as before this version: one eager
                 `jax.random.normal` and scaling per layer, each op its own small program
  mlp_jax, cache warm  the same as mlp_jax after `mj.enable_compilation_cache(DIR)`, DIR
                 filled by one untimed run before the rounds: every later process loads the
                 compiled programs instead of compiling them

Each child also reports where its own time went (import jax, import mlp_jax, init, gradient).
Writes results/cold_start[_quick].json and .md.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

# benchmarks/, one folder up: the shared harness (common.py)
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import common  # noqa: E402

CHILD = """
import json, sys, time
t0 = time.perf_counter()
import jax, jax.numpy as jnp
t1 = time.perf_counter()
variant = sys.argv[1]
if variant == "bare":
  (jnp.ones(3) + 1).block_until_ready()
  print(json.dumps({"import jax": t1 - t0, "op": time.perf_counter() - t1}))
  sys.exit()
import numpy as np
import mlp_jax as mj
if variant == "cache":
  mj.enable_compilation_cache(sys.argv[2])
t2 = time.perf_counter()
key = jax.random.PRNGKey(0)
if variant == "eager":
  keys = jax.random.split(key, 2)
  params = tuple(mj.Dense(jax.random.normal(k, (a, b)) * jnp.sqrt(2.0 / a).astype(jnp.float32),
                          jnp.zeros((b,), jnp.float32))
                 for k, a, b in zip(keys, (256, 256), (256, 10)))
else:
  params = mj.init_params(key)
jax.block_until_ready(params)
t3 = time.perf_counter()
x = np.linspace(-1, 1, 32 * 256, dtype=np.float32).reshape(32, 256)
jax.block_until_ready(mj.grads(params, x, np.arange(32) % 10))
t4 = time.perf_counter()
print(json.dumps({"import jax": t1 - t0, "import mlp_jax": t2 - t1, "init_params": t3 - t2,
                  "first gradient": t4 - t3}))
"""

VARIANTS = {"bare": "bare: import jax + one op", "mlp_jax": "mlp_jax: import, init, gradient",
            "eager": "the same, op-by-op init (before)",
            "cache": "mlp_jax, compilation cache warm"}


def run_child(variant, cache_dir):
  env = {k: v for k, v in os.environ.items()
         if k not in ("MLP_JAX_COMPILATION_CACHE", "JAX_COMPILATION_CACHE_DIR")}
  env["MLP_JAX_COMPILATION_CACHE"] = "off"  # only the "cache" variant turns it on, explicitly
  t0 = time.perf_counter()
  done = subprocess.run([sys.executable, "-c", CHILD, variant, cache_dir], env=env,
                        capture_output=True, text=True, check=True)
  wall = time.perf_counter() - t0
  return wall, json.loads(done.stdout.strip().splitlines()[-1])


def main():
  parser = common.add_args(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
  parser.add_argument("--runs", type=int, default=5)
  args = parser.parse_args()
  runs = 2 if args.quick else args.runs
  busy = common.busy_note()
  if busy:
    print(busy)
  walls = {v: [] for v in VARIANTS}
  parts = {v: [] for v in VARIANTS}
  with tempfile.TemporaryDirectory() as cache_dir:
    run_child("cache", cache_dir)  # fills the cache; not timed
    for _ in range(runs):
      for v in VARIANTS:
        wall, inside = run_child(v, cache_dir)
        walls[v].append(wall)
        parts[v].append(inside)
  bare = statistics.median(walls["bare"])
  rows, results = [], {}
  for v, label in VARIANTS.items():
    median = statistics.median(walls[v])
    inside = {k: statistics.median(p[k] for p in parts[v]) for k in parts[v][0]}
    results[v] = {"walls": walls[v], "median": median, "ratio_to_bare": median / bare,
                  "inside": inside}
    rows.append([label, f"{median:.2f}", f"{median / bare:.2f}x",
                 ", ".join(f"{k} {t:.2f}" for k, t in inside.items())])
  payload = {"machine": common.machine(), "runs": runs, "busy": busy, "results": results}
  m = payload["machine"]
  md = "\n".join([f"# Cold start ({m['date']}, {m['processor']}, {m['cpu_count']} cores, "
                  f"jax {m['jax']}; fresh processes, {runs} rounds, medians)", "",
                  common.markdown_table(["process", "wall s", "vs bare", "inside (s, medians)"],
                                        rows)])
  common.write_results(common.result_name("cold_start", args.quick), payload, md, args.out)


if __name__ == "__main__":
  main()
