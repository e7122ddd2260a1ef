"""The scanned USPS epoch at batch 32, 128 and 512: how XLA's CPU threads affect it.

Run it three ways and compare the medians (one line each):

    python benchmarks/reproduce/epoch_threads.py               # as JAX sets itself up
    taskset -c 0 python benchmarks/reproduce/epoch_threads.py  # pinned to one core
    NPROC=1 python benchmarks/reproduce/epoch_threads.py       # XLA's CPU pool of one thread
    XLA_FLAGS=--xla_force_host_platform_device_count=2 python benchmarks/reproduce/epoch_threads.py --mesh
                                                               # two CPU devices, data-parallel
"""

import argparse
import os
import sys

# benchmarks/, one folder up: the shared harness (common.py)
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import common  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402

import mlp_jax as mj  # noqa: E402


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--usps", default=common.USPS_DEFAULT)
  parser.add_argument("--mesh", action="store_true", help="data-parallel over every CPU device")
  parser.add_argument("--repeats", type=int, default=9)
  args = parser.parse_args()
  train = mj.data.prepare("usps", args.usps, val_fraction=0.0).train
  x, y = jnp.asarray(train.x), jnp.asarray(train.y)
  opt = optax.adam(1e-3)
  mesh = mj.make_mesh("all") if args.mesh else None
  cells = []
  for batch in (32, 128, 512):
    epoch = mj.make_epoch(opt, batch, mesh=mesh)
    params = mj.init_params(jax.random.PRNGKey(0))
    state = (x, y, params, opt.init(params))
    xs, ys, params, opt_state = state if mesh is None else mj.replicate(state, mesh)
    call = common.donating_runner(epoch, params, opt_state, xs, ys, jax.random.PRNGKey(1))
    median = common.time_call(call, repeats=args.repeats)["median"]
    cells.append(f"B={batch}: {1e3 * median:.1f} ms")
  cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
  print(f"{len(jax.devices())} device(s), {cpus} usable core(s), "
        f"mesh={'yes' if mesh else 'no'}: " + ", ".join(cells))


if __name__ == "__main__":
  main()
