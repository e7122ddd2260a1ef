"""`mj.MLPClassifier` and `mj.MLPRegressor` as scikit-learn sees them: its estimator checks,
pipelines, grid search, arbitrary labels, partial_fit, pickling and seeds, the library's own
parameters and refusals. (tests/test_estimator_parity.py: the same weights as scikit-learn's;
tests/test_sklearn_suite.py: scikit-learn's own test file.)"""

import pickle
import warnings

import jax
import numpy as np
import pytest
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import GridSearchCV, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks

import mlp_jax as mj
from conftest import count_compiles

pytestmark = [pytest.mark.usefixtures("standard_promotion"),  # optax inside fit
              pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")]
SMALL = dict(hidden_layer_sizes=(16,), max_iter=30, learning_rate_init=0.05, random_state=0)
ESTIMATORS = [mj.MLPClassifier(**SMALL), mj.MLPRegressor(**SMALL)]

# In float32 (the default), the checks that compare two fits to rtol 1e-7, which takes float64.
FLOAT32_PRECISION = ("compares a fit with sample_weight to one on repeated rows to rtol 1e-7; "
                     "float32 sums in another order differ by ~1e-6 (it passes in float64)")
FLOAT32_EXPECTED = {"check_sample_weight_equivalence_on_dense_data": FLOAT32_PRECISION,
                    "check_sample_weight_equivalence_on_sparse_data": FLOAT32_PRECISION}


@parametrize_with_checks(ESTIMATORS)
def test_scikit_learn_estimator_checks_in_float64(estimator, check):
  """Every check, none expected to fail, with float64 input trained in float64."""
  with jax.enable_x64(True):
    check(estimator)


@parametrize_with_checks(ESTIMATORS, expected_failed_checks=lambda est: FLOAT32_EXPECTED)
def test_scikit_learn_estimator_checks(estimator, check):
  """Every check in the default float32; the two of float64 precision listed above."""
  check(estimator)


def _blobs(n=240, k=3, seed=0, d=6):
  rng = np.random.default_rng(seed)
  centres = rng.normal(0, 3, (k, d))
  y = rng.integers(0, k, n)
  return centres[y] + rng.normal(0, 1, (n, d)), y


def test_in_a_pipeline_with_cross_validation_and_grid_search():
  X, y = _blobs()
  pipe = make_pipeline(StandardScaler(), mj.MLPClassifier(**SMALL))
  scores = cross_val_score(pipe, X, y, cv=3)
  assert scores.shape == (3,) and scores.mean() > 0.9
  # A penalty so strong it flattens the net, listed first: GridSearchCV keeps the first of equal
  # scores, so it picks the weak one only if alpha reaches each clone's training.
  grid = GridSearchCV(pipe, {"mlpclassifier__alpha": [100.0, 1e-4]}, cv=2).fit(X, y)
  strong, weak = grid.cv_results_["mean_test_score"]
  assert strong < 0.8 and weak > 0.9
  assert grid.best_params_ == {"mlpclassifier__alpha": 1e-4}
  assert grid.score(X, y) > 0.9


def test_string_and_non_contiguous_labels_round_trip():
  X, y = _blobs()
  for names in (np.array(["cat", "dog", "emu"]), np.array([-7, 3, 40])):
    clf = mj.MLPClassifier(**SMALL).fit(X, names[y])
    assert list(clf.classes_) == sorted(names)
    assert set(clf.predict(X)) <= set(names) and clf.score(X, names[y]) > 0.9
    proba = clf.predict_proba(X)
    assert proba.shape == (len(X), 3) and np.allclose(proba.sum(1), 1, atol=1e-6)
    np.testing.assert_array_equal(clf.classes_[proba.argmax(1)], clf.predict(X))


def test_partial_fit_over_batches_equals_fit_on_the_same_order():
  X, y = _blobs(n=120)
  kwargs = dict(hidden_layer_sizes=(16,), batch_size=20, learning_rate_init=0.05,
                shuffle=False, random_state=3, solver="sgd")
  whole = mj.MLPClassifier(max_iter=1, **kwargs).fit(X, y)
  part = mj.MLPClassifier(**kwargs)
  for start in range(0, 120, 20):  # each call: one step on the next 20 rows
    part.partial_fit(X[start:start + 20], y[start:start + 20], classes=[0, 1, 2])
  for a, b in zip(whole.coefs_ + whole.intercepts_, part.coefs_ + part.intercepts_):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  assert part.n_iter_ == 1 and part.t_ == 120 and whole.t_ == 120  # as scikit-learn counts


def test_pickling_round_trip_predicts_identically_and_the_seed_fixes_the_weights():
  X, y = _blobs()
  for make in (mj.MLPClassifier, mj.MLPRegressor):
    target = y if make is mj.MLPClassifier else X[:, 0] - X[:, 1]
    est = make(**SMALL).fit(X, target)
    back = pickle.loads(pickle.dumps(est))
    np.testing.assert_array_equal(back.predict(X), est.predict(X))
    again = make(**SMALL).fit(X, target)
    for a, b in zip(est.coefs_ + est.intercepts_, again.coefs_ + again.intercepts_):
      assert a.tobytes() == b.tobytes()
    other = make(**{**SMALL, "random_state": 1}).fit(X, target)
    assert est.coefs_[0].tobytes() != other.coefs_[0].tobytes()
    back.partial_fit(X, target)  # a pickled model trains on, its solver state kept
    assert back.n_iter_ == 1 and back.t_ == est.t_ + len(X)
    assert not np.array_equal(back.coefs_[0], est.coefs_[0])


def test_early_stopping_keeps_the_epoch_of_the_best_validation_score():
  X, y = _blobs(n=300)
  y = np.random.default_rng(1).permutation(y)  # labels unrelated to X: the score stalls
  clf = mj.MLPClassifier(**{**SMALL, "max_iter": 200}, early_stopping=True,
                         n_iter_no_change=3).fit(X, y)
  assert clf.n_iter_ < 200 and len(clf.loss_curve_) == clf.n_iter_
  assert len(clf.validation_scores_) == clf.n_iter_ and clf.best_loss_ is None
  assert clf.best_validation_score_ == max(clf.validation_scores_)
  assert clf._no_improvement_count == 4  # stopped once 3 epochs in a row failed to improve
  assert [c.shape for c in clf.coefs_] == [(6, 16), (16, 3)]
  assert [b.shape for b in clf.intercepts_] == [(16,), (3,)]
  assert clf.n_layers_ == 3 and clf.n_outputs_ == 3 and clf.out_activation_ == "softmax"
  np.testing.assert_allclose(clf.predict_log_proba(X), np.log(clf.predict_proba(X)),
                             rtol=1e-6, atol=1e-6)


def test_alpha_is_the_library_lambda():
  """One full-batch step of plain SGD (momentum=0) equals one step on mj.grads with
  l2=alpha, from scikit-learn's initial weights."""
  from mlp_jax.tools.estimator_fitting import initial_weights
  X, y = _blobs(n=50)
  clf = mj.MLPClassifier(hidden_layer_sizes=(8,), alpha=0.7, solver="sgd", momentum=0.0,
                         batch_size=50, learning_rate_init=0.1, max_iter=1, shuffle=False,
                         random_state=0).fit(X, y)
  coefs, intercepts = initial_weights(np.random.RandomState(0), [6, 8, 3], "relu", np.float32)
  params = tuple(mj.Dense(w, b) for w, b in zip(coefs, intercepts))
  grads = mj.grads(params, X.astype(np.float32), y.astype(np.int32), 0.7)
  for layer, g, w in zip(params, grads, clf.coefs_):
    np.testing.assert_allclose(w, layer.w - 0.1 * g.w, rtol=1e-5, atol=1e-6)


def test_probabilities_sum_to_one_in_float64():
  """scikit-learn's log_loss wants rows that sum to 1 within float64 precision."""
  X, y = _blobs()
  proba = mj.MLPClassifier(**SMALL).fit(X, y).predict_proba(X)
  assert proba.dtype == np.float64
  np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=0, atol=1e-12)


