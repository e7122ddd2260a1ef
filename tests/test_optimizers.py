"""Optimizers by name (`make_optimizer`, a name where an optax optimizer goes), the cosine
schedule, and steps per epoch."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import mlp_jax as mj
from conftest import TRAIN_SIZES as SIZES, copy_tree, train_batch as _data, trees_bit_equal

pytestmark = pytest.mark.usefixtures("standard_promotion")  # optax's int32 step counters


def test_make_optimizer_by_name_matches_optax():
  params = mj.init_params(jax.random.PRNGKey(0), SIZES)
  train = _data(45, 0)
  kwargs = dict(epochs=2, batch_size=8, l2=1e-3, seed=1)
  for name, reference in [("sgd", optax.sgd(0.05)),
                          ("momentum", optax.sgd(0.05, momentum=0.9, nesterov=True)),
                          ("adam", optax.adam(0.05))]:
    ours = mj.fit(params, train, optimizer=mj.make_optimizer(name, 0.05), **kwargs)
    theirs = mj.fit(params, train, optimizer=reference, **kwargs)
    assert trees_bit_equal(ours.params, theirs.params), name


def test_cosine_schedule_decays_the_step_to_zero_at_total_steps():
  opt = mj.make_optimizer("sgd", 0.1, schedule="cosine", total_steps=10)
  p = jnp.zeros(())
  state = opt.init(p)
  steps = []
  for _ in range(12):
    update, state = opt.update(jnp.ones(()), state, p)
    steps.append(-float(update))
  want = [0.05 * (1 + np.cos(np.pi * k / 10)) for k in range(10)] + [0.0, 0.0]
  np.testing.assert_allclose(steps, want, rtol=1e-6, atol=1e-9)


def test_resume_with_a_cosine_schedule_equals_uninterrupted():
  params = mj.init_params(jax.random.PRNGKey(0), SIZES)
  train = _data(45, 0)
  total = 4 * mj.steps_per_epoch(45, 8)
  opt = mj.make_optimizer("adam", 1e-2, schedule="cosine", total_steps=total)
  kwargs = dict(optimizer=opt, batch_size=8, l2=1e-3, seed=1)
  whole = mj.fit(params, train, epochs=4, **kwargs)
  half = mj.fit(params, train, epochs=2, **kwargs)
  rest = mj.fit(params, train, epochs=4, resume=half.state, **kwargs)
  assert trees_bit_equal(whole.params, rest.params)
  constant = mj.fit(params, train, epochs=4, **{**kwargs, "optimizer": mj.make_optimizer(
      "adam", 1e-2)})
  assert not trees_bit_equal(whole.params, constant.params)  # the schedule did change the run


def test_make_optimizer_rejects_bad_arguments():
  with pytest.raises(mj.InputError, match="optimizer: expected one of sgd, momentum, adam"):
    mj.make_optimizer("rmsprop", 0.1)
  with pytest.raises(mj.InputError, match="schedule"):
    mj.make_optimizer("adam", 0.1, schedule="step")
  with pytest.raises(mj.InputError, match="total_steps"):
    mj.make_optimizer("adam", 0.1, schedule="cosine")
  for lr in (0.0, -1.0, float("nan")):
    with pytest.raises(mj.InputError, match="lr: expected a finite value > 0"):
      mj.make_optimizer("adam", lr)
  for lr in ("fast", None):
    with pytest.raises(mj.InputTypeError, match="lr: expected a real number"):
      mj.make_optimizer("adam", lr)


@pytest.mark.parametrize("name", ["sgd", "momentum", "adam"])
def test_an_optimizer_name_means_make_optimizer_with_its_defaults(name):
  """fit, make_epoch and make_train_step take the names make_optimizer knows, as
  `make_optimizer(name)` (lr 1e-3, constant): the same run bit for bit, the same program."""
  params = mj.init_params(jax.random.PRNGKey(0), SIZES)
  kwargs = dict(epochs=2, batch_size=8, seed=1)
  by_name = mj.fit(params, _data(20), optimizer=name, **kwargs)
  built = mj.fit(params, _data(20), optimizer=mj.make_optimizer(name), **kwargs)
  assert trees_bit_equal(by_name.params, built.params)
  assert mj.make_epoch(name, 8) is mj.make_epoch(mj.make_optimizer(name), 8)
  x, y = _data(8)
  opt = mj.make_optimizer(name)
  got = mj.make_train_step(name, 0.1)(copy_tree(params), opt.init(params), x, y)
  want = mj.make_train_step(opt, 0.1)(copy_tree(params), opt.init(params), x, y)
  assert trees_bit_equal(got, want)


BAD_OPTIMIZERS = [
    ("adamw", mj.InputError, "optimizer: expected an optax GradientTransformation or one of "
     "'sgd', 'momentum', 'adam', got 'adamw'"),
    (optax.adam, mj.InputTypeError, "optimizer: expected an optax GradientTransformation or one "
     "of 'sgd', 'momentum', 'adam', got function"),
    (None, mj.InputTypeError, "got NoneType"),
    (0.01, mj.InputTypeError, "got float"),
]


@pytest.mark.parametrize("optimizer, kind, message", BAD_OPTIMIZERS,
                         ids=["unknown-name", "uncalled-factory", "None", "float"])
@pytest.mark.parametrize("entry", ["fit", "make_epoch", "make_train_step"])
def test_a_bad_optimizer_is_named_before_any_work(entry, optimizer, kind, message):
  params = mj.init_params(jax.random.PRNGKey(0), SIZES)
  x, y = _data(10)
  calls = {
      # Labels out of range too: the optimizer is refused first, before the data is read.
      "fit": lambda: mj.fit(params, (x, y + 10), optimizer=optimizer, epochs=1),
      "make_epoch": lambda: mj.make_epoch(optimizer, 8),
      "make_train_step": lambda: mj.make_train_step(optimizer),
  }
  with pytest.raises(kind) as info:
    calls[entry]()
  assert message in str(info.value)


def test_steps_per_epoch_counts_the_short_last_batch():
  assert [mj.steps_per_epoch(n, 8) for n in (1, 8, 9, 45, 48)] == [1, 1, 2, 6, 6]
