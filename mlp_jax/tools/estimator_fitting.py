"""How the estimators train: scikit-learn's procedures, step for step, on the analytic gradients.

- `initial_weights`: scikit-learn's Glorot-uniform draw from the estimator's `random_state`
  (the same NumPy draws, so the same initial weights as scikit-learn's for the same seed).
- `fit_stochastic`: epochs of the compiled `lax.scan` (`training.epoch`), with scikit-learn's
  bookkeeping between them: the epoch loss weighted by batch size, `tol` and `n_iter_no_change`
  on the training loss or on the validation score (`early_stopping`, which then keeps the best
  epoch's weights), the "invscaling" and "adaptive" learning rates, `ConvergenceWarning`.
- `fit_lbfgs`: SciPy's L-BFGS-B on the full-batch objective (`training.lbfgs`).

The estimator (`tools.estimator`) owns the attributes these read and set.
"""

import dataclasses
import functools
import warnings
from typing import Any, List, NamedTuple, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from sklearn.base import is_classifier
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import train_test_split

from mlp_jax.core.model import Dense, Params
from mlp_jax.errors import InputError, NonFiniteError
from mlp_jax.training import accounting, calibration, lbfgs, privacy, solvers
from mlp_jax.training.epoch import epoch_keys, epoch_program
from mlp_jax.training.fit import train_epoch
from mlp_jax.training.optimizers import steps_per_epoch
from mlp_jax.training.run import new_run

NON_FINITE = ("Solver produced non-finite parameter weights. The input data may contain large "
              "values and need to be preprocessed.")


def initial_weights(random_state: np.random.RandomState, sizes: List[int], activation: Any,
                    dtype: np.dtype) -> Tuple[List[np.ndarray], List[np.ndarray]]:
  """scikit-learn's initialisation (Glorot et al.): for each layer, W then b drawn uniformly in
  +-sqrt(f / (fan_in + fan_out)), f = 2 for logistic hidden units, else 6; cast to `dtype`."""
  factor = 2.0 if activation == "logistic" else 6.0
  coefs, intercepts = [], []
  for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
    bound = np.sqrt(factor / (fan_in + fan_out))
    coefs.append(random_state.uniform(-bound, bound, (fan_in, fan_out)).astype(dtype))
    intercepts.append(random_state.uniform(-bound, bound, fan_out).astype(dtype))
  return coefs, intercepts


# Own device copies of host arrays (never aliases of them: the epoch donates its inputs), by one
# program compiled once per structure and shapes.
_to_device = jax.jit(lambda tree: jax.tree.map(jnp.copy, tree))


def device_params(coefs, intercepts, dtype) -> Params:
  """The weights as the library's parameters, in the compute dtype, on the device."""
  return _to_device(tuple(Dense(np.asarray(w).astype(dtype), np.asarray(b).astype(dtype))
                          for w, b in zip(coefs, intercepts)))


def host_arrays(params: Params, dtype) -> Tuple[List[np.ndarray], List[np.ndarray]]:
  """Own NumPy copies of the weights in `dtype` (the input's, as scikit-learn keeps them)."""
  return ([np.asarray(layer.w).astype(dtype) for layer in params],  # cast on the host
          [np.asarray(layer.b).astype(dtype) for layer in params])


@functools.lru_cache(maxsize=16)
def _cosine(total_steps: int):
  """The same schedule object for the same length, so the solver (and its epoch) is reused."""
  return optax.cosine_decay_schedule(1.0, total_steps)


def make_solver(est, steps: int) -> optax.GradientTransformation:
  """The estimator's stochastic solver: scikit-learn's sgd or adam (`training.solvers`), times
  the library's cosine decay over max_iter epochs of `steps` steps with schedule="cosine"."""
  scale = _cosine(est.max_iter * steps) if est.schedule == "cosine" else None
  if est._solver() == "sgd":
    return solvers.sgd(float(est.learning_rate_init), float(est.momentum),
                       bool(est.nesterovs_momentum), scale)
  return solvers.adam(float(est.learning_rate_init), float(est.beta_1), float(est.beta_2),
                      float(est.epsilon), scale)


def batch_size(est, num_rows: int) -> int:
  """scikit-learn's: "auto" is min(200, rows); a larger size is clipped, with its warning."""
  if est.batch_size == "auto":
    return min(200, num_rows)
  if est.batch_size > num_rows:
    warnings.warn("Got `batch_size` less than 1 or larger than sample size. It is going to be "
                  "clipped")
  return int(np.clip(est.batch_size, 1, num_rows))


