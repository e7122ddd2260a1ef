"""DP-SGD: Poisson batches, the noisy clipped gradient, the accountant, DP training."""

from statistics import NormalDist

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import mlp_jax as mj
from mlp_jax.training import privacy
from conftest import assert_bits_equal, assert_tree_close, make_batch

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


# sigma_g = (sigma^-2 - (2 sigma_b)^-2)^(-1/2): with sigma 3 and sigma_b 2, (1/9 - 1/16)^(-1/2).
@pytest.mark.parametrize("adaptive, sigma_g", [({}, 3.0),
                                               (dict(target_quantile=0.5,
                                                     count_noise_multiplier=2.0), 4.5356)])
def test_noise_has_std_sigma_g_times_clip_over_batch(adaptive, sigma_g):
  """Without adaptive clipping sigma_g is sigma; with it, the gradient's share of sigma."""
  params = mj.init_params(jax.random.PRNGKey(0), (30, 40, 10))
  x, y = make_batch(0, (30, 40, 10), 4, jnp.float32)
  mask = jnp.ones((4,), jnp.float32)
  quiet = privacy.DPConfig(2.0, 0.0)
  noisy = privacy.DPConfig(2.0, 3.0, **adaptive)
  clip = jnp.float32(2.0) if adaptive else None  # adaptive: C traced, from the optimizer state
  assert privacy.gradient_noise_multiplier(noisy, 4) == pytest.approx(sigma_g, rel=1e-4)
  _, g0 = privacy.noisy_clipped_grads(params, x, y, mask, jax.random.PRNGKey(1), 0.0, quiet, 4)
  _, g1 = privacy.noisy_clipped_grads(params, x, y, mask, jax.random.PRNGKey(1), 0.0, noisy, 4,
                                      clip_norm=clip)
  noise = np.asarray(g1[0].w - g0[0].w) * 4  # undo the 1/B
  assert abs(noise.std() / (sigma_g * 2.0) - 1) < 0.06  # 1200 draws: std of the std ~ 2%
  assert abs(noise.mean()) < 4 * sigma_g * 2.0 / np.sqrt(noise.size)


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


# ------------------------------------------------------------------------- adaptive clipping


def _track_quantile(draw, gamma, clip0, steps=1500, batch=256, seed=0):
  """C after each of `steps` updates of `next_clip_norm` (the paper's eta_C = 0.2 and sigma_b =
  B / 20) on batches of `batch` norms from `draw(key, batch)`."""
  dp = privacy.DPConfig(clip0, 1.0, target_quantile=gamma)

  def one(clip, key):
    k_norms, k_count = jax.random.split(key)
    count = privacy.clipped_count(draw(k_norms, batch), clip, jnp.ones((batch,), jnp.float32))
    clip = privacy.next_clip_norm(clip, count, batch, dp, k_count)
    return clip, clip

  return np.asarray(jax.lax.scan(one, jnp.float32(clip0),
                                 jax.random.split(jax.random.PRNGKey(seed), steps))[1])


_LOGNORMAL = lambda key, m: jnp.exp(jax.random.normal(key, (m,)))  # noqa: E731
_EXPONENTIAL = lambda key, m: jax.random.exponential(key, (m,))  # noqa: E731


@pytest.mark.parametrize("draw, gamma, quantile, clip0", [
    (_LOGNORMAL, 0.5, 1.0, 20.0),                                    # exp(Phi^-1(gamma))
    (_LOGNORMAL, 0.9, float(np.exp(NormalDist().inv_cdf(0.9))), 0.05),
    (_EXPONENTIAL, 0.2, float(-np.log(0.8)), 20.0),                  # -log(1 - gamma)
    (_EXPONENTIAL, 0.9, float(-np.log(0.1)), 0.05),
], ids=["lognormal-0.5", "lognormal-0.9", "exponential-0.2", "exponential-0.9"])
def test_clip_norm_tracks_the_target_quantile_of_a_known_distribution(draw, gamma, quantile,
                                                                     clip0):
  """From 20x above or below, C settles at the gamma-quantile: its geometric mean over the last
  500 steps within 4%, the last C within 10% (the count's noise, std 1/20 of the fraction,
  keeps it moving by a few %)."""
  clips = _track_quantile(draw, gamma, clip0)
  assert abs(np.exp(np.log(clips[-500:]).mean()) / quantile - 1) < 0.04
  assert abs(clips[-1] / quantile - 1) < 0.10


def test_clipped_count_is_the_shifted_count_of_members_at_most_c():
  norms = jnp.asarray([0.5, 1.0, 1.5, 0.2, 3.0, 0.1], jnp.float32)
  mask = jnp.asarray([1, 1, 1, 1, 0, 0], jnp.float32)  # the last two are padding
  # members 0.5, 1.0, 1.5, 0.2 at C = 1: three at most C, one above: 3 (1/2) - 1/2
  assert float(privacy.clipped_count(norms, 1.0, mask)) == 1.0


