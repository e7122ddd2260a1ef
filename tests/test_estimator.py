"""`mj.MLPClassifier` as scikit-learn sees it: its estimator checks, pipelines, grid search,
arbitrary labels, partial_fit, pickling and seeds."""

import pickle

import numpy as np
import pytest
from sklearn.model_selection import GridSearchCV, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks

import mlp_jax as mj
from conftest import count_compiles

pytestmark = pytest.mark.usefixtures("standard_promotion")  # optax inside fit
SMALL = dict(hidden_layer_sizes=(16,), max_iter=30, learning_rate_init=0.05, random_state=0)

# Checks that cannot apply, by name, with the reason.
EXPECTED_FAILED = {}


@parametrize_with_checks([mj.MLPClassifier(**SMALL)],
                         expected_failed_checks=lambda est: EXPECTED_FAILED)
def test_scikit_learn_estimator_checks(estimator, check, standard_promotion):
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
                shuffle=False, random_state=3)
  whole = mj.MLPClassifier(max_iter=1, **kwargs).fit(X, y)
  part = mj.MLPClassifier(**kwargs)
  for start in range(0, 120, 20):  # each call: one step on the next 20 rows
    part.partial_fit(X[start:start + 20], y[start:start + 20], classes=[0, 1, 2])
  for a, b in zip(whole.coefs_ + whole.intercepts_, part.coefs_ + part.intercepts_):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  assert part.n_iter_ == 6 and part.t_ == 6 and whole.t_ == 6


def test_pickling_round_trip_predicts_identically_and_the_seed_fixes_the_weights():
  X, y = _blobs()
  clf = mj.MLPClassifier(**SMALL).fit(X, y)
  back = pickle.loads(pickle.dumps(clf))
  np.testing.assert_array_equal(back.predict_proba(X), clf.predict_proba(X))
  again = mj.MLPClassifier(**SMALL).fit(X, y)
  for a, b in zip(clf.coefs_ + clf.intercepts_, again.coefs_ + again.intercepts_):
    assert a.tobytes() == b.tobytes()
  other = mj.MLPClassifier(**{**SMALL, "random_state": 1}).fit(X, y)
  assert clf.coefs_[0].tobytes() != other.coefs_[0].tobytes()
  back.partial_fit(X, y)  # a pickled model trains on
  assert back.n_iter_ == clf.n_iter_ + 1


def test_attributes_and_early_stopping():
  X, y = _blobs(n=300)
  y = np.random.default_rng(1).permutation(y)  # labels unrelated to X: validation loss turns up
  clf = mj.MLPClassifier(**{**SMALL, "max_iter": 200}, early_stopping=True,
                         n_iter_no_change=3).fit(X, y)
  assert clf.n_iter_ < 200 and len(clf.loss_curve_) == clf.n_iter_
  assert len(clf.validation_scores_) == clf.n_iter_
  assert clf.validation_scores_[clf.n_iter_ - 4] == clf.best_validation_score_  # kept epoch
  assert [c.shape for c in clf.coefs_] == [(6, 16), (16, 3)]
  assert [b.shape for b in clf.intercepts_] == [(16,), (3,)]
  assert clf.n_layers_ == 3 and clf.n_outputs_ == 3 and clf.out_activation_ == "softmax"
  np.testing.assert_allclose(clf.predict_log_proba(X), np.log(clf.predict_proba(X)),
                             rtol=1e-6, atol=1e-6)


def test_alpha_is_the_library_lambda():
  """One full-batch SGD step of the estimator equals one step on mj.grads with l2=alpha."""
  import jax
  X, y = _blobs(n=50)
  clf = mj.MLPClassifier(hidden_layer_sizes=(8,), alpha=0.7, solver="sgd", batch_size=50,
                         learning_rate_init=0.1, max_iter=1, shuffle=False,
                         random_state=0).fit(X, y)
  params = mj.init_params(jax.random.PRNGKey(clf._seed), (6, 8, 3))
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
  with pytest.raises(ValueError, match="solver: expected one of sgd, momentum, adam, got 'lbfgs2'"):
    mj.MLPClassifier(**SMALL, solver="lbfgs2").fit(X, y)
