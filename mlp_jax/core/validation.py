"""Argument validation at the public boundary: shapes, dtypes, label range, finiteness, numbers.

The eager public calls check values through a flag their compiled call raises (`eager`);
`value_checks(False)` turns those value checks off for a hot loop. The checks here run outside
compiled code. On traced values (inside a user's `jax.jit`) only
the static checks (rank, shape, dtype) run, at trace time, so a compiled step pays nothing for
them; on concrete arrays the value checks (labels in 0..K-1, finite features, lambda >= 0) run
too.
Every failure is an `InputError` / `InputTypeError` naming the argument, what was expected and
what was given.
"""

import contextlib
import contextvars
import math
import numbers
import operator
from typing import Any, Iterator, Optional, Sequence, Tuple, Union

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from mlp_jax.core.model import Dense, Params
from mlp_jax.core.network import SOURCE, Network, check_network
from mlp_jax.errors import InputError, InputTypeError


_VALUE_CHECKS = contextvars.ContextVar("mlp_jax_value_checks", default=True)


@contextlib.contextmanager
def value_checks(enabled: bool) -> Iterator[None]:
  """Within the block, the value checks of the eager public calls run (True, the default) or not.

  Off, a call does only the static checks (shapes, dtypes, lambda) and never waits for the
  device, so a loop of calls keeps the device busy; NaN, Inf and out-of-range labels then go
  unreported, as inside a user's `jax.jit`.
  """
  token = _VALUE_CHECKS.set(bool(enabled))
  try:
    yield
  finally:
    _VALUE_CHECKS.reset(token)


def value_checks_enabled() -> bool:
  """Whether the eager public calls check values here (see `value_checks`)."""
  return _VALUE_CHECKS.get()


def is_concrete(x: Any) -> bool:
  """True when x holds values (not a tracer inside jit/grad/vmap)."""
  return not isinstance(x, jax.core.Tracer)


def dtype_of(leaf: Any) -> np.dtype:
  """A leaf's own dtype (NumPy, JAX, tracer, `jax.ShapeDtypeStruct`); Python scalars and lists
  as JAX would store them."""
  return np.dtype(leaf.dtype if hasattr(leaf, "dtype") else jnp.asarray(leaf).dtype)


def _leaf_array(leaf: Any, name: str) -> Any:
  """A parameter leaf as an array: arrays (NumPy, JAX, tracers) as given, nested lists of numbers
  as `jnp.asarray` makes them (Python floats in the default float dtype, ints as ints)."""
  if hasattr(leaf, "dtype"):
    return leaf
  try:
    return jnp.asarray(leaf)
  except (TypeError, ValueError):  # ragged lists, strings, None, ...
    raise InputTypeError(f"{name}: expected an array or nested lists of floats, got "
                         f"{type(leaf).__name__}") from None


def _layer_arrays(layer: Dense, i: int) -> Dense:
  """The layer with list leaves made arrays; the layer itself when both are arrays already."""
  if hasattr(layer.w, "dtype") and hasattr(layer.b, "dtype"):
    return layer
  return layer._replace(w=_leaf_array(layer.w, f"params[{i}].w"),
                        b=_leaf_array(layer.b, f"params[{i}].b"))


