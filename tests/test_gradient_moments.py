"""First-order statistics of the per-example gradients, (E27), against vmap(grad)."""

import jax
import jax.numpy as jnp
import pytest

import mlp_jax as mj
from conftest import assert_tree_close, call, make_batch, network_batch, shape_id

SHAPES = [((256, 256, 10), 37), ((256, 256, 10), 1), ((7, 6, 5, 3), 9), ((5, 3, 2), 4)]
NETWORKS = [("relu", "softmax_cross_entropy"), ("tanh", "sigmoid_binary_cross_entropy"),
            ("gelu", "identity_squared_error"), ("logistic", "poisson_log_link"),
            ("leaky_relu", "softmax_cross_entropy"), ("gelu_tanh", "softmax_cross_entropy")]


def _oracle(params, x, y, **network):
  per = mj.autodiff_per_sample_grads(params, x, y, **network)
  return (jax.tree.map(lambda g: g.mean(0), per), jax.tree.map(lambda g: (g * g).sum(0), per),
          jax.tree.map(lambda g: g.var(0), per), per)


@pytest.mark.parametrize("shape", SHAPES, ids=shape_id)
def test_moments_E27_of_the_source_network_match_vmap_grad(shape, dtype, rtol):
  sizes, m = shape
  params = mj.init_params(0, sizes, dtype)
  x, y = make_batch(1, sizes, m, dtype)
  mean, sum_squared, variance, per = _oracle(params, x, y)
  got = mj.gradient_moments(params, x, y)
  assert_tree_close(got.mean, mean, rtol)
  assert_tree_close(got.sum_squared, sum_squared, rtol)
  assert_tree_close(got.variance, variance, 10 * rtol)  # E[g^2] - E[g]^2: one cancellation
  for norms, g in zip(got.layer_sq_norms, per):
    assert_tree_close(norms.w, jnp.sum(g.w * g.w, axis=(1, 2)), rtol)
    assert_tree_close(norms.b, jnp.sum(g.b * g.b, axis=1), rtol)
  assert_tree_close(mj.sum_grad_squared(params, x, y), sum_squared, rtol)
  assert_tree_close(mj.grad_variance(params, x, y), got.variance, 0.0)


@pytest.mark.parametrize("activation,output", NETWORKS)
def test_moments_of_every_network_match_vmap_grad(activation, output, dtype, rtol):
  sizes = (6, 5, 4, 3)
  params = mj.init_params(2, sizes, dtype)
  x, y = network_batch(3, sizes, 11, dtype, output)
  network = dict(activation=activation, output=output)
  mean, sum_squared, variance, _ = _oracle(params, x, y, **network)
  got = mj.gradient_moments(params, x, y, **network)
  assert_tree_close(got.mean, mean, rtol)
  assert_tree_close(got.sum_squared, sum_squared, rtol)
  assert_tree_close(got.variance, variance, 10 * rtol)


def test_the_mean_plus_the_penalty_is_the_gradient_E14(dtype, rtol):
  params = mj.init_params(0, (9, 7, 4), dtype)
  x, y = make_batch(1, (9, 7, 4), 13, dtype)
  mean = mj.gradient_moments(params, x, y).mean
  l2 = 0.3
  want = mj.grads(params, x, y, l2)
  assert_tree_close(tuple(mj.Dense(g.w + l2 / 13 * p.w, g.b) for g, p in zip(mean, params)),
                    want, rtol)


RTOL_ONE = {"float32": 1e-6, "float64": 1e-15}  # one square by two roundings of its factors


def test_one_example_has_no_variance(dtype):
  params = mj.init_params(0, (9, 7, 4), dtype)
  x, y = make_batch(1, (9, 7, 4), 1, dtype)
  got = mj.gradient_moments(params, x, y)
  assert_tree_close(got.sum_squared, jax.tree.map(jnp.square, got.mean), RTOL_ONE[dtype.name])
  for v, s in zip(jax.tree.leaves(got.variance), jax.tree.leaves(got.sum_squared)):
    assert float(v.max()) <= 4 * RTOL_ONE[dtype.name] * float(s.max())  # zero but rounding


@pytest.mark.parametrize("jit_mode", ["jit", "no-jit"])
def test_compiled_and_op_by_op_calls_agree(jit_mode, dtype, rtol):
  params = mj.init_params(0, (9, 7, 4), dtype)
  x, y = make_batch(1, (9, 7, 4), 6, dtype)
  got = call(lambda p, a, b: mj.gradient_moments(p, a, b), jit_mode, params, x, y)
  assert_tree_close(got, mj.gradient_moments(params, x, y), rtol)


def test_bad_input_is_named():
  params = mj.init_params(0, (9, 7, 4))
  x, y = make_batch(1, (9, 7, 4), 6, jnp.float32)
  with pytest.raises(mj.InputError, match="label"):
    mj.gradient_moments(params, x, y.at[0].set(4))
  with pytest.raises(mj.InputError, match="x: expected finite values"):
    mj.sum_grad_squared(params, x.at[0, 0].set(jnp.nan), y)
