"""One of two processes training together over 127.0.0.1, 2 CPU devices each: a program for
test_distributed's two-process test.

    XLA_FLAGS=--xla_force_host_platform_device_count=2 JAX_PLATFORMS=cpu \
        python loopback_worker.py PROCESS_ID PORT OUT

Joins the other process with `initialize_distributed`, fits (12, 16, 5) on the same 60 rows as
the other for 2 epochs on the 4-device mesh, then takes 3 steps on a global batch of 32 of which
it feeds only its own rows. Process 0 saves the leaves of both results to OUT (an .npz); each
prints one line, "RESULT " and what it saw as JSON.
"""

import json
import sys

import jax
import numpy as np
import optax

import mlp_jax as mj


def main(pid: int, port: str, out: str) -> None:
  jax.config.update("jax_default_matmul_precision", "highest")
  mj.initialize_distributed(f"127.0.0.1:{port}", 2, pid, timeout_s=60)
  mesh = mj.make_mesh()  # 2 processes x 2 devices
  rng = np.random.default_rng(0)  # the same data in every process
  x = rng.standard_normal((60, 12)).astype(np.float32)
  y = rng.integers(0, 5, 60).astype(np.int32)
  params = mj.init_params(jax.random.PRNGKey(0), (12, 16, 5))
  opt = optax.adam(1e-2)
  fitted = mj.fit(params, (x, y), optimizer=opt, epochs=2, batch_size=16, l2=1e-3, seed=1,
                  val=(x[:20], y[:20]), mesh=mesh)
  # Each process feeds only its own rows of the global batch of 32.
  step = mj.make_data_parallel_step(opt, mesh, l2=1e-3)
  gx, gy = mj.shard_batch(mesh, *mj.process_shard((x[:32], y[:32])))
  p, s = params, opt.init(params)
  for _ in range(3):
    p, s, loss = step(p, s, gx, gy)
  if mj.is_primary():
    np.savez(out, *[np.asarray(l) for l in jax.tree.leaves((fitted.params, p))])
  print("RESULT " + json.dumps({
      "pid": pid, "primary": mj.is_primary(), "devices": jax.device_count(),
      "local_devices": jax.local_device_count(),
      "local_rows": int(gx.addressable_shards[0].data.shape[0]),
      "replicated": all(l.sharding.is_fully_replicated
                        for l in jax.tree.leaves((fitted.params, p)))}))


if __name__ == "__main__":
  main(int(sys.argv[1]), sys.argv[2], sys.argv[3])