def check_params(params: Sequence[Dense]) -> Params:
  """A non-empty tuple of `Dense` with chained, floating, same-dtype weights; returns it, with
  leaves given as nested lists made arrays (Python floats in the default float dtype)."""
  if isinstance(params, list):
    params = tuple(params)
  if not isinstance(params, tuple) or not params:
    raise InputTypeError(
        f"params must be a non-empty tuple of mlp_jax.Dense layers, got {type(params).__name__}")
  for i, layer in enumerate(params):
    if not isinstance(layer, Dense):
      raise InputTypeError(f"params[{i}]: expected a mlp_jax.Dense layer (w, b), got "
                           f"{type(layer).__name__}; params must be a non-empty tuple of "
                           "mlp_jax.Dense layers")
  params = tuple(_layer_arrays(layer, i) for i, layer in enumerate(params))
  dtype = dtype_of(params[0].w)
  if not jnp.issubdtype(dtype, jnp.floating):
    raise InputTypeError(f"params[0].w: expected a floating dtype, got {dtype}")
  if dtype == np.float64 and not jax.config.jax_enable_x64:
    raise InputTypeError(
        "params[0].w: float64 parameters need float64 enabled (jax.enable_x64(True) or "
        "jax.config.update('jax_enable_x64', True)); it is off, so pass float32 arrays")
  for i, layer in enumerate(params):
    w, b = layer
    if jnp.ndim(w) != 2 or jnp.ndim(b) != 1:
      raise InputError(
          f"params[{i}]: expected w of rank 2 and b of rank 1, got shapes "
          f"{jnp.shape(w)} and {jnp.shape(b)}")
    if jnp.shape(b)[0] != jnp.shape(w)[1]:
      raise InputError(
          f"params[{i}].b: expected shape ({jnp.shape(w)[1]},) to match w {jnp.shape(w)}, "
          f"got {jnp.shape(b)}")
    if i and jnp.shape(w)[0] != jnp.shape(params[i - 1].w)[1]:
      raise InputError(
          f"params[{i}].w: expected fan_in {jnp.shape(params[i - 1].w)[1]} (the previous "
          f"layer's fan_out), got shape {jnp.shape(w)}")
    for name, leaf in (("w", w), ("b", b)):
      leaf_dtype = dtype_of(leaf)
      if leaf_dtype != dtype or not jnp.issubdtype(leaf_dtype, jnp.floating):
        raise InputTypeError(
            f"params[{i}].{name}: expected floating dtype {dtype} like params[0].w, "
            f"got {leaf_dtype}")
  return params


def _features_static(params: Params, x: Any, name: str) -> Union[np.ndarray, jax.Array]:
  n = params[0].w.shape[0]
  if not hasattr(x, "dtype"):
    x = np.asarray(x)
  if jnp.ndim(x) != 2 or x.shape[1] != n or x.shape[0] < 1:
    raise InputError(f"{name}: expected shape (m, {n}) with m >= 1, got {jnp.shape(x)}")
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise InputTypeError(f"{name}: expected a floating dtype, got {x.dtype}")
  return x


def _targets_static(params: Params, y: Any, m: int, name: str,
                   net: Network = SOURCE) -> Union[np.ndarray, jax.Array]:
  """The targets' static checks: class labels (m,) of an integer dtype, or, for an output that
  takes real values, (m, K) of a real dtype."""
  k = params[-1].w.shape[1]
  if not hasattr(y, "dtype"):
    y = np.asarray(y)
  out = net.out
  if out.labels:
    if jnp.ndim(y) != 1 or y.shape[0] != m:
      raise InputError(f"{name}: expected integer labels of shape ({m},), got {jnp.shape(y)}")
    if not jnp.issubdtype(y.dtype, jnp.integer):
      raise InputTypeError(
          f"{name}: expected an integer dtype (class indices 0..{k - 1}), got {y.dtype}")
    return y
  if jnp.ndim(y) != 2 or y.shape != (m, k):
    raise InputError(f"{name}: expected {out.targets} of shape ({m}, {k}) for output "
                     f"{out.name}, got {jnp.shape(y)}")
  if not (jnp.issubdtype(y.dtype, jnp.floating) or jnp.issubdtype(y.dtype, jnp.integer)
          or y.dtype == bool):
    raise InputTypeError(f"{name}: expected real values for output {out.name}, got {y.dtype}")
  return y


def targets_array(params: Params, y: Any, net: Network = SOURCE) -> jax.Array:
  """Checked targets as the compiled core takes them: labels as given, real targets in the
  parameters' dtype."""
  return jnp.asarray(y) if net.out.labels else jnp.asarray(y, params[0].w.dtype)


@jax.jit
def _device_stats(x, y):
  """(number of non-finite entries of x, of y, min y, max y): one compiled call, one
  transfer."""
  finite = jnp.isfinite(y) if jnp.issubdtype(y.dtype, jnp.floating) else jnp.ones(y.shape, bool)
  return (jnp.size(x) - jnp.isfinite(x).sum(), jnp.size(y) - finite.sum(),
          jnp.min(jnp.where(finite, y, jnp.zeros_like(y))),
          jnp.max(jnp.where(finite, y, jnp.zeros_like(y))))


