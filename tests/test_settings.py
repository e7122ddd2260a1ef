"""`FitSettings`: one run's settings as one frozen value, checked once (`check_settings`) against
the data, with messages that spell each setting as its caller does; the same value drives `fit`,
the compiled epoch's cache and the record a resume compares."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import mlp_jax as mj
from mlp_jax.tools import run_folder
from mlp_jax.training import epoch as epoch_lib
from mlp_jax.training.settings import FitSettings, check_settings
from conftest import TRAIN_SIZES as SIZES, train_batch as _data, trees_bit_equal

pytestmark = pytest.mark.usefixtures("standard_promotion")  # optax's int32 step counters


def test_check_settings_gives_plain_python_values():
  checked = check_settings(FitSettings(
      batch_size=np.int64(32), l2=np.float32(0.5), seed=np.uint32(7), patience=np.int8(3),
      compute_dtype=jnp.bfloat16, dp=mj.DPConfig(np.float32(1.0), 2, 1e-6), shuffle=1,
      track_train_accuracy=0), train_examples=100, val_examples=10)
  assert checked == FitSettings(32, 0.5, 7, 3, "bfloat16", mj.DPConfig(1.0, 2.0, 1e-6), True,
                                False)
  assert [type(getattr(checked, f.name)) for f in dataclasses.fields(checked)] == [
      int, float, int, int, str, mj.DPConfig, bool, bool, str, str]
  layers = check_settings(FitSettings(activation=[mj.Activation("leaky_relu", 0.2), "tanh"]))
  assert layers.activation == ("leaky_relu:0.2", "tanh") and hash(layers)


def test_settings_are_frozen_and_hashable():
  settings = FitSettings(batch_size=16)
  with pytest.raises(dataclasses.FrozenInstanceError):
    settings.batch_size = 32
  assert hash(settings) == hash(FitSettings(batch_size=16))


BAD = [  # (field, value, error type, the message after the setting's name)
    ("batch_size", 0, mj.InputError, ": expected an int >= 1, got 0"),
    ("batch_size", 201, mj.InputError, ": expected an int in 1..200 (the training set has 200 "
                                       "examples), got 201"),
    ("batch_size", 2.0, mj.InputTypeError, ": expected an int >= 1, got 2.0"),
    ("l2", -1.0, mj.InputError, ": expected a finite value >= 0, got -1"),
    ("l2", float("nan"), mj.InputError, ": expected a finite value >= 0, got nan"),
    ("seed", -1, mj.InputError, ": expected an int in 0..4294967295, got -1"),
    ("seed", 2**32, mj.InputError, ": expected an int in 0..4294967295, got 4294967296"),
    ("patience", 0, mj.InputError, ": expected an int >= 1, got 0"),
    ("compute_dtype", "int8", mj.InputTypeError, ": expected a floating dtype, got int8"),
    ("compute_dtype", "no-such-dtype", mj.InputTypeError, ": expected a floating dtype"),
]


@pytest.mark.parametrize("field, value, kind, message", BAD,
                         ids=[f"{f}={v}" for f, v, _, _ in BAD])
@pytest.mark.parametrize("spell", [None, run_folder.flag], ids=["python", "command-line"])
def test_a_bad_setting_is_named_as_its_caller_spells_it(field, value, kind, message, spell):
  settings = dataclasses.replace(FitSettings(), **{field: value})
  kwargs = {} if spell is None else {"spell": spell}
  name = field if spell is None else "--" + field.replace("_", "-")
  with pytest.raises(kind) as info:
    check_settings(settings, 200, 10, **kwargs)
  assert str(info.value).startswith(name + message)


@pytest.mark.parametrize("spell, expected", [
    (None, "patience: early stopping needs validation data (val=...)"),
    (run_folder.flag, "--patience: early stopping needs validation data (--val-fraction > 0)"),
])
def test_patience_without_validation_data_is_refused(spell, expected):
  kwargs = {} if spell is None else {"spell": spell}
  with pytest.raises(mj.InputError) as info:
    check_settings(FitSettings(patience=2), 200, None, **kwargs)
  assert str(info.value) == expected
  check_settings(FitSettings(patience=2))  # no data given: only the settings' own checks


@pytest.mark.parametrize("spell, expected", [
    (None, "clip_norm: expected a finite value > 0, got 0"),
    (run_folder.flag, "--clip-norm: expected a finite value > 0, got 0"),
])
def test_dp_settings_are_checked_with_the_rest(spell, expected):
  kwargs = {} if spell is None else {"spell": spell}
  with pytest.raises(mj.InputError) as info:
    check_settings(FitSettings(dp=mj.DPConfig(0.0, 1.0)), 200, None, **kwargs)
  assert str(info.value) == expected
  with pytest.raises(mj.InputError, match="shuffle=False: DP-SGD draws its batches by Poisson"):
    check_settings(FitSettings(dp=mj.DPConfig(1.0, 1.0), shuffle=False))


def test_fit_with_settings_trains_as_with_the_same_keywords():
  params = mj.init_params(jax.random.PRNGKey(0), SIZES)
  train, val = _data(60, 0), _data(20, 1)
  keywords = dict(batch_size=16, l2=1e-3, seed=5, patience=2, track_train_accuracy=True)
  loose = mj.fit(params, train, optimizer="adam", epochs=3, val=val, **keywords)
  one = mj.fit(params, train, optimizer="adam", epochs=3, val=val,
               settings=mj.FitSettings(**keywords))
  assert trees_bit_equal(loose.params, one.params)
  assert loose.state.settings == one.state.settings
  assert [r["train_acc"] for r in loose.history] == [r["train_acc"] for r in one.history]


def test_fit_refuses_settings_given_twice():
  params = mj.init_params(jax.random.PRNGKey(0), SIZES)
  with pytest.raises(mj.InputError, match="settings: given together with l2, seed; pass each"):
    mj.fit(params, _data(20, 0), optimizer="adam", epochs=1, l2=0.1, seed=3,
           settings=mj.FitSettings(batch_size=4))
  with pytest.raises(mj.InputTypeError, match="settings: expected a FitSettings, got dict"):
    mj.fit(params, _data(20, 0), optimizer="adam", epochs=1, settings={"batch_size": 4})


def test_the_record_holds_what_a_resume_must_keep():
  record = FitSettings(batch_size=8, dp=mj.DPConfig(1.0, 0.5)).record(100, None, devices=2)
  assert record == {"train_examples": 100, "val_examples": None, "batch_size": 8, "l2": 0.0,
                    "seed": 0, "patience": None, "compute_dtype": None, "dp": [1.0, 0.5, 1e-5],
                    "devices": 2, "shuffle": True}
  params = mj.init_params(jax.random.PRNGKey(0), SIZES)
  first = mj.fit(params, _data(30, 0), optimizer="sgd", epochs=1, batch_size=8)
  assert first.state.settings == FitSettings(batch_size=8).record(30, None)
  with pytest.raises(mj.ResumeError, match="trained with l2 0, this run asks for 0.5"):
    mj.fit(params, _data(30, 0), optimizer="sgd", epochs=2, batch_size=8, l2=0.5,
           resume=first.state)


def test_the_epoch_cache_keys_on_what_the_epoch_computes():
  opt = optax.sgd(0.1)
  base = FitSettings(batch_size=8, l2=0.1)

  def program(optimizer, settings):  # as fit and make_epoch call it: on checked settings
    return epoch_lib.epoch_program(optimizer, check_settings(settings))

  first = program(opt, base)
  for same in (dataclasses.replace(base, seed=3), dataclasses.replace(base, patience=4),
               dataclasses.replace(base, track_train_accuracy=True),
               dataclasses.replace(base, batch_size=np.int32(8), l2=np.float64(0.1))):
    assert program(opt, same) is first  # no new compile for these
  for other in (dataclasses.replace(base, l2=0.2), dataclasses.replace(base, batch_size=4),
                dataclasses.replace(base, shuffle=False)):
    assert program(opt, other) is not first
  assert program(optax.sgd(0.1), base) is not first  # another optimizer object


def test_non_finite_error_keeps_its_fields_in_other_words():
  err = mj.NonFiniteError("bad", epoch=2, step=3, batch_indices=np.arange(4), params=(1,),
                          opt_state=(2,))
  told = err.with_message("bad (see batch.json)")
  assert str(told) == "bad (see batch.json)"
  assert (told.epoch, told.step, told.params, told.opt_state) == (2, 3, (1,), (2,))
  np.testing.assert_array_equal(told.batch_indices, np.arange(4))
