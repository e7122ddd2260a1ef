"""`mj.MLPClassifier` and `mj.MLPRegressor` train as scikit-learn's do: for the same data and
`random_state` (and shuffle=False: scikit-learn draws its epoch order from NumPy, the library from
JAX), the same weights after every solver, output and option, to float64 precision. The
gradients are the library's analytic ones; scikit-learn's estimators are the reference."""

import warnings

import jax
import numpy as np
import pytest
from sklearn import neural_network
from sklearn.datasets import load_digits, make_multilabel_classification, make_regression
from sklearn.exceptions import ConvergenceWarning

import mlp_jax as mj

# Largest relative difference (per layer, over its largest entry) from scikit-learn's weights.
RTOL = {"stochastic": 1e-13,  # sgd / adam: the same updates, step for step
        "lbfgs": 1e-9,        # SciPy's line search and two-loop recursion carry the last bits
        "float32": 2e-4}      # the library's default float32 against scikit-learn's float64

_digits_x, _digits_y = load_digits(n_class=4, return_X_y=True)
_label_x, _label_y = make_multilabel_classification(n_samples=80, n_classes=4, random_state=0)
_reg_x, _reg_y = make_regression(n_samples=90, n_features=6, random_state=0)
DATA = {
    "multiclass": (_digits_x[:150] / 16, _digits_y[:150]),
    "binary": (_digits_x[:150] / 16, _digits_y[:150] % 2),
    "multilabel": (_label_x / 10, _label_y),
    "squared_error": (_reg_x, _reg_y / 100),
    "poisson": (_reg_x, np.abs(_reg_y) / 100),
}
SETTINGS = dict(hidden_layer_sizes=(8, 5), random_state=0, shuffle=False, max_iter=20,
                activation="tanh", batch_size=32)


def _pair(task, **params):
  """The library's estimator and scikit-learn's, with the same parameters."""
  name = "MLPClassifier" if task in ("multiclass", "binary", "multilabel") else "MLPRegressor"
  if task == "poisson":
    params["loss"] = "poisson"
  return getattr(mj, name)(**params), getattr(neural_network, name)(**params)


def _fit_both(ours, theirs, X, y, **fit_params):
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", ConvergenceWarning)
    ours.fit(X, y, **fit_params)
    theirs.fit(X, y, **fit_params)


def _assert_close(a, b, rtol):
  """Equal shapes and dtypes, and values within rtol of the largest |b|."""
  a, b = np.asarray(a), np.asarray(b)
  assert a.shape == b.shape and a.dtype == b.dtype
  assert np.max(np.abs(a - b)) <= rtol * np.max(np.abs(b)), np.max(np.abs(a - b))


def _assert_same_weights(ours, theirs, rtol):
  assert len(ours.coefs_) == len(theirs.coefs_)
  for a, b in zip(ours.coefs_ + ours.intercepts_, theirs.coefs_ + theirs.intercepts_):
    _assert_close(a, b, rtol)


@pytest.fixture
def x64():
  with jax.enable_x64(True), jax.numpy_dtype_promotion("standard"):
    yield


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize("task", list(DATA))
@pytest.mark.parametrize("solver", ["sgd", "adam", "lbfgs"])
def test_the_same_weights_as_scikit_learn_in_float64(task, solver):
  ours, theirs = _pair(task, solver=solver, **SETTINGS)
  _fit_both(ours, theirs, *DATA[task])
  rtol = RTOL["lbfgs" if solver == "lbfgs" else "stochastic"]
  _assert_same_weights(ours, theirs, rtol)
  assert ours.n_iter_ == theirs.n_iter_ and ours.out_activation_ == theirs.out_activation_
  assert ours.loss_ == pytest.approx(theirs.loss_, rel=1e-12)
  if solver != "lbfgs":
    np.testing.assert_allclose(ours.loss_curve_, theirs.loss_curve_, rtol=1e-12)
    assert ours.t_ == theirs.t_ and ours.best_loss_ == pytest.approx(theirs.best_loss_, rel=1e-12)
  X = DATA[task][0]
  _assert_close(ours.predict(X), theirs.predict(X), rtol)
  if hasattr(theirs, "predict_proba"):
    _assert_close(ours.predict_proba(X), theirs.predict_proba(X), rtol)


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize("solver", ["sgd", "adam", "lbfgs"])
def test_sample_weight_as_scikit_learn_weighs_it(solver):
  X, y = DATA["multiclass"]
  weights = np.random.default_rng(0).uniform(0.2, 2.0, len(y))
  ours, theirs = _pair("multiclass", solver=solver, **SETTINGS)
  _fit_both(ours, theirs, X, y, sample_weight=weights)
  _assert_same_weights(ours, theirs, RTOL["lbfgs" if solver == "lbfgs" else "stochastic"])
  plain = mj.MLPClassifier(solver=solver, **SETTINGS)
  _fit_both(plain, neural_network.MLPClassifier(solver=solver, **SETTINGS), X, y)
  assert not np.allclose(plain.coefs_[0], ours.coefs_[0])  # the weights changed the fit


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize("params", [
    dict(solver="sgd", learning_rate="invscaling", learning_rate_init=0.3, power_t=0.4),
    dict(solver="sgd", learning_rate="adaptive", learning_rate_init=0.3, tol=1e-3,
         n_iter_no_change=2, max_iter=60),
    dict(solver="sgd", momentum=0.5, nesterovs_momentum=False, tol=1e-3, max_iter=60),
    dict(solver="adam", beta_1=0.8, beta_2=0.99, epsilon=1e-6, learning_rate_init=0.01),
    dict(solver="adam", early_stopping=True, n_iter_no_change=3, max_iter=100),
    dict(solver="sgd", early_stopping=True, validation_fraction=0.2, tol=0.0, max_iter=40),
    dict(solver="adam", batch_size=150, alpha=0.5, activation="logistic"),
    dict(solver="lbfgs", max_fun=12, activation="relu"),
], ids=["invscaling", "adaptive", "momentum", "adam-betas", "early-stopping-adam",
        "early-stopping-sgd", "full-batch", "max_fun"])
