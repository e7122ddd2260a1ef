"""The gradient check: analytic vs jax.grad per parameter, and jax.grad vs central differences.

`jax.grad` of `objective` (E6) is the reference the analytic gradients are proven against;
central finite differences of the loss in float64 in turn check the oracle. Nothing here is on
the training path.
"""

import dataclasses
import functools
from typing import Callable, Dict, List, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from mlp_jax.core import checks
from mlp_jax.core.backprop import grads as analytic_grads
from mlp_jax.core.model import Params, layer_sizes
from mlp_jax.core.objective import objective
from mlp_jax.oracle.autodiff import grad_objective, to_float64
from mlp_jax.tables import text_table

# Relative-error bars of the analytic gradient against jax.grad, by dtype.
RTOL = {jnp.dtype(jnp.float32): 1e-5, jnp.dtype(jnp.float64): 1e-12}
# Central differences always run in float64 (parameters and data upcast), whatever the dtype
# under test: in float32 their roundoff, O(ulp / eps), would swamp the check. Step and bar:
FD_EPS = 1e-6   # truncation O(eps^2), roundoff O(1e-16 / eps): both far below the bar
FD_RTOL = 1e-6


def relative_error(actual: ArrayLike, reference: ArrayLike) -> float:
  """||actual - reference|| / ||reference||, taken over the whole array (0 when both are 0)."""
  actual = np.asarray(actual, np.float64)
  reference = np.asarray(reference, np.float64)
  diff = np.linalg.norm((actual - reference).ravel())
  scale = np.linalg.norm(reference.ravel())
  return float(diff / scale) if scale > 0 else float(diff)


def param_names(params: Params) -> List[str]:
  """Names of the leaves in tree order: 'W1', 'b1', 'W2', 'b2', ... (layers counted from 1)."""
  return [f"{kind}{i + 1}" for i in range(len(params)) for kind in ("W", "b")]


@functools.partial(jax.jit, static_argnames="num_directions")
def _directional_fd(params, x, y, l2, key, eps, num_directions):
  """Central differences of (E6) along random unit directions, one leaf at a time.

  Returns (fd, exact): arrays (num_leaves, num_directions) of the finite-difference and the
  autodiff directional derivatives.
  """
  leaves, treedef = jax.tree.flatten(params)
  grads = jax.tree.leaves(jax.grad(objective)(params, x, y, l2))
  fds, exacts = [], []
  for index, (leaf, grad, k) in enumerate(zip(leaves, grads, jax.random.split(key, len(leaves)))):
    directions = jax.random.normal(k, (num_directions,) + leaf.shape, leaf.dtype)
    norms = jnp.sqrt(jnp.sum(directions.reshape(num_directions, -1) ** 2, axis=1))
    directions = directions / norms.reshape((-1,) + (1,) * leaf.ndim)

    def at(v: jax.Array, sign: int, index: int = index) -> jax.Array:
      moved = list(leaves)
      moved[index] = leaves[index] + sign * eps * v
      return objective(jax.tree.unflatten(treedef, moved), x, y, l2)

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
  rel_err: float      # analytic vs jax.grad, over the whole array
  fd_rel_err: float   # jax.grad vs central differences (both float64), over random directions
  passed: bool


@dataclasses.dataclass(frozen=True)
class GradientReport:
  """Per-parameter relative errors of the analytic gradient and of the oracle, with the bars."""
  checks: Tuple[ParamCheck, ...]
  dtype: str
  rtol: float
  fd_rtol: float
  m: int
  layer_sizes: Tuple[int, ...]
  l2: float

  @property
  def passed(self) -> bool:
    return all(c.passed for c in self.checks)

  def to_dict(self) -> Dict:
    return {**dataclasses.asdict(self), "passed": self.passed}

  def __str__(self) -> str:
    head = (f"gradient check: layers {self.layer_sizes}, m={self.m}, lambda={self.l2:g}, "
            f"{self.dtype}\n"
            f"bars: analytic vs jax.grad <= {self.rtol:.0e}; "
            f"jax.grad vs central differences (float64) <= {self.fd_rtol:.0e}\n")
    rows = [("param", "shape", "analytic vs jax.grad", "jax.grad vs FD", "result")]
    rows += [(c.name, "x".join(map(str, c.shape)), f"{c.rel_err:.2e}", f"{c.fd_rel_err:.2e}",
              "ok" if c.passed else "FAIL") for c in self.checks]
    verdict = "PASSED" if self.passed else "FAILED"
    return head + "\n".join(text_table(rows)) + f"\n{verdict}"


def check_gradients(params: Params, x: ArrayLike, y: ArrayLike, l2: float = 0.0, *,
                    grad_fn: Optional[Callable] = None,
                    num_directions: int = 8,
                    key: Optional[jax.Array] = None) -> GradientReport:
  """Checks a gradient function against jax.grad, and jax.grad against central differences.

  Args:
    params, x, y, l2: as for `loss`.
    grad_fn: the gradient under test, `grad_fn(params, x, y, l2) -> params-shaped tuple`;
      defaults to the library's analytic `grads`.
    num_directions: random unit directions per parameter for the finite differences.
    key: PRNG key for those directions.

  Returns:
    A `GradientReport`; `print` it for a table, `.passed` for the verdict.
  """
  params, x, y, l2 = checks.check_batch(params, x, y, l2)
  dtype = params[0].w.dtype
  grad_fn = analytic_grads if grad_fn is None else grad_fn
  reference = jax.tree.leaves(grad_objective(params, x, y, l2))
  tested = jax.tree.leaves(grad_fn(params, x, y, l2))
  key = jax.random.PRNGKey(0) if key is None else key
  with jax.enable_x64(True):
    params64, x64 = to_float64((params, x))
    fd, exact = _directional_fd(params64, x64, y, float(l2), key, FD_EPS, num_directions)
    fd, exact = np.asarray(fd), np.asarray(exact)
  rtol, fd_rtol = RTOL[dtype], FD_RTOL
  lines = []
  for name, ref, got, fd_row, exact_row in zip(param_names(params), reference, tested, fd, exact):
    err = relative_error(got, ref)
    fd_err = relative_error(fd_row, exact_row)
    lines.append(ParamCheck(name, tuple(ref.shape), err, fd_err,
                             err <= rtol and fd_err <= fd_rtol))
  return GradientReport(tuple(lines), str(dtype), rtol, fd_rtol, int(x.shape[0]),
                        layer_sizes(params), float(l2))
