"""DP-SGD: Poisson batches, the noisy clipped gradient, the accountant, DP training."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import mlp_jax as mj
from mlp_jax.training import privacy
from conftest import assert_tree_close, make_batch

SIZES = (12, 16, 5)


def test_poisson_batches_sample_each_example_with_rate_q():
  n, b, steps = 400, 40, 300
  indices, mask = privacy.poisson_batches(jax.random.PRNGKey(0), n, b, steps)
  cap = privacy.batch_capacity(b)
  assert indices.shape == (steps, cap) and mask.shape == (steps, cap)
  sizes = np.asarray(mask.sum(1))
  assert abs(sizes.mean() - b) < 1.0  # E|batch| = qN = 40; std of the mean ~ 0.33
  counts = np.bincount(np.asarray(indices)[np.asarray(mask)], minlength=n)
  assert abs(counts.mean() / steps - b / n) < 3e-3  # 12,000 draws: std ~ 1e-3
  for row, keep in zip(np.asarray(indices), np.asarray(mask)):  # members are distinct
    assert len(set(row[keep].tolist())) == int(keep.sum())


def test_noisy_grads_without_noise_are_the_clipped_sum_over_expected_batch(dtype, rtol):
  params = mj.init_params(jax.random.PRNGKey(0), SIZES, dtype)
  x, y = make_batch(0, SIZES, 9, dtype)
  mask = jnp.asarray([1, 1, 0, 1, 1, 1, 0, 1, 1], dtype)
  dp = privacy.DPConfig(clip_norm=0.5, noise_multiplier=0.0)
  loss, got = privacy.noisy_clipped_grads(params, x, y, mask, jax.random.PRNGKey(1), 0.3, dp, 8)
  keep = np.asarray(mask) > 0
  members = mj.clipped_mean_grads(params, x[keep], y[keep], 0.5, 0.3)
  # clipped_mean divides sum and penalty by the 7 members; the DP gradient by the expected B = 8.
  want = tuple(mj.Dense(g.w * 7 / 8, g.b * 7 / 8) for g in members)
  assert_tree_close(got, want, 10 * rtol)


def test_noise_has_std_sigma_times_clip_over_batch():
  params = mj.init_params(jax.random.PRNGKey(0), (30, 40, 10))
  x, y = make_batch(0, (30, 40, 10), 4, jnp.float32)
  mask = jnp.ones((4,), jnp.float32)
  quiet = privacy.DPConfig(2.0, 0.0)
  noisy = privacy.DPConfig(2.0, 3.0)
  _, g0 = privacy.noisy_clipped_grads(params, x, y, mask, jax.random.PRNGKey(1), 0.0, quiet, 4)
  _, g1 = privacy.noisy_clipped_grads(params, x, y, mask, jax.random.PRNGKey(1), 0.0, noisy, 4)
  noise = np.asarray(g1[0].w - g0[0].w) * 4  # undo the 1/B
  assert abs(noise.std() / (3.0 * 2.0) - 1) < 0.06  # 1200 draws: std of the std ~ 2%
  assert abs(noise.mean()) < 4 * 6.0 / np.sqrt(noise.size)


def test_epsilon_matches_dp_accounting_and_grows_with_steps():
  import dp_accounting
  from dp_accounting import pld
  dp = privacy.DPConfig(1.0, 1.1, 1e-5)
  eps = [privacy.dp_epsilon(dp, 7291, 128, s) for s in (0, 57, 570)]
  assert eps[0] == 0 and 0 < eps[1] < eps[2] < 8
  event = dp_accounting.SelfComposedDpEvent(dp_accounting.TruncatedSubsampledGaussianDpEvent(
      7291, 128 / 7291, privacy.batch_capacity(128), 1.1), 570)
  acc = pld.PLDAccountant()
  acc.compose(event)
  assert eps[2] == pytest.approx(acc.get_epsilon(1e-5))
  assert privacy.dp_epsilon(privacy.DPConfig(1.0, 0.0), 100, 10, 1) == float("inf")


def test_cached_accounting_equals_a_fresh_accountant_bit_for_bit():
  """dp_epsilon reuses the one-step distribution across calls; the result is the accountant's."""
  import dp_accounting
  from dp_accounting import pld
  dp = privacy.DPConfig(1.0, 0.9, 1e-5)
  for steps in (29, 58):  # the second call hits the cache
    event = dp_accounting.SelfComposedDpEvent(dp_accounting.TruncatedSubsampledGaussianDpEvent(
        3000, 100 / 3000, privacy.batch_capacity(100, 3000), 0.9), steps)
    acc = pld.PLDAccountant()
    acc.compose(event)
    assert privacy.dp_epsilon(dp, 3000, 100, steps) == acc.get_epsilon(1e-5)


