"""Loss + gradients and one Adam train step: analytic (E7)-(E12) against jax.grad, by batch size.

Peers at every batch size m: the hand-written NumPy backprop of the same equations, PyTorch eager
autograd (if importable), and two ceilings measured in the same process: the GEMMs of one
gradient issued alone as NumPy matmuls ("GEMMs alone", the floor), and a 2048^2 square matmul
(NumPy and jitted JAX). FLOPs are the exact GEMM count of one gradient (`gemm_flops`), so GFLOP/s
and fractions of the ceilings are comparable across implementations. Also the cold start: import
jax + import mlp_jax + the first compiled gradient, each in a fresh process.

    python benchmarks/grads.py [--quick] [--out DIR] [--no-float64] [--no-torch] [--no-cold]
"""

import argparse
import functools
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
import numpy_backprop as nb  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

import mlp_jax as mj  # noqa: E402
from mlp_jax.core import backprop  # noqa: E402
from mlp_jax.training import step as training  # noqa: E402
from mlp_jax.core.objective import objective  # noqa: E402

NETS = [(256, 256, 10), (256, 512, 128, 10)]
SIZES = [1, 32, 256, 1024, 4096, 16384]
QUICK_SIZES = [64]
L2 = 1e-3
LR = 1e-3
SQUARE = 2048
QUICK_SQUARE = 1024
COLD_M = 128

IMPLS = {  # name -> what it is, for the JSON
    "analytic": "jax.jit(mlp_jax.core.backprop.objective_and_grads): hand-derived (E7)-(E12)",
    "autodiff": "jax.jit(jax.value_and_grad(mlp_jax.core.objective.objective))",
    "analytic_api": "mj.loss_and_grads: the analytic core plus its per-call input checks",
    "adam_analytic": "mlp_jax.make_train_step(optax.adam): analytic grads + Adam, "
                     "jitted, donating",
    "adam_autodiff": "the same step with jax.value_and_grad(objective), jitted, donating",
    "numpy": "hand-written NumPy backprop of the same equations (numpy_backprop.py)",
    "torch": "PyTorch eager autograd: nn.Sequential(Linear, ReLU, ...), cross_entropy + L2, "
             ".backward()",
    "gemms_alone": "just the GEMMs of one gradient as NumPy matmuls, same shapes and layouts "
                   "(the floor)",
    "gemms_alone_jax": "the same GEMMs in one jitted JAX function returning every product "
                       "(XLA's own GEMM floor)",
}


def batch(sizes, m, dtype, seed=0):
  rng = np.random.default_rng(seed)
  x = rng.standard_normal((m, sizes[0])).astype(dtype)
  y = rng.integers(0, sizes[-1], size=m).astype(np.int32)
  return x, y


def autodiff_step(optimizer, l2):
  """A jitted, donating Adam step on jax.value_and_grad, the twin of `make_train_step`."""
  @functools.partial(jax.jit, donate_argnums=(0, 1))
  def step(params, opt_state, x, y):
    loss, grads = jax.value_and_grad(objective)(params, x, y, l2)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss
  return step


def jax_gemms_alone(sizes, m, dtype):
  """A callable running the GEMMs of one gradient (nb.gemm_shapes) in one jit, nothing else."""
  rng = np.random.default_rng(0)
  operands = [(jnp.asarray(rng.standard_normal(a).astype(dtype)),
               jnp.asarray(rng.standard_normal(b).astype(dtype)))
              for a, b in nb.gemm_shapes(sizes, m)]
  products = jax.jit(lambda ops: [a @ b for a, b in ops])
  return lambda: products(operands)


def torch_grad_fn(torch, params_np, x, y, l2):
  model = common.torch_mlp(torch, params_np)
  xt, yt = torch.from_numpy(x), torch.from_numpy(y.astype(np.int64))

  def run():
    model.zero_grad(set_to_none=True)
    loss = common.torch_loss(torch, model, xt, yt, l2)
    loss.backward()
    return loss
  return run