@pytest.mark.parametrize("count, batch, moves", [(50.0, 100, "down"), (-50.0, 100, "up")])
def test_next_clip_norm_is_the_geometric_step_of_the_noisy_fraction(count, batch, moves):
  """All members at most C (fraction 1 > gamma): C shrinks by exp(-eta (1 - gamma)); none: C
  grows by exp(eta gamma). sigma_b tiny, so the fraction is exact."""
  dp = privacy.DPConfig(2.0, 1.0, target_quantile=0.3, clip_learning_rate=0.5,
                        count_noise_multiplier=1e-6)
  got = float(privacy.next_clip_norm(jnp.float32(2.0), count, batch, dp, jax.random.PRNGKey(0)))
  fraction = 1.0 if moves == "down" else 0.0
  assert got == pytest.approx(2.0 * np.exp(-0.5 * (fraction - 0.3)), rel=1e-5)


def test_dp_optimizer_keeps_the_clip_norm_in_the_state(dtype):
  sgd = optax.sgd(0.1)
  dp = privacy.DPConfig(0.7, 1.0, target_quantile=0.5)
  wrapped = privacy.dp_optimizer(sgd, dp)
  assert privacy.dp_optimizer(sgd, dp) is wrapped  # cached: the compiled epoch is found again
  assert privacy.dp_optimizer(wrapped, dp) is wrapped
  assert privacy.dp_optimizer(sgd, privacy.DPConfig(0.7, 1.0)) is sgd
  assert privacy.dp_optimizer(sgd, None) is sgd
  params = mj.init_params(jax.random.PRNGKey(0), SIZES, dtype)
  state = wrapped.init(params)
  assert isinstance(state, privacy.AdaptiveClipState)
  assert state.clip_norm.shape == () and state.clip_norm.dtype == dtype
  assert float(state.clip_norm) == pytest.approx(0.7, rel=1e-7)
  grads = jax.tree.map(jnp.ones_like, params)
  updates, after = wrapped.update(grads, state, params)
  assert_tree_close(updates, sgd.update(grads, sgd.init(params), params)[0], 0)
  assert after.clip_norm is state.clip_norm


def test_adaptive_step_clips_at_the_old_c_and_leaves_the_next_in_the_state(standard_promotion):
  """With sigma = 0 the gradient is the clipped mean at the state's C, and the state's next C is
  `next_clip_norm` of the batch's count with the step key's second half."""
  from mlp_jax.training.settings import FitSettings
  from mlp_jax.training.step import step_body
  params = mj.init_params(jax.random.PRNGKey(0), SIZES)
  x, y = make_batch(0, SIZES, 9, jnp.float32)
  keep = jnp.asarray([1, 1, 0, 1, 1, 1, 0, 1, 1], jnp.float32)
  dp = privacy.DPConfig(0.3, 0.0, target_quantile=0.5)
  sgd = optax.sgd(0.1)
  step = jax.jit(step_body(sgd, FitSettings(batch_size=8, dp=dp)))
  state = privacy.dp_optimizer(sgd, dp).init(params)
  key = jax.random.PRNGKey(3)
  _, after, _, grads = step(params, state, x, y, keep, key)
  _, want, count = privacy.noisy_clipped_grads_and_count(params, x, y, keep, key, 0.0, dp, 8,
                                                         clip_norm=state.clip_norm)
  assert_tree_close(grads, want, 1e-6)
  norms = mj.per_sample_grad_norms(params, x, y)
  assert float(count) == float(np.sum(np.where(np.asarray(keep) > 0,
                                               (np.asarray(norms) <= 0.3) - 0.5, 0)))
  next_clip = privacy.next_clip_norm(state.clip_norm, count, 8, dp, jax.random.split(key)[1])
  assert float(after.clip_norm) == pytest.approx(float(next_clip), rel=1e-6)


@pytest.mark.parametrize("clip0, gamma", [(10.0, 0.5), (0.5, 0.8)])
def test_adaptive_dp_fit_records_c_and_moves_it_to_the_norms_quantile(clip0, gamma,
                                                                      standard_promotion):
  """A slow optimizer, so the norms barely move: in 60 steps C goes from clip0 to within 15% of
  the gamma-quantile of the per-example norms at the end (from a factor 2.7 or 11 away)."""
  data = mj.data.make_synthetic(600, 12, 5, seed=0, noise=0.5)
  params = mj.init_params(jax.random.PRNGKey(0), SIZES)
  dp = privacy.DPConfig(clip0, 0.8, target_quantile=gamma)
  result = mj.fit(params, data, optimizer=optax.sgd(1e-3), epochs=5, batch_size=50, dp=dp,
                  seed=1)
  clips = [r["clip_norm"] for r in result.history]
  assert len(clips) == 5 and clips[-1] == float(result.opt_state.clip_norm)
  quantile = np.quantile(np.asarray(mj.per_sample_grad_norms(result.params, *data)), gamma)
  assert abs(np.log(clip0 / quantile)) > 0.9
  assert abs(clips[-1] / quantile - 1) < 0.15
  # The ledger: sigma as given (the two queries' sum), sigma_b = B / 20 recorded beside it.
  assert result.state.ledger == (privacy.LedgerEntry(60, 0.8, clip0, 600, 50 / 600, 80, 2.5),)