@pytest.mark.parametrize("kwargs, match", [
    (dict(clip_norm=0.0, noise_multiplier=1.0), "clip_norm"),
    (dict(clip_norm=float("inf"), noise_multiplier=1.0), "clip_norm"),
    (dict(clip_norm=1.0, noise_multiplier=-0.5), "noise_multiplier"),
    (dict(clip_norm=1.0, noise_multiplier=float("nan")), "noise_multiplier"),
    (dict(clip_norm=1.0, noise_multiplier=1.0, delta=0.0), "delta"),
    (dict(clip_norm=1.0, noise_multiplier=1.0, delta=1.0), "delta"),
])
def test_bad_dp_settings_are_rejected(kwargs, match):
  with pytest.raises(mj.InputError, match=match):
    privacy.check_dp_config(privacy.DPConfig(**kwargs))


def test_dp_fit_learns_and_reports_epsilon(standard_promotion):
  data = mj.data.make_synthetic(600, 12, 5, seed=0, noise=0.5)
  params = mj.init_params(jax.random.PRNGKey(0), SIZES)
  dp = privacy.DPConfig(clip_norm=1.0, noise_multiplier=0.8, delta=1e-5)
  result = mj.fit(params, data, optimizer=optax.adam(1e-2), epochs=3, batch_size=50, dp=dp,
                  val=data)
  eps = [r["epsilon"] for r in result.history]
  assert eps == sorted(eps) and eps[0] > 0
  assert result.history[-1]["val_acc"] > 0.8


def test_ledger_epsilon_equals_dp_accounting_composed_by_hand_over_mixed_sigma():
  """A ledger of three mechanisms (two sigmas, two batch sizes) against PLDAccountant composing
  the same events one by one."""
  import dp_accounting
  from dp_accounting import pld
  ledger = ()
  for steps, sigma, batch in ((30, 1.1, 100), (20, 0.8, 100), (10, 1.1, 50), (5, 1.1, 50)):
    ledger = privacy.add_to_ledger(ledger, privacy.ledger_entry(
        steps, privacy.DPConfig(1.0, sigma), 3000, batch))
  assert [e.steps for e in ledger] == [30, 20, 15]  # the last two are one mechanism
  acc = pld.PLDAccountant()
  for steps, sigma, batch in ((30, 1.1, 100), (20, 0.8, 100), (15, 1.1, 50)):
    acc.compose(dp_accounting.TruncatedSubsampledGaussianDpEvent(
        3000, batch / 3000, privacy.batch_capacity(batch, 3000), sigma), steps)
  assert privacy.ledger_epsilon(ledger, 1e-5) == pytest.approx(acc.get_epsilon(1e-5), rel=1e-9)
  assert privacy.ledger_epsilon(ledger, 1e-5) > privacy.ledger_epsilon(ledger[:1], 1e-5)


def test_a_ledger_with_non_private_steps_has_no_finite_epsilon():
  import dp_accounting
  from dp_accounting import pld
  dp = privacy.ledger_entry(10, privacy.DPConfig(1.0, 1.1), 1000, 50)
  plain = privacy.ledger_entry(10, None, 1000, 50)
  assert privacy.ledger_epsilon((plain, dp), 1e-5) == float("inf")
  assert privacy.ledger_epsilon((dp, plain), 1e-5) == float("inf")
  assert privacy.ledger_epsilon((), 1e-5) == 0.0
  # The DP entry alone: 10 steps of sigma 1.1 on batches of 50 (capacity 50 + 4 sqrt(50) + 1)
  # out of 1000, as dp-accounting's PLD accountant composes them.
  acc = pld.PLDAccountant()
  acc.compose(dp_accounting.TruncatedSubsampledGaussianDpEvent(1000, 50 / 1000, 80, 1.1), 10)
  assert privacy.ledger_epsilon((dp,), 1e-5) == pytest.approx(acc.get_epsilon(1e-5), rel=1e-9)


def test_resumed_dp_run_reports_the_uninterrupted_epsilon_to_the_last_digit(standard_promotion):
  data = mj.data.make_synthetic(400, 12, 5, seed=0, noise=0.5)
  params = mj.init_params(jax.random.PRNGKey(0), SIZES)
  kwargs = dict(optimizer=optax.adam(1e-2), batch_size=40, dp=privacy.DPConfig(1.0, 0.9))
  whole = mj.fit(params, data, epochs=4, **kwargs)
  half = mj.fit(params, data, epochs=2, **kwargs)
  rest = mj.fit(params, data, epochs=4, resume=half.state, **kwargs)
  assert [r["epsilon"] for r in rest.history] == [r["epsilon"] for r in whole.history]
  assert rest.state.ledger == whole.state.ledger and len(whole.state.ledger) == 1
  with pytest.raises(mj.ResumeError, match="dp 1 0.9 1e-05, this run asks for 1 5 1e-05"):
    mj.fit(params, data, epochs=4, resume=half.state,
           **{**kwargs, "dp": privacy.DPConfig(1.0, 5.0)})
  with pytest.raises(mj.ResumeError, match="dp 1 0.9 1e-05, this run asks for \\(none\\)"):
    mj.fit(params, data, epochs=4, resume=half.state, **{**kwargs, "dp": None})