def test_partial_fit_compiles_its_epoch_once():
  X, y = np.random.default_rng(0).standard_normal((60, 5)), np.arange(60) % 3
  clf = mj.MLPClassifier(hidden_layer_sizes=(4,), batch_size=20, random_state=0)
  clf.partial_fit(X, y, classes=[0, 1, 2])
  with count_compiles() as compiles:
    clf.partial_fit(X, y)
    clf.partial_fit(X, y)
  assert compiles() == 0


@pytest.mark.parametrize("params, message", [
    (dict(alpha=-1.0), "alpha: expected a finite value >= 0, got -1"),
    (dict(dp_noise_multiplier=1.0, dp_clip_norm=0.0),
     "dp_clip_norm: expected a finite value > 0, got 0"),
    (dict(dp_noise_multiplier=-1.0), "dp_noise_multiplier: expected a finite value >= 0"),
    (dict(dp_noise_multiplier=1.0, dp_delta=2.0), "dp_delta: expected a finite value in (0, 1)"),
    (dict(compute_dtype="int8"), "compute_dtype: expected a floating dtype, got int8"),
    (dict(activation="softplus"), "activation: expected one of gelu, gelu_tanh, identity, "),
    (dict(solver="lbfgs2"), "solver: expected one of lbfgs, sgd, adam, momentum, got 'lbfgs2'"),
    (dict(learning_rate="cosine"), "learning_rate: expected one of constant, invscaling, "
                                   "adaptive, got 'cosine'"),
    (dict(momentum=1.5), "momentum: expected a finite value in [0, 1], got 1.5"),
    (dict(beta_2=1.0), "beta_2: expected a finite value in [0, 1), got 1"),
    (dict(epsilon=0.0), "epsilon: expected a finite value > 0, got 0"),
    (dict(n_iter_no_change=0), "n_iter_no_change: expected an int >= 1, got 0"),
    (dict(max_fun=0), "max_fun: expected an int >= 1, got 0"),
    (dict(schedule="cosine", solver="lbfgs"), "schedule='cosine': not with solver='lbfgs'"),
    (dict(schedule="cosine", solver="sgd", learning_rate="adaptive"),
     "schedule='cosine': not with learning_rate='adaptive'"),
    (dict(dp_noise_multiplier=1.0, solver="lbfgs"), "dp_noise_multiplier: not with "
                                                    "solver='lbfgs'"),
    (dict(compute_dtype="bfloat16", solver="lbfgs"), "compute_dtype: not with solver='lbfgs'"),
])
def test_a_bad_setting_is_named_as_the_estimators_parameter(params, message):
  X, y = np.random.default_rng(0).normal(size=(40, 4)), np.arange(40) % 2
  with pytest.raises((mj.InputError, mj.InputTypeError)) as info:
    mj.MLPClassifier(hidden_layer_sizes=(3,), max_iter=1, **params).fit(X, y)
  assert str(info.value).startswith(message)


