"""The measurements behind docs/benchmarks.md's epoch and cold-start findings, one command each.

    python benchmarks/reproduce/epoch_experiments.py WHAT [ARGS]

  shuffle       jax.random.permutation vs ours
  timeline      one traced step, thunk by thunk
  after-pause   epochs after a NumPy epoch
  variants      the epoch changes tried and not kept
  gemm-kernels  XLA's GEMM back ends on a scan of X W
  threads       do the bits depend on XLA's pool size?
  sampler       compile time of the PRNG sampler
  hlo FILE      mj.grads's optimized HLO, for diffing

Each prints what it measured (ms, medians unless said; variants in turns within one process).
`hlo` writes the optimized HLO of `mj.grads`'s programs (both networks, m = 1 ... 16384) with
source locations stripped: run it at two commits (`git worktree add OLD REV`, then
`PYTHONPATH=OLD python ...`) and `cmp` the files.
"""

import argparse
import functools
import os
import re
import statistics
import subprocess
import sys
import time

# benchmarks/, one folder up: the shared harness (common.py) and epoch.py
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import common  # noqa: E402
import epoch as bench  # noqa: E402
import epoch_profile  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

import mlp_jax as mj  # noqa: E402
from mlp_jax.core import backprop  # noqa: E402
from mlp_jax.core.model import Dense  # noqa: E402
from mlp_jax.training import epoch as training  # noqa: E402

BATCHES = (32, 128, 512)


def usps():
  train = mj.data.prepare("usps", val_fraction=0.0).train
  return np.asarray(train.x), np.asarray(train.y)


def median_ms(fn, calls):
  """Median ms of `calls` timed calls of fn after one untimed call (`common.time_call`)."""
  return 1e3 * common.time_call(fn, repeats=calls, warmup=1)["median"]


def shuffle(args):
  from mlp_jax.training.permutation import permutation  # not in versions before it (see hlo)
  key, n = jax.random.PRNGKey(0), 7291
  bits = lambda k: jax.random.bits(k, (n,), jnp.uint32)
  fns = {"jax.random.permutation": lambda k: jax.random.permutation(k, n),
         "mlp_jax permutation": lambda k: permutation(k, n),
         "one key-value sort": lambda k: jax.lax.sort_key_val(bits(k), jnp.arange(n))[1],
         "one u32 sort": lambda k: jax.lax.sort(bits(k))}
  for name, fn in fns.items():
    print(f"{name:24s} {median_ms(lambda f=jax.jit(fn): f(key), 50):.2f} ms  (n = {n})")


