"""`MLPClassifier` and `MLPRegressor`: scikit-learn's estimators, trained on the analytic gradients.

    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    clf = make_pipeline(StandardScaler(), mj.MLPClassifier(hidden_layer_sizes=(256,), alpha=0.1))
    clf.fit(X_train, y_train).score(X_test, y_test)

Each takes scikit-learn's parameters with their meanings and trains as scikit-learn's does
(`estimator_fitting`): the same Glorot-uniform initial weights for the same `random_state`, the
same objective ((E6): the mean loss plus alpha/(2m)·Σ‖W‖² over each batch of m rows, (E26) with
`sample_weight`), the solvers "sgd" (momentum, Nesterov by default), "adam" and "lbfgs" with
their updates, learning rates, `tol` / `n_iter_no_change` stops, early stopping on the
validation score, `warm_start`, `ConvergenceWarning`. The gradient is the library's, (E7)-(E12):
one compiled `lax.scan` per epoch, or one compiled loss-and-gradient per L-BFGS evaluation.
What differs from scikit-learn's is listed in the README ("scikit-learn estimators").
"""

from typing import Any, Optional, Sequence, Union

import numpy as np
from sklearn.base import ClassifierMixin, RegressorMixin
from sklearn.metrics import accuracy_score, r2_score
from sklearn.preprocessing import LabelBinarizer
from sklearn.utils.metaestimators import available_if
from sklearn.utils.multiclass import type_of_target, unique_labels
from sklearn.utils.validation import column_or_1d, validate_data

from mlp_jax.errors import InputError
from mlp_jax.tools.estimator_base import BaseMLP

