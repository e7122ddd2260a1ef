"""One prepared run for an accelerator: the test suite, then the benchmarks, then a short table.

    PYTHONPATH=. python benchmarks/accelerator.py --out OUT [--quick] [--skip-tests] [--usps PATH]

Runs on whatever JAX sees (GPU, TPU or CPU), from the source tree, installing nothing. Steps:

1. the whole test suite (pytest; oracle tests run at matmul precision "highest", set in
   tests/conftest.py), its log in OUT/tests.log;
2. training throughput: samples/s of whole compiled epochs (`lax.scan`, data resident on the
   device, donated buffers) of the source's 256-256-10 network, analytic gradients vs the same
   epoch built on jax.grad, at batch 256, 1024, 4096, 16384 (and larger in the full form), with
   the GEMM FLOP rate and its fraction of a large square matmul measured in the same run; and
   the time per USPS epoch when the file is given;
3. the gradient and per-example benchmarks (`benchmarks/grads.py`, `benchmarks/per_sample.py`)
   in their quick forms plus the sizes that fill the chip, and the curvature benchmark
   (`benchmarks/curvature.py`: statistics, GGN and Hessian diagonals, Kronecker factors and
   products against one gradient and their autodiff routes) at m = 1024, 4096, 16384.

Writes OUT/accelerator.json, OUT/accelerator.md and the logs, and prints the table last. The
quick form on a CPU takes well under a minute and is a test in CI.
"""

import argparse
import functools
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, ROOT)
import common  # noqa: E402
import numpy_backprop as nb  # noqa: E402


def _run(cmd, log_path, timeout, env=None):
  """Runs cmd with output to log_path; returns (exit code, seconds, last lines)."""
  start = time.perf_counter()
  with open(log_path, "w") as log:
    try:
      code = subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, timeout=timeout,
                            env={**os.environ, "PYTHONPATH": ROOT, **(env or {})}).returncode
    except subprocess.TimeoutExpired:
      code = "timeout"
  with open(log_path) as log:
    tail = log.read().strip().splitlines()[-3:]
  return code, time.perf_counter() - start, tail


def autodiff_epoch(optimizer, batch_size, l2=0.0):
  """The scanned epoch of `mj.make_epoch`, with gradients from jax.grad instead (full batches)."""
  import jax
  import optax
  from mlp_jax.core.objective import objective

  value_and_grad = jax.value_and_grad(objective)

  @functools.partial(jax.jit, donate_argnums=(0, 1))
  def epoch(params, opt_state, x, y, key):
    num_batches = x.shape[0] // batch_size
    idx = jax.random.permutation(key, x.shape[0])[:num_batches * batch_size]

    def body(carry, batch_idx):
      params, opt_state = carry
      loss, grads = value_and_grad(params, x[batch_idx], y[batch_idx], l2)
      updates, opt_state = optimizer.update(grads, opt_state, params)
      return (optax.apply_updates(params, updates), opt_state), loss

    (params, opt_state), losses = jax.lax.scan(body, (params, opt_state),
                                               idx.reshape(num_batches, batch_size))
    return params, opt_state, losses

  return epoch


