"""`make_train_step`: one compiled step on the analytic gradients, against a step built on
jax.grad, and its compilations."""

import jax
import optax
import pytest

import mlp_jax as mj
from conftest import TRAIN_SIZES as SIZES, train_batch as _data
from conftest import assert_tree_close, copy_tree, count_compiles

pytestmark = pytest.mark.usefixtures("standard_promotion")  # optax's int32 step counters


def test_step_lowers_the_loss():
  params = mj.init_params(jax.random.PRNGKey(0), SIZES)
  x, y = _data()
  opt = optax.sgd(0.1)
  step = mj.make_train_step(opt, l2=1e-3)
  state = opt.init(params)
  first = float(mj.loss(params, x, y, 1e-3))
  for _ in range(20):
    params, state, loss = step(params, state, x, y)
  assert float(mj.loss(params, x, y, 1e-3)) < 0.7 * first


@pytest.mark.parametrize("opt", [optax.sgd(0.05), optax.sgd(0.05, momentum=0.9), optax.adam(1e-2)],
                         ids=["sgd", "momentum", "adam"])
def test_step_matches_a_step_built_on_jax_grad(opt, dtype, rtol):
  params = mj.init_params(jax.random.PRNGKey(1), SIZES, dtype)
  x, y = _data(dtype=dtype)
  state = opt.init(params)

  @jax.jit
  def reference(params, state):
    g = jax.grad(mj.loss)(params, x, y, 0.01)
    updates, state = opt.update(g, state, params)
    return optax.apply_updates(params, updates), state

  want_p, want_s = params, state
  got_p, got_s = copy_tree(params), copy_tree(state)
  step = mj.make_train_step(opt, l2=0.01)
  for _ in range(3):
    want_p, want_s = reference(want_p, want_s)
    got_p, got_s, _ = step(got_p, got_s, x, y)
  assert_tree_close(got_p, want_p, 10 * rtol)


def test_step_compiles_once_per_batch_shape():
  params = mj.init_params(jax.random.PRNGKey(0), SIZES)
  opt = optax.adam(1e-3)
  state = opt.init(params)
  step = mj.make_train_step(opt)
  batches = [_data(32, seed) for seed in range(4)]
  params, state, _ = step(params, state, *batches[0])  # the one compilation for this shape
  with count_compiles() as compiles:
    for x, y in batches[1:]:
      params, state, _ = step(params, state, x, y)
  assert compiles() == 0
  with count_compiles() as compiles:
    params, state, _ = step(params, state, *_data(16, 0))
  assert compiles() >= 1  # a new batch shape is a new program
