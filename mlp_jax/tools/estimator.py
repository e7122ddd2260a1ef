"""`MLPClassifier`: the compiled, oracle-checked MLP as a scikit-learn estimator.

    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    clf = make_pipeline(StandardScaler(), mj.MLPClassifier(hidden_layer_sizes=(256,), alpha=0.1))
    clf.fit(X_train, y_train).score(X_test, y_test)

It minimises the objective of scikit-learn's `MLPClassifier` for ReLU hidden layers and softmax
output, (E6): mean cross-entropy plus alpha/(2m)·Σ‖W‖² over each minibatch of m rows (`alpha` is
the library's lambda), with the hand-derived gradients (E7)-(E12). `fit` trains with `mj.fit`,
one compiled `lax.scan` per epoch; `partial_fit` is the run so far resumed by `mj.fit` for one
more epoch over the rows it is given (the same epoch, ledger and NaN checks). Where it differs
from scikit-learn's: `max_iter` epochs are always trained (there is no `tol` stop on the
training loss); `early_stopping` stops on the validation *loss* after `n_iter_no_change` epochs
without a new minimum and keeps that epoch's weights (`validation_scores_` still records the
validation accuracy); the optimizers are "sgd", "momentum" (Nesterov, 0.9) and "adam", with a
"constant" or "cosine" learning rate; initial weights are He-normal.
"""

from typing import Any, List, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.model_selection import train_test_split
from sklearn.utils import check_random_state
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

import mlp_jax as mj
from mlp_jax.training import privacy
from mlp_jax.training.optimizers import OPTIMIZERS
from mlp_jax.training.run import new_run
from mlp_jax.training.settings import check_settings

# The estimator's parameter behind each setting of `FitSettings` that it spells otherwise.
_PARAMETER_OF = {"l2": "alpha", "seed": "random_state", "patience": "n_iter_no_change",
                 "clip_norm": "dp_clip_norm", "noise_multiplier": "dp_noise_multiplier",
                 "delta": "dp_delta", "val": "early_stopping=True"}