def _check_values(params: Params, x, y, x_name: str = "x", y_name: str = "y",
                  net: Network = SOURCE) -> None:
  """Finite features, and labels in 0..K-1 or finite targets in the output's range, for
  whichever of x, y holds values (not tracers)."""
  k = params[-1].w.shape[1]
  x = x if x is not None and is_concrete(x) else None
  y = y if y is not None and is_concrete(y) else None
  if x is None and y is None:
    return
  if all(a is None or isinstance(a, np.ndarray) for a in (x, y)):  # on the host already
    bad = 0 if x is None else int(x.size - np.isfinite(x).sum())
    if y is None:
      bad_y, lo, hi = 0, 0, 0
    else:
      finite = np.isfinite(y) if np.issubdtype(y.dtype, np.floating) else np.ones(y.shape, bool)
      bad_y = int(y.size - finite.sum())
      lo, hi = (y[finite].min(), y[finite].max()) if finite.any() else (0, 0)
  else:
    with jax.ensure_compile_time_eval():  # evaluate now, even while a caller is tracing
      stats = _device_stats(jnp.zeros((1, 1)) if x is None else x,
                            jnp.zeros((1,), jnp.int32) if y is None else y)
      bad, bad_y, lo, hi = jax.device_get(stats)
      bad, bad_y = int(bad), int(bad_y)
  if bad:
    raise InputError(f"{x_name}: expected finite values, got {bad} NaN or Inf entries")
  out = net.out
  if out.labels:
    lo, hi = int(lo), int(hi)
    if lo < 0 or hi >= k:
      raise InputError(f"{y_name}: expected labels in 0..{k - 1}, got values in {lo}..{hi}")
    return
  if bad_y:
    raise InputError(f"{y_name}: expected finite targets, got {bad_y} NaN or Inf entries")
  lo, hi = float(lo), float(hi)
  if lo < out.low or hi > out.high:
    raise InputError(f"{y_name}: expected {out.targets} for output {out.name}, got values in "
                     f"{lo:g}..{hi:g}")


def check_pair(params: Params, data: Tuple[ArrayLike, ArrayLike],
               name: str, net: Network = SOURCE) -> Tuple[jax.Array, jax.Array]:
  """A dataset given as a pair (x, y) (a tuple or a `data.Dataset`): shapes, dtypes, finite
  features and labels in 0..K-1 or targets in the output's range (one read-back for both); x
  (and real targets) in the parameters' dtype."""
  if not (isinstance(data, (tuple, list)) and len(data) == 2):
    raise InputError(f"{name}: expected a pair (x, y) or a Dataset, got {type(data).__name__}")
  x = _features_static(params, data[0], f"{name}.x")
  y = _targets_static(params, data[1], x.shape[0], f"{name}.y", net)
  _check_values(params, x, y, f"{name}.x", f"{name}.y", net)
  return jnp.asarray(x, params[0].w.dtype), targets_array(params, y, net)


def check_finite_params(params: Params) -> None:
  """Every parameter finite (concrete values only)."""
  for i, layer in enumerate(params):
    for name, leaf in (("w", layer.w), ("b", layer.b)):
      if is_concrete(leaf):
        with jax.ensure_compile_time_eval():
          bad = int(jnp.size(leaf) - jnp.isfinite(leaf).sum())
        if bad:
          raise InputError(f"params[{i}].{name}: expected finite values, got {bad} NaN or Inf")


def check_int(value: Any, name: str, minimum: int = 1, maximum: Optional[int] = None) -> int:
  """An integer >= `minimum` (and <= `maximum` when given), a Python or NumPy int, not a bool:
  e.g. a batch size, a count or a seed."""
  wanted = f">= {minimum}" if maximum is None else f"in {minimum}..{maximum}"
  try:
    number = None if isinstance(value, bool) else operator.index(value)
  except TypeError:
    number = None
  if number is None:
    raise InputTypeError(f"{name}: expected an int {wanted}, got {value!r}")
  if number < minimum or (maximum is not None and number > maximum):
    raise InputError(f"{name}: expected an int {wanted}, got {number}")
  return number


