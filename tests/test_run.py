"""A run's state and the resume rules: a run saved to a file resumes exactly, a finished run
trains nothing more, and a resume that changes a setting or the optimizer is refused."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import mlp_jax as mj
from mlp_jax.training import privacy, run
from conftest import train_batch as _data, trees_bit_equal

pytestmark = pytest.mark.usefixtures("standard_promotion")  # optax's int32 step counters


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
  run.save_run(tmp_path / "run.npz", part.state)
  saved = run.load_run(tmp_path / "run.npz").state
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