@pytest.mark.parametrize("activation", ["identity", "logistic", "tanh", "leaky_relu:0.2"])
def test_activation_trains_and_predicts_that_network(activation):
  """`activation` (scikit-learn's names, and ours) is the network's: the fitted weights give the
  estimator's probabilities through the library's forward pass of that activation."""
  import jax.numpy as jnp
  X, y = _blobs()
  clf = mj.MLPClassifier(**{**SMALL, "activation": activation}).fit(X, y)
  assert clf.get_params()["activation"] == activation
  params = tuple(mj.Dense(jnp.asarray(w), jnp.asarray(b))
                 for w, b in zip(clf.coefs_, clf.intercepts_))
  logits = np.asarray(mj.forward(params, X.astype(np.float32), activation=activation), np.float64)
  want = np.exp(logits - logits.max(1, keepdims=True))
  np.testing.assert_allclose(clf.predict_proba(X), want / want.sum(1, keepdims=True), rtol=1e-5)
  relu = mj.MLPClassifier(**SMALL).fit(X, y)
  assert not np.array_equal(clf.coefs_[0], relu.coefs_[0])


def test_fitted_attributes_and_refusals_as_scikit_learn_has_them():
  """best_loss_, validation_scores_ and best_validation_score_ are set (None where scikit-learn
  sets None); partial_fit refuses other classes than its first call's, and early stopping; a
  bad solver is named as `solver`."""
  X, y = _blobs()
  clf = mj.MLPClassifier(**SMALL).fit(X, y)
  assert clf.best_loss_ == min(clf.loss_curve_)
  assert clf.validation_scores_ is None and clf.best_validation_score_ is None
  stopped = mj.MLPClassifier(**SMALL, early_stopping=True).fit(X, y)
  assert stopped.best_loss_ is None and len(stopped.validation_scores_) == stopped.n_iter_
  with pytest.raises(ValueError, match="partial_fit does not support early_stopping=True"):
    stopped.partial_fit(X, y)
  online = mj.MLPClassifier(hidden_layer_sizes=(4,), random_state=0)
  online.partial_fit(X, y, classes=[0, 1, 2])
  online.partial_fit(X, y, classes=[2, 1, 0])  # the same classes, in another order
  assert online.best_loss_ == min(online.loss_curve_)
  with pytest.raises(ValueError, match=r"`classes=\[0, 1, 2, 3\]` is not the same as on last "
                                       r"call to partial_fit, was: array\(\[0, 1, 2\]\)"):
    online.partial_fit(X, y, classes=[0, 1, 2, 3])
  with pytest.raises(ValueError, match="solver: expected one of lbfgs, sgd, adam, momentum, got "
                                       "'lbfgs2'"):
    mj.MLPClassifier(**SMALL, solver="lbfgs2").fit(X, y)
  assert not hasattr(mj.MLPClassifier(solver="lbfgs"), "partial_fit")
  assert not hasattr(mj.MLPRegressor(solver="lbfgs"), "partial_fit")


