"""Checkpoints (`save_checkpoint`, `load_checkpoint`, `check_compatible`): parameters, optimizer
state, key, epoch, step, config and extra come back bit for bit; bad arguments are refused
before anything is written; the optimizer state is checked against its template; a run file is
told apart. The file format beneath is tested in test_pytree_file.py."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import mlp_jax as mj
from mlp_jax.io.checkpoint import Checkpoint, check_compatible, load_checkpoint, save_checkpoint
from conftest import (CHECKPOINT_SIZES as SIZES, OPTIMIZERS, assert_bits_equal, refused,
                      trained_state)


# ------------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("opt_name", sorted(OPTIMIZERS))
def test_round_trip_is_bit_exact(tmp_path, dtype, opt_name, standard_promotion):
  opt, params, state = trained_state(opt_name, dtype=dtype)
  rng = jax.random.fold_in(jax.random.PRNGKey(42), 3)
  config = {"lr": 0.01, "layer_sizes": [4, 8, 3], "name": "run-1", "nested": {"a": [1, None]}}
  extra = {"best_accuracy": 0.75, "history": [0.5, 0.25]}
  path = save_checkpoint(tmp_path / "runs" / "a" / "ckpt.npz", params, state, epoch=5,
                         config=config, rng_key=rng, step=123, extra=extra)
  assert path == tmp_path / "runs" / "a" / "ckpt.npz"
  assert os.listdir(path.parent) == ["ckpt.npz"]  # parents created, no temp file left

  ckpt = load_checkpoint(path, opt_state_template=opt.init(params))
  assert isinstance(ckpt, Checkpoint)
  assert isinstance(ckpt.params, tuple) and all(isinstance(l, mj.Dense) for l in ckpt.params)
  assert_bits_equal(ckpt.params, params)
  assert_bits_equal(ckpt.opt_state, state)
  assert_bits_equal(ckpt.rng_key, rng)
  assert (ckpt.epoch, ckpt.step, ckpt.config, ckpt.extra) == (5, 123, config, extra)
  # Without a template: the leaves, in order.
  assert_bits_equal(load_checkpoint(path).opt_state, jax.tree.leaves(state))
  # A shape-only template (jax.eval_shape) works too.
  assert_bits_equal(load_checkpoint(path, jax.eval_shape(opt.init, params)).opt_state, state)


def test_typed_key_none_state_and_defaults(tmp_path, standard_promotion):
  params = mj.init_params(jax.random.PRNGKey(1), SIZES)
  key = jax.random.key(7)
  path = save_checkpoint(tmp_path / "ckpt", params, epoch=0, rng_key=key)
  assert os.listdir(tmp_path) == ["ckpt"]  # used as given: no .npz suffix added
  ckpt = load_checkpoint(path)
  assert jnp.issubdtype(ckpt.rng_key.dtype, jax.dtypes.prng_key)
  assert jax.random.key_impl(ckpt.rng_key) == jax.random.key_impl(key)
  assert_bits_equal(jax.random.key_data(ckpt.rng_key), jax.random.key_data(key))
  assert_bits_equal(jax.random.normal(ckpt.rng_key, (3,)), jax.random.normal(key, (3,)))
  assert (ckpt.opt_state, ckpt.epoch, ckpt.config, ckpt.step, ckpt.extra) == (None, 0, {}, 0, {})
  # A state-less optimizer's template fits a file without state; one with state does not.
  empty = optax.sgd(0.1).init(params)
  assert load_checkpoint(path, empty).opt_state == empty
  refused(path, "optimizer state does not match: the file holds 0 leaves, 9 expected",
          opt_state_template=optax.adam(0.1).init(params))
  assert load_checkpoint(save_checkpoint(tmp_path / "nokey", params, epoch=1)).rng_key is None


@pytest.mark.parametrize("kwargs, kind, match", [
    ({"epoch": -1}, mj.InputError, "epoch: expected an int >= 0"),
    ({"epoch": 1.5}, mj.InputTypeError, "epoch: expected an int"),
    ({"epoch": 1, "step": "3"}, mj.InputTypeError, "step: expected an int"),
    ({"epoch": 1, "config": {"f": object()}}, mj.InputTypeError, "config: expected a JSON"),
    ({"epoch": 1, "extra": [1]}, mj.InputTypeError, "extra: expected a dict"),
    ({"epoch": 1, "opt_state": {"f": object()}}, mj.InputTypeError,
     "['opt_state']['f']: expected an array leaf, got object"),
])
def test_save_rejects_bad_arguments_and_writes_nothing(tmp_path, kwargs, kind, match):
  params = mj.init_params(jax.random.PRNGKey(0), SIZES)
  with pytest.raises(kind) as info:
    save_checkpoint(tmp_path / "c.npz", params, **kwargs)
  assert match in str(info.value)
  with pytest.raises(mj.InputTypeError, match="params: expected a pytree of arrays"):
    save_checkpoint(tmp_path / "c.npz", [], epoch=0)
  assert os.listdir(tmp_path) == []


# ---------------------------------------------------------- templates, run files, layer sizes


def test_mismatched_opt_state_template(saved, standard_promotion):
  path, template, _ = saved
  wider = optax.adam(1e-2).init(mj.init_params(jax.random.PRNGKey(0), (64, 256, 10)))
  refused(path, "optimizer state does not match: leaf 1 has shape (64, 128) in the file, "
          "(64, 256) expected", opt_state_template=wider)
  sgd = optax.sgd(1e-2, momentum=0.9).init(mj.init_params(jax.random.PRNGKey(0), (64, 128, 10)))
  refused(path, "optimizer state does not match: the file holds 9 leaves, 4 expected",
          opt_state_template=sgd)
  half = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, jnp.float16), template)
  refused(path, "optimizer state does not match: leaf 0 has dtype int32 in the file, float16 "
          "expected", opt_state_template=half)


def test_a_run_file_is_not_a_checkpoint_and_the_reverse(saved, tmp_path):
  path, _, _ = saved
  with pytest.raises(mj.CheckpointError, match="holds no training run"):
    mj.load_run(path)
  params = mj.init_params(jax.random.PRNGKey(0), SIZES)
  result = mj.fit(params, (np.ones((8, 4), np.float32), np.zeros(8, np.int32)),
                  optimizer=optax.sgd(0.1), epochs=1, batch_size=4)
  run = mj.save_run(tmp_path / "run.npz", result.state)
  refused(run, "holds a run, not a checkpoint of save_checkpoint (use load_run)")


def test_check_compatible(saved):
  path, template, _ = saved
  ckpt = load_checkpoint(path, template)
  check_compatible(ckpt, (64, 128, 10))
  for sizes, message in [
      ((256, 128, 10), "checkpoint has 64 input features, the data has 256"),
      ((64, 128, 5), "checkpoint has 10 classes, the data has 5"),
      ((64, 256, 10), "checkpoint has layer sizes (64, 128, 10), (64, 256, 10) expected"),
  ]:
    with pytest.raises(mj.CheckpointError) as info:
      check_compatible(ckpt, sizes)
    assert str(info.value) == message
  with pytest.raises(mj.CheckpointError, match="input features") as info:
    check_compatible(ckpt, (256, 128, 10), path=path)
  assert str(info.value) == f"checkpoint {path} has 64 input features, the data has 256"


def test_the_network_is_saved_with_the_parameters_and_checked(tmp_path):
  params = mj.init_params(jax.random.PRNGKey(0), (4, 8, 6, 3))
  net = mj.Network((mj.Activation("tanh"), mj.Activation("leaky_relu", 0.2)),
                   "identity_squared_error")
  path = save_checkpoint(tmp_path / "net.npz", params, epoch=1, network=net)
  ckpt = load_checkpoint(path)
  assert ckpt.network == net
  check_compatible(ckpt, (4, 8, 6, 3), network=net)
  with pytest.raises(mj.CheckpointError) as info:
    check_compatible(ckpt, (4, 8, 6, 3), network=mj.Network())
  assert str(info.value) == ("checkpoint holds a network of activation tanh,leaky_relu:0.2, "
                             "output identity_squared_error, not activation relu, output "
                             "softmax_cross_entropy")
  # The source's network writes no key: such files keep the bytes they always had.
  plain = save_checkpoint(tmp_path / "plain.npz", params, epoch=1)
  assert "network" not in mj.load_pytree(plain)[1]
  assert load_checkpoint(plain).network == mj.Network()
  with pytest.raises(mj.InputError, match=r"network\.activation: expected one activation per "):
    save_checkpoint(tmp_path / "bad.npz", params, epoch=1,
                    network=mj.Network((mj.Activation("tanh"),)))
  assert not (tmp_path / "bad.npz").exists()