def run_config(sizes, m, dtype, torch, timing, numpy_peers=True):
  """Every implementation at one (net, m, dtype); a list of result dicts."""
  x, y = batch(sizes, m, dtype)
  params = mj.init_params(jax.random.PRNGKey(0), sizes, jnp.dtype(dtype))
  params_np = nb.from_jax(params)
  xj, yj = jnp.asarray(x), jnp.asarray(y)
  adam = optax.adam(LR)
  autodiff = jax.jit(jax.value_and_grad(objective))
  fns = {
      "analytic": lambda: backprop.objective_and_grads_jit(params, xj, yj, L2),
      "autodiff": lambda: autodiff(params, xj, yj, L2),
      "analytic_api": lambda: mj.loss_and_grads(params, xj, yj, l2=L2),
      "adam_analytic": common.donating_runner(training.make_train_step(adam, L2), params,
                                              adam.init(params), xj, yj),
      "adam_autodiff": common.donating_runner(autodiff_step(adam, L2), params,
                                              adam.init(params), xj, yj),
      "gemms_alone_jax": jax_gemms_alone(sizes, m, dtype),
  }
  if numpy_peers:
    fns["numpy"] = lambda: nb.loss_and_grads(params_np, x, y, L2)
    fns["gemms_alone"] = nb.gemms_alone(sizes, m, dtype)
  if torch is not None:
    fns["torch"] = torch_grad_fn(torch, params_np, x, y, L2)
  flops = nb.gemm_flops(sizes, m)
  out = []
  for name, fn in fns.items():
    start = time.perf_counter()
    jax.block_until_ready(fn())  # compile (jax) or first touch, reported, not timed below
    first = time.perf_counter() - start
    stats = common.time_call(fn, **timing)
    out.append(dict(stats, impl=name, layers=list(sizes), m=m, dtype=np.dtype(dtype).name,
                    flops=flops, gflops=flops / stats["median"] / 1e9, first_call=first))
  return out


def add_ratios(results, ceilings):
  """ratio to autodiff (same kind: gradient or Adam step), and fractions of both ceilings."""
  key = lambda r: (tuple(r["layers"]), r["m"], r["dtype"])
  by = {(key(r), r["impl"]): r for r in results}
  for r in results:
    k = key(r)
    ref = "adam_autodiff" if r["impl"].startswith("adam") else "autodiff"
    r["ratio_to_autodiff"] = r["median"] / by[(k, ref)]["median"]
    floor = by.get((k, "gemms_alone"))
    r["frac_gemms_alone"] = floor["median"] / r["median"] if floor else None
    r["frac_gemms_alone_jax"] = by[(k, "gemms_alone_jax")]["median"] / r["median"]
    square = max(c["gflops"] for c in ceilings[r["dtype"]].values())
    r["frac_square"] = r["gflops"] / square


COLD_SCRIPT = r"""
import json, sys, time
t0 = time.perf_counter()
import jax
t1 = time.perf_counter()
import mlp_jax as mj
from mlp_jax.core import backprop
from mlp_jax.core.objective import objective
t2 = time.perf_counter()
jax.devices()
t_backend = time.perf_counter()
import numpy as np
rng = np.random.default_rng(0)
m = int(sys.argv[2])
x = rng.standard_normal((m, 256)).astype(np.float32)
y = rng.integers(0, 10, size=m).astype(np.int32)
params = mj.init_params(jax.random.PRNGKey(0))
jax.block_until_ready(params)
t3 = time.perf_counter()
impl = sys.argv[1]
if impl == "analytic_api":
  out = mj.loss_and_grads(params, x, y, l2=1e-3)
elif impl == "analytic":
  out = backprop.objective_and_grads_jit(params, x, y, 1e-3)
else:
  out = jax.jit(jax.value_and_grad(objective))(params, x, y, 1e-3)
jax.block_until_ready(out)
t4 = time.perf_counter()
print(json.dumps({"import_jax": t1 - t0, "import_mlp_jax": t2 - t1,
                  "backend_init": t_backend - t2, "init_params": t3 - t_backend,
                  "first_grad": t4 - t3, "in_process": t4 - t0}))
"""