def timeline(args):
  """The thunks of one step in the middle of a traced epoch: start (us, from the step's first
  thunk), duration, thread, category."""
  classes, events, _, _ = epoch_profile.trace_epochs(*usps(), args.batch, 1, bench.optimizer(),
                                                   bench.L2)
  events = [e for e in events
            if e["name"] in classes or e["name"].startswith("SlinkyThreadPool")]
  events.sort(key=lambda e: e["ts"])
  gathers = [e for e in events if classes.get(e["name"]) == "gather"]
  opening = gathers[len(gathers) // 2]  # a gather in the middle of the epoch opens a step,
  same = [e["ts"] for e in events if e["name"] == opening["name"]]  # its next run the next one
  start = opening["ts"]
  end = next(ts for ts in same if ts > start)
  threads = {}
  for e in events:
    if start <= e["ts"] < end:
      thread = threads.setdefault(e["tid"], f"T{len(threads)}")
      print(f"{e['ts'] - start:8.1f} +{e['dur']:7.1f} us  {thread}  {e['name']:36s} "
            f"{classes.get(e['name'], 'waiting for the pool')}")
  print(f"step: {end - start:.1f} us")


def after_pause(args):
  x, y = usps()
  init = mj.init_params(jax.random.PRNGKey(0))
  ours, numpy_loop = bench.MlpJax(init, x, y, 128), bench.NumpyLoop(init, x, y, 128)
  ours(), numpy_loop()
  rows = []
  for _ in range(6):
    numpy_loop()
    row = []
    for _ in range(8):
      t0 = time.perf_counter()
      ours()
      row.append(1e3 * (time.perf_counter() - t0))
    rows.append(row)
  print("1st..8th mlp_jax epoch after a NumPy epoch (B = 128, medians of 6):",
        " ".join(f"{statistics.median(c):.1f}" for c in zip(*rows)))
  steady = []
  for _ in range(24):
    t0 = time.perf_counter()
    ours()
    steady.append(1e3 * (time.perf_counter() - t0))
  print(f"back to back throughout: {statistics.median(steady):.1f}")


def _layer_grads_transposed_copy(params, activations, deltas, l2, m, compute_dtype=None):
  """(E8)-(E12) with A^T copied row-major first (the variant tried and backed out)."""
  decay = jnp.asarray(l2, params[0].w.dtype) / m
  return tuple(Dense(jax.lax.optimization_barrier(a.T) @ d + decay * layer.w, d.sum(axis=0))
               for layer, a, d in zip(params, activations, deltas))


def _sliced_epoch(opt, batch):
  """The epoch with one gather of the data per epoch and the scan slicing it."""
  def step(params, opt_state, xb, yb, keep):
    loss, grads = backprop.objective_and_grads(params, xb, yb, bench.L2, None, keep)
    updates, opt_state = opt.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  @functools.partial(jax.jit, donate_argnums=(0, 1), compiler_options=training.compiler_options())
  def epoch(params, opt_state, x, y, key):
    idx, mask = training.epoch_batches(key, x.shape[0], batch)
    xs = x[idx.reshape(-1)].reshape(idx.shape + (x.shape[1],))

    def body(carry, b):
      p, s, loss = step(*carry, *b)
      return (p, s), loss
    (params, opt_state), losses = jax.lax.scan(body, (params, opt_state),
                                               (xs, y[idx], mask.astype(x.dtype)))
    return params, opt_state, losses
  return epoch


def variants(args):
  x, y = (jnp.asarray(a) for a in usps())
  opt = bench.optimizer()
  for batch in BATCHES:
    settings = mj.FitSettings(batch_size=batch, l2=bench.L2)
    runs = {}

    def add(name, build, layer_grads=backprop.layer_grads):
      saved = backprop.layer_grads
      backprop.layer_grads = layer_grads
      try:  # traced and compiled with the variant in place
        fn = build()
        params = mj.init_params(jax.random.PRNGKey(0))
        params, state, _ = fn(params, opt.init(params), x, y, training.epoch_key(0, 0))
        jax.block_until_ready(params)
      finally:
        backprop.layer_grads = saved
      runs[name] = [fn, params, state]

    add("library", lambda: training.build_epoch(opt, settings).epoch)
    add("contiguous slices", lambda: _sliced_epoch(opt, batch))
    add("A^T copied", lambda: training.build_epoch(opt, settings).epoch,
        _layer_grads_transposed_copy)
    for name, more in (("eigen single-thread", {"xla_cpu_multi_thread_eigen": False}),
                       ("concurrency scheduler",
                        {"xla_cpu_enable_concurrency_optimized_scheduler": True})):
      def build(more=more):
        options = training.compiler_options
        training.compiler_options = lambda mesh=None: {**training.CPU_COMPILER_OPTIONS, **more}
        try:
          return training.build_epoch(opt, settings).epoch
        finally:
          training.compiler_options = options
      add(name, build)
    timings = bench.time_in_turns(runs, x, y, args.rounds)
    print(f"B={batch}: " + ", ".join(f"{n} {1e3 * t['median']:.1f}" for n, t in timings.items()),
          flush=True)
  print("loss + gradients, 256-256-10 (ms): m, library, A^T copied")
  params = mj.init_params(jax.random.PRNGKey(0))
  plain = jax.jit(lambda p, x, y: backprop.objective_and_grads(p, x, y, bench.L2))

  def copied(p, x, y):
    saved, backprop.layer_grads = backprop.layer_grads, _layer_grads_transposed_copy
    try:
      return backprop.objective_and_grads(p, x, y, bench.L2)
    finally:
      backprop.layer_grads = saved
  copied = jax.jit(copied)
  for m in (64, 128, 256, 1024, 16384):
    xm = jnp.asarray(np.random.default_rng(0).standard_normal((m, 256)), jnp.float32)
    ym = jnp.arange(m) % 10
    calls = 200 if m <= 1024 else 30
    times = {"library": [], "copied": []}
    for f in (plain, copied):
      jax.block_until_ready(f(params, xm, ym))
    for _ in range(calls):
      for name, f in (("library", plain), ("copied", copied)):
        t0 = time.perf_counter()
        jax.block_until_ready(f(params, xm, ym))
        times[name].append(time.perf_counter() - t0)
    print(f"m={m}: {1e3 * statistics.median(times['library']):.3f} "
          f"{1e3 * statistics.median(times['copied']):.3f}", flush=True)


def gemm_kernels(args):
  """57 (B = 128) products X W in a scan, per XLA back end for the dot."""
  batch, steps = 128, 57
  xs = jnp.asarray(np.random.default_rng(0).random((steps, batch, 256)), jnp.float32)
  w = jnp.asarray(np.random.default_rng(1).random((256, 256)), jnp.float32)
  scan = lambda xs, w: jax.lax.scan(lambda c, x: (c + x @ (w + c[0, 0]), None),
                                    jnp.zeros((batch, 256)), xs)[0]
  for name, opts in (("default", {}), ("no YNNPACK", {"xla_cpu_experimental_ynn_fusion_type": ""}),
                     ("XNNPACK", {"xla_cpu_experimental_ynn_fusion_type": "",
                                  "xla_cpu_use_xnnpack": True}),
                     ("oneDNN", {"xla_cpu_experimental_ynn_fusion_type": "",
                                 "xla_cpu_use_onednn": True})):
    compiled = jax.jit(scan).lower(xs, w).compile(opts)
    print(f"{name:12s} {median_ms(lambda c=compiled: c(xs, w), 15):.2f} ms for {steps} X W")
  xn, wn = np.asarray(xs), np.asarray(w)
  print(f"{'NumPy':12s} {median_ms(lambda: [xn[i] @ wn for i in range(steps)], 15):.2f} ms")


THREADS_CHILD = """
import hashlib, sys, jax, optax, numpy as np, mlp_jax as mj
from mlp_jax.training import epoch as training
train = mj.data.prepare("usps", val_fraction=0.0).train
x, y = train.x[:3000], train.y[:3000]
for batch in (32, 128, 500):
  opt = optax.sgd(0.1, momentum=0.9)
  p = mj.init_params(jax.random.PRNGKey(0)); s = opt.init(p)
  for e in range(3):
    p, s, st = mj.make_epoch(opt, batch, 0.01)(p, s, x, y, training.epoch_key(5, e))
  digest = lambda t: hashlib.sha256(b"".join(np.asarray(l).tobytes()
                                             for l in jax.tree.leaves(t))).hexdigest()[:12]
  print(batch, "params", digest(p), "losses", digest(st.losses))
"""


def threads(args):
  """The same 3 epochs under XLA's default CPU pool and a pool of one thread (NPROC=1)."""
  for nproc in (None, "1"):
    env = dict(os.environ)
    if nproc:
      env["NPROC"] = nproc
    out = subprocess.run([sys.executable, "-c", THREADS_CHILD], env=env, capture_output=True,
                         text=True, check=True).stdout
    print(f"NPROC={nproc or 'unset'}:\n{out}")


def sampler(args):
  (jnp.ones(3) + 1).block_until_ready()
  key = jax.random.PRNGKey(0)
  for name, fn in (("jax.random.normal (256, 10)", lambda k: jax.random.normal(k, (256, 10))),
                   ("jax.random.bits (256, 256)",
                    lambda k: jax.random.bits(k, (256, 256), jnp.uint32)),
                   ("init_params (256, 256, 10)", mj.init_params)):
    t0 = time.perf_counter()
    jax.jit(fn).lower(key).compile()
    print(f"{name:30s} compiles in {time.perf_counter() - t0:.3f} s")


def hlo(args):
  texts = []
  for sizes in ((256, 256, 10), (256, 512, 128, 10)):
    params = mj.init_params(jax.random.PRNGKey(0), sizes)
    for m in (1, 32, 256, 1024, 4096, 16384):
      x, y = jnp.zeros((m, 256), jnp.float32), jnp.zeros((m,), jnp.int32)
      for program in (backprop._loss_and_grads_flagged, backprop.objective_and_grads_jit):
        text = program.lower(params, x, y, 0.0).compile().as_text()
        text = re.sub(r", metadata=\{[^}]*\}", "", text)
        texts.append("\n".join(line for line in text.splitlines()
                               if not re.match(r'^\d+ (\{file_name_id|")', line)))
  with open(args.file, "w") as f:
    f.write("\n".join(texts))
  print(f"wrote {len(texts)} modules to {args.file}")


def main():
  parser = argparse.ArgumentParser(description=__doc__,  # --help lists the commands
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = parser.add_subparsers(dest="what", required=True)
  sub.add_parser("shuffle").set_defaults(run=shuffle)
  t = sub.add_parser("timeline")
  t.add_argument("--batch", type=int, default=128)
  t.set_defaults(run=timeline)
  sub.add_parser("after-pause").set_defaults(run=after_pause)
  v = sub.add_parser("variants")
  v.add_argument("--rounds", type=int, default=12)
  v.set_defaults(run=variants)
  sub.add_parser("gemm-kernels").set_defaults(run=gemm_kernels)
  sub.add_parser("threads").set_defaults(run=threads)
  sub.add_parser("sampler").set_defaults(run=sampler)
  h = sub.add_parser("hlo")
  h.add_argument("file")
  h.set_defaults(run=hlo)
  args = parser.parse_args()
  args.run(args)


if __name__ == "__main__":
  main()