def _split(est, X, Y, sample_weight, random_state):
  """scikit-learn's early-stopping split: `validation_fraction` of the rows, stratified for a
  single-output classifier, drawn from the estimator's random state."""
  stratify = Y if is_classifier(est) and Y.shape[1] == 1 else None
  arrays = (X, Y) if sample_weight is None else (X, Y, sample_weight)
  parts = train_test_split(*arrays, random_state=random_state,
                           test_size=est.validation_fraction, stratify=stratify)
  if parts[1].shape[0] < 2:
    raise ValueError("The validation set is too small. Increase 'validation_fraction' or the "
                     "size of your dataset.")
  weights = (None, None) if sample_weight is None else (parts[4], parts[5])
  return (parts[0], parts[2], weights[0]), (parts[1], parts[3], weights[1])


def _epoch_loss(losses: np.ndarray, num_rows: int, batch: int, dp: bool) -> float:
  """scikit-learn's epoch loss: each batch's loss weighted by its number of rows (the last one
  short); with DP the batches are Poisson-sampled, and the mean is taken."""
  if dp:
    return float(np.mean(losses))
  sizes = np.full(losses.shape[0], batch, np.float64)
  sizes[-1] = num_rows - batch * (losses.shape[0] - 1)
  return float(np.dot(losses.astype(np.float64), sizes) / num_rows)


def fit_stochastic(est, X: np.ndarray, Y: np.ndarray, sample_weight: Optional[np.ndarray],
                   incremental: bool, random_state: np.random.RandomState) -> None:
  """scikit-learn's `_fit_stochastic` (see the module doc) on the compiled epoch."""
  dtype = est._compute_dtype(X)
  if est.early_stopping and incremental:
    raise ValueError("partial_fit does not support early_stopping=True")
  val = None
  if est.early_stopping:
    (X, Y, sample_weight), val = _split(est, X, Y, sample_weight, random_state)
  n = X.shape[0]
  batch = batch_size(est, n)
  steps = steps_per_epoch(n, batch)
  if not hasattr(est, "_seed"):
    est._seed, est._epochs_done, est._ledger = int(random_state.randint(2**31 - 1)), 0, ()
  settings = calibrated(est, est._settings(batch, est._seed), n, incremental)
  # With adaptive clipping the clip norm rides in the solver's state (`privacy.dp_optimizer`).
  solver = privacy.dp_optimizer(make_solver(est, steps), settings.dp)
  params = device_params(est.coefs_, est.intercepts_, dtype)
  if not incremental or not hasattr(est, "_opt_state"):
    opt_state, est._learning_rate = solver.init(params), float(est.learning_rate_init)
  else:
    opt_state = est._opt_state
  opt_state = _to_device(opt_state)  # the same program for a fresh state as for a kept one
  x, y, weights = est._device_data(X, Y, sample_weight, dtype)
  mesh = est._mesh()
  program = epoch_program(solver, settings, mesh)
  state = new_run(params, opt_state, {})._replace(epochs_done=est._epochs_done,
                                                  ledger=est._ledger)
  run = _Run(program, x, y, weights, est._seed, settings, n)
  chunk = _chunk_epochs(est, params, n, val, mesh, incremental)
  est.n_iter_, rate_in_state, stopped, single = 0, None, False, False
  while est.n_iter_ < est.max_iter and not stopped:
    if est._learning_rate != rate_in_state:  # a new array only when the rate changed
      rate_in_state = est._learning_rate
      state = state._replace(opt_state=solvers.with_learning_rate(state.opt_state,
                                                                  rate_in_state))
    if chunk > 1 and not single and est.max_iter - est.n_iter_ >= chunk:
      state, stopped, single = _epochs_in_a_row(est, run, state, chunk)
      continue
    single = False
    try:
      state, losses = train_epoch(program, state, x, y, est._seed, weights)
    except NonFiniteError as err:
      if val is None:
        raise ValueError(f"{NON_FINITE} ({err})") from err
      state = state._replace(params=err.params, opt_state=err.opt_state)  # the last good ones
      est.validation_scores_.append(float("nan"))
      warnings.warn(f"training diverged ({err}); the weights of the best validation score "
                    "were kept", RuntimeWarning)
      break
    state = state._replace(ledger=run.ledger_after(state.ledger, 1))
    stopped = _epoch_end(est, losses, run, state.params, val, dtype) or incremental
  if not stopped and not incremental and est.n_iter_ == est.max_iter:
    warnings.warn(f"Stochastic Optimizer: Maximum iterations ({est.max_iter}) reached and the "
                  "optimization hasn't converged yet.", ConvergenceWarning)
  est._opt_state = jax.tree.map(np.asarray, state.opt_state)
  est._epochs_done, est._ledger = state.epochs_done, tuple(state.ledger)
  if settings.dp is not None:
    est.epsilon_ = accounting.ledger_epsilon(est._ledger, settings.dp.delta)
  if est.early_stopping:  # the best epoch's weights, as scikit-learn restores them
    est.coefs_, est.intercepts_ = est._best_coefs, est._best_intercepts
  else:
    est.coefs_, est.intercepts_ = host_arrays(state.params, X.dtype)


