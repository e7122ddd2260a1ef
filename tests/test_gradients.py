"""The analytic gradients (E7)-(E12) equal jax.grad of the loss (E6)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import mlp_jax as mj
from conftest import count_compiles, assert_tree_close, call, make_batch, shape_id
from mlp_jax.oracle.check import gradient_scale

# (layer sizes, batch size m): the source's network with m != n, m = 1 and m = n; a deeper net;
# small odd shapes.
SHAPES = [
    ((256, 256, 10), 37),
    ((256, 256, 10), 1),
    ((256, 256, 10), 256),
    ((256, 512, 128, 10), 64),
    ((5, 3, 2), 7),
    ((7, 4, 9, 5, 3), 1),
    ((3, 11, 4), 2),
]
L2S = [0.0, 0.7]


@pytest.mark.parametrize("jit_mode", ["jit", "nojit"])
@pytest.mark.parametrize("l2", L2S)
@pytest.mark.parametrize("shape", SHAPES, ids=shape_id)
def test_grads_match_autodiff_E7_to_E12(shape, l2, jit_mode, dtype, rtol):
  sizes, m = shape
  params = mj.init_params(jax.random.PRNGKey(m), sizes, dtype)
  x, y = make_batch(m, sizes, m, dtype)
  loss, got = call(mj.loss_and_grads, jit_mode, params, x, y, l2)
  want = mj.autodiff_grads(params, x, y, l2)
  scale = gradient_scale(params, x, y, l2)
  assert_tree_close(got, want, rtol, scale)
  assert_tree_close(call(mj.grads, jit_mode, params, x, y, l2), want, rtol, scale)
  np.testing.assert_allclose(loss, mj.loss(params, x, y, l2), rtol=rtol)
  assert loss.dtype == dtype


def test_loss_E6_equals_explicit_formula(dtype, rtol):
  sizes, m = (6, 5, 4), 9
  params = mj.init_params(jax.random.PRNGKey(1), sizes, dtype)
  x, y = make_batch(2, sizes, m, dtype)
  l2 = 0.3
  p64 = [(np.asarray(l.w, np.float64), np.asarray(l.b, np.float64)) for l in params]
  h = np.maximum(np.asarray(x, np.float64) @ p64[0][0] + p64[0][1], 0)
  z = h @ p64[1][0] + p64[1][1]
  yhat = np.exp(z) / np.exp(z).sum(1, keepdims=True)
  want = -np.log(yhat[np.arange(m), np.asarray(y)]).mean() + l2 / (2 * m) * sum(
      (w ** 2).sum() for w, _ in p64)
  np.testing.assert_allclose(float(mj.loss(params, x, y, l2)), want, rtol=rtol)


def test_biases_are_not_penalised_E6():
  params = mj.init_params(jax.random.PRNGKey(0), (4, 3, 2))
  params = tuple(mj.Dense(l.w, l.b + 5.0) for l in params)
  x, y = make_batch(0, (4, 3, 2), 5, jnp.float32)
  g0, g1 = mj.grads(params, x, y, 0.0), mj.grads(params, x, y, 2.0)
  for a, b, p in zip(g0, g1, params):
    np.testing.assert_allclose(b.b, a.b, rtol=1e-6)
    np.testing.assert_allclose(b.w - a.w, 2.0 / 5 * p.w, rtol=1e-5, atol=1e-6)


def test_extreme_logits_give_finite_loss_and_grads(dtype, rtol):
  """Logits of +-1e4: the log-sum-exp shift keeps loss and gradients finite and exact."""
  sizes, m = (4, 3, 5), 6
  params = mj.init_params(jax.random.PRNGKey(0), sizes, dtype)
  w2 = jnp.zeros((3, 5), dtype).at[0, :].set(jnp.asarray([1e4, -1e4, 1e4, 0.0, -1e4], dtype))
  params = (mj.Dense(jnp.eye(4, 3, dtype=dtype), jnp.asarray([1.0, 0.0, 0.0], dtype)),
            mj.Dense(w2, jnp.zeros((5,), dtype)))
  x, _ = make_batch(0, sizes, m, dtype, scale=0.1)
  x = jnp.abs(x)
  y = jnp.asarray([0, 1, 2, 3, 4, 1], jnp.int32)
  loss, got = mj.loss_and_grads(params, x, y)
  assert bool(jnp.isfinite(loss))
  assert all(bool(jnp.isfinite(g).all()) for g in jax.tree.leaves(got))
  assert float(loss) > 1e3  # the wrong classes cost ~1e4 each: not clipped to 0 or inf
  assert_tree_close(got, mj.autodiff_grads(params, x, y), rtol, gradient_scale(params, x, y))


def test_all_equal_logits_give_uniform_error(dtype):
  sizes, m = (3, 4, 5), 4
  params = tuple(mj.Dense(jnp.zeros_like(l.w), jnp.zeros_like(l.b))
                 for l in mj.init_params(jax.random.PRNGKey(0), sizes, dtype))
  x, y = make_batch(0, sizes, m, dtype)
  loss, g = mj.loss_and_grads(params, x, y)
  np.testing.assert_allclose(float(loss), np.log(5), rtol=1e-6)
  counts = np.bincount(np.asarray(y), minlength=5)
  np.testing.assert_allclose(g[1].b, 1 / 5 - counts / m, rtol=1e-6, atol=1e-7)


def test_relu_derivative_is_zero_at_exactly_zero(dtype):
  """Pre-activations exactly 0 pass no gradient, as in the derivation's convention (E10)."""
  w1 = jnp.asarray([[1.0, -1.0, 0.0], [1.0, 1.0, 0.0]], dtype)
  params = (mj.Dense(w1, jnp.zeros((3,), dtype)),
            mj.Dense(jnp.asarray([[1.0, -2.0], [0.5, 1.0], [3.0, 1.0]], dtype), jnp.zeros((2,), dtype)))
  x = jnp.asarray([[1.0, -1.0], [2.0, 2.0]], dtype)  # h = [[0, -2, 0], [4, 0, 0]]: ties at 0
  y = jnp.asarray([0, 1], jnp.int32)
  got = mj.grads(params, x, y)
  want = mj.autodiff_grads(params, x, y)  # jax.nn.relu: derivative 0 at 0
  np.testing.assert_array_equal(got[0].b[2], 0)
  np.testing.assert_array_equal(got[0].w[:, 2], 0)
  assert_tree_close(got, want, 1e-6)


