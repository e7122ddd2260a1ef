"""`fit`: a deterministic run of compiled epochs with validation, early stopping, a stop on
request, the first non-finite step named, and its settings checked before any training."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import mlp_jax as mj
from mlp_jax.training import privacy
from conftest import TRAIN_SIZES as SIZES, train_batch as _data, trees_bit_equal

pytestmark = pytest.mark.usefixtures("standard_promotion")  # optax's int32 step counters


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


def test_fit_works_with_x64_switched_on_globally_for_float32_data():
  """A user script may turn on jax_enable_x64 for the whole process; float32 training still runs."""
  params = mj.init_params(jax.random.PRNGKey(0), SIZES)
  x, y = _data(30)
  with jax.enable_x64(True):
    result = mj.fit(params, (x, y), optimizer=optax.sgd(0.1), epochs=2, batch_size=8, val=(x, y))
  assert result.params[0].w.dtype == jnp.float32
  correct = int((np.asarray(mj.predict(result.params, x)) == np.asarray(y)).sum())
  assert result.history[-1]["val_acc"] == correct / 30


# ------------------------------------------------------------------ other networks, (E16)-(E26)

NETWORK_SIZES = (12, 16, 3)


@pytest.mark.parametrize("output", sorted(mj.OUTPUTS))
def test_fit_trains_every_output_and_records_its_score(output):
  """Every output trains on its own targets; the record scores classification by accuracy and
  regression by R^2, and val_loss is `evaluate` of the same network."""
  from conftest import network_batch
  from mlp_jax.training.evaluation import score_name
  params = mj.init_params(jax.random.PRNGKey(0), NETWORK_SIZES)
  train = network_batch(0, NETWORK_SIZES, 60, jnp.float32, output)
  val = network_batch(1, NETWORK_SIZES, 20, jnp.float32, output)
  net = dict(activation="tanh", output=output)
  result = mj.fit(params, train, optimizer=optax.adam(1e-2), epochs=4, batch_size=16, l2=1e-3,
                  val=val, **net)
  score = "val_" + score_name(mj.Network(mj.Activation("tanh"), output))
  assert score == ("val_r2" if output in ("identity_squared_error", "poisson_log_link")
                   else "val_acc")
  last = result.history[-1]
  assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
  want = mj.evaluate(result.params, *val, 1e-3, **net)
  assert (last["val_loss"], last[score]) == pytest.approx(want, rel=1e-6)
  assert result.state.settings["network"] == {"activation": "tanh", "output": output}


def test_the_source_network_is_not_written_in_the_run_record():
  """Records of the source's network keep the keys (and bytes) they always had."""
  settings = mj.FitSettings(batch_size=8)
  assert "network" not in settings.record(10, None)
  other = mj.FitSettings(batch_size=8, activation=("tanh", "leaky_relu:0.2"))
  assert other.record(10, None)["network"] == {"activation": ["tanh", "leaky_relu:0.2"],
                                               "output": "softmax_cross_entropy"}


def test_resume_keeps_the_network_exactly():
  params = mj.init_params(jax.random.PRNGKey(0), SIZES)
  train = _data(45, 0)
  kwargs = dict(optimizer=optax.adam(1e-2), batch_size=8, l2=1e-3, seed=1, activation="gelu")
  whole = mj.fit(params, train, epochs=4, **kwargs)
  half = mj.fit(params, train, epochs=2, **kwargs)
  rest = mj.fit(params, train, epochs=4, resume=half.state, **kwargs)
  assert trees_bit_equal(whole.params, rest.params)
  for changed, resumed in [({"activation": "relu"}, half),  # the source's network, unrecorded
                           ({"activation": "gelu_tanh"}, half),
                           ({"activation": "gelu"}, mj.fit(params, train, epochs=1,
                                                           **{**kwargs, "activation": "relu"}))]:
    with pytest.raises(mj.ResumeError, match="was trained with network"):
      mj.fit(params, train, epochs=4, resume=resumed.state, **{**kwargs, **changed})


@pytest.mark.parametrize("case", ["dp", "bf16"])
def test_dp_and_bf16_train_another_network(case):
  """DP-SGD's clipped sums and bf16 GEMMs run on the error signals of any network."""
  from conftest import network_batch
  params = mj.init_params(jax.random.PRNGKey(0), NETWORK_SIZES)
  train = network_batch(0, NETWORK_SIZES, 60, jnp.float32, "sigmoid_binary_cross_entropy")
  extra = {"dp": dict(dp=mj.DPConfig(1.0, 0.5, 1e-5)),
           "bf16": dict(compute_dtype="bfloat16")}[case]
  result = mj.fit(params, train, optimizer=optax.adam(1e-2), epochs=3, batch_size=16,
                  activation="logistic", output="sigmoid_binary_cross_entropy", **extra)
  assert all(np.isfinite(r["train_loss"]) for r in result.history)
  assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
  if case == "dp":
    assert result.history[-1]["epsilon"] > 0


def test_fit_refuses_targets_of_another_output():
  params = mj.init_params(jax.random.PRNGKey(0), NETWORK_SIZES)
  x, labels = _data(20, 0)[0], np.zeros(20, np.int32)
  with pytest.raises(mj.InputError, match=r"train\.y: expected real values \(m, K\) of shape "):
    mj.fit(params, (x, labels), optimizer="adam", epochs=1, batch_size=4,
           output="identity_squared_error")
  with pytest.raises(mj.InputError, match="activation: expected one activation per hidden "):
    mj.fit(params, (x, labels), optimizer="adam", epochs=1, batch_size=4,
           activation=("tanh", "relu"))
