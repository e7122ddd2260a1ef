"""The gradient check: analytic vs jax.grad per parameter, and jax.grad vs central differences.

`jax.grad` of `objective` (E6) is the reference the analytic gradients are proven against;
central finite differences of the loss in float64 in turn check the oracle. Errors are relative
to the larger of the reference and `gradient_scale`, the magnitude of the terms each gradient
entry sums (docs/derivation.md, "How the bars are defined"). Nothing here is on the training path.
"""

import dataclasses
import functools
from typing import Any, Callable, Dict, List, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from mlp_jax.core import validation
from mlp_jax.core.backprop import backprop_errors, layer_grads
from mlp_jax.core.backprop import grads as analytic_grads
from mlp_jax.core.model import Dense, Params, forward_pass, layer_sizes
from mlp_jax.core.network import DEFAULT_OUTPUT, SOURCE, Network, make_network
from mlp_jax.core.objective import objective
from mlp_jax.core.outputs import log_softmax
from mlp_jax.oracle.autodiff import grad_objective, to_float64
from mlp_jax.tables import text_table

# Relative-error bars of the analytic gradient against jax.grad, by dtype.
RTOL = {jnp.dtype(jnp.float32): 1e-5, jnp.dtype(jnp.float64): 1e-12}
# Central differences always run in float64 (parameters and data upcast), whatever the dtype
# under test: in float32 their roundoff, O(ulp / eps), would swamp the check. Step and bar:
FD_EPS = 1e-6   # truncation O(eps^2), roundoff O(1e-16 / eps): both far below the bar
FD_RTOL = 1e-6


def relative_error(actual: ArrayLike, reference: ArrayLike,
                   scale: Optional[ArrayLike] = None) -> float:
  """||actual - reference|| / max(||reference||, ||scale||), 2-norms over the whole arrays.

  `scale`, optional and shaped like `reference` (e.g. a leaf of `gradient_scale`), floors the
  denominator where cancellation made the reference small; without it the error is
  ||actual - reference|| / ||reference||. 0 when all are 0 (the bare difference when only the
  denominator is).
  """
  actual = np.asarray(actual, np.float64)
  reference = np.asarray(reference, np.float64)
  diff = np.linalg.norm((actual - reference).ravel())
  denominator = np.linalg.norm(reference.ravel())
  if scale is not None:
    denominator = max(denominator, np.linalg.norm(np.asarray(scale, np.float64).ravel()))
  return float(diff / denominator) if denominator > 0 else float(diff)


def gradient_scale(params: Params, x: ArrayLike, y: ArrayLike, l2: ArrayLike = 0.0, *,
                   activation: Any = "relu", output: str = DEFAULT_OUTPUT) -> Params:
  """The magnitude of the terms each entry of the gradient (E8)-(E12) sums, per parameter.

  The backward pass with every term by its absolute value: Yhat + Y for E = Yhat - Y (E7), |W_l|,
  |X| (hidden activations are >= 0), the same ReLU masks (E10):

      S_L = (Yhat + Y) / m,   S_l = (S_{l+1} |W_{l+1}|^T) * 1[A_l > 0]
      W_l: |A_{l-1}|^T S_l + (|lambda| / m) |W_l|   (E8), (E11)      b_l: 1^T S_l   (E9), (E12)

  Another network: |Yhat| + |Y| (over K for the squared error) for its output error
  (E22)-(E25), |g_l'(H_l)| for the masks and |A_l| for the activations, (E16)-(E21).

  By the triangle inequality every entry is >= |dL/dtheta|. A sum of n terms computed in
  floating point is off by at most ~n u times the sum of their magnitudes (Higham, Accuracy and
  Stability of Numerical Algorithms, 2nd ed., 2002, sec. 3.1): two correct gradients can agree
  only to ~u times this scale, however much cancellation shrinks the gradient itself.

  Args:
    params, x, y, l2: as for `loss`.

  Returns:
    A tuple of `Dense` shaped like `params`, entries >= 0, in the parameters' dtype.
  """
  net = make_network(activation, output)
  params, x, y, l2 = validation.check_batch(params, x, y, l2, net=net)
  return _gradient_scale(params, x, y, l2, net)


