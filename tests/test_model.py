"""Parameters, initialisation, forward pass (E1)-(E3) and prediction."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import mlp_jax as mj
from conftest import make_batch


@pytest.mark.parametrize("sizes", [(256, 256, 10), (256, 512, 128, 10), (3, 2)])
def test_init_params_shapes_dtype_and_he_scale(sizes, dtype):
  params = mj.init_params(jax.random.PRNGKey(0), sizes, dtype)
  assert isinstance(params, tuple) and all(isinstance(l, mj.Dense) for l in params)
  assert mj.layer_sizes(params) == sizes
  for layer, fan_in, fan_out in zip(params, sizes[:-1], sizes[1:]):
    assert layer.w.shape == (fan_in, fan_out) and layer.b.shape == (fan_out,)
    assert layer.w.dtype == dtype and layer.b.dtype == dtype
    np.testing.assert_array_equal(layer.b, 0)
  for layer, fan_in in zip(params, sizes[:-1]):
    big = layer.w
    if big.size > 10000:  # He-normal: std sqrt(2 / fan_in), every layer large enough to tell
      assert abs(float(big.std()) / np.sqrt(2 / fan_in) - 1) < 0.03
      assert abs(float(big.mean())) < 0.01


@pytest.mark.parametrize("sizes", [(256, 256, 10), (784, 1024, 1024, 10), (3, 2)])
def test_init_params_is_the_op_by_op_he_normal_bit_for_bit(sizes, dtype):
  # One compiled program, the same weights as sampling and scaling each layer op by op.
  for seed in (0, 7):
    keys = jax.random.split(jax.random.PRNGKey(seed), len(sizes) - 1)
    params = mj.init_params(jax.random.PRNGKey(seed), sizes, dtype)
    for layer, k, fan_in, fan_out in zip(params, keys, sizes[:-1], sizes[1:]):
      w = jax.random.normal(k, (fan_in, fan_out), dtype) * jnp.sqrt(2.0 / fan_in).astype(dtype)
      assert np.asarray(layer.w).tobytes() == np.asarray(w).tobytes()


def test_init_params_default_is_the_source_network():
  assert mj.layer_sizes(mj.init_params(jax.random.PRNGKey(0))) == (256, 256, 10)
  assert mj.init_params(jax.random.PRNGKey(0))[0].w.dtype == jnp.float32


@pytest.mark.parametrize("sizes", [(5,), (), (4, 0, 2)])
def test_init_params_rejects_bad_sizes(sizes):
  with pytest.raises(mj.InputError, match="layer_sizes"):
    mj.init_params(jax.random.PRNGKey(0), sizes)


def test_forward_is_E1_to_E3_and_predict_is_argmax(dtype):
  sizes = (6, 5, 4, 3)
  params = mj.init_params(jax.random.PRNGKey(0), sizes, dtype)
  x, _ = make_batch(0, sizes, 8, dtype)
  a = np.asarray(x, np.float64)
  for i, layer in enumerate(params):
    a = a @ np.asarray(layer.w, np.float64) + np.asarray(layer.b, np.float64)
    if i < len(params) - 1:
      a = np.maximum(a, 0)
  logits = mj.forward(params, x)
  assert logits.shape == (8, 3) and logits.dtype == dtype
  np.testing.assert_allclose(logits, a, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(mj.predict(params, x), a.argmax(1))


def test_params_are_an_optax_pytree(standard_promotion):
  params = mj.init_params(jax.random.PRNGKey(0), (4, 3, 2))
  x, y = make_batch(0, (4, 3, 2), 5, jnp.float32)
  opt = optax.adam(1e-2)
  state = opt.init(params)
  updates, state = opt.update(mj.grads(params, x, y), state, params)
  new = optax.apply_updates(params, updates)
  assert jax.tree.structure(new) == jax.tree.structure(params)
  assert isinstance(new[0], mj.Dense)
