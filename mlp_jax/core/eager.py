"""The eager-call protocol: a compiled public call raises a flag, and only a raised flag pays
for the checks that name the problem.

The eager public calls (`loss_and_grads`, `per_sample_*`, `clipped_mean_grads`) compute a flag
inside their compiled call (non-finite result or input, a label outside 0..K-1) and read it back,
one wait for the device per call; only a raised flag runs the detailed checks of `validation`
that name the problem. `with value_checks(False):` skips that read-back for a hot loop (static
checks still run); docs/architecture.md gives its measured cost.
"""

import math
from typing import Any, Callable, NamedTuple, Sequence, Tuple

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from mlp_jax.core.model import Dense, Params
from mlp_jax.core.network import SOURCE, Network
from mlp_jax.core.validation import (check_batch, check_finite_params, is_concrete,
                                     value_checks_enabled)


def all_finite(tree: Any) -> jax.Array:
  """A scalar bool: every entry of every leaf of `tree` is finite (traceable)."""
  finite = jnp.asarray(True)
  for leaf in jax.tree.leaves(tree):
    finite &= jnp.isfinite(leaf).all()
  return finite


def targets_flag(params: Params, y: jax.Array, net: Network = SOURCE) -> jax.Array:
  """Traceable: True when a label lies outside 0..K-1, or a real target is NaN, Inf or outside
  the output's range."""
  out = net.out
  if out.labels:
    return (y.min() < 0) | (y.max() >= params[-1].w.shape[1])
  flag = ~jnp.isfinite(y).all()
  if out.low > -math.inf:
    flag |= y.min() < out.low
  if out.high < math.inf:
    flag |= y.max() > out.high
  return flag


def input_flag(params: Params, x: jax.Array, y: jax.Array, net: Network = SOURCE) -> jax.Array:
  """Traceable: True when x has a NaN or Inf or a target is out of range (`targets_flag`)."""
  return ~jnp.isfinite(x).all() | targets_flag(params, y, net)


class Compiled(NamedTuple):
  """One compiled public call in two forms, both `(params, x, y, *args, **kwargs)`."""
  plain: Callable    # -> result
  flagged: Callable  # -> (result, flag): flag raised by bad input or a non-finite result


def compile_call(fn: Callable, **jit_kwargs: Any) -> Compiled:
  """`fn(params, x, y, ..., net=)` jitted as is, and with `input_flag(params, x, y, net)` beside:
  the `Compiled` of a call whose inputs, not its result, decide the flag. `net` is static."""
  def with_flag(params: Params, x: jax.Array, y: jax.Array, *args: Any, net: Network = SOURCE,
                **kwargs: Any) -> Tuple[Any, jax.Array]:
    return fn(params, x, y, *args, net=net, **kwargs), input_flag(params, x, y, net)
  static = ("net",) + tuple(jit_kwargs.pop("static_argnames", ()))
  return Compiled(jax.jit(fn, static_argnames=static, **jit_kwargs),
                  jax.jit(with_flag, static_argnames=static, **jit_kwargs))


def checked_call(compiled: Compiled, params: Sequence[Dense], x: ArrayLike, y: ArrayLike,
                 *args: Any, l2: ArrayLike = 0.0, net: Network = SOURCE, **kwargs: Any) -> Any:
  """An eager public call of a network `net`: the static checks, then `compiled.plain` when
  value checks are off, else `compiled.flagged` and one read of its flag (a wait for the
  device). A raised flag runs the detailed checks that name the problem; when they find none
  (finite inputs, an overflow in the parameters) the result stands as computed. `args`,
  `kwargs` and `net` go to the compiled call (`l2` is only checked here)."""
  params, x, y, _ = check_batch(params, x, y, l2, values=False, net=net)
  if not value_checks_enabled():
    return compiled.plain(params, x, y, *args, net=net, **kwargs)
  out, flag = compiled.flagged(params, x, y, *args, net=net, **kwargs)
  if is_concrete(flag) and bool(flag):
    check_batch(params, x, y, l2, net=net)
    check_finite_params(params)
  return out