def _output_terms(net: Network, z: jax.Array, y: jax.Array) -> jax.Array:
  """The magnitudes of the two terms of each output error, (m, K): Yhat + Y for (E7), |Yhat| +
  |Y| (over K for the squared error) for (E22)-(E25)."""
  if net.output == DEFAULT_OUTPUT:
    return jnp.exp(log_softmax(z)) + jax.nn.one_hot(y, z.shape[1], dtype=z.dtype)
  terms = jnp.abs(net.out.predict(z)) + jnp.abs(y)
  return terms / z.shape[1] if net.output == "identity_squared_error" else terms


@functools.partial(jax.jit, static_argnames="net")
def _gradient_scale(params: Params, x: jax.Array, y: jax.Array, l2: ArrayLike,
                    net: Network = SOURCE) -> Params:
  """`gradient_scale` without input checks: the backward pass (E7)-(E12) on magnitudes."""
  logits, activations, factors = forward_pass(params, x, net=net)
  m = x.shape[0]
  magnitudes = tuple(Dense(w=jnp.abs(layer.w), b=jnp.abs(layer.b)) for layer in params)
  masks = tuple(f if f.dtype == bool else jnp.abs(f) for f in factors)
  deltas = backprop_errors(magnitudes, activations, _output_terms(net, logits, y) / m,
                           masks=masks)
  inputs = tuple(jnp.abs(a) for a in activations)
  return layer_grads(magnitudes, inputs, deltas, jnp.abs(l2), m)


def per_example_gradient_scale(params: Params, x: ArrayLike, y: ArrayLike, *,
                               activation: Any = "relu",
                               output: str = DEFAULT_OUTPUT) -> Params:
  """`gradient_scale` of each example's loss alone (E13): m = 1, no penalty, one row at a time.

  Returns:
    A tuple of `Dense` shaped like `per_sample_grads`: a leading axis of length m on every leaf.
  """
  net = make_network(activation, output)
  params, x, y, _ = validation.check_batch(params, x, y, net=net)
  return _per_example_gradient_scale(params, x, y, net)


@functools.partial(jax.jit, static_argnames="net")
def _per_example_gradient_scale(params: Params, x: jax.Array, y: jax.Array,
                                net: Network = SOURCE) -> Params:
  one = lambda x_i, y_i: _gradient_scale(params, x_i[None], y_i[None], 0.0, net)  # noqa: E731
  return jax.vmap(one)(x, y)


def param_names(params: Params) -> List[str]:
  """Names of the leaves in tree order: 'W1', 'b1', 'W2', 'b2', ... (layers counted from 1)."""
  return [f"{kind}{i + 1}" for i in range(len(params)) for kind in ("W", "b")]


@functools.partial(jax.jit, static_argnames=("num_directions", "net"))
def _directional_fd(params, x, y, l2, key, eps, num_directions, net=SOURCE):
  """Central differences of (E6) along random unit directions, one leaf at a time.

  Returns (fd, exact): arrays (num_leaves, num_directions) of the finite-difference and the
  autodiff directional derivatives.
  """
  leaves, treedef = jax.tree.flatten(params)
  grads = jax.tree.leaves(jax.grad(objective)(params, x, y, l2, net=net))
  fds, exacts = [], []
  for index, (leaf, grad, k) in enumerate(zip(leaves, grads, jax.random.split(key, len(leaves)))):
    directions = jax.random.normal(k, (num_directions,) + leaf.shape, leaf.dtype)
    norms = jnp.sqrt(jnp.sum(directions.reshape(num_directions, -1) ** 2, axis=1))
    directions = directions / norms.reshape((-1,) + (1,) * leaf.ndim)

    def at(v: jax.Array, sign: int, index: int = index) -> jax.Array:
      moved = list(leaves)
      moved[index] = leaves[index] + sign * eps * v
      return objective(jax.tree.unflatten(treedef, moved), x, y, l2, net=net)

    fd = jax.vmap(lambda v: (at(v, 1) - at(v, -1)) / (2 * eps))(directions)
    exact = jnp.tensordot(directions, grad, axes=leaf.ndim)
    fds.append(fd)
    exacts.append(exact)
  return jnp.stack(fds), jnp.stack(exacts)


@dataclasses.dataclass(frozen=True)
class ParamCheck:
  """One parameter's line of a `GradientReport`."""
  name: str
  shape: Tuple[int, ...]
  rel_err: float      # analytic vs jax.grad, ||g - g_ref|| / ||g_ref|| over the whole array
  floored_err: float  # ||g - g_ref|| / max(||g_ref||, ||gradient_scale||): held to the bar
  fd_rel_err: float   # jax.grad vs central differences (both float64), over random directions
  passed: bool