class MLPClassifier(ClassifierMixin, BaseMLP):
  """A multilayer perceptron classifier: scikit-learn's `MLPClassifier` (its parameters and
  fitted attributes), trained on the analytic gradients (see the module doc).

  Softmax output for three or more classes, one logistic output for two (as scikit-learn), one
  logistic output per label for multilabel `y` (an indicator matrix). `activation` also takes the
  library's "leaky_relu", "leaky_relu:SLOPE", "gelu", "gelu_tanh", or one per hidden layer.
  The library's own parameters beside scikit-learn's: `schedule` ("cosine": the learning rate
  decays to 0 over `max_iter` epochs), `compute_dtype` (e.g. "bfloat16" GEMMs),
  `dp_clip_norm` / `dp_noise_multiplier` / `dp_delta` / `dp_target_epsilon` /
  `dp_target_quantile` (DP-SGD when a noise multiplier or a target epsilon is set, the noise then
  chosen for `max_iter` epochs and kept as `dp_noise_multiplier_`; with a target quantile the
  clip norm adapts to that quantile of the per-example norms; `epsilon_` holds what the fits
  spent) and `devices` (data-parallel over that many devices,
  or "all").
  """

  @available_if(lambda est: est._check_solver())
  def partial_fit(self, X, y, sample_weight=None, classes=None):
    """One epoch over the rows given, from the current weights and solver state. The first call
    needs `classes` (every label there may be), unless y is multilabel. All or nothing."""
    with self._all_or_nothing():
      return self._partial_fit(X, y, sample_weight, classes)

  def _partial_fit(self, X, y, sample_weight, classes):
    if not hasattr(self, "classes_"):
      multilabel = type_of_target(y).startswith("multilabel")
      if classes is None and not multilabel:
        raise ValueError("classes must be passed on the first call to partial_fit.")
      self._label_binarizer = LabelBinarizer()
      self._label_binarizer.fit(y if multilabel else classes)
      self.classes_ = self._label_binarizer.classes_
    elif classes is not None and not np.array_equal(self.classes_, unique_labels(classes)):
      raise ValueError(f"`classes={classes!r}` is not the same as on last call to "
                       f"partial_fit, was: {self.classes_!r}")
    return self._fit(X, y, sample_weight, incremental=True)

  def _validate_input(self, X, y, incremental: bool, reset: bool):
    X, y = validate_data(self, X, y, accept_sparse=["csr", "csc"], multi_output=True,
                         dtype=(np.float64, np.float32), reset=reset)
    if y.ndim == 2 and y.shape[1] == 1:
      y = column_or_1d(y, warn=True)
    if not hasattr(self, "classes_") or (not self.warm_start and not incremental):
      self._label_binarizer = LabelBinarizer()
      self._label_binarizer.fit(y)
      self.classes_ = self._label_binarizer.classes_
    else:
      classes = unique_labels(y)
      if self.warm_start:
        if set(classes) != set(self.classes_):
          raise ValueError("warm_start can only be used where `y` has the same classes as in "
                           f"the previous call to fit. Previously got {self.classes_}, `y` has "
                           f"{classes}")
      elif len(np.setdiff1d(classes, self.classes_, assume_unique=True)):
        raise ValueError(f"`y` has classes not in `self.classes_`. `self.classes_` has "
                         f"{self.classes_}. 'y' has {classes}.")
    return X, self._label_binarizer.transform(y).astype(bool)

  def _out_activation(self, Y: np.ndarray) -> str:
    return "softmax" if self._label_binarizer.y_type_ == "multiclass" else "logistic"

  _score_function = staticmethod(accuracy_score)

  def _truth(self, Y: np.ndarray) -> np.ndarray:
    return self._label_binarizer.inverse_transform(Y)

  def _probabilities(self, z: np.ndarray) -> np.ndarray:
    """p(class | x) in float64 from the last layer's z: softmax rows, or each logistic output."""
    z = z.astype(np.float64)
    if self.out_activation_ == "softmax":
      return np.exp(_log_softmax(z))
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # the logistic function, without overflow

  def _decide(self, z: np.ndarray, dtype=None) -> np.ndarray:
    """The labels from the last layer's z: the most probable class (argmax z); for logistic
    outputs p > 1/2, i.e. z > 0 (an indicator per label for multilabel y)."""
    del dtype
    if self.out_activation_ == "softmax":
      return self.classes_[np.argmax(z, axis=1)]
    if z.shape[1] == 1:
      return self.classes_[(z[:, 0] > 0).astype(int)]
    return (z > 0).astype(int)

  def predict(self, X) -> np.ndarray:
    """The class of each row, as a label of `classes_` (an indicator row, for multilabel y)."""
    return self._decide(self._forward(X)[0])

  def predict_proba(self, X) -> np.ndarray:
    """p(class | x): (n_samples, n_classes), columns in `classes_` order, float64."""
    return self._proba(self._forward(X)[0])

  def _proba(self, z: np.ndarray) -> np.ndarray:
    p = self._probabilities(z)
    if p.shape[1] == 1:  # binary: the logistic output is p(classes_[1])
      return np.hstack([self._probabilities(-z), p])
    return p

  def predict_log_proba(self, X) -> np.ndarray:
    """log p(class | x), (n_samples, n_classes): the log-softmax computed in float64, or the log
    of `predict_proba`."""
    z = self._forward(X)[0]
    if self.out_activation_ == "softmax":
      return _log_softmax(z.astype(np.float64))
    return np.log(self._proba(z))

  def __sklearn_tags__(self):
    tags = super().__sklearn_tags__()
    tags.classifier_tags.multi_label = True
    return tags


