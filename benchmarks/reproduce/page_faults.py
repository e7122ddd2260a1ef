"""Page faults and time per large-batch gradient call, with and without `retain_freed_memory`.

Each mode runs in a fresh process (the glibc setting lasts for the life of a process): the
compiled analytic gradient of the 256-256-10 network at m = 16384, float32, its scratch memory
as XLA plans it, the minor page faults per call (`getrusage`) and the median time per call.

    python benchmarks/reproduce/page_faults.py [--m 16384] [--calls 20]
"""

import argparse
import json
import os
import subprocess
import sys

# benchmarks/, one folder up: the shared harness (common.py) and host_memory.py
BENCHMARKS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, BENCHMARKS)
import common  # noqa: E402

CHILD = r"""
import json, resource, sys, time
import jax, numpy as np
import mlp_jax as mj
from mlp_jax.core import backprop
m, calls, retain = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "1"
sys.path.insert(0, sys.argv[4])
import host_memory
applied = host_memory.retain_freed_memory() if retain else False
rng = np.random.default_rng(0)
x = jax.numpy.asarray(rng.standard_normal((m, 256)).astype(np.float32))
y = jax.numpy.asarray(rng.integers(0, 10, m).astype(np.int32))
params = mj.init_params(jax.random.PRNGKey(0))
f = backprop.objective_and_grads_jit
temp = f.lower(params, x, y, 1e-4).compile().memory_analysis().temp_size_in_bytes
for _ in range(3):
  jax.block_until_ready(f(params, x, y, 1e-4))
faults, times = [], []
for _ in range(calls):
  before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  t0 = time.perf_counter()
  jax.block_until_ready(f(params, x, y, 1e-4))
  times.append(time.perf_counter() - t0)
  faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({"retain_applied": applied, "temp_bytes": temp,
                  "faults_per_call_median": float(np.median(faults)),
                  "ms_per_call_median": 1e3 * float(np.median(times))}))
"""


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  common.add_args(parser)
  parser.add_argument("--m", type=int, default=16384)
  parser.add_argument("--calls", type=int, default=20)
  args = parser.parse_args()
  m, calls = (1024, 3) if args.quick else (args.m, args.calls)
  rows, runs = [], {}
  for mode, flag in (("default", "0"), ("retain_freed_memory", "1")):
    out = subprocess.run([sys.executable, "-c", CHILD, str(m), str(calls), flag, BENCHMARKS],
                         capture_output=True, text=True, check=True).stdout
    runs[mode] = json.loads(out.strip().splitlines()[-1])
    r = runs[mode]
    rows.append([mode, f"{r['temp_bytes'] / 2**20:.1f}", f"{r['faults_per_call_median']:.0f}",
                 f"{r['ms_per_call_median']:.1f}"])
  md = (f"### Analytic gradient, 256-256-10 float32, m = {m}: {calls} calls per mode, medians\n\n"
        + common.markdown_table(["mode", "XLA scratch MiB", "minor page faults per call",
                                 "ms per call"], rows))
  common.write_results(common.result_name("page_faults", args.quick),
                       {"machine": common.machine(), "quick": args.quick, "m": m,
                        "calls": calls, "results": runs}, md, args.out)


if __name__ == "__main__":
  main()