@dataclasses.dataclass(frozen=True)
class GradientReport:
  """Per-parameter relative errors of the analytic gradient and of the oracle, with the bars.

  The analytic gradient passes when `floored_err` (the error over the larger of jax.grad and the
  magnitude of the terms summed, `gradient_scale`) is within `rtol`; `rel_err` is over jax.grad
  alone, for the record.
  """
  checks: Tuple[ParamCheck, ...]
  dtype: str
  rtol: float
  fd_rtol: float
  m: int
  layer_sizes: Tuple[int, ...]
  l2: float
  network: str = SOURCE.describe()  # the activations and output checked

  @property
  def passed(self) -> bool:
    return all(c.passed for c in self.checks)

  def to_dict(self) -> Dict:
    return {**dataclasses.asdict(self), "passed": self.passed}

  def __str__(self) -> str:
    net = "" if self.network == SOURCE.describe() else f"{self.network}, "
    head = (f"gradient check: layers {self.layer_sizes}, {net}m={self.m}, lambda={self.l2:g}, "
            f"{self.dtype}\n"
            f"bars: analytic vs jax.grad <= {self.rtol:.0e}; "
            f"jax.grad vs central differences (float64) <= {self.fd_rtol:.0e}\n"
            "analytic vs jax.grad: |error| / max(|jax.grad|, |terms summed|); "
            "bare: |error| / |jax.grad|, not judged\n")
    rows = [("param", "shape", "analytic vs jax.grad", "bare", "jax.grad vs FD", "result")]
    rows += [(c.name, "x".join(map(str, c.shape)), f"{c.floored_err:.2e}", f"{c.rel_err:.2e}",
              f"{c.fd_rel_err:.2e}", "ok" if c.passed else "FAIL") for c in self.checks]
    verdict = "PASSED" if self.passed else "FAILED"
    return head + "\n".join(text_table(rows)) + f"\n{verdict}"


def check_gradients(params: Params, x: ArrayLike, y: ArrayLike, l2: float = 0.0, *,
                    grad_fn: Optional[Callable] = None,
                    num_directions: int = 8,
                    key: Optional[jax.Array] = None, activation: Any = "relu",
                    output: str = DEFAULT_OUTPUT) -> GradientReport:
  """Checks a gradient function against jax.grad, and jax.grad against central differences.

  Args:
    params, x, y, l2: as for `loss`.
    grad_fn: the gradient under test, `grad_fn(params, x, y, l2) -> params-shaped tuple`;
      defaults to the library's analytic `grads` of the network.
    activation, output: the network whose gradient is checked (as for `loss_and_grads`).
    num_directions: random unit directions per parameter for the finite differences.
    key: PRNG key for those directions.

  Returns:
    A `GradientReport`; `print` it for a table, `.passed` for the verdict.
  """
  net = make_network(activation, output)
  params, x, y, l2 = validation.check_batch(params, x, y, l2, net=net)
  dtype = params[0].w.dtype
  if grad_fn is None:
    grad_fn = functools.partial(analytic_grads, activation=net.activation, output=net.output)
  reference = jax.tree.leaves(grad_objective(params, x, y, l2, net=net))
  tested = jax.tree.leaves(grad_fn(params, x, y, l2))
  scales = jax.tree.leaves(_gradient_scale(params, x, y, l2, net))
  key = jax.random.PRNGKey(0) if key is None else key
  with jax.enable_x64(True):
    params64, x64 = to_float64((params, x))
    y64 = y if net.out.labels else to_float64(y)
    fd, exact = _directional_fd(params64, x64, y64, float(l2), key, FD_EPS, num_directions,
                                net=net)
    fd, exact = np.asarray(fd), np.asarray(exact)
  rtol, fd_rtol = RTOL[dtype], FD_RTOL
  lines = []
  for name, ref, got, scale, fd_row, exact_row in zip(param_names(params), reference, tested,
                                                      scales, fd, exact):
    floored = relative_error(got, ref, scale)
    fd_err = relative_error(fd_row, exact_row)
    lines.append(ParamCheck(name, tuple(ref.shape), rel_err=relative_error(got, ref),
                            floored_err=floored, fd_rel_err=fd_err,
                            passed=floored <= rtol and fd_err <= fd_rtol))
  return GradientReport(tuple(lines), str(dtype), rtol, fd_rtol, int(x.shape[0]),
                        layer_sizes(params), float(l2), net.describe())