def test_jitted_gradient_compiles_once_per_shape_whatever_lambda():
  # lambda is traced: a new value reuses the program; a new shape compiles a new one.
  params = mj.init_params(jax.random.PRNGKey(0), (256, 24, 10))
  x, y = make_batch(0, (256, 24, 10), 31, jnp.float32)
  x2, y2 = make_batch(1, (256, 24, 10), 29, jnp.float32)
  mj.loss_and_grads(params, x, y, 0.25)
  with count_compiles() as compiles:
    for l2 in [0.0, 0.5, 3.0]:
      mj.loss_and_grads(params, x, y, l2)
  assert compiles() == 0
  with count_compiles() as compiles:
    mj.loss_and_grads(params, x2, y2, 0.5)  # the counter sees a compilation when there is one
  assert compiles() >= 1


def test_deeper_net_recursion_layer_by_layer(dtype, rtol):
  """Delta_l = (Delta_{l+1} W_{l+1}^T) * 1[H_l > 0], (E10), is dL/dH_l for every layer of a
  5-layer net: each error signal against jax.grad with respect to that layer's pre-activation."""
  from mlp_jax.core import backprop, model
  from mlp_jax.core.objective import log_softmax
  sizes = (9, 8, 7, 6, 5, 4)
  params = mj.init_params(jax.random.PRNGKey(3), sizes, dtype)
  x, y = make_batch(3, sizes, 13, dtype)

  def data_loss(shifts):  # the mean cross-entropy with H_l + shift_l in place of each H_l
    a = x
    for i, (layer, shift) in enumerate(zip(params, shifts)):
      h = a @ layer.w + layer.b[None, :] + shift
      a = h if i == len(params) - 1 else jax.nn.relu(h)
    return optax.softmax_cross_entropy_with_integer_labels(a, y).mean()

  zeros = [jnp.zeros((13, d), dtype) for d in sizes[1:]]
  with jax.numpy_dtype_promotion("standard"):  # optax's loss mixes its int labels in
    want = jax.grad(data_loss)(zeros)
  logits, activations = model.forward_activations(params, x)
  top = backprop.output_error(log_softmax(logits), y) / 13
  got = backprop.backprop_errors(params, activations, top)
  assert len(got) == len(want) == 5
  assert_tree_close(tuple(got), tuple(want), rtol)


@pytest.mark.parametrize("case", ["one_class", "m1", "huge_inputs"])
def test_edge_batches_give_finite_correct_gradients(case, dtype, rtol):
  sizes = (8, 6, 4)
  params = mj.init_params(jax.random.PRNGKey(5), sizes, dtype)
  m = 1 if case == "m1" else 9
  x, y = make_batch(5, sizes, m, dtype, scale=1e3 if case == "huge_inputs" else 1.0)
  if case == "one_class":
    y = jnp.full((m,), 2, jnp.int32)
  loss, got = mj.loss_and_grads(params, x, y, 0.1)
  assert bool(jnp.isfinite(loss)) and all(bool(jnp.isfinite(g).all()) for g in jax.tree.leaves(got))
  assert_tree_close(got, mj.autodiff_grads(params, x, y, 0.1), rtol,
                    gradient_scale(params, x, y, 0.1))