@pytest.mark.parametrize("through_file", [False, True])
def test_resumed_adaptive_run_equals_the_uninterrupted_one_bit_for_bit(tmp_path, through_file,
                                                                       standard_promotion):
  from mlp_jax.training import run
  data = mj.data.make_synthetic(600, 12, 5, seed=0, noise=0.5)
  params = mj.init_params(jax.random.PRNGKey(0), SIZES)
  dp = privacy.DPConfig(2.0, 0.8, target_quantile=0.6, count_noise_multiplier=1.5)
  kwargs = dict(optimizer=optax.adam(1e-2), batch_size=50, dp=dp, seed=4)
  whole = mj.fit(params, data, epochs=3, **kwargs)
  part = mj.fit(params, data, epochs=1, **kwargs).state
  if through_file:  # the optimizer state comes back as leaves, C among them
    run.save_run(tmp_path / "run.npz", part)
    part = run.load_run(tmp_path / "run.npz").state
  rest = mj.fit(params, data, epochs=3, resume=part, **kwargs)
  assert_bits_equal(rest.params, whole.params)
  assert_bits_equal(rest.opt_state, whole.opt_state)
  assert isinstance(rest.opt_state, privacy.AdaptiveClipState)
  assert [r["clip_norm"] for r in rest.history] == [r["clip_norm"] for r in whole.history]
  assert len(set(r["clip_norm"] for r in whole.history)) == 3  # C moved every epoch
  assert rest.state.ledger == whole.state.ledger


@pytest.mark.parametrize("sigma, sigma_b, batch_size, given", [
    (2.0, 0.5, 50, "got 0.5"),
    (2.0, 1.0, 50, "got 1"),  # sigma_b = sigma / 2: nothing left
    (1.5, None, 10, "got 0.5 (the default batch_size / 20 for batch_size 10)"),
])
def test_a_count_noise_that_leaves_none_for_the_gradient_is_refused(sigma, sigma_b, batch_size,
                                                                    given, standard_promotion):
  data = mj.data.make_synthetic(100, 12, 5, seed=0)
  params = mj.init_params(jax.random.PRNGKey(0), SIZES)
  dp = privacy.DPConfig(1.0, sigma, target_quantile=0.5, count_noise_multiplier=sigma_b)
  epochs = []
  with pytest.raises(mj.InputError, match="count_noise_multiplier") as info:
    mj.fit(params, data, optimizer=optax.sgd(0.1), epochs=1, batch_size=batch_size, dp=dp,
           on_epoch_end=epochs.append)
  assert f"noise_multiplier / 2 = {sigma / 2:g}" in str(info.value) and given in str(info.value)
  assert epochs == []  # refused before any training


def test_non_adaptive_dp_runs_keep_their_state_ledger_and_record(standard_promotion):
  """Without target_quantile: the optimizer's own state, no clip_norm recorded, ledger entries
  without a count (and a saved 6-field entry still loads and merges with them)."""
  data = mj.data.make_synthetic(600, 12, 5, seed=0)  # the accounting of the tests above, cached
  params = mj.init_params(jax.random.PRNGKey(0), SIZES)
  adam = optax.adam(1e-2)
  result = mj.fit(params, data, optimizer=adam, epochs=2, batch_size=50,
                  dp=privacy.DPConfig(1.0, 0.8))
  assert jax.tree.structure(result.opt_state) == jax.tree.structure(adam.init(params))
  assert all("clip_norm" not in r for r in result.history)
  entry = privacy.ledger_entry(12, privacy.DPConfig(1.0, 0.8), 600, 50)
  assert result.state.ledger == (entry._replace(steps=24),)
  assert entry.count_noise_multiplier is None
  old = privacy.LedgerEntry(*list(entry)[:6])  # as a run saved before the field
  assert privacy.add_to_ledger((old,), entry) == (entry._replace(steps=24),)
  adaptive = privacy.ledger_entry(12, privacy.DPConfig(1.0, 0.8, target_quantile=0.5), 600, 50)
  assert adaptive.count_noise_multiplier == 2.5  # B / 20
  assert len(privacy.add_to_ledger((old,), adaptive)) == 2  # another mechanism
