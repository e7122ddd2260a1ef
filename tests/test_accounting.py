"""The accountant: epsilon composed incrementally against dp-accounting's PLDAccountant, the
noise calibrated to a target epsilon, and runs that keep to their target (fit, resume, the
command line, the estimator)."""

import math

import jax
import numpy as np
import optax
import pytest

import mlp_jax as mj
from mlp_jax.training import accounting, calibration, privacy

dp_accounting = pytest.importorskip("dp_accounting")
from dp_accounting import pld  # noqa: E402

# The accountant against dp-accounting composing the same events: FFT roundoff only (the grid's
# own discretisation error, the epsilon of 1e-4 against 5e-5, is about 3e-7 relative on USPS).
EPSILON_RTOL = 1e-8
SIZES = (12, 16, 5)


def _reference(events, delta=1e-5):
  """epsilon of (steps, N, batch, sigma) events composed by dp-accounting's PLDAccountant."""
  acc = pld.PLDAccountant()
  for steps, n, batch, sigma in events:
    acc.compose(dp_accounting.TruncatedSubsampledGaussianDpEvent(
        n, batch / n, privacy.batch_capacity(batch, n), sigma), steps)
  return acc.get_epsilon(delta)


def _ledger(events):
  ledger = ()
  for steps, n, batch, sigma in events:
    ledger = privacy.add_to_ledger(ledger, privacy.ledger_entry(
        steps, privacy.DPConfig(1.0, sigma), n, batch))
  return ledger


def test_epsilon_of_a_pmf_is_dp_accountings_scan():
  from dp_accounting.pld import pld_pmf
  rng = np.random.default_rng(0)
  for lower, size, infinity, delta in ((-300, 2000, 1e-9, 1e-5), (-50, 400, 0.0, 1e-3),
                                       (10, 50, 0.0, 1e-5), (-2000, 100, 0.0, 1e-5),
                                       (0, 100, 0.1, 1e-5)):
    probs = rng.exponential(size=size) * np.exp(-np.linspace(0, 30, size))
    probs *= (1 - infinity) / probs.sum()
    want = pld_pmf.DensePLDPmf(1e-2, lower, probs, infinity, True).get_epsilon_for_delta(delta)
    got = accounting.epsilon_of_pmf(lower, probs, infinity, 1e-2, delta)
    assert got == pytest.approx(want, rel=1e-12, abs=1e-12), (lower, size, infinity)


def test_incremental_composition_equals_a_fresh_one_and_dp_accounting():
  """Epoch after epoch, the kept composition gives the epsilon of composing the ledger anew and
  that of PLDAccountant composing the same events."""
  accountant = accounting.Accountant(1e-5)
  events = []
  for epoch in range(1, 7):
    events.append((20, 3000, 150, 1.0))
    incremental = accountant.epsilon(_ledger(events))
    if epoch in (1, 3, 6):
      fresh = accounting.Accountant(1e-5).epsilon(_ledger(events))
      assert incremental == pytest.approx(fresh, rel=EPSILON_RTOL)
      assert incremental == pytest.approx(_reference([(20 * epoch, 3000, 150, 1.0)]),
                                          rel=EPSILON_RTOL)


@pytest.mark.parametrize("events", [
    [(30, 3000, 100, 1.1), (20, 3000, 100, 0.8), (15, 3000, 50, 1.1)],   # sigma and q change
    [(10, 1000, 50, 1.1), (40, 1000, 50, 2.0), (10, 1000, 50, 1.1)],     # a mechanism returns
])
def test_mixed_ledgers_equal_dp_accounting(events):
  accountant = accounting.Accountant(1e-5)
  for k in range(1, len(events) + 1):  # growing, as a resumed run's
    assert accountant.epsilon(_ledger(events[:k])) == pytest.approx(
        _reference(events[:k]), rel=EPSILON_RTOL)


def test_epsilon_grows_with_steps_as_dp_accountings():
  dp = privacy.DPConfig(1.0, 1.1, 1e-5)
  eps = [accounting.dp_epsilon(dp, 7291, 128, s) for s in (0, 57, 570)]
  assert eps[0] == 0 and 0 < eps[1] < eps[2] < 8
  assert eps[2] == pytest.approx(_reference([(570, 7291, 128, 1.1)]), rel=EPSILON_RTOL)


def test_a_ledger_with_non_private_or_no_steps():
  dp = privacy.ledger_entry(10, privacy.DPConfig(1.0, 1.1), 1000, 50)
  plain = privacy.ledger_entry(10, None, 1000, 50)
  assert accounting.ledger_epsilon((plain, dp), 1e-5) == math.inf
  assert accounting.ledger_epsilon((dp._replace(noise_multiplier=0.0),), 1e-5) == math.inf
  assert accounting.ledger_epsilon((), 1e-5) == 0.0
  assert accounting.dp_epsilon(privacy.DPConfig(1.0, 1.1), 1000, 50, 0) == 0.0


@pytest.mark.parametrize("target, n, batch, epochs, delta", [
    (3.0, 6000, 250, 20, 1e-5),
    (1.0, 3000, 100, 10, 1e-5),
    (8.0, 2000, 400, 40, 1e-6),
])
def test_calibration_lands_within_one_percent_below_the_target(target, n, batch, epochs, delta):
  steps = mj.steps_per_epoch(n, batch) * epochs
  sigma = calibration.calibrate_noise_multiplier(target, delta, n, batch, steps)
  spent = _reference([(steps, n, batch, sigma)], delta)  # an accountant call of its own
  assert target * (1 - calibration.CALIBRATION_TOLERANCE) <= spent <= target