def test_sample_weight_with_dp_is_refused_and_dp_reports_epsilon():
  X, y = _blobs()
  dp = dict(SMALL, max_iter=2, dp_noise_multiplier=1.0, dp_clip_norm=1.0, batch_size=40)
  with pytest.raises(mj.InputError, match="dp_noise_multiplier: not with sample_weight"):
    mj.MLPClassifier(**dp).fit(X, y, sample_weight=np.ones(len(y)))
  clf = mj.MLPClassifier(**dp).fit(X, y)
  one_epoch = mj.MLPClassifier(**{**dp, "max_iter": 1}).fit(X, y)
  assert 0 < one_epoch.epsilon_ < clf.epsilon_ < np.inf  # the privacy spent by the whole run


def test_a_diverging_fit_raises_and_keeps_the_weights_it_had():
  """scikit-learn's message; the estimator keeps the weights of before the call (warm start)."""
  X, y = _blobs()
  reg = mj.MLPRegressor(**{**SMALL, "max_iter": 5}, warm_start=True).fit(X, X[:, 0])
  before = [w.copy() for w in reg.coefs_]
  with pytest.raises(ValueError, match="Solver produced non-finite parameter weights. The input "
                                       "data may contain large values"):
    reg.set_params(learning_rate_init=1e6, solver="sgd").fit(X * 1e6, X[:, 0] * 1e6)
  for a, b in zip(reg.coefs_, before):
    np.testing.assert_array_equal(a, b)
  fresh = mj.MLPRegressor(**SMALL).fit(X, X[:, 0])  # a first pass re-draws the weights; a
  kept = pickle.dumps(fresh)                         # failed one leaves everything as it was
  with pytest.raises(ValueError, match="Solver produced non-finite"):
    fresh.set_params(learning_rate_init=1e6, solver="sgd").fit(X * 1e6, X[:, 0] * 1e6)
  assert pickle.dumps(fresh.set_params(learning_rate_init=0.05, solver="adam")) == kept