def cold_start(repeats):
  """Each of analytic (core and public API) and autodiff in `repeats` fresh processes."""
  result = {}
  for impl in ("analytic", "analytic_api", "autodiff"):
    runs = []
    for _ in range(repeats):
      start = time.perf_counter()
      proc = subprocess.run([sys.executable, "-c", COLD_SCRIPT, impl, str(COLD_M)],
                            capture_output=True, text=True, check=True)
      record = json.loads(proc.stdout.strip().splitlines()[-1])
      record["process_wall"] = time.perf_counter() - start
      runs.append(record)
    result[impl] = {k: float(np.median([r[k] for r in runs])) for k in runs[0]}
    result[impl]["runs"] = runs
  return result


def pct(fraction):
  return "-" if fraction is None else f"{100 * fraction:.0f}%"


def markdown(results, ceilings, cold, notes):
  lines = []
  for dtype in dict.fromkeys(r["dtype"] for r in results):
    for sizes in dict.fromkeys(tuple(r["layers"]) for r in results):
      rows_t, rows_f = [], []
      for m in sorted({r["m"] for r in results}):
        at = {r["impl"]: r for r in results
              if r["dtype"] == dtype and tuple(r["layers"]) == sizes and r["m"] == m}
        if not at:
          continue
        cell = lambda name: common.ms_spread(at[name]) if name in at else "-"
        rows_t.append([m, cell("analytic"), cell("autodiff"),
                       f"{at['analytic']['ratio_to_autodiff']:.2f}", cell("analytic_api"),
                       cell("adam_analytic"), cell("adam_autodiff"),
                       f"{at['adam_analytic']['ratio_to_autodiff']:.2f}", cell("numpy"),
                       cell("torch"), cell("gemms_alone"), cell("gemms_alone_jax")])
        gf = lambda name: f"{at[name]['gflops']:.1f}" if name in at else "-"
        rows_f.append([m, f"{at['analytic']['flops'] / 1e6:.3g}", gf("analytic"), gf("autodiff"),
                       gf("numpy"), gf("torch"), gf("gemms_alone"), gf("gemms_alone_jax"),
                       pct(at["analytic"]["frac_gemms_alone"]),
                       pct(at["analytic"]["frac_gemms_alone_jax"]),
                       pct(at["autodiff"]["frac_gemms_alone_jax"]),
                       f"{100 * at['analytic']['frac_square']:.0f}%"])
      if not rows_t:
        continue
      net = "-".join(map(str, sizes))
      lines += [f"\n### {net}, {dtype}: time per call, ms, median [p10-p90]\n",
                common.markdown_table(
                    ["m", "analytic", "autodiff", "analytic/autodiff", "analytic (API checks)",
                     "Adam step analytic", "Adam step autodiff", "ratio", "numpy",
                     "torch eager", "GEMMs alone (numpy)", "GEMMs alone (jax)"], rows_t),
                f"\n### {net}, {dtype}: GEMM GFLOP/s and fraction of the ceilings\n",
                common.markdown_table(
                    ["m", "MFLOP", "analytic", "autodiff", "numpy", "torch",
                     "GEMMs alone (numpy)", "GEMMs alone (jax)", "analytic % of numpy GEMMs",
                     "analytic % of jax GEMMs", "autodiff % of jax GEMMs",
                     "analytic % of square"], rows_f)]
  ceil_rows = [[dtype, name, f"{c['size']}^2", f"{c['gflops']:.1f}", common.ms_spread(c)]
               for dtype, cs in ceilings.items() for name, c in cs.items()]
  lines += ["\n### Square matmul ceiling\n",
            common.markdown_table(["dtype", "library", "size", "GFLOP/s", "ms"], ceil_rows)]
  if cold:
    cols = ["import_jax", "import_mlp_jax", "backend_init", "init_params", "first_grad",
            "in_process", "process_wall"]
    cold_rows = [[impl] + [f"{c[k]:.2f}" for k in cols] + [len(c["runs"])]
                 for impl, c in cold.items()]
    lines += [f"\n### Cold start, 256-256-10 float32, m={COLD_M}: seconds, median of fresh "
              "processes\n",
              common.markdown_table(["gradient", "import jax", "import mlp_jax", "jax.devices()",
                                     "init_params + data", "first gradient (compile + run)",
                                     "in process", "process wall", "runs"], cold_rows)]
  if notes:
    lines += ["", *[f"- {n}" for n in notes]]
  return "\n".join(lines).lstrip()