def throughput(batch_sizes, num_examples, repeats, usps_path=None):
  """Samples/s of compiled epochs, analytic vs jax.grad, and the square-matmul ceiling."""
  import jax
  import optax
  import mlp_jax as mj

  sizes = (256, 256, 10)
  data = mj.data.make_synthetic(num_examples, 256, 10, seed=0)
  x, y = jax.device_put(data.x), jax.device_put(data.y)
  opt = optax.sgd(0.01, momentum=0.9)
  key = jax.random.PRNGKey(0)
  ceiling = common.square_matmul_gflops(8192 if jax.default_backend() != "cpu" else 2048,
                                        {"repeats": repeats}, numpy=False)["jax"]["gflops"]
  rows = []
  for b in batch_sizes:
    n = (num_examples // b) * b
    if n == 0:
      continue
    xs, ys = x[:n], y[:n]
    result = {"batch": b, "examples": n}
    for name, make in (("analytic", lambda: mj.make_epoch(opt, b)),
                       ("jax.grad", lambda: autodiff_epoch(opt, b))):
      params = mj.init_params(key, sizes)
      call = common.donating_runner(make(), params, opt.init(params), xs, ys, key)
      timing = common.time_call(call, repeats=repeats)
      result[name] = {"epoch_s": timing, "samples_per_s": n / timing["median"],
                      "gflops": nb.gemm_flops(sizes, n) / timing["median"] / 1e9}
    result["ratio"] = result["analytic"]["epoch_s"]["median"] / result["jax.grad"]["epoch_s"]["median"]
    rows.append(result)
    print(f"  batch {b}: analytic {result['analytic']['samples_per_s']:.3g} samples/s, "
          f"jax.grad {result['jax.grad']['samples_per_s']:.3g}, ratio {result['ratio']:.2f}",
          flush=True)
  prepared = mj.data.prepare("usps", usps_path, val_fraction=0.0)  # bundled, or the file given
  xu, yu = jax.device_put(prepared.train.x), jax.device_put(prepared.train.y)
  params = mj.init_params(key, sizes)
  call = common.donating_runner(mj.make_epoch(optax.adam(1e-3), 128), params,
                                optax.adam(1e-3).init(params), xu, yu, key)
  usps = {"batch": 128, "epoch_s": common.time_call(call, repeats=repeats)}
  return {"square_matmul_gflops": ceiling, "rows": rows, "usps_epoch": usps}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", required=True, help="output folder")
  parser.add_argument("--quick", action="store_true", help="small sizes: the CPU/CI form")
  parser.add_argument("--skip-tests", action="store_true", help="do not run the test suite")
  parser.add_argument("--usps", default=common.USPS_DEFAULT, help="a USPS file instead of the bundled copy")
  parser.add_argument("--workers", default="4", help="pytest-xdist workers for the suite")
  args = parser.parse_args()
  os.makedirs(args.out, exist_ok=True)
  import jax
  report = {"machine": common.machine(), "quick": args.quick, "steps": {}}
  print(f"device: {report['machine']['device']} ({report['machine']['backend']}), "
        f"jax {report['machine']['jax']}", flush=True)
  # Several test workers share one GPU; bit-for-bit determinism tests need deterministic
  # reductions on a GPU (XLA may otherwise use atomics).
  env = {"XLA_PYTHON_CLIENT_PREALLOCATE": "false",
         "XLA_FLAGS": (os.environ.get("XLA_FLAGS", "") + " --xla_gpu_deterministic_ops=true").strip()}

  if not args.skip_tests:
    code, seconds, tail = _run([sys.executable, "-m", "pytest", "-q", "-n", args.workers,
                                "-p", "no:cacheprovider", "tests"],
                               os.path.join(args.out, "tests.log"), 360, env)
    report["steps"]["tests"] = {"exit": code, "seconds": seconds, "summary": tail[-1:]}
    print(f"tests: exit {code} in {seconds:.0f} s: {tail[-1:]}", flush=True)

  batches = [256, 1024] if args.quick else [256, 1024, 4096, 16384, 65536]
  examples = 8192 if args.quick else (1 << 20 if jax.default_backend() != "cpu" else 65536)
  start = time.perf_counter()
  report["throughput"] = throughput(batches, examples, 3 if args.quick else 10, args.usps)
  report["steps"]["throughput"] = {"exit": 0, "seconds": time.perf_counter() - start}

  scripts = [("grads", ["--no-float64", "--no-torch", "--no-cold", "--quick"]),
             ("per_sample", ["--quick"]),
             ("curvature", ["--quick"] if args.quick else ["--sizes", "1024", "4096", "16384"])]
  if not args.quick:
    scripts += [("grads", ["--no-float64", "--no-torch", "--no-cold", "--no-numpy", "--sizes",
                           "65536", "262144"])]
  for index, (name, extra) in enumerate(scripts):
    script = os.path.join(HERE, f"{name}.py")
    if not os.path.exists(script):
      continue
    out_dir = os.path.join(args.out, f"{name}-{index}")
    code, seconds, tail = _run([sys.executable, script, "--out", out_dir, *extra],
                               os.path.join(args.out, f"{name}-{index}.log"), 240, env)
    report["steps"][f"{name}-{index}"] = {"exit": code, "seconds": seconds, "args": extra}
    print(f"{name} {' '.join(extra)}: exit {code} in {seconds:.0f} s", flush=True)

  tp = report["throughput"]
  rows = [[r["batch"], f"{r['analytic']['samples_per_s'] / 1e6:.2f}",
           f"{r['jax.grad']['samples_per_s'] / 1e6:.2f}", f"{r['ratio']:.2f}",
           f"{r['analytic']['gflops']:.0f}",
           f"{100 * r['analytic']['gflops'] / tp['square_matmul_gflops']:.0f}%"]
          for r in tp["rows"]]
  md = (f"device: {report['machine']['device']}, jax {report['machine']['jax']}, "
        f"{report['machine']['date']}\n\n" + common.markdown_table(
            ["batch", "analytic M samples/s", "jax.grad M samples/s",
             "time analytic / jax.grad", "analytic GEMM GFLOP/s", "of square matmul"], rows)
        + f"\n\nsquare float32 matmul: {tp['square_matmul_gflops']:.0f} GFLOP/s")
  if tp["usps_epoch"]:
    md += f"; USPS epoch (7291 examples, batch 128, adam): " \
          f"{1e3 * tp['usps_epoch']['epoch_s']['median']:.1f} ms"
  md += "\n\n" + common.markdown_table(
      ["step", "exit", "seconds"],
      [[k, v["exit"], f"{v['seconds']:.0f}"] for k, v in report["steps"].items()])
  common.write_results("accelerator", report, md, args.out)
  failed = [k for k, v in report["steps"].items() if v["exit"] != 0]
  return 1 if failed else 0


if __name__ == "__main__":
  sys.exit(main())