def calibrated(est, settings, rows: int, incremental: bool):
  """`settings` with DP-SGD's noise multiplier chosen, with `dp_target_epsilon`, so that the
  estimator's ledger so far and `max_iter` epochs of `rows` spend at most the target
  (`calibration.calibrate_noise_multiplier`); kept as `dp_noise_multiplier_`."""
  dp = settings.dp
  if dp is None or dp.noise_multiplier is not None:
    return settings
  if incremental:
    raise InputError("dp_target_epsilon: not with partial_fit, whose number of calls is not "
                     "known in advance; use fit, or give dp_noise_multiplier")
  steps = steps_per_epoch(rows, settings.batch_size) * est.max_iter
  sigma = calibration.calibrate_noise_multiplier(dp.target_epsilon, dp.delta, rows,
                                                settings.batch_size, steps, est._ledger)
  est.dp_noise_multiplier_ = sigma
  return dataclasses.replace(settings, dp=dp._replace(noise_multiplier=sigma))


class _Run(NamedTuple):
  """What every epoch of one `fit_stochastic` call shares."""
  program: Any
  x: jax.Array
  y: jax.Array
  weights: Optional[jax.Array]
  seed: int
  settings: Any
  rows: int

  def ledger_after(self, ledger, epochs: int):
    """The privacy ledger after `epochs` more epochs (empty entries without DP)."""
    s = self.settings
    entry = privacy.ledger_entry(steps_per_epoch(self.rows, s.batch_size), s.dp, self.rows,
                                 s.batch_size)
    for _ in range(epochs):
      ledger = privacy.add_to_ledger(ledger, entry)
    return ledger


# Epochs in a row per compiled call (`EpochProgram.epochs`) when an epoch is this small: rows
# times weights at most CHUNK_WORK. There a call's dispatch and host work outweigh the epoch's
# arithmetic (`benchmarks/estimator.py --epochs-per-call 1` times it without).
CHUNK_EPOCHS = 10
CHUNK_WORK = 2e7


def _chunk_epochs(est, params: Params, rows: int, val, mesh, incremental: bool) -> int:
  """How many epochs to run per compiled call: CHUNK_EPOCHS for a small network and data, when
  nothing between epochs needs the weights (no early stopping) and the rate stays put (not
  "invscaling"); else 1."""
  size = sum(layer.w.size + layer.b.size for layer in params)
  varying = est._solver() == "sgd" and est.learning_rate == "invscaling"
  if incremental or val is not None or mesh is not None or varying or rows * size > CHUNK_WORK:
    return 1
  return CHUNK_EPOCHS


def _epochs_in_a_row(est, run: _Run, state, count: int):
  """`count` epochs by one compiled call, then scikit-learn's bookkeeping after each, up to a
  stop or a changed rate (the state is then the one after that epoch: the call returns every
  epoch's). Returns (state, stopped, single): single when an epoch was not finite, so that the
  next one runs alone and names its first bad step."""
  keys = epoch_keys(run.seed, state.epochs_done, count)
  params, opt_state, stats = run.program.epochs(state.params, state.opt_state, run.x, run.y,
                                                keys, run.weights)
  losses, finite, state_finite = jax.device_get((stats.losses, stats.finite,
                                                 stats.state_finite))
  ok = finite.all(axis=1) & state_finite
  done, stopped = 0, False
  rate = est._learning_rate
  for i in range(count):
    if not ok[i]:
      break
    done = i + 1
    stopped = _epoch_end(est, losses[i], run, None, None, None)
    if stopped or est._learning_rate != rate:
      break
  if done:
    last = _take((params, opt_state), done - 1)
    state = state._replace(params=last[0], opt_state=last[1],
                           epochs_done=state.epochs_done + done,
                           ledger=run.ledger_after(state.ledger, done))
  return state, stopped, done < count and not ok[done]


@jax.jit
def _take(tree, i):
  """Entry i of every stacked leaf, by one compiled call (eager indexing is a dispatch each)."""
  return jax.tree.map(lambda leaf: leaf[i], tree)