@pytest.mark.parametrize("task", ["multiclass", "squared_error"])
def test_options_as_scikit_learn_has_them(params, task):
  """Learning-rate rules, momentum, Adam's constants, early stopping (its split, score, stop and
  kept epoch), tol and n_iter_no_change, max_fun: the same run."""
  ours, theirs = _pair(task, **{**SETTINGS, **params})
  _fit_both(ours, theirs, *DATA[task])
  _assert_same_weights(ours, theirs, RTOL["lbfgs" if params["solver"] == "lbfgs" else "stochastic"])
  assert ours.n_iter_ == theirs.n_iter_
  for name in ("validation_scores_", "best_validation_score_", "_no_improvement_count"):
    if getattr(theirs, name, None) is not None:
      np.testing.assert_allclose(getattr(ours, name), getattr(theirs, name), rtol=1e-12)
  if params["solver"] == "sgd":
    assert ours._optimizer.learning_rate == pytest.approx(theirs._optimizer.learning_rate,
                                                          rel=1e-15)


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize("solver", ["sgd", "adam"])
def test_partial_fit_and_warm_start_continue_as_scikit_learn_does(solver):
  X, y = DATA["multiclass"]
  ours, theirs = _pair("multiclass", solver=solver, **SETTINGS)
  for estimator in (ours, theirs):
    for start in range(0, 150, 50):
      estimator.partial_fit(X[start:start + 50], y[start:start + 50], classes=np.arange(4))
  _assert_same_weights(ours, theirs, RTOL["stochastic"])
  assert (ours.n_iter_, ours.t_) == (theirs.n_iter_, theirs.t_) == (1, 150)
  ours, theirs = _pair("multiclass", solver=solver, warm_start=True, **{**SETTINGS,
                                                                        "max_iter": 5})
  for _ in range(2):
    _fit_both(ours, theirs, X, y)
  _assert_same_weights(ours, theirs, RTOL["stochastic"])
  np.testing.assert_allclose(ours.loss_curve_, theirs.loss_curve_, rtol=1e-12)


@pytest.mark.parametrize("task", ["multiclass", "binary", "squared_error"])
@pytest.mark.parametrize("solver", ["sgd", "adam", "lbfgs"])
def test_float32_training_stays_near_scikit_learns_float64(task, solver):
  """The default: float32 arithmetic, weights and predictions returned in X's dtype."""
  ours, theirs = _pair(task, solver=solver, **SETTINGS)
  with jax.numpy_dtype_promotion("standard"):
    _fit_both(ours, theirs, *DATA[task])
  _assert_same_weights(ours, theirs, RTOL["float32"])
  if task != "squared_error":  # the labels agree too (the regressor's values: by the weights)
    X = DATA[task][0]
    assert np.mean(ours.predict(X) == theirs.predict(X)) >= 0.98


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize("solver", ["sgd", "adam"])
def test_partial_fit_with_sample_weight_as_scikit_learn(solver):
  X, y = DATA["squared_error"]
  weights = np.random.default_rng(1).uniform(0.5, 2.0, len(y))
  ours, theirs = _pair("squared_error", solver=solver, **SETTINGS)
  for estimator in (ours, theirs):
    for start in range(0, 90, 30):
      rows = slice(start, start + 30)
      estimator.partial_fit(X[rows], y[rows], sample_weight=weights[rows])
  _assert_same_weights(ours, theirs, RTOL["stochastic"])
  assert ours.loss_ == pytest.approx(theirs.loss_, rel=1e-12)
