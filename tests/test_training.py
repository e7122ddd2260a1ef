"""The compiled step, the scanned epoch and `fit`, all on the analytic gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import mlp_jax as mj
from mlp_jax.io import checkpoint
from mlp_jax.training import epoch as training
from mlp_jax.training import privacy
from conftest import count_compiles, assert_tree_close, copy_tree, make_batch, trees_bit_equal

SIZES = (12, 16, 5)
pytestmark = pytest.mark.usefixtures("standard_promotion")  # optax's int32 step counters


def _data(n=50, seed=0, dtype=jnp.float32):
  x, y = make_batch(seed, SIZES, n, dtype)
  return x, y


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


def test_fit_is_deterministic_and_validates_each_epoch():
  params = mj.init_params(jax.random.PRNGKey(0), SIZES)
  train, val = _data(60, 0), _data(20, 1)
  kwargs = dict(optimizer=optax.adam(1e-2), epochs=3, batch_size=16, l2=1e-3, seed=5, val=val)
  a = mj.fit(params, train, **kwargs)
  b = mj.fit(params, train, **kwargs)
  assert trees_bit_equal(a.params, b.params)
  assert [r["epoch"] for r in a.history] == [1, 2, 3]
  assert all({"train_loss", "val_loss", "val_acc"} <= set(r) for r in a.history)
  assert a.history[-1]["train_loss"] < a.history[0]["train_loss"]
  c = mj.fit(params, train, **{**kwargs, "seed": 6})
  assert not trees_bit_equal(a.params, c.params)


def test_resume_equals_uninterrupted():
  params = mj.init_params(jax.random.PRNGKey(0), SIZES)
  train = _data(45, 0)
  kwargs = dict(optimizer=optax.adam(1e-2), batch_size=8, l2=1e-3, seed=1)
  whole = mj.fit(params, train, epochs=4, **kwargs)
  half = mj.fit(params, train, epochs=2, **kwargs)
  rest = mj.fit(params, train, epochs=4, resume=half.state, **kwargs)
  assert trees_bit_equal(whole.params, rest.params)
  assert trees_bit_equal(whole.opt_state, rest.opt_state)
  assert [r["epoch"] for r in rest.history] == [1, 2, 3, 4]
  assert rest.state.ledger == whole.state.ledger  # one non-private entry of 4 x 6 steps
  assert rest.state.ledger == (privacy.LedgerEntry(24),)


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


def test_fit_val_loss_is_evaluate_at_the_runs_l2():
  """The recorded val_loss is (E6) at the run's lambda, penalty included: `evaluate` with the
  same l2 gives it back; evaluate's default l2=0 is the bare cross-entropy, lower."""
  params = mj.init_params(jax.random.PRNGKey(0), SIZES)
  xv, yv = _data(20, 1)
  l2 = 0.5
  result = mj.fit(params, _data(40), optimizer=optax.adam(1e-2), epochs=2, batch_size=8, l2=l2,
                  val=(xv, yv))
  assert result.history[-1]["val_loss"] == pytest.approx(
      mj.evaluate(result.params, xv, yv, l2)[0], rel=1e-6)
  assert mj.evaluate(result.params, xv, yv)[0] < result.history[-1]["val_loss"]


def test_fit_takes_a_numpy_integer_batch_size():
  params = mj.init_params(jax.random.PRNGKey(0), SIZES)
  kwargs = dict(optimizer=optax.sgd(0.1), epochs=1, seed=0)
  a = mj.fit(params, _data(20), batch_size=np.int64(8), **kwargs)
  b = mj.fit(params, _data(20), batch_size=8, **kwargs)
  assert trees_bit_equal(a.params, b.params)


def test_steps_per_epoch_counts_the_short_last_batch():
  assert [mj.steps_per_epoch(n, 8) for n in (1, 8, 9, 45, 48)] == [1, 1, 2, 6, 6]


