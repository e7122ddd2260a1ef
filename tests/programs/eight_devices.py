"""Data-parallel training on 8 simulated CPU devices against one device: a program for
test_distributed, which has already started JAX with one device in its own process.

    XLA_FLAGS=--xla_force_host_platform_device_count=8 JAX_PLATFORMS=cpu python eight_devices.py

On 100 fixed rows of (12, 16, 5): one step on a batch of 64 over 8 and over 4 devices (and over 8
for a tanh network with a squared-error output), a whole epoch plain and DP-SGD, fit with
validation and `mj.MLPClassifier(devices=8)`, each against its single-device run (largest
relative error, replication, the collectives and rows per device in the compiled program); then
the InputError messages of batches that do not divide the devices. Prints one line, "RESULT "
and the results as JSON.
"""

import json
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax

import mlp_jax as mj
from mlp_jax.training import distributed


def rel(a, b):
  """The largest relative error over the leaf pairs of two trees."""
  return max(mj.relative_error(u, v) for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def replicated(tree, n):
  """Whether every leaf is whole on each of `n` devices."""
  return all(l.sharding.is_fully_replicated and len(l.sharding.device_set) == n
             for l in jax.tree.leaves(tree))


def error(fn):
  """The message of the `InputError` that `fn()` raises, or None."""
  try:
    fn()
  except mj.InputError as err:
    return str(err)
  return None


def copy(t):
  """Fresh buffers for every leaf (the steps and epochs donate their inputs)."""
  return jax.tree.map(jnp.array, t)


def main() -> None:
  jax.config.update("jax_default_matmul_precision", "highest")
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((100, 12)).astype(np.float32))
  y = jnp.asarray(rng.integers(0, 5, 100).astype(np.int32))
  params = mj.init_params(jax.random.PRNGKey(0), (12, 16, 5))
  opt = optax.adam(1e-2)
  mesh = mj.make_mesh()
  out = {"device_count": jax.device_count(), "mesh_size": mesh.size}

  # One step on a global batch of 64: 8 devices, 4 of the 8, and the single-device step.
  want_p, _, want_loss = mj.make_train_step(opt, l2=1e-2)(copy(params), opt.init(params), x[:64],
                                                          y[:64])
  for n in (8, 4):
    step = mj.make_data_parallel_step(opt, mj.make_mesh(n), l2=1e-2)
    got_p, got_s, got_loss = step(copy(params), opt.init(params), x[:64], y[:64])
    out[f"step{n}"] = {"rel": rel(got_p, want_p),
                       "loss_rel": abs(float(got_loss) / float(want_loss) - 1),
                       "replicated": replicated((got_p, got_s), n)}
  # Another network (tanh, multi-output squared error): the same data-parallel step.
  net = dict(activation="tanh", output="identity_squared_error")
  targets = jnp.asarray(rng.standard_normal((64, 5)).astype(np.float32))
  one_p, _, one_loss = mj.make_train_step(opt, l2=1e-2, **net)(copy(params), opt.init(params),
                                                               x[:64], targets)
  net_p, net_s, net_loss = mj.make_data_parallel_step(opt, mesh, l2=1e-2, **net)(
      copy(params), opt.init(params), x[:64], targets)
  out["step_network"] = {"rel": rel(net_p, one_p),
                         "loss_rel": abs(float(net_loss) / float(one_loss) - 1),
                         "replicated": replicated((net_p, net_s), mesh.size)}
  rows = distributed.rows_sharding(mj.make_mesh(4))  # the 4-device step's batch sharding
  hlo = step.compiled.lower(got_p, got_s, jax.device_put(x[:64], rows),
                            jax.device_put(y[:64], rows)).compile().as_text()
  out["step_collectives"] = sorted(set(re.findall(
      r"\b(all-reduce|all-gather|reduce-scatter|all-to-all|collective-permute)\(", hlo)))

  # A whole epoch (100 rows, batches of 16: the short last one masked), plain and DP-SGD.
  for name, dp in (("epoch", None),
                   ("dp_epoch", mj.DPConfig(clip_norm=0.5, noise_multiplier=1.1))):
    key = jax.random.PRNGKey(3)
    sharded = mj.make_epoch(opt, 16, 1e-2, dp=dp, mesh=mesh)
    p1, s1, st1 = sharded(copy(params), opt.init(params), x, y, key)
    p0, s0, st0 = mj.make_epoch(opt, 16, 1e-2, dp=dp)(copy(params), opt.init(params), x, y, key)
    hlo = sharded.__wrapped__.lower(*distributed.replicate(
        (params, opt.init(params), x, y, key), mesh)).compile().as_text()
    out[name] = {
        "rel": rel(p1, p0), "state_rel": rel(s1, s0),
        "loss_rel": float(np.max(np.abs(np.asarray(st1.losses) / np.asarray(st0.losses) - 1))),
        "steps": int(st1.losses.shape[0]), "replicated": replicated((p1, s1), 8),
        "rows_per_device": sorted(set(int(m) for m in re.findall(r"f32\[(\d+),12\]", hlo))
                                  - {100})}

  # fit with validation: the same history and parameters.
  kwargs = dict(optimizer=opt, epochs=2, batch_size=16, l2=1e-3, seed=4, val=(x[:30], y[:30]))
  r1, r0 = mj.fit(params, (x, y), mesh=mesh, **kwargs), mj.fit(params, (x, y), **kwargs)
  out["fit"] = {"rel": rel(r1.params, r0.params), "replicated": replicated(r1.params, 8),
                "val_loss": [r["val_loss"] for r in r1.history],
                "val_loss_ref": [r["val_loss"] for r in r0.history]}

  # The estimator with devices=8 (data-parallel epochs) and without: the same fit.
  import warnings
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # ConvergenceWarning: 3 epochs
    fits = [mj.MLPClassifier(hidden_layer_sizes=(16,), batch_size=16, max_iter=3,
                             random_state=0, devices=devices).fit(np.asarray(x), np.asarray(y))
            for devices in (8, None)]
  out["estimator"] = {"rel": rel([f.coefs_ + f.intercepts_ for f in fits][0],
                                 fits[1].coefs_ + fits[1].intercepts_),
                      "loss_rel": abs(fits[0].loss_ / fits[1].loss_ - 1),
                      "n_iter": [f.n_iter_ for f in fits]}

  # Bad input.
  out["errors"] = {
      "epoch_batch": error(lambda: mj.make_epoch(opt, 10, mesh=mj.make_mesh(4))),
      "fit_batch": error(lambda: mj.fit(params, (x, y), optimizer=opt, epochs=1, batch_size=12,
                                        mesh=mesh)),
      "step_batch": error(lambda: mj.make_data_parallel_step(opt, mj.make_mesh(4))(
          copy(params), opt.init(params), x[:10], y[:10])),
      "too_many": error(lambda: mj.make_mesh(16)),
  }
  print("RESULT " + json.dumps(out))


if __name__ == "__main__":
  main()
