"""The scanned epoch (`make_epoch`, `build_epoch`): its batch plan and shuffle, the masked short
last batch, its equality with the same steps one by one, its program cache and XLA options."""

import types

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import mlp_jax as mj
from mlp_jax.training import epoch as training
from conftest import TRAIN_SIZES as SIZES, train_batch as _data
from conftest import assert_tree_close, copy_tree, trees_bit_equal

pytestmark = pytest.mark.usefixtures("standard_promotion")  # optax's int32 step counters


def test_short_last_batch_is_the_remaining_examples_exactly():
  """Padding rows are masked: the last step's loss is (E6) on the N mod B real rows alone."""
  params = mj.init_params(jax.random.PRNGKey(0), SIZES)
  x, y = _data(10)
  key = jax.random.PRNGKey(3)
  indices, mask, _ = training.epoch_plan(key, 10, 4)
  assert indices.shape == (3, 4) and mask.sum() == 10
  assert sorted(np.asarray(indices)[np.asarray(mask)].tolist()) == list(range(10))
  epoch = mj.make_epoch(optax.sgd(0.0), batch_size=4, l2=0.5)
  opt_state = optax.sgd(0.0).init(params)
  _, _, stats = epoch(copy_tree(params), opt_state, x, y, key)
  last = np.asarray(indices[2])[:2]
  np.testing.assert_allclose(stats.losses[2], mj.loss(params, x[last], y[last], 0.5), rtol=1e-6)


def test_scanned_epoch_equals_the_same_steps_one_by_one(dtype, rtol):
  params = mj.init_params(jax.random.PRNGKey(2), SIZES, dtype)
  x, y = _data(23, dtype=dtype)
  opt = optax.sgd(0.1, momentum=0.9)
  key = jax.random.PRNGKey(7)
  got_p, _, stats = mj.make_epoch(opt, batch_size=5, l2=0.1)(copy_tree(params), opt.init(params),
                                                             x, y, key)
  indices, mask, _ = training.epoch_plan(key, 23, 5)
  step = mj.make_train_step(opt, l2=0.1)
  p, s = copy_tree(params), opt.init(params)
  for idx, keep in zip(np.asarray(indices), np.asarray(mask)):
    p, s, loss = step(p, s, x[idx[keep]], y[idx[keep]])
  assert_tree_close(got_p, p, 10 * rtol)
  np.testing.assert_allclose(stats.losses[-1], loss, rtol=10 * rtol)
  assert bool(stats.finite.all())


def _cpu_mesh():
  """A one-device mesh of a CPU device, on any backend: the epoch's CPU branch on every machine."""
  return jax.sharding.Mesh(np.asarray(jax.devices("cpu")[:1]), ("data",))


def _one_epoch(x, y, batch_size=8, mesh=None):
  opt = optax.sgd(0.1, momentum=0.9)
  params = mj.init_params(jax.random.PRNGKey(0), SIZES)
  settings = mj.FitSettings(batch_size=batch_size, l2=0.01)
  epoch = training.build_epoch(opt, settings, mesh).epoch  # built anew
  params, _, stats = epoch(params, opt.init(params), x, y, training.epoch_key(3, 0))
  return params, stats.losses


@pytest.mark.parametrize("where", ["default", "cpu-mesh"])
def test_the_epochs_xla_options_change_no_bit(monkeypatch, where):
  """The epoch compiled with `CPU_COMPILER_OPTIONS` and without: the same bits. On a CPU mesh
  the options are in effect on any backend; on the default devices only where those are CPUs."""
  mesh = _cpu_mesh() if where == "cpu-mesh" else None
  if training.compiler_options(mesh) is None and jax.default_backend() != "cpu":
    pytest.skip("off CPU the default devices take no options (the cpu-mesh case has them)")
  assert training.compiler_options(mesh) == training.CPU_COMPILER_OPTIONS
  x, y = _data(50)
  ours = _one_epoch(x, y, mesh=mesh)
  monkeypatch.setattr(training, "compiler_options", lambda mesh=None: None)
  assert trees_bit_equal(ours, _one_epoch(x, y, mesh=mesh))


def test_the_options_go_to_cpu_devices_only():
  """The platform of the mesh's devices decides, on any backend: CPU devices get
  `CPU_COMPILER_OPTIONS` (this jaxlib knows them), any other platform none; no mesh means the
  default backend."""
  other = types.SimpleNamespace(devices=np.asarray([types.SimpleNamespace(platform="gpu")],
                                                   dtype=object))
  assert training.compiler_options(_cpu_mesh()) == training.CPU_COMPILER_OPTIONS
  assert training.compiler_options(other) is None
  on_cpu = jax.default_backend() == "cpu"
  assert training.compiler_options() == (training.CPU_COMPILER_OPTIONS if on_cpu else None)


def test_the_cpu_epoch_is_compiled_with_the_options(monkeypatch):
  """The options reach XLA: an option XLA does not know, taken as known, fails the compile."""
  monkeypatch.setattr(training, "CPU_COMPILER_OPTIONS", {"xla_cpu_no_such_option": True})
  monkeypatch.setattr(training, "_cpu_options_known", lambda: True)
  x, y = _data(50)
  with pytest.raises(jax.errors.JaxRuntimeError, match="xla_cpu_no_such_option"):
    _one_epoch(x, y, mesh=_cpu_mesh())


def test_options_this_jaxlib_does_not_know_are_left_out(monkeypatch):
  monkeypatch.setattr(training, "CPU_COMPILER_OPTIONS", {"xla_cpu_no_such_option": True})
  training._cpu_options_known.cache_clear()
  try:
    assert training.compiler_options(_cpu_mesh()) is None
    x, y = _data(50)
    _, losses = _one_epoch(x, y, mesh=_cpu_mesh())
    assert bool(jnp.isfinite(losses).all())
  finally:
    training._cpu_options_known.cache_clear()


def test_the_epochs_shuffle_is_jax_random_permutation():
  indices, mask = training.epoch_batches(training.epoch_key(3, 1), 50, 8)
  perm = jax.random.permutation(training.epoch_key(3, 1), 50)
  np.testing.assert_array_equal(indices.reshape(-1)[:50], perm)
  np.testing.assert_array_equal(indices.reshape(-1)[50:], perm[:6])  # the masked padding
  assert int(mask.sum()) == 50


def test_make_epoch_returns_the_compiled_program_again_for_the_same_settings():
  opt = optax.adam(1e-3)
  assert mj.make_epoch(opt, 8, 0.1) is mj.make_epoch(opt, 8, 0.1)
  assert mj.make_epoch(opt, 8, 0.1) is not mj.make_epoch(opt, 16, 0.1)
  # The settings are checked into plain Python values first: a lambda given as an array is a
  # key like any other (float32 0.1 is not the float 0.1, so that one is another program).
  assert mj.make_epoch(opt, 8, jnp.asarray(0.1)) is mj.make_epoch(opt, 8, jnp.asarray(0.1))
  assert mj.make_epoch(opt, 8, jnp.asarray(0.5)) is mj.make_epoch(opt, 8, 0.5)
