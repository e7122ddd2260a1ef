"""Bad input at the public boundary: one clear error naming the argument, expected and actual."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mlp_jax as mj

SIZES = (4, 3, 2)


@pytest.fixture
def batch():
  params = mj.init_params(jax.random.PRNGKey(0), SIZES)
  x = jnp.ones((5, 4), jnp.float32)
  y = jnp.asarray([0, 1, 0, 1, 1], jnp.int32)
  return params, x, y


FUNCS = [mj.loss, mj.grads, mj.loss_and_grads, mj.autodiff_grads]


@pytest.mark.parametrize("fn", FUNCS, ids=lambda f: f.__name__)
@pytest.mark.parametrize("bad_x, kind, match", [
    (jnp.ones((5, 3)), mj.InputError, r"x: expected shape \(m, 4\).*\(5, 3\)"),
    (jnp.ones((5,)), mj.InputError, r"x: expected shape"),
    (jnp.ones((0, 4)), mj.InputError, r"m >= 1"),
    (jnp.ones((5, 4), jnp.int32), mj.InputTypeError, r"x: expected a floating dtype, got int32"),
    (jnp.ones((5, 4)).at[2, 1].set(jnp.nan), mj.InputError, r"x: expected finite.*1 NaN"),
    (jnp.ones((5, 4)).at[0, 0].set(jnp.inf), mj.InputError, r"x: expected finite"),
])
def test_bad_features(fn, batch, bad_x, kind, match):
  params, _, y = batch
  with pytest.raises(kind, match=match):
    fn(params, bad_x, y)


@pytest.mark.parametrize("fn", FUNCS, ids=lambda f: f.__name__)
@pytest.mark.parametrize("bad_y, kind, match", [
    (jnp.asarray([0, 1, 2, 0, 1]), mj.InputError, r"y: expected labels in 0..1, got values in 0..2"),
    (jnp.asarray([0, -1, 0, 0, 1]), mj.InputError, r"labels in 0..1"),
    (jnp.asarray([0.0, 1, 0, 0, 1]), mj.InputTypeError, r"y: expected an integer dtype"),
    (jnp.asarray([0, 1, 0]), mj.InputError, r"y: expected integer labels of shape \(5,\)"),
    (jnp.zeros((5, 2), jnp.int32), mj.InputError, r"shape \(5,\)"),
])
def test_bad_labels(fn, batch, bad_y, kind, match):
  params, x, _ = batch
  with pytest.raises(kind, match=match):
    fn(params, x, bad_y)


@pytest.mark.parametrize("bad_l2", [-0.1, float("nan"), float("inf")])
def test_bad_penalty(batch, bad_l2):
  params, x, y = batch
  with pytest.raises(mj.InputError, match="l2: expected a finite value >= 0"):
    mj.grads(params, x, y, bad_l2)


def test_bad_params(batch):
  params, x, y = batch
  as_numpy64 = tuple(mj.Dense(np.asarray(l.w, np.float64), np.asarray(l.b, np.float64))
                     for l in params)
  with pytest.raises(mj.InputTypeError, match=r"float64 parameters need float64 enabled"):
    mj.grads(as_numpy64, x, y)  # x64 is off here: a clear error, not a dtype mismatch
  with pytest.raises(mj.InputTypeError, match="tuple of mlp_jax.Dense"):
    mj.grads({"w": 1}, x, y)
  with pytest.raises(mj.InputError, match=r"params\[1\].w: expected fan_in 3"):
    mj.grads((params[0], mj.Dense(jnp.ones((2, 2)), jnp.ones((2,)))), x, y)
  with pytest.raises(mj.InputError, match=r"params\[0\].b"):
    mj.grads((mj.Dense(params[0].w, jnp.ones((4,))), params[1]), x, y)


def test_errors_are_catchable_as_builtin_and_library_types(batch):
  params, x, _ = batch
  with pytest.raises(ValueError):
    mj.grads(params, x, jnp.asarray([9, 9, 9, 9, 9]))
  with pytest.raises(TypeError):
    mj.grads(params, x.astype(jnp.int32), jnp.zeros(5, jnp.int32))
  with pytest.raises(mj.MLPJaxError):
    mj.grads(params, x, jnp.asarray([9, 9, 9, 9, 9]))


def test_shape_checks_run_under_jit_and_value_checks_are_skipped(batch):
  """Inside a user's jit only static checks run (at trace time): no cost in the step."""
  params, x, y = batch
  with pytest.raises(mj.InputError, match="x: expected shape"):
    jax.jit(mj.grads)(params, jnp.ones((5, 3)), y)
  out = jax.jit(mj.grads)(params, x, y)  # traced labels are not read back to the host
  assert out[0].w.shape == (4, 3)
  # Labels the eager call refuses (see above) pass unread under jit.
  out_of_range = jax.jit(mj.grads)(params, x, jnp.asarray([9, 9, 9, 9, 9]))
  assert out_of_range[0].w.shape == (4, 3)