def test_early_stopping_returns_the_best_epoch():
  params = mj.init_params(jax.random.PRNGKey(0), (12, 64, 5))
  x, _ = _data(40, 0)
  y = jnp.asarray(np.random.default_rng(0).integers(0, 5, 40), jnp.int32)  # noise: overfits
  val = _data(40, 1)
  snapshots = {}
  result = mj.fit(params, (x, y), optimizer=optax.adam(3e-2), epochs=60, batch_size=8, val=val,
                  patience=3,
                  on_epoch_end=lambda st: snapshots.__setitem__(
                      st.epochs_done, jax.tree.map(np.array, st.params)))
  assert result.stopped_early
  losses = [r["val_loss"] for r in result.history]
  assert result.best_epoch == 1 + int(np.argmin(losses))
  assert len(losses) == result.best_epoch + 3
  assert trees_bit_equal(result.params, snapshots[result.best_epoch])


def test_non_finite_training_stops_with_epoch_step_and_last_good_params():
  params = mj.init_params(jax.random.PRNGKey(0), SIZES)
  x, y = _data(40)
  with pytest.raises(mj.NonFiniteError, match=r"epoch 1, step \d+ of 5") as info:
    mj.fit(params, (100 * x, y), optimizer=optax.sgd(1e18), epochs=2, batch_size=8)
  err = info.value
  assert err.epoch == 1 and 1 <= err.step <= 5
  assert err.batch_indices.shape == (8,)
  assert all(bool(jnp.isfinite(leaf).all()) for leaf in jax.tree.leaves(err.params))


def test_fit_rejects_bad_arguments():
  params = mj.init_params(jax.random.PRNGKey(0), SIZES)
  x, y = _data(10)
  with pytest.raises(mj.InputError, match="batch_size"):
    mj.fit(params, (x, y), optimizer=optax.sgd(0.1), epochs=1, batch_size=0)
  with pytest.raises(mj.InputError, match="patience"):
    mj.fit(params, (x, y), optimizer=optax.sgd(0.1), epochs=1, batch_size=4, patience=2)
  with pytest.raises(mj.InputError, match=r"train.y: expected labels in 0..4"):
    mj.fit(params, (x, y + 10), optimizer=optax.sgd(0.1), epochs=1)
  with pytest.raises(mj.InputError, match=r"val.x: expected shape"):
    mj.fit(params, (x, y), optimizer=optax.sgd(0.1), epochs=1, val=(x[:, :3], y))


@pytest.mark.parametrize("kwargs, kind, message", [
    (dict(epochs=0), mj.InputError, "epochs: expected an int >= 1, got 0"),
    (dict(epochs=-1), mj.InputError, "epochs: expected an int >= 1, got -1"),
    (dict(epochs=2.0), mj.InputTypeError, "epochs: expected an int >= 1, got 2.0"),
    (dict(batch_size=11), mj.InputError,
     "batch_size: expected an int in 1..10 (the training set has 10 examples), got 11"),
    (dict(batch_size=25), mj.InputError, "batch_size: expected an int in 1..10"),
    (dict(seed=-1), mj.InputError, "seed: expected an int in 0..4294967295, got -1"),
    (dict(seed=2**64), mj.InputError, "seed: expected an int in 0..4294967295"),
    (dict(patience=0, val="train"), mj.InputError, "patience: expected an int >= 1, got 0"),
    (dict(params="list"), mj.InputTypeError, "params[0]"),
    (dict(params="lists"), mj.InputTypeError, "params must be a non-empty tuple of mlp_jax.Dense"),
], ids=["epochs0", "epochs-1", "epochs-float", "batch>N", "batch>2N", "seed-1", "seed2**64",
        "patience0", "list-of-lists", "nested-lists"])
def test_fit_refuses_bad_settings_before_training(kwargs, kind, message):
  params = mj.init_params(jax.random.PRNGKey(0), SIZES)
  train = _data(10)
  if kwargs.get("val") == "train":
    kwargs["val"] = train
  if kwargs.get("params") == "list":  # plain Python lists in place of Dense layers
    kwargs["params"] = [[np.asarray(l.w).tolist(), np.asarray(l.b).tolist()] for l in params]
  elif kwargs.get("params") == "lists":
    kwargs["params"] = [1, 2]
  args = {"optimizer": optax.sgd(0.1), "epochs": 1, "batch_size": 4, **kwargs}
  with pytest.raises(kind) as info:
    mj.fit(args.pop("params", params), train, **args)
  assert message in str(info.value)