def _range_text(low: float, high: float, open_low: bool, open_high: bool) -> str:
  if high == math.inf:
    return f"{'>' if open_low else '>='} {low:g}"
  return f"in {'(' if open_low else '['}{low:g}, {high:g}{')' if open_high else ']'}"


def check_real(value: Any, name: str, *, low: float = 0.0, high: float = math.inf,
               open_low: bool = False, open_high: bool = True) -> Any:
  """A real scalar, finite and in the range [low, high) (ends as given) when concrete.

  Python, NumPy and JAX numbers pass (not bools or complex); a tracer gets the static checks
  only. Returns the value as given, so a traced lambda stays traced.
  """
  dtype = getattr(value, "dtype", None)
  if dtype is None:  # a Python object: a real number or nothing
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
      raise InputTypeError(f"{name}: expected a real number, got {type(value).__name__}")
  else:
    if not (jnp.issubdtype(dtype, jnp.floating) or jnp.issubdtype(dtype, jnp.integer)):
      raise InputTypeError(f"{name}: expected a real number, got dtype {dtype}")
    if jnp.ndim(value) != 0:
      raise InputError(f"{name}: expected a scalar, got shape {jnp.shape(value)}")
  if is_concrete(value):
    number = float(value)
    inside = ((number > low if open_low else number >= low)
              and (number < high if open_high else number <= high))
    if not (math.isfinite(number) and inside):
      raise InputError(f"{name}: expected a finite value "
                       f"{_range_text(low, high, open_low, open_high)}, got {number:g}")
  return value


def check_features(params: Sequence[Dense], x: ArrayLike) -> Tuple[Params, jax.Array]:
  """The static checks of a call without labels (the forward pass): params, and x of shape
  (m, n); returns (params, x) with x in the parameters' dtype."""
  params = check_params(params)
  x = _features_static(params, x, "x")
  return params, jnp.asarray(x, params[0].w.dtype)


def check_batch(params: Sequence[Dense], x: ArrayLike, y: ArrayLike, l2: ArrayLike = 0.0, *,
                values: bool = True, net: Network = SOURCE,
                ) -> Tuple[Params, jax.Array, jax.Array, Any]:
  """All of the above for one call of a network `net`; returns (params, x, y, l2) ready for the
  compiled core (real targets in the parameters' dtype).

  With `values=False` only the static checks run (and lambda's): for callers that check the
  values afterwards, from the result (see `backprop.loss_and_grads`).
  """
  params = check_params(params)
  check_network(net, len(params))
  x = _features_static(params, x, "x")
  y = _targets_static(params, y, x.shape[0], "y", net)
  if values and value_checks_enabled():
    _check_values(params, x, y, net=net)
  check_real(l2, "l2")
  return params, jnp.asarray(x, params[0].w.dtype), targets_array(params, y, net), l2


def check_sample_weight(sample_weight: Optional[ArrayLike], params: Params,
                        m: int) -> Optional[jax.Array]:
  """Per-example weights (m,), real, finite, >= 0 with a positive sum, in the parameters'
  dtype; None stays None (every weight 1). Values are checked when concrete."""
  if sample_weight is None:
    return None
  if not hasattr(sample_weight, "dtype"):
    sample_weight = np.asarray(sample_weight)
  if jnp.shape(sample_weight) != (m,):
    raise InputError(f"sample_weight: expected shape ({m},), got {jnp.shape(sample_weight)}")
  if not (jnp.issubdtype(sample_weight.dtype, jnp.floating)
          or jnp.issubdtype(sample_weight.dtype, jnp.integer)):
    raise InputTypeError(f"sample_weight: expected real values, got {sample_weight.dtype}")
  weights = jnp.asarray(sample_weight, params[0].w.dtype)
  if is_concrete(weights):
    with jax.ensure_compile_time_eval():
      values = np.asarray(weights, np.float64)
    if not (np.isfinite(values).all() and (values >= 0).all() and values.sum() > 0):
      raise InputError("sample_weight: expected finite weights >= 0 with a positive sum, got "
                       f"values in {values.min():g}..{values.max():g} summing to "
                       f"{values.sum():g}")
  return weights
