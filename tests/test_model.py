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


@pytest.mark.parametrize("seed", [0, 7, np.int64(7), np.uint32(2**32 - 1), -1])
def test_an_int_seed_is_the_prng_key_of_that_seed_bit_for_bit(seed):
  sizes = (6, 5, 3)
  want = mj.init_params(jax.random.PRNGKey(seed), sizes)
  for key in (seed, jax.random.key(seed)):  # an int seed; a typed key works as well
    got = mj.init_params(key, sizes)
    assert all(np.asarray(a).tobytes() == np.asarray(b).tobytes()
               for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)))


@pytest.mark.parametrize("key, given", [
    (0.5, "float"), ("0", "str"), (None, "NoneType"), (True, "bool"),
    (jnp.zeros(2), "an array of dtype float32 and shape (2,)"),
    (jax.random.split(jax.random.PRNGKey(0)), "an array of dtype uint32 and shape (2, 2)"),
    (jax.random.split(jax.random.key(0)), "shape (2,)"),
], ids=["float", "str", "None", "bool", "float-array", "two-raw-keys", "two-typed-keys"])
def test_init_params_refuses_what_is_neither_a_key_nor_an_int_seed(key, given):
  with pytest.raises(mj.InputTypeError) as info:
    mj.init_params(key, (3, 2))
  assert str(info.value).startswith("key: expected a PRNG key or an int seed, got ")
  assert given in str(info.value)


def test_forward_and_predict_take_nested_lists_and_check_shapes():
  params = mj.init_params(0, (3, 2))
  lists = tuple(mj.Dense(np.asarray(l.w).tolist(), np.asarray(l.b).tolist()) for l in params)
  x = [[1.0, 2.0, 3.0], [0.5, -1.0, 0.0]]
  np.testing.assert_array_equal(mj.forward(lists, x), mj.forward(params, jnp.asarray(x)))
  np.testing.assert_array_equal(mj.predict(lists, x), mj.predict(params, jnp.asarray(x)))
  with pytest.raises(mj.InputError, match=r"x: expected shape \(m, 3\)"):
    mj.forward(params, jnp.ones((2, 4)))
  with pytest.raises(mj.InputTypeError, match="x: expected a floating dtype"):
    mj.predict(params, jnp.ones((2, 3), jnp.int32))


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
