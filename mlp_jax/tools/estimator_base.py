"""What `MLPClassifier` and `MLPRegressor` share: scikit-learn's parameters and their checks,
`fit` (scikit-learn's `_fit`: validation, first pass or warm start, the solver), the weights
and data on the device, predicting by one compiled call, and the compatible private attributes
scikit-learn's own tests read (`_optimizer.learning_rate`, `_loss_grad_lbfgs`,
`_no_improvement_count`).
"""

import contextlib
import math
from types import SimpleNamespace
from typing import Any, Iterator, List, Optional, Sequence, Tuple, Union

import jax
import jax.numpy as jnp
import numpy as np
from scipy import sparse
from sklearn.base import BaseEstimator
from sklearn.utils import check_random_state
from sklearn.utils.validation import _check_sample_weight, check_is_fitted, validate_data

import mlp_jax as mj
from mlp_jax.core import validation
from mlp_jax.core.network import make_network
from mlp_jax.errors import InputError
from mlp_jax.tools import estimator_fitting as fitting
from mlp_jax.training import lbfgs, privacy
from mlp_jax.training.settings import check_settings

# The estimator's parameter behind each setting of `FitSettings` that it spells otherwise.
_PARAMETER_OF = {"l2": "alpha", "seed": "random_state", "clip_norm": "dp_clip_norm",
                 "noise_multiplier": "dp_noise_multiplier", "delta": "dp_delta",
                 "target_epsilon": "dp_target_epsilon", "target_quantile": "dp_target_quantile"}
SOLVERS = ("lbfgs", "sgd", "adam", "momentum")  # "momentum": the sgd solver, an older name
LEARNING_RATES = ("constant", "invscaling", "adaptive")
SCHEDULES = ("constant", "cosine")
# The library's output for each of scikit-learn's output activations.
_OUTPUT_OF = {"softmax": "softmax_cross_entropy", "logistic": "sigmoid_binary_cross_entropy",
              "identity": "identity_squared_error", "exp": "poisson_log_link"}