def _epoch_end(est, losses: np.ndarray, run: _Run, params: Optional[Params], val,
               dtype) -> bool:
  """scikit-learn's bookkeeping after an epoch: the epoch loss, t_, the loss curve, the
  no-improvement count (with early stopping, `val`, on the epoch's weights `params`), the
  invscaling rate, the stop or the adaptive rate's division. True: stop."""
  est.n_iter_ += 1
  est.loss_ = _epoch_loss(losses, run.rows, run.settings.batch_size,
                          run.settings.dp is not None)
  est.t_ += run.rows
  est.loss_curve_.append(est.loss_)
  if est.verbose:
    print(f"Iteration {est.n_iter_}, loss = {est.loss_:.8f}")
  _update_no_improvement_count(est, params, val, dtype)
  if est._solver() == "sgd" and est.learning_rate == "invscaling":
    est._learning_rate = solvers.invscaling_rate(est.learning_rate_init, est.t_, est.power_t)
  if est._no_improvement_count > est.n_iter_no_change:
    if _stops(est):
      return True
    est._no_improvement_count = 0
  return False


def _update_no_improvement_count(est, params: Params, val, dtype) -> None:
  """scikit-learn's rule: an epoch improves when the validation score rises by more than `tol`
  (with early stopping; the best epoch's weights are kept) or the training loss falls by more
  than `tol`."""
  tol = est.tol
  if val is None:
    loss = est.loss_curve_[-1]
    est._no_improvement_count = est._no_improvement_count + 1 if loss > est.best_loss_ - tol else 0
    est.best_loss_ = min(est.best_loss_, loss)
    return
  X_val, Y_val, weights = val
  score = est._validation_score(params, X_val, Y_val, weights, dtype)
  est.validation_scores_.append(score)
  if est.verbose:
    print(f"Validation score: {score:f}")
  if score < est.best_validation_score_ + tol:
    est._no_improvement_count += 1
  else:
    est._no_improvement_count = 0
  if score > est.best_validation_score_:
    est.best_validation_score_ = score
    est._best_coefs, est._best_intercepts = host_arrays(params, X_val.dtype)


def _stops(est) -> bool:
  """No improvement for more than `n_iter_no_change` epochs: stop, or with sgd's "adaptive"
  learning rate divide it by 5 and go on while it is above 1e-6 (scikit-learn's
  `trigger_stopping`)."""
  what = "Validation score" if est.early_stopping else "Training loss"
  message = (f"{what} did not improve more than tol={est.tol:f} for {est.n_iter_no_change} "
             "consecutive epochs.")
  adaptive = est._solver() == "sgd" and est.learning_rate == "adaptive"
  if adaptive and est._learning_rate > 1e-6:
    est._learning_rate /= 5.0
    if est.verbose:
      print(f"{message} Setting learning rate to {est._learning_rate:f}")
    return False
  if est.verbose:
    print(f"{message} {'Learning rate too small. ' if adaptive else ''}Stopping.")
  return True


def fit_lbfgs(est, X: np.ndarray, Y: np.ndarray, sample_weight: Optional[np.ndarray]) -> None:
  """scikit-learn's `_fit_lbfgs`: SciPy's L-BFGS-B from the current weights, at most `max_iter`
  iterations and `max_fun` evaluations, `tol` on the projected gradient; a run that stops short
  of that warns `ConvergenceWarning`."""
  dtype = est._compute_dtype(X)
  params = device_params(est.coefs_, est.intercepts_, dtype)
  x, y, weights = est._device_data(X, Y, sample_weight, dtype)
  report = (lambda i, loss: print(f"Iteration {i}, loss = {loss:.8f}")) if est.verbose else None
  result = lbfgs.minimize_lbfgs(params, x, y, l2=float(est.alpha), net=est._network(),
                                sample_weight=weights,
                                max_iter=est.max_iter, max_fun=est.max_fun, tol=float(est.tol),
                                callback=report)
  if not result.converged:
    warnings.warn(f"lbfgs failed to converge after {result.iterations} iteration(s): "
                  f"{result.message}\n\nIncrease the number of iterations to improve the "
                  f"convergence (max_iter={est.max_iter}).", ConvergenceWarning)
  est.n_iter_ = min(result.iterations, est.max_iter)
  est.loss_ = result.loss
  est.coefs_, est.intercepts_ = host_arrays(result.params, X.dtype)


def check_finite(est) -> None:
  """scikit-learn's last check of a fit: every weight finite."""
  if not all(np.isfinite(w).all() for w in est.coefs_ + est.intercepts_):
    raise ValueError(NON_FINITE)
