"""Full-batch L-BFGS on the analytic loss and gradient: SciPy's L-BFGS-B, as scikit-learn's
`solver="lbfgs"` runs it, driving one compiled call of `objective_and_grads` per evaluation.

    result = minimize_lbfgs(params, x, y, l2=1e-4, max_iter=200)
    result.params, result.loss, result.iterations, result.converged

The objective is (E6) over the whole training set ((E26) with sample weights), its gradient
(E7)-(E12); jax.grad is never called. The parameters travel to SciPy as one float64 vector packed
as scikit-learn packs them (every weight matrix, row-major, then every bias), so `pack` /
`unpack` also serve the estimator's `_loss_grad_lbfgs`. Why SciPy and not `optax.lbfgs` under
one `lax.while_loop`: `benchmarks/lbfgs.py` measures both (docs/benchmarks.md).
"""

import contextlib
import functools
from typing import Callable, ContextManager, NamedTuple, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from mlp_jax.core.backprop import objective_and_grads
from mlp_jax.core.model import Dense, Params
from mlp_jax.core.network import SOURCE, Network


class LbfgsResult(NamedTuple):
  """What `minimize_lbfgs` returns."""
  params: Params      # the last iterate, in the dtype of the parameters given
  loss: float         # the objective there
  iterations: int     # L-BFGS iterations (SciPy's `nit`)
  evaluations: int    # loss-and-gradient evaluations (SciPy's `nfev`)
  converged: bool     # SciPy's `success`: a stop on `tol` (or on no further decrease)
  message: str        # SciPy's reason for stopping


def pack(params: Params) -> np.ndarray:
  """Every weight matrix (row-major), then every bias, as one float64 vector."""
  leaves = [np.asarray(layer.w).ravel() for layer in params]
  leaves += [np.asarray(layer.b).ravel() for layer in params]
  return np.concatenate(leaves).astype(np.float64)


def _unpack(theta: jax.Array, sizes: Tuple[int, ...]) -> Params:
  shapes = list(zip(sizes[:-1], sizes[1:]))
  starts = np.cumsum([0] + [a * b for a, b in shapes] + [b for _, b in shapes])
  weights = [theta[starts[i]:starts[i + 1]].reshape(shape) for i, shape in enumerate(shapes)]
  biases = [theta[starts[len(shapes) + i]:starts[len(shapes) + i + 1]]
            for i in range(len(shapes))]
  return tuple(Dense(w, b) for w, b in zip(weights, biases))


def unpack(theta: ArrayLike, sizes: Sequence[int], dtype=None) -> Params:
  """The parameters of a network of layer `sizes` from a vector of `pack`."""
  return _unpack(jnp.asarray(theta, dtype), tuple(int(s) for s in sizes))


@functools.partial(jax.jit, static_argnames=("sizes", "net"))
def _flat_loss_and_grad(theta: jax.Array, x: jax.Array, y: jax.Array, l2: jax.Array,
                        weights: Optional[jax.Array], sizes: Tuple[int, ...],
                        net: Network) -> Tuple[jax.Array, jax.Array]:
  loss, grads = objective_and_grads(_unpack(theta, sizes), x, y, l2, None, weights, net)
  flat = [g.w.ravel() for g in grads] + [g.b for g in grads]
  return loss, jnp.concatenate(flat)


def loss_and_grad_fn(x: jax.Array, y: jax.Array, l2: float, sizes: Sequence[int],
                     net: Network = SOURCE, sample_weight: Optional[jax.Array] = None,
                     ) -> Callable[[np.ndarray], Tuple[float, np.ndarray]]:
  """`f(theta) -> (loss, grad)` on float64 NumPy vectors of `pack`, the objective (E6) (or (E26))
  of the whole of (x, y) computed in x's dtype by one compiled call. Compiled once per shape and
  network: l2 and the data are arguments, not constants."""
  sizes = tuple(int(s) for s in sizes)
  l2_arr = jnp.asarray(l2, x.dtype)

  def f(theta: np.ndarray) -> Tuple[float, np.ndarray]:
    loss, grad = _flat_loss_and_grad(jnp.asarray(theta, x.dtype), x, y, l2_arr, sample_weight,
                                     sizes, net)
    return float(loss), np.asarray(grad, np.float64)

  return f


def _one_blas_thread() -> ContextManager:
  """L-BFGS-B's own vector work runs through BLAS; on a CPU that XLA's thread pool already
  keeps busy, a multi-threaded BLAS only contends with it (benchmarks/lbfgs.py, rows scipy and
  scipy_blas_threads: on 2 cores, 1.5-1.6x faster held to one thread). threadpoolctl comes with
  scikit-learn; without it, BLAS keeps its threads."""
  try:
    from threadpoolctl import threadpool_limits
  except ImportError:
    return contextlib.nullcontext()
  return threadpool_limits(limits=1, user_api="blas")


def minimize_lbfgs(params: Params, x: jax.Array, y: jax.Array, *, l2: float = 0.0,
                   net: Network = SOURCE, sample_weight: Optional[jax.Array] = None,
                   max_iter: int = 200, max_fun: int = 15000, tol: float = 1e-4,
                   callback: Optional[Callable[[int, float], None]] = None) -> LbfgsResult:
  """Minimises the full-batch objective from `params` with SciPy's L-BFGS-B, the options as
  scikit-learn sets them: at most `max_iter` iterations and `max_fun` evaluations, stopping when
  the projected gradient's largest entry is <= `tol` (`gtol`). `callback(iteration, loss)` is
  called after each iteration. x, y (and sample_weight) are checked arrays on the device."""
  import scipy.optimize  # a dependency of jax; imported where it is used

  sizes = (params[0].w.shape[0],) + tuple(layer.w.shape[1] for layer in params)
  f = loss_and_grad_fn(x, y, l2, sizes, net, sample_weight)
  iteration = [0]

  def report(intermediate_result):
    iteration[0] += 1
    callback(iteration[0], float(intermediate_result.fun))

  with _one_blas_thread():
    res = scipy.optimize.minimize(
        f, pack(params), method="L-BFGS-B", jac=True,
        callback=None if callback is None else report,
        options={"maxfun": int(max_fun), "maxiter": int(max_iter), "gtol": float(tol)})
  fitted = unpack(res.x, sizes, params[0].w.dtype)
  return LbfgsResult(fitted, float(res.fun), int(res.nit), int(res.nfev), bool(res.success),
                     str(res.message))