class MLPClassifier(ClassifierMixin, BaseEstimator):
  """A multilayer perceptron classifier trained on the analytic gradients (see the module doc).

  Parameters mirror scikit-learn's `MLPClassifier` where they mean the same: `hidden_layer_sizes`,
  `activation` (scikit-learn's "identity", "logistic", "tanh", "relu", and ours: "leaky_relu",
  "leaky_relu:SLOPE", "gelu", "gelu_tanh", or one per hidden layer), `alpha` (lambda of (E6)), `batch_size` ("auto": min(200, n_samples)), `learning_rate_init`,
  `max_iter` (epochs), `solver` ("sgd", "momentum", "adam"), `shuffle`, `random_state`,
  `early_stopping`, `validation_fraction`, `n_iter_no_change`, `verbose`. Ours: `schedule`
  ("constant" or "cosine" decay to 0 over `max_iter`), `compute_dtype` (e.g. "bfloat16" GEMMs),
  `dp_clip_norm` / `dp_noise_multiplier` / `dp_delta` (DP-SGD when `dp_noise_multiplier` is
  set; `epsilon_` then holds the run's epsilon) and `devices` (data-parallel over that many
  devices, or "all").

  Fitted attributes: `classes_`, `n_features_in_`, `coefs_` and `intercepts_` (NumPy arrays,
  (fan_in, fan_out) and (fan_out,) per layer), `loss_curve_`, `loss_`, `n_iter_`, `t_`,
  `n_layers_`, `n_outputs_`, `out_activation_` ("softmax"), and, as scikit-learn sets them,
  `best_loss_` (the least training loss; None with `early_stopping`), `validation_scores_` and
  `best_validation_score_` (None without `early_stopping`).
  """

  def __init__(self, hidden_layer_sizes: Sequence[int] = (100,), activation: Any = "relu",
               alpha: float = 1e-4,
               batch_size: Union[int, str] = "auto", learning_rate_init: float = 1e-3,
               max_iter: int = 200, solver: str = "adam", schedule: str = "constant",
               shuffle: bool = True, random_state: Any = None, early_stopping: bool = False,
               validation_fraction: float = 0.1, n_iter_no_change: int = 10,
               verbose: bool = False, compute_dtype: Optional[str] = None,
               dp_clip_norm: Optional[float] = None, dp_noise_multiplier: Optional[float] = None,
               dp_delta: float = 1e-5, devices: Union[None, int, str] = None):
    self.hidden_layer_sizes = hidden_layer_sizes
    self.activation = activation
    self.alpha = alpha
    self.batch_size = batch_size
    self.learning_rate_init = learning_rate_init
    self.max_iter = max_iter
    self.solver = solver
    self.schedule = schedule
    self.shuffle = shuffle
    self.random_state = random_state
    self.early_stopping = early_stopping
    self.validation_fraction = validation_fraction
    self.n_iter_no_change = n_iter_no_change
    self.verbose = verbose
    self.compute_dtype = compute_dtype
    self.dp_clip_norm = dp_clip_norm
    self.dp_noise_multiplier = dp_noise_multiplier
    self.dp_delta = dp_delta
    self.devices = devices

  # ----------------------------------------------------------------------------- training

  def fit(self, X, y) -> "MLPClassifier":
    """Trains `max_iter` epochs (fewer with `early_stopping`) from a fresh initialisation."""
    X, y = validate_data(self, X, y, dtype=(np.float64, np.float32))
    labels = self._set_classes(y)
    X = self._features(X)
    self._check_solver()
    seed = self._draw_seed()
    params = mj.init_params(jax.random.PRNGKey(seed), self._layer_sizes(X.shape[1]), X.dtype)
    batch = self._batch(X.shape[0])
    optimizer = mj.make_optimizer(
        self.solver, self.learning_rate_init, schedule=self.schedule,
        total_steps=self.max_iter * mj.steps_per_epoch(X.shape[0], batch))
    val = None
    if self.early_stopping:
      X, Xv, labels, yv = train_test_split(X, labels, test_size=self.validation_fraction,
                                           stratify=labels, random_state=seed)
      val = (Xv, yv)
      batch = min(batch, X.shape[0])
    settings = self._settings(batch, seed, self.n_iter_no_change if self.early_stopping else None)
    result = mj.fit(params, (X, labels), optimizer=optimizer, epochs=self.max_iter, val=val,
                    settings=settings, mesh=self._mesh(),
                    on_epoch_end=self._report if self.verbose else None)
    history = result.history
    self.loss_curve_ = [r["train_loss"] for r in history]
    if self.early_stopping:  # as scikit-learn: the validation scores, or the best loss
      self.validation_scores_ = [r["val_acc"] for r in history]
      self.best_validation_score_ = self.validation_scores_[result.best_epoch - 1]
      self.best_loss_ = None
    else:
      self.validation_scores_ = self.best_validation_score_ = None
      self.best_loss_ = min(self.loss_curve_)
    self.n_iter_ = len(history)
    self.t_ = self.n_iter_ * mj.steps_per_epoch(X.shape[0], batch)
    self._keep(result.params, result.opt_state, result.state.ledger)
    return self

  def partial_fit(self, X, y, classes=None) -> "MLPClassifier":
    """One compiled epoch over the rows given, continuing from the current weights and
    optimizer state. The first call needs `classes`, every label there may be; a constant
    learning rate only (a cosine schedule needs to know its length)."""
    first = not hasattr(self, "classes_")
    if first and classes is None:
      raise ValueError("classes must be passed on the first call to partial_fit")
    if not first and classes is not None and not np.array_equal(self.classes_,
                                                                np.unique(classes)):
      raise ValueError(f"`classes={classes!r}` is not the same as on last call to "
                       f"partial_fit, was: {self.classes_!r}")
    if self.early_stopping:
      raise ValueError("partial_fit does not support early_stopping=True")
    self._check_solver()
    if self.schedule != "constant":
      raise ValueError(f"partial_fit needs schedule='constant', got {self.schedule!r}")
    X, y = validate_data(self, X, y, dtype=(np.float64, np.float32), reset=first)
    if first:
      self._set_classes(np.asarray(classes))
    labels = self._encode(y)
    X = self._features(X)
    batch = self._batch(X.shape[0])
    optimizer = mj.make_optimizer(self.solver, self.learning_rate_init)
    if first:
      params = mj.init_params(jax.random.PRNGKey(self._draw_seed()),
                              self._layer_sizes(X.shape[1]), X.dtype)
      opt_state, ledger = optimizer.init(params), ()
      self.loss_curve_, self.n_iter_, self.t_ = [], 0, 0
    else:
      params, opt_state, ledger = self._params(), self._opt_state, self._ledger
    # One more epoch of the run so far: `fit` resumed on these rows, with the run's ledger.
    settings, mesh = self._settings(batch, self._seed, None), self._mesh()
    record = settings.record(X.shape[0], None, 1 if mesh is None else mesh.size)
    state = new_run(params, opt_state, record)._replace(epochs_done=self.n_iter_, ledger=ledger)
    try:
      result = mj.fit(params, (X, labels), optimizer=optimizer, epochs=self.n_iter_ + 1,
                      settings=settings, mesh=mesh, resume=state)
    except mj.NonFiniteError as err:
      raise err.with_message(f"partial_fit: {err}; the estimator's weights were kept from "
                             "before this call") from err
    self.loss_curve_.append(result.history[-1]["train_loss"])
    self.best_loss_ = min(self.loss_curve_)
    self.validation_scores_ = self.best_validation_score_ = None
    self.n_iter_ += 1
    self.t_ += mj.steps_per_epoch(X.shape[0], batch)
    self._keep(result.params, result.opt_state, result.state.ledger)
    return self

  # ---------------------------------------------------------------------------- predicting

  def predict_log_proba(self, X) -> np.ndarray:
    """log p(class | x) for each row: (n_samples, n_classes), columns in `classes_` order."""
    X = self._checked(X)  # before anything else: an unfitted estimator says so
    logits = np.asarray(_logits(self._params(), X, activation=self._activation()), np.float64)
    shifted = logits - logits.max(axis=1, keepdims=True)  # log-softmax in float64, so that
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))  # rows sum to 1

  def predict_proba(self, X) -> np.ndarray:
    """p(class | x) for each row: (n_samples, n_classes), columns in `classes_` order."""
    return np.exp(self.predict_log_proba(X))

  def predict(self, X) -> np.ndarray:
    """The most probable class of each row, as a label of `classes_`."""
    X = self._checked(X)
    return self.classes_[np.asarray(_predict(self._params(), X, activation=self._activation()))]

  # ------------------------------------------------------------------------------- helpers

  def _checked(self, X) -> np.ndarray:
    check_is_fitted(self)
    return self._features(validate_data(self, X, dtype=(np.float64, np.float32), reset=False))

  def _set_classes(self, y: np.ndarray) -> np.ndarray:
    check_classification_targets(y)
    self.classes_, labels = np.unique(y, return_inverse=True)
    if len(self.classes_) < 2:
      raise ValueError(f"MLPClassifier needs samples of at least 2 classes; got 1 class "
                       f"({self.classes_[0]!r})")
    self.n_outputs_, self.out_activation_ = len(self.classes_), "softmax"
    return labels.astype(np.int32)

  def _encode(self, y: np.ndarray) -> np.ndarray:
    check_classification_targets(y)
    labels = np.searchsorted(self.classes_, y)
    unknown = (labels >= len(self.classes_)) | (self.classes_[np.minimum(
        labels, len(self.classes_) - 1)] != y)
    if unknown.any():
      raise ValueError(f"y holds labels not in classes_: {sorted(set(np.asarray(y)[unknown]))}")
    return labels.astype(np.int32)

  @staticmethod
  def _features(X: np.ndarray) -> np.ndarray:
    """float32 features (float64 when JAX's 64-bit mode is on and X is float64)."""
    wide = jax.config.jax_enable_x64 and X.dtype == np.float64  # type: ignore[attr-defined]
    return np.ascontiguousarray(X, np.float64 if wide else np.float32)

  def _layer_sizes(self, num_features: int) -> tuple:
    hidden = self.hidden_layer_sizes
    hidden = (hidden,) if isinstance(hidden, (int, np.integer)) else tuple(hidden)
    return (num_features,) + tuple(int(h) for h in hidden) + (len(self.classes_),)

  def _batch(self, num_rows: int) -> int:
    if self.batch_size == "auto":
      return min(200, num_rows)
    return min(int(self.batch_size), num_rows)  # scikit-learn clips it too

  def _draw_seed(self) -> int:
    """The run's seed, kept for the partial_fit calls that follow: an int `random_state` is the
    seed itself (so `random_state=0` trains as `mj.fit(seed=0)` and `mlp-jax train --seed 0`);
    None or a NumPy generator draws one."""
    state = self.random_state
    if isinstance(state, (int, np.integer)) and not isinstance(state, bool) and state >= 0:
      self._seed = int(state)
    else:
      self._seed = int(check_random_state(state).randint(2**31 - 1))
    return self._seed

  def _settings(self, batch: int, seed: int, patience: Optional[int]) -> mj.FitSettings:
    """The run's settings in the library's terms (alpha is lambda, n_iter_no_change the
    patience), checked by `check_settings` with a bad one named as the estimator's parameter
    (`alpha`, not `l2`)."""
    settings = mj.FitSettings(batch_size=batch, l2=self.alpha, seed=seed, patience=patience,
                              compute_dtype=self.compute_dtype, dp=self._dp(),
                              shuffle=self.shuffle, activation=self.activation)
    return check_settings(settings, spell=lambda name: _PARAMETER_OF.get(name, name))

  def _check_solver(self) -> None:
    """`solver` is one of the optimizers by name, named as the estimator's parameter."""
    if self.solver not in OPTIMIZERS:
      raise ValueError(f"solver: expected one of {', '.join(OPTIMIZERS)}, got {self.solver!r}")

  def _activation(self) -> Any:
    """`activation` as a static argument of the compiled predictions (hashable)."""
    activation = self.activation
    return tuple(activation) if isinstance(activation, list) else activation

  def _dp(self) -> Optional[privacy.DPConfig]:
    if self.dp_noise_multiplier is None:
      return None
    return privacy.DPConfig(1.0 if self.dp_clip_norm is None else self.dp_clip_norm,
                            self.dp_noise_multiplier, self.dp_delta)

  def _mesh(self):
    return None if self.devices is None else mj.make_mesh(self.devices)

  def _report(self, state) -> None:
    record = state.history[-1]
    print(f"Iteration {record['epoch']}, loss = {record['train_loss']:.8f}")

  def _keep(self, params, opt_state, ledger) -> None:
    """The fitted weights as NumPy arrays (picklable, inspectable), and what training needs to
    continue."""
    self.coefs_: List[np.ndarray] = [np.asarray(layer.w) for layer in params]
    self.intercepts_: List[np.ndarray] = [np.asarray(layer.b) for layer in params]
    self._device_params = (self.coefs_, self._params())
    self.n_layers_ = len(self.coefs_) + 1
    self.loss_ = self.loss_curve_[-1] if self.loss_curve_ else None
    self._opt_state = jax.tree.map(np.asarray, opt_state)
    self._ledger = tuple(ledger)
    dp = self._dp()
    if dp is not None:
      self.epsilon_ = privacy.ledger_epsilon(self._ledger, dp.delta)

  def _params(self) -> mj.Params:
    """The weights on the device: copied there once when fitted (or unpickled), again only if
    `coefs_` was replaced since."""
    cached = self.__dict__.get("_device_params")
    if cached is not None and cached[0] is self.coefs_:
      return cached[1]
    return tuple(mj.Dense(jnp.asarray(w), jnp.asarray(b))
                 for w, b in zip(self.coefs_, self.intercepts_))

  def __getstate__(self) -> dict:
    state = dict(super().__getstate__())
    state.pop("_device_params", None)  # device arrays stay out of a pickle
    return state

  def __setstate__(self, state: dict) -> None:
    super().__setstate__(state)
    if "coefs_" in state:
      self._device_params = (self.coefs_, self._params())


# One compiled program per input shape for each, shared by every fitted estimator.
_logits = jax.jit(mj.forward, static_argnames="activation")
_predict = jax.jit(mj.predict, static_argnames="activation")