class BaseMLP(BaseEstimator):
  """What both estimators share: parameters, training, the weights on the device, pickling."""

  def __init__(self, hidden_layer_sizes: Sequence[int] = (100,), activation: Any = "relu", *,
               solver: str = "adam", alpha: float = 1e-4, batch_size: Union[int, str] = "auto",
               learning_rate: str = "constant", learning_rate_init: float = 1e-3,
               power_t: float = 0.5, max_iter: int = 200, shuffle: bool = True,
               random_state: Any = None, tol: float = 1e-4, verbose: bool = False,
               warm_start: bool = False, momentum: float = 0.9, nesterovs_momentum: bool = True,
               early_stopping: bool = False, validation_fraction: float = 0.1,
               beta_1: float = 0.9, beta_2: float = 0.999, epsilon: float = 1e-8,
               n_iter_no_change: Union[int, float] = 10, max_fun: int = 15000,
               schedule: str = "constant", compute_dtype: Optional[str] = None,
               dp_clip_norm: Optional[float] = None, dp_noise_multiplier: Optional[float] = None,
               dp_delta: float = 1e-5, dp_target_epsilon: Optional[float] = None,
               dp_target_quantile: Optional[float] = None,
               devices: Union[None, int, str] = None):
    self.hidden_layer_sizes = hidden_layer_sizes
    self.activation = activation
    self.solver = solver
    self.alpha = alpha
    self.batch_size = batch_size
    self.learning_rate = learning_rate
    self.learning_rate_init = learning_rate_init
    self.power_t = power_t
    self.max_iter = max_iter
    self.shuffle = shuffle
    self.random_state = random_state
    self.tol = tol
    self.verbose = verbose
    self.warm_start = warm_start
    self.momentum = momentum
    self.nesterovs_momentum = nesterovs_momentum
    self.early_stopping = early_stopping
    self.validation_fraction = validation_fraction
    self.beta_1 = beta_1
    self.beta_2 = beta_2
    self.epsilon = epsilon
    self.n_iter_no_change = n_iter_no_change
    self.max_fun = max_fun
    self.schedule = schedule
    self.compute_dtype = compute_dtype
    self.dp_clip_norm = dp_clip_norm
    self.dp_noise_multiplier = dp_noise_multiplier
    self.dp_delta = dp_delta
    self.dp_target_epsilon = dp_target_epsilon
    self.dp_target_quantile = dp_target_quantile
    self.devices = devices

  # ----------------------------------------------------------------------------- training

  def fit(self, X, y, sample_weight=None):
    """Trains from scikit-learn's initial weights (from the current ones with `warm_start`):
    up to `max_iter` epochs (L-BFGS iterations with solver="lbfgs")."""
    return self._fit(X, y, sample_weight, incremental=False)

  def _fit(self, X, y, sample_weight, incremental: bool):
    """scikit-learn's `_fit`, all or nothing (`_all_or_nothing`)."""
    with self._all_or_nothing():
      return self._fit_once(X, y, sample_weight, incremental)

  @contextlib.contextmanager
  def _all_or_nothing(self) -> Iterator[None]:
    """A call that raises inside leaves the estimator as it was: its weights, solver state,
    classes and records (attributes are replaced, never changed in place, but for the lists of
    records, which are copied)."""
    before = {k: list(v) if isinstance(v, list) else v for k, v in self.__dict__.items()}
    try:
      yield
    except BaseException:
      self.__dict__.clear()
      self.__dict__.update(before)
      raise

  def _fit_once(self, X, y, sample_weight, incremental: bool):
    hidden = self._check_parameters(sample_weight)
    first_pass = not hasattr(self, "coefs_") or (not self.warm_start and not incremental)
    X, Y = self._validate_input(X, y, incremental, reset=first_pass)
    if sparse.issparse(X):
      X = X.toarray()  # the GEMMs are dense
    if sample_weight is not None:
      sample_weight = _check_sample_weight(sample_weight, X)
    self.n_outputs_ = Y.shape[1]
    random_state = check_random_state(self.random_state)
    if first_pass:
      self._initialize(Y, [X.shape[1]] + hidden + [self.n_outputs_], X.dtype, random_state)
    if self._solver() == "lbfgs":
      fitting.fit_lbfgs(self, X, Y, sample_weight)
    else:
      fitting.fit_stochastic(self, X, Y, sample_weight, incremental, random_state)
    fitting.check_finite(self)
    dtype = self._compute_dtype(X)  # the weights on the device, for predicting
    self._device_params = (self.coefs_, dtype,
                           fitting.device_params(self.coefs_, self.intercepts_, dtype))
    return self

  def _initialize(self, Y: np.ndarray, sizes: List[int], dtype, random_state) -> None:
    """scikit-learn's `_initialize`: counters, output activation, initial weights, and the
    records of the stochastic solvers."""
    self.n_iter_, self.t_, self.n_layers_ = 0, 0, len(sizes)
    self.out_activation_ = self._out_activation(Y)
    self.coefs_, self.intercepts_ = fitting.initial_weights(random_state, sizes,
                                                            self.activation, dtype)
    self._best_coefs = [c.copy() for c in self.coefs_]
    self._best_intercepts = [b.copy() for b in self.intercepts_]
    for name in ("_opt_state", "_seed"):
      self.__dict__.pop(name, None)
    if self._solver() != "lbfgs":
      self.loss_curve_, self._no_improvement_count = [], 0
      if self.early_stopping:
        self.validation_scores_, self.best_validation_score_, self.best_loss_ = [], -np.inf, None
      else:
        self.validation_scores_ = self.best_validation_score_ = None
        self.best_loss_ = np.inf

  def _check_parameters(self, sample_weight) -> List[int]:
    """Every parameter checked, a bad one named as the estimator spells it; the hidden sizes."""
    hidden = self.hidden_layer_sizes
    hidden = list(hidden) if hasattr(hidden, "__iter__") else [hidden]
    if any(h <= 0 for h in hidden):
      raise ValueError(f"hidden_layer_sizes must be > 0, got {hidden}.")
    for name, options in (("solver", SOLVERS), ("learning_rate", LEARNING_RATES),
                          ("schedule", SCHEDULES)):
      if getattr(self, name) not in options:
        raise InputError(f"{name}: expected one of {', '.join(options)}, "
                         f"got {getattr(self, name)!r}")
    for name, kwargs in (("learning_rate_init", dict(open_low=True)), ("power_t", {}),
                         ("tol", {}), ("momentum", dict(high=1.0, open_high=False)),
                         ("beta_1", dict(high=1.0)), ("beta_2", dict(high=1.0)),
                         ("epsilon", dict(open_low=True)), ("validation_fraction", dict(high=1.0))):
      validation.check_real(getattr(self, name), name, **kwargs)
    validation.check_int(self.max_iter, "max_iter")
    validation.check_int(self.max_fun, "max_fun")
    if self.n_iter_no_change != math.inf:
      validation.check_int(self.n_iter_no_change, "n_iter_no_change")
    if self.batch_size != "auto":
      validation.check_int(self.batch_size, "batch_size")
    lbfgs_solver = self._solver() == "lbfgs"
    full_batch = ("solver='lbfgs' (a full-batch line search in the parameters' precision, one "
                  "device)")
    cosine, dp = self.schedule == "cosine", self._dp() is not None
    for name, refused, reason in (
        ("schedule='cosine'", cosine and lbfgs_solver, "solver='lbfgs'"),
        ("schedule='cosine'", cosine and self.learning_rate != "constant",
         f"learning_rate={self.learning_rate!r} (the cosine decay is the learning rate)"),
        ("dp_noise_multiplier", dp and lbfgs_solver, full_batch),
        ("dp_noise_multiplier", dp and sample_weight is not None,
         "sample_weight (DP-SGD's noise is calibrated to equally weighted examples)"),
        ("compute_dtype", lbfgs_solver and self.compute_dtype is not None, full_batch),
        ("devices", lbfgs_solver and self.devices is not None, full_batch)):
      if refused:
        raise InputError(f"{name}: not with {reason}")
    self._settings(1, 0)  # alpha, activation, compute_dtype and DP, named as parameters here
    return [int(h) for h in hidden]

  def _check_solver(self) -> bool:
    """partial_fit is there for the stochastic solvers only (`hasattr` says so)."""
    if self._solver() == "lbfgs":
      raise AttributeError("partial_fit is only available for stochastic optimizers. lbfgs is "
                           "not stochastic.")
    return True

  def _solver(self) -> str:
    return "sgd" if self.solver == "momentum" else self.solver

  def _settings(self, batch: int, seed: int) -> mj.FitSettings:
    """The epoch's settings in the library's terms, checked with a bad one named as the
    estimator's parameter (`alpha`, not `l2`)."""
    settings = mj.FitSettings(batch_size=batch, l2=self.alpha, seed=seed,
                              compute_dtype=self.compute_dtype, dp=self._dp(),
                              shuffle=self.shuffle, activation=self._activation(),
                              output=_OUTPUT_OF.get(getattr(self, "out_activation_", None),
                                                    "softmax_cross_entropy"))
    return check_settings(settings, spell=lambda name: _PARAMETER_OF.get(name, name))

  def _network(self):
    return make_network(self._activation(), _OUTPUT_OF[self.out_activation_])

  def _activation(self) -> Any:
    """`activation` as a static argument of the compiled programs (hashable)."""
    activation = self.activation
    return tuple(activation) if isinstance(activation, list) else activation

  def _dp(self) -> Optional[privacy.DPConfig]:
    """DP-SGD's settings: on with a noise multiplier or a target epsilon (the noise then chosen
    by `fit`, `estimator_fitting.calibrated`)."""
    if self.dp_noise_multiplier is None and self.dp_target_epsilon is None:
      return None
    return privacy.DPConfig(1.0 if self.dp_clip_norm is None else self.dp_clip_norm,
                            self.dp_noise_multiplier, self.dp_delta,
                            target_epsilon=self.dp_target_epsilon,
                            target_quantile=self.dp_target_quantile)

  def _mesh(self):
    return None if self.devices is None else mj.make_mesh(self.devices)

  @staticmethod
  def _compute_dtype(X: np.ndarray):
    """float32, or float64 when JAX's 64-bit mode is on and X is float64."""
    wide = jax.config.jax_enable_x64 and X.dtype == np.float64  # type: ignore[attr-defined]
    return jnp.float64 if wide else jnp.float32

  def _device_data(self, X: np.ndarray, Y: np.ndarray, sample_weight: Optional[np.ndarray],
                   dtype) -> Tuple[jax.Array, jax.Array, Optional[jax.Array]]:
    """(x, y, sample_weight) on the device in the compute dtype, scikit-learn's 2-D targets as
    the library's output takes them (class indices for softmax)."""
    if self.out_activation_ == "softmax":
      y = jnp.asarray(np.argmax(Y, axis=1).astype(np.int32))
    else:
      y = jnp.asarray(Y, dtype)
    weights = None if sample_weight is None else jnp.asarray(sample_weight, dtype)
    return jnp.asarray(X, dtype), y, weights

  def _validation_score(self, params, X, Y, sample_weight, dtype) -> float:
    """The early-stopping score of the weights `params`: scikit-learn's `_score`."""
    prediction = self._decide(_forward_padded(params, X, dtype, self._activation()), X.dtype)
    if prediction.dtype.kind == "f" and not np.isfinite(prediction).all():
      return float("nan")
    return float(self._score_function(self._truth(Y), prediction, sample_weight=sample_weight))

  def _loss_grad_lbfgs(self, packed, X, y, sample_weight=None, *buffers):
    """scikit-learn's `_loss_grad_lbfgs`: the objective and its gradient, packed as scikit-learn
    packs them (every W, then every b), at the packed weights; from the analytic gradients."""
    del buffers  # scikit-learn's work arrays
    X = np.asarray(X)
    x, y, weights = self._device_data(X, np.asarray(y).reshape(X.shape[0], -1), sample_weight,
                                      self._compute_dtype(X))
    sizes = [self.coefs_[0].shape[0]] + [w.shape[1] for w in self.coefs_]
    f = lbfgs.loss_and_grad_fn(x, y, float(self.alpha), sizes, self._network(), weights)
    return f(np.asarray(packed, np.float64))

  @property
  def _optimizer(self) -> SimpleNamespace:
    """The stochastic solver's state as scikit-learn names it: `learning_rate`, the current
    rate (what "invscaling" and "adaptive" have made of `learning_rate_init`)."""
    if "_learning_rate" not in self.__dict__ or self._solver() == "lbfgs":
      raise AttributeError("_optimizer: set by fit or partial_fit with solver 'sgd' or 'adam'")
    return SimpleNamespace(learning_rate=self._learning_rate)

  # ---------------------------------------------------------------------------- predicting

  def _forward(self, X):
    """The network's last-layer z for X (float, (n, K)) and X's dtype, X checked against the
    fitted estimator."""
    check_is_fitted(self)
    X = validate_data(self, X, accept_sparse=["csr", "csc"], dtype=(np.float64, np.float32),
                      reset=False)
    if sparse.issparse(X):
      X = X.toarray()
    return _forward_padded(self._params(X), X, self._compute_dtype(X),
                           self._activation()), X.dtype

  def _params(self, X) -> mj.Params:
    """The weights on the device in the compute dtype: those `fit` left there, unless `coefs_`
    was replaced since (or X calls for another dtype, or the estimator was unpickled); then
    copied there for this call (predicting never changes the estimator)."""
    dtype = self._compute_dtype(X)
    cached = self.__dict__.get("_device_params")
    if cached is not None and cached[0] is self.coefs_ and cached[1] == dtype:
      return cached[2]
    return fitting.device_params(self.coefs_, self.intercepts_, dtype)

  def __getstate__(self) -> dict:
    state = dict(super().__getstate__())
    state.pop("_device_params", None)  # device arrays stay out of a pickle
    return state

  def __sklearn_tags__(self):
    tags = super().__sklearn_tags__()
    tags.input_tags.sparse = True
    return tags


# Rows are predicted by one compiled call, padded to a multiple of PREDICT_ROWS: never one row
# alone, whose product XLA computes by another kernel (a matrix-vector product) than a block's,
# so a row's prediction does not change with the rows passed beside it (scikit-learn's checks of
# subset and order invariance, to 1e-7, in float32 too).
PREDICT_ROWS = 8
_logits = jax.jit(mj.forward, static_argnames="activation")


def _forward_padded(params: mj.Params, X: np.ndarray, dtype, activation) -> np.ndarray:
  """The last layer's z for every row of X, (n, K), by one compiled call (per padded shape)."""
  X = np.asarray(X, dtype)
  rows = X.shape[0]
  padded = np.zeros((-(-rows // PREDICT_ROWS) * PREDICT_ROWS, X.shape[1]), X.dtype)
  padded[:rows] = X
  return np.asarray(_logits(params, padded, activation=activation))[:rows]