def test_a_list_of_dense_layers_is_accepted_as_params():
  params = mj.init_params(jax.random.PRNGKey(0), SIZES)
  kwargs = dict(optimizer=optax.sgd(0.1), epochs=1, batch_size=4)
  assert trees_bit_equal(mj.fit(list(params), _data(10), **kwargs).params,
                         mj.fit(params, _data(10), **kwargs).params)


# ------------------------------------------------------------------------------ run state


def _early_stopping_problem():
  """A net that overfits noise labels: validation loss turns up after a few epochs."""
  params = mj.init_params(jax.random.PRNGKey(0), (12, 64, 5))
  x, _ = _data(40, 0)
  y = jnp.asarray(np.random.default_rng(0).integers(0, 5, 40), jnp.int32)
  return params, (x, y), dict(optimizer=optax.adam(3e-2), batch_size=8, val=_data(40, 1),
                              patience=3, seed=2)


@pytest.mark.parametrize("cut", [1, 2, 4])
def test_resume_with_patience_through_a_file_equals_uninterrupted(tmp_path, cut):
  """A run saved after `cut` epochs, read back and resumed: the same early stop at the same
  epoch, the same best parameters, the same history (but its timings)."""
  params, train, kwargs = _early_stopping_problem()
  whole = mj.fit(params, train, epochs=60, **kwargs)
  assert whole.stopped_early and whole.best_epoch == 2 and len(whole.history) == 5  # cuts: before,
  # at and after the best epoch
  part = mj.fit(params, train, epochs=cut, **kwargs)
  checkpoint.save_run(tmp_path / "run.npz", part.state)
  saved = checkpoint.load_run(tmp_path / "run.npz").state
  rest = mj.fit(params, train, epochs=60, resume=saved, **kwargs)
  assert (rest.stopped_early, rest.best_epoch) == (True, whole.best_epoch)
  assert trees_bit_equal(rest.params, whole.params)
  assert trees_bit_equal(rest.state.params, whole.state.params)
  strip = lambda h: [{k: v for k, v in r.items() if k != "epoch_seconds"} for r in h]
  assert strip(rest.history) == strip(whole.history)


def test_a_finished_or_stopped_run_trains_nothing_more():
  params, train, kwargs = _early_stopping_problem()
  stopped = mj.fit(params, train, epochs=60, **kwargs)
  again = mj.fit(params, train, epochs=80, resume=stopped.state, **kwargs)
  assert again.history == stopped.history and again.stopped_early
  assert trees_bit_equal(again.params, stopped.params)
  done = mj.fit(params, train, epochs=2, **{**kwargs, "patience": None})
  calls = []
  same = mj.fit(params, train, epochs=2, resume=done.state, on_epoch_end=calls.append,
                **{**kwargs, "patience": None})
  assert calls == [] and same.history == done.history
  with pytest.raises(mj.ResumeError, match="has already trained 2 epochs, more than the 1"):
    mj.fit(params, train, epochs=1, resume=done.state, **{**kwargs, "patience": None})


@pytest.mark.parametrize("change, message", [
    (dict(batch_size=4), "batch_size 8, this run asks for 4"),
    (dict(l2=0.5), "l2 0, this run asks for 0.5"),
    (dict(seed=3), "seed 2, this run asks for 3"),
    (dict(patience=5), "patience 3, this run asks for 5"),
    (dict(patience=None), "patience 3, this run asks for (none)"),
    (dict(val=None, patience=None), "val_examples 40, this run asks for (none)"),
    (dict(dp=privacy.DPConfig(1.0, 1.0)), "dp (none), this run asks for 1 1 1e-05"),
    (dict(compute_dtype=jnp.bfloat16), "compute_dtype (none), this run asks for bfloat16"),
    (dict(train="fewer"), "train_examples 40, this run asks for 30"),
], ids=lambda v: "-".join(v) if isinstance(v, dict) else None)
def test_resume_refuses_a_changed_setting(change, message):
  params, train, kwargs = _early_stopping_problem()
  part = mj.fit(params, train, epochs=1, **kwargs)
  if change.pop("train", None):
    train = (train[0][:30], train[1][:30])
  with pytest.raises(mj.ResumeError) as info:
    mj.fit(params, train, epochs=3, resume=part.state, **{**kwargs, **change})
  assert message in str(info.value) and "a resume must keep it" in str(info.value)