@pytest.mark.parametrize("fn", FUNCS, ids=lambda f: f.__name__)
def test_a_jitted_call_has_no_host_round_trip(fn, batch):
  """Under a user's jit nothing is read back to Python: the compiled program has no host
  callback (a check that read the values there, even without raising, would add one)."""
  params, x, y = batch
  assert "callback" not in jax.jit(fn).lower(params, x, y).as_text()

  def with_a_read(params, x, y):  # the same call with a read-back: what the assertion sees
    jax.debug.callback(lambda labels: None, y)
    return fn(params, x, y)

  assert "callback" in jax.jit(with_a_read).lower(params, x, y).as_text()


def test_numpy_and_list_inputs_are_accepted(batch):
  params, x, y = batch
  g1 = mj.grads(params, np.asarray(x), [0, 1, 0, 1, 1])
  g2 = mj.grads(params, x, y)
  for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
    np.testing.assert_allclose(a, b)


def _as_lists(params):
  """The same parameters with every leaf a (nested) Python list of floats."""
  return tuple(mj.Dense(np.asarray(l.w).tolist(), np.asarray(l.b).tolist()) for l in params)


# Every public entry that takes params, or a representative of its family.
PARAMS_ENTRIES = {
    "loss": mj.loss,
    "grads": mj.grads,
    "loss_and_grads": mj.loss_and_grads,
    "per_sample_grads": mj.per_sample_grads,
    "per_sample_grad_norms": mj.per_sample_grad_norms,
    "clipped_mean_grads": lambda p, x, y: mj.clipped_mean_grads(p, x, y, 1.0),
    "autodiff_grads": mj.autodiff_grads,
    "forward": lambda p, x, y: mj.forward(p, x),
    "predict": lambda p, x, y: mj.predict(p, x),
    "evaluate": mj.evaluate,
    "confusion_matrix": mj.confusion_matrix,
    "check_gradients": lambda p, x, y: str(mj.check_gradients(p, x, y)),  # the whole report
    "fit": lambda p, x, y: mj.fit(p, (x, y), optimizer="sgd", epochs=1, batch_size=5).params,
}


@pytest.mark.parametrize("entry", sorted(PARAMS_ENTRIES))
def test_dense_leaves_given_as_nested_lists_are_accepted(entry, batch):
  """Like x and y, the leaves of `Dense` may be nested lists of floats: the same result as the
  arrays (Python floats are the default float dtype, float32 here)."""
  params, x, y = batch
  fn = PARAMS_ENTRIES[entry]
  got, want = fn(_as_lists(params), x, y), fn(params, x, y)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("leaves, kind, match", [
    (([[1, 2, 3]] * 4, [0, 0, 0]), mj.InputTypeError,
     r"params\[0\].w: expected a floating dtype, got int32"),
    (([[1.0, 2.0, 3.0]] * 4, [0, 0, 0]), mj.InputTypeError,
     r"params\[0\].b: expected floating dtype float32 like params\[0\].w, got int32"),
    (([[1.0, 2.0, 3.0], [1.0]], [0.0] * 3), mj.InputTypeError,
     r"params\[0\].w: expected an array or nested lists of floats, got list"),
    (([[1.0, 2.0, 3.0]] * 4, None), mj.InputTypeError,
     r"params\[0\].b: expected an array or nested lists of floats, got NoneType"),
    (([1.0, 2.0, 3.0], [0.0] * 3), mj.InputError, r"params\[0\]: expected w of rank 2"),
], ids=["int-lists", "int-bias", "ragged", "None", "rank-1-list"])
def test_bad_list_leaves_are_named(leaves, kind, match, batch):
  params, x, y = batch
  with pytest.raises(kind, match=match):
    mj.loss_and_grads((mj.Dense(*leaves),) + params[1:], x, y)


def test_non_finite_parameters_are_named(batch):
  params, x, y = batch
  bad = (mj.Dense(params[0].w.at[1, 2].set(jnp.nan), params[0].b), params[1])
  with pytest.raises(mj.InputError, match=r"params\[0\].w: expected finite values, got 1 NaN"):
    mj.loss_and_grads(bad, x, y)


EAGER = [mj.loss_and_grads, mj.grads, mj.per_sample_grads, mj.per_sample_grad_norms,
         mj.per_sample_layer_norms, lambda p, x, y: mj.clipped_mean_grads(p, x, y, 1.0),
         lambda p, x, y: mj.per_sample_grads(p, x, y, chunk_size=2)]


@pytest.mark.parametrize("fn", EAGER, ids=["loss_and_grads", "grads", "per_sample_grads",
                                           "per_sample_grad_norms", "per_sample_layer_norms",
                                           "clipped_mean_grads", "per_sample_grads_chunked"])
def test_value_checks_off_skip_only_the_value_checks(fn, batch):
  """`mj.value_checks(False)`: no NaN or label check (no wait for the device), shapes still
  checked; on again after the block, also after an exception inside it."""
  params, x, y = batch
  nan_x = x.at[1, 2].set(jnp.nan)
  with mj.value_checks(False):
    out = fn(params, nan_x, y)
    assert not all(bool(jnp.isfinite(leaf).all()) for leaf in jax.tree.leaves(out))
    with pytest.raises(mj.InputError, match="x: expected shape"):
      fn(params, x[:, :3], y)
  with pytest.raises(mj.InputError, match="x: expected finite values"):
    fn(params, nan_x, y)
  with pytest.raises(mj.InputError, match=r"y: expected labels in 0\.\.1"):
    fn(params, x, y.at[0].set(7))