@pytest.mark.parametrize("target, match", [
    (0.01, "cannot be met.*even at noise multiplier 100"),
    (1e4, "spend less even at the smallest noise multiplier"),
])
def test_an_unreachable_target_is_one_clear_error(target, match):
  with pytest.raises(mj.InputError, match=match):
    calibration.calibrate_noise_multiplier(target, 1e-5, 1000, 100, 10000 if target < 1 else 10)


def test_a_given_noise_that_overspends_the_target_is_refused_before_training():
  data = mj.data.make_synthetic(400, 12, 5, seed=0, noise=0.5)
  params = mj.init_params(jax.random.PRNGKey(0), SIZES)
  with pytest.raises(mj.InputError, match="target_epsilon=0.5: 3 epochs at noise multiplier 1 "):
    mj.fit(params, data, optimizer="adam", epochs=3, batch_size=40,
           dp=mj.DPConfig(1.0, 1.0, target_epsilon=0.5))
  with pytest.raises(mj.InputError, match="noise_multiplier / target_epsilon: give one"):
    mj.fit(params, data, optimizer="adam", epochs=3, batch_size=40, dp=mj.DPConfig(1.0))


def test_a_target_run_keeps_to_it_and_its_resume_keeps_sigma_and_ledger(standard_promotion):
  """A run calibrated for 6 epochs, stopped after 3 and resumed, trains as the uninterrupted
  one bit for bit, with the same sigma and ledger; resuming it to more epochs is refused."""
  data = mj.data.make_synthetic(1200, 12, 5, seed=0, noise=0.5)
  params = mj.init_params(jax.random.PRNGKey(0), SIZES)
  kwargs = dict(optimizer=optax.adam(1e-2), batch_size=60,
                dp=mj.DPConfig(1.0, None, 1e-5, target_epsilon=2.0))
  whole = mj.fit(params, data, epochs=6, **kwargs)
  sigma = whole.state.settings["dp"][1]
  eps = [r["epsilon"] for r in whole.history]
  assert eps == sorted(eps) and 2.0 * 0.99 <= eps[-1] <= 2.0
  assert eps[-1] == pytest.approx(_reference([(6 * 20, 1200, 60, sigma)]), rel=EPSILON_RTOL)
  part = mj.fit(params, data, epochs=6, should_stop=lambda: True, **kwargs)
  assert part.interrupted and part.state.epochs_done == 1
  rest = mj.fit(params, data, epochs=6, resume=part.state, **kwargs)
  assert rest.state.settings["dp"][1] == sigma and rest.state.ledger == whole.state.ledger
  assert [r["epsilon"] for r in rest.history] == pytest.approx(eps, rel=EPSILON_RTOL)
  for got, want in zip(jax.tree.leaves(rest.params), jax.tree.leaves(whole.params)):
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
  with pytest.raises(mj.ResumeError, match="10 epochs at noise multiplier .* spend epsilon"):
    mj.fit(params, data, epochs=10, resume=whole.state, **kwargs)


def test_the_estimator_chooses_its_noise_for_max_iter_epochs():
  from sklearn.datasets import load_digits
  x, y = load_digits(return_X_y=True)
  est = mj.MLPClassifier((32,), dp_target_epsilon=2.0, max_iter=5, batch_size=200,
                         random_state=0, learning_rate_init=1e-2)
  with pytest.warns(Warning):  # ConvergenceWarning: 5 epochs
    est.fit(x / 16, y)
  assert 2.0 * 0.99 <= est.epsilon_ <= 2.0 and est.dp_noise_multiplier_ > 0
  with pytest.raises(mj.InputError, match="dp_target_epsilon: not with partial_fit"):
    mj.MLPClassifier((32,), dp_target_epsilon=2.0).partial_fit(x[:50] / 16, y[:50],
                                                               classes=np.arange(10))


def test_a_step_distribution_from_the_disk_cache_is_the_one_built(tmp_path, monkeypatch):
  monkeypatch.setenv("MLP_JAX_CACHE", str(tmp_path))
  key = (1000, 0.05, privacy.batch_capacity(50, 1000), 1.3)
  accounting.step_pld.cache_clear()
  built = accounting.step_pld(*key)
  accounting.step_pld.cache_clear()  # this process forgets it; the disk does not
  loaded = accounting.step_pld(*key)
  assert len(list((tmp_path / "pld").glob("*.npz"))) == 1
  for a, b in zip(built.pmfs + tuple(built.log_mgfs), loaded.pmfs + tuple(loaded.log_mgfs)):
    for x, y in zip(a if isinstance(a, tuple) else (a,), b if isinstance(b, tuple) else (b,)):
      np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_a_compiled_epoch_needs_the_noise_itself():
  with pytest.raises(mj.InputError, match="dp: no noise_multiplier; a target epsilon's is "
                                          "chosen by fit"):
    mj.make_epoch("adam", 32, dp=mj.DPConfig(target_epsilon=3.0))