def test_convergence_warning_where_scikit_learn_warns():
  X, y = _blobs()
  with pytest.warns(ConvergenceWarning, match=r"Maximum iterations \(3\) reached"):
    mj.MLPClassifier(**{**SMALL, "max_iter": 3}).fit(X, y)
  with pytest.warns(ConvergenceWarning, match="lbfgs failed to converge after 2 iteration"):
    mj.MLPRegressor(**{**SMALL, "max_iter": 2}, solver="lbfgs").fit(X, X[:, 0])
  with warnings.catch_warnings():
    warnings.simplefilter("error", ConvergenceWarning)
    stopped = mj.MLPClassifier(**{**SMALL, "max_iter": 500}, tol=0.5).fit(X, y)
  # The tol stop: more than n_iter_no_change=10 epochs in a row without the loss falling by 0.5.
  assert stopped.n_iter_ < 500 and stopped._no_improvement_count == 11


def test_cosine_schedule_and_the_library_s_parameters():
  """`schedule="cosine"` decays the rate to 0 over max_iter epochs; `compute_dtype` trains on
  bfloat16 GEMMs; `activation` takes the library's names and one per hidden layer."""
  X, y = _blobs()
  cosine = mj.MLPClassifier(**SMALL, schedule="cosine").fit(X, y)
  constant = mj.MLPClassifier(**SMALL).fit(X, y)
  assert cosine.score(X, y) > 0.9 and not np.array_equal(cosine.coefs_[0], constant.coefs_[0])
  bf16 = mj.MLPClassifier(**SMALL, compute_dtype="bfloat16").fit(X, y)
  assert bf16.coefs_[0].dtype == np.float64 and bf16.score(X, y) > 0.9
  deep = mj.MLPClassifier(**{**SMALL, "hidden_layer_sizes": (8, 8)},
                          activation=["tanh", "gelu"]).fit(X, y)
  assert deep.score(X, y) > 0.9


def test_sparse_multilabel_and_multioutput_targets():
  import scipy.sparse
  X, y = _blobs()
  Y = np.stack([y == 0, y != 1], axis=1).astype(int)
  clf = mj.MLPClassifier(**SMALL).fit(scipy.sparse.csr_matrix(X), Y)
  assert clf.out_activation_ == "logistic" and clf.predict(X).shape == (len(X), 2)
  assert clf.score(X, Y) > 0.9 and clf.predict_proba(X).shape == (len(X), 2)
  reg = mj.MLPRegressor(**SMALL).fit(X, np.stack([X[:, 0], X[:, 1] - X[:, 2]], axis=1))
  assert reg.predict(X).shape == (len(X), 2) and reg.n_outputs_ == 2


@pytest.mark.parametrize("params", [dict(solver="adam"), dict(solver="sgd", tol=1e-2),
                                    dict(solver="sgd", learning_rate="adaptive", tol=1e-2,
                                         n_iter_no_change=2, learning_rate_init=0.3)])
def test_epochs_run_in_a_row_train_as_epochs_run_one_by_one(params, monkeypatch):
  """A small fit runs CHUNK_EPOCHS epochs per compiled call; stops and rate changes inside a
  chunk land on the epoch they belong to, as when every epoch is its own call."""
  from mlp_jax.tools import estimator_fitting
  X, y = _blobs()
  settings = {**SMALL, "max_iter": 80, **params}
  chunked = mj.MLPClassifier(**settings).fit(X, y)
  monkeypatch.setattr(estimator_fitting, "CHUNK_EPOCHS", 1)
  single = mj.MLPClassifier(**settings).fit(X, y)
  assert chunked.n_iter_ == single.n_iter_ and chunked.t_ == single.t_
  assert chunked._learning_rate == single._learning_rate
  np.testing.assert_allclose(chunked.loss_curve_, single.loss_curve_, rtol=1e-5)
  for a, b in zip(chunked.coefs_ + chunked.intercepts_, single.coefs_ + single.intercepts_):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_a_first_partial_fit_that_fails_leaves_no_classes_behind():
  X, y = _blobs()
  clf = mj.MLPClassifier(**SMALL)
  with pytest.raises(ValueError):
    clf.partial_fit(X[:, :3], np.full(len(X), np.nan), classes=[0, 1, 2])  # y not labels
  assert not hasattr(clf, "classes_") and not hasattr(clf, "coefs_")
  clf.partial_fit(X, y, classes=[0, 1, 2])
  assert clf.n_features_in_ == 6 and list(clf.classes_) == [0, 1, 2]