def test_resume_refuses_another_optimizer_state():
  params, train, kwargs = _early_stopping_problem()
  part = mj.fit(params, train, epochs=1, **kwargs)
  leaves = part.state._replace(opt_state=jax.tree.leaves(part.state.opt_state))
  momentum = optax.sgd(0.1, momentum=0.9)
  with pytest.raises(mj.ResumeError, match="optimizer state does not match: the file holds 9 "
                     "leaves, 4 expected"):
    mj.fit(params, train, epochs=3, resume=leaves, **{**kwargs, "optimizer": momentum})


def test_should_stop_ends_after_the_epoch_and_the_run_resumes_exactly():
  params = mj.init_params(jax.random.PRNGKey(0), SIZES)
  kwargs = dict(optimizer=optax.adam(1e-2), batch_size=8, seed=1)
  whole = mj.fit(params, _data(45), epochs=5, **kwargs)
  seen = []
  stopped = mj.fit(params, _data(45), epochs=5, on_epoch_end=seen.append,
                   should_stop=lambda: len(seen) == 2, **kwargs)
  assert stopped.interrupted and stopped.state.epochs_done == 2
  rest = mj.fit(params, _data(45), epochs=5, resume=stopped.state, **kwargs)
  assert not rest.interrupted and trees_bit_equal(rest.params, whole.params)
  seen.clear()
  last = mj.fit(params, _data(45), epochs=2, on_epoch_end=seen.append,
                should_stop=lambda: len(seen) == 2, **kwargs)
  assert not last.interrupted  # asked to stop when the run was done anyway


def test_evaluate_and_confusion_matrix():
  params = mj.init_params(jax.random.PRNGKey(0), SIZES)
  x, y = _data(30)
  loss, acc = mj.evaluate(params, x, y, 0.2)
  np.testing.assert_allclose(loss, mj.loss(params, x, y, 0.2), rtol=1e-5)
  assert acc == pytest.approx(float((mj.predict(params, x) == y).mean()))
  counts = mj.confusion_matrix(params, x, y)
  assert counts.shape == (5, 5) and counts.sum() == 30
  assert np.trace(counts) == round(acc * 30)


def test_fit_works_with_x64_switched_on_globally_for_float32_data():
  """A user script may turn on jax_enable_x64 for the whole process; float32 training still runs."""
  params = mj.init_params(jax.random.PRNGKey(0), SIZES)
  x, y = _data(30)
  with jax.enable_x64(True):
    result = mj.fit(params, (x, y), optimizer=optax.sgd(0.1), epochs=2, batch_size=8, val=(x, y))
  assert result.params[0].w.dtype == jnp.float32
  correct = int((np.asarray(mj.predict(result.params, x)) == np.asarray(y)).sum())
  assert result.history[-1]["val_acc"] == correct / 30


def _one_epoch(x, y, batch_size=8):
  opt = optax.sgd(0.1, momentum=0.9)
  params = mj.init_params(jax.random.PRNGKey(0), SIZES)
  epoch = training.build_epoch(opt, batch_size, 0.01, None, None, None).epoch  # built anew
  params, _, stats = epoch(params, opt.init(params), x, y, training.epoch_key(3, 0))
  return params, stats.losses


def test_the_epochs_xla_options_change_no_bit(monkeypatch):
  x, y = _data(50)
  ours = _one_epoch(x, y)
  monkeypatch.setattr(training, "compiler_options", lambda mesh=None: None)
  assert trees_bit_equal(ours, _one_epoch(x, y))


def test_options_this_jaxlib_does_not_know_are_left_out(monkeypatch):
  monkeypatch.setattr(training, "CPU_COMPILER_OPTIONS", {"xla_cpu_no_such_option": True})
  training._cpu_options_known.cache_clear()
  try:
    assert training.compiler_options() is None
    x, y = _data(50)
    _, losses = _one_epoch(x, y)
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
  assert mj.make_epoch(opt, 8, jnp.asarray(0.1)) is not mj.make_epoch(opt, 8, jnp.asarray(0.1))