def main():
  parser = common.add_args(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
  parser.add_argument("--no-float64", action="store_true", help="float32 only")
  parser.add_argument("--no-torch", action="store_true", help="skip the PyTorch peer")
  parser.add_argument("--no-cold", action="store_true", help="skip the cold-start runs")
  parser.add_argument("--no-numpy", action="store_true",
                      help="skip the NumPy backprop and GEMMs-alone peers (slow at huge m)")
  parser.add_argument("--sizes", type=int, nargs="+", help="batch sizes (default: all)")
  parser.add_argument("--retain-freed-memory", action="store_true",
                      help="host_memory.retain_freed_memory() first (glibc heap reuse)")
  parser.add_argument("--name", default="grads", help="result file stem (grads)")
  args = parser.parse_args()
  sizes = args.sizes or (QUICK_SIZES if args.quick else SIZES)
  timing = (dict(repeats=5, warmup=1, min_seconds=0.05) if args.quick
            else dict(repeats=15, warmup=3, min_seconds=1.0, max_seconds=10.0))
  notes = []
  torch, why = (None, "PyTorch skipped (--no-torch)") if args.no_torch else \
      common.try_import_torch()
  if why:
    notes.append(why)
  if args.no_numpy:
    notes.append("NumPy peers skipped (--no-numpy): no GEMMs-alone floor")
  if jax.default_backend() != "cpu":
    notes.append(f"JAX runs on {jax.default_backend()}; NumPy, PyTorch and the GEMMs-alone floor "
                 "run on the host CPU, so fractions of GEMMs alone compare two devices")
  if args.retain_freed_memory:
    import host_memory
    notes.append("host_memory.retain_freed_memory(): "
                 + ("applied" if host_memory.retain_freed_memory() else "not available"))
  busy = common.busy_note()
  if busy:
    notes.append(busy)
  dtypes = [np.float32] + ([] if args.no_float64 else [np.float64])
  results, ceilings = [], {}
  for dtype in dtypes:
    x64 = jax.enable_x64(dtype == np.float64)
    with x64:
      ceilings[np.dtype(dtype).name] = common.square_matmul_gflops(
          QUICK_SQUARE if args.quick else SQUARE, timing, dtype)
      nets = NETS[:1] if args.quick and dtype == np.float64 else NETS  # quick: less compiling
      for net in nets:
        for m in sizes:
          start = time.perf_counter()
          done = run_config(net, m, dtype, torch, timing, not args.no_numpy)
          results += done
          print(f"  {np.dtype(dtype).name} {net} m={m}: {time.perf_counter() - start:.1f} s "
                f"(first calls {sum(r['first_call'] for r in done):.1f} s)", flush=True)
  add_ratios(results, ceilings)
  cold = None if args.no_cold else cold_start(1 if args.quick else 3)
  if args.quick:
    notes.append("--quick: few repetitions; timings are only a smoke test")
  extra = {}
  if torch is not None:
    extra.update(torch=torch.__version__, torch_threads=torch.get_num_threads())
  payload = {"machine": common.machine(**extra), "quick": args.quick, "l2": L2, "lr": LR,
             "timing": timing, "impls": IMPLS, "flop_model": "nb.gemm_flops: 2m sum(fan_in "
             "fan_out) forward + the same for weight gradients + 2m sum_{l>=2} fan_in fan_out "
             "for input gradients", "ceilings": ceilings, "cold_start": cold, "notes": notes,
             "results": results}
  common.write_results(common.result_name(args.name, args.quick), payload,
                       markdown(results, ceilings, cold, notes), args.out)


if __name__ == "__main__":
  main()