class MLPRegressor(RegressorMixin, BaseMLP):
  """A multilayer perceptron regressor: scikit-learn's `MLPRegressor` (its parameters and fitted
  attributes), trained on the analytic gradients (see the module doc). `loss`: "squared_error"
  (identity output, (E24)) or "poisson" (log link, exp output, (E25)). The other parameters are
  `MLPClassifier`'s."""

  def __init__(self, hidden_layer_sizes: Sequence[int] = (100,), activation: Any = "relu", *,
               loss: str = "squared_error", solver: str = "adam", alpha: float = 1e-4,
               batch_size: Union[int, str] = "auto", learning_rate: str = "constant",
               learning_rate_init: float = 1e-3, power_t: float = 0.5, max_iter: int = 200,
               shuffle: bool = True, random_state: Any = None, tol: float = 1e-4,
               verbose: bool = False, warm_start: bool = False, momentum: float = 0.9,
               nesterovs_momentum: bool = True, early_stopping: bool = False,
               validation_fraction: float = 0.1, beta_1: float = 0.9, beta_2: float = 0.999,
               epsilon: float = 1e-8, n_iter_no_change: Union[int, float] = 10,
               max_fun: int = 15000, schedule: str = "constant",
               compute_dtype: Optional[str] = None, dp_clip_norm: Optional[float] = None,
               dp_noise_multiplier: Optional[float] = None, dp_delta: float = 1e-5,
               dp_target_epsilon: Optional[float] = None,
               dp_target_quantile: Optional[float] = None,
               devices: Union[None, int, str] = None):
    super().__init__(
        hidden_layer_sizes, activation, solver=solver, alpha=alpha, batch_size=batch_size,
        learning_rate=learning_rate, learning_rate_init=learning_rate_init, power_t=power_t,
        max_iter=max_iter, shuffle=shuffle, random_state=random_state, tol=tol,
        verbose=verbose, warm_start=warm_start, momentum=momentum,
        nesterovs_momentum=nesterovs_momentum, early_stopping=early_stopping,
        validation_fraction=validation_fraction, beta_1=beta_1, beta_2=beta_2, epsilon=epsilon,
        n_iter_no_change=n_iter_no_change, max_fun=max_fun, schedule=schedule,
        compute_dtype=compute_dtype, dp_clip_norm=dp_clip_norm,
        dp_noise_multiplier=dp_noise_multiplier, dp_delta=dp_delta,
        dp_target_epsilon=dp_target_epsilon, dp_target_quantile=dp_target_quantile,
        devices=devices)
    self.loss = loss

  @available_if(lambda est: est._check_solver())
  def partial_fit(self, X, y, sample_weight=None):
    """One epoch over the rows given, from the current weights and solver state."""
    return self._fit(X, y, sample_weight, incremental=True)

  def _validate_input(self, X, y, incremental: bool, reset: bool):
    if self.loss not in ("squared_error", "poisson"):
      raise InputError(f"loss: expected one of squared_error, poisson, got {self.loss!r}")
    X, y = validate_data(self, X, y, accept_sparse=["csr", "csc"], multi_output=True,
                         y_numeric=True, dtype=(np.float64, np.float32), reset=reset)
    if y.ndim == 2 and y.shape[1] == 1:
      y = column_or_1d(y, warn=True)
    if self.loss == "poisson" and np.any(y < 0):
      raise InputError("y: the poisson loss needs targets >= 0; some are negative")
    return X, y.reshape(y.shape[0], -1)

  def _out_activation(self, Y: np.ndarray) -> str:
    return "exp" if self.loss == "poisson" else "identity"

  _score_function = staticmethod(r2_score)

  @staticmethod
  def _truth(Y: np.ndarray) -> np.ndarray:
    return Y[:, 0] if Y.shape[1] == 1 else Y

  def _decide(self, z: np.ndarray, dtype=None) -> np.ndarray:
    values = np.exp(z.astype(np.float64)) if self.out_activation_ == "exp" else z
    values = values.astype(dtype or z.dtype)
    return values[:, 0] if values.shape[1] == 1 else values

  def predict(self, X) -> np.ndarray:
    """The predicted values, (n_samples,) or (n_samples, n_outputs), in X's dtype."""
    z, dtype = self._forward(X)
    return self._decide(z, dtype)


def _log_softmax(z: np.ndarray) -> np.ndarray:
  shifted = z - z.max(axis=1, keepdims=True)
  return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
