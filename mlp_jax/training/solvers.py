"""scikit-learn's stochastic solvers as optax transformations, the learning rate in their state.

    opt = solvers.sgd(0.1, momentum=0.9, nesterov=True)   # scikit-learn's solver="sgd"
    opt = solvers.adam(1e-3, beta_1=0.9, beta_2=0.999, epsilon=1e-8)
    state = solvers.with_learning_rate(state, 0.02)      # between epochs: no recompiling

Each update is the one scikit-learn's `_stochastic_optimizers` applies, written for a pytree:
- sgd: v <- momentum * v - lr * g; the update is v, or with Nesterov momentum * v - lr * g.
  (optax's `sgd(lr, momentum, nesterov)` is the same while lr is constant; here a changed lr
  leaves the velocity as it was, as scikit-learn's does.)
- adam: m, v the moment estimates, lr_t = lr * sqrt(1 - beta_2^t) / (1 - beta_1^t), the update
  -lr_t * m / (sqrt(v) + epsilon): epsilon added to sqrt(v), not to the bias-corrected sqrt(v_hat)
  as optax's `adam` does (the two differ while beta_2^t is not small, e.g. by 3e-7 in the first
  step's denominator at the defaults).

The learning rate is an array in the state, so the estimator's `learning_rate="invscaling"` and
`"adaptive"` change it between epochs without compiling the epoch again; `scale` multiplies it
by a schedule of the step count (the library's cosine decay).
"""

import functools
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

Schedule = Optional[Callable[[jax.Array], jax.Array]]


class SGDState(NamedTuple):
  """State of `sgd`."""
  learning_rate: jax.Array  # scalar: the rate of the next step (before `scale`)
  count: jax.Array          # int32: steps taken
  velocity: Any             # a pytree like the parameters


class AdamState(NamedTuple):
  """State of `adam`."""
  learning_rate: jax.Array  # scalar: the base rate (before the bias correction and `scale`)
  count: jax.Array          # int32: steps taken
  mu: Any                   # first moment estimates, like the parameters
  nu: Any                   # second moment estimates


def _dtype(params: Any) -> jnp.dtype:
  return jax.tree.leaves(params)[0].dtype


def _rate(state: Any, scale: Schedule) -> jax.Array:
  return state.learning_rate if scale is None else state.learning_rate * scale(state.count)


@functools.lru_cache(maxsize=64)
def sgd(learning_rate: float, momentum: float = 0.9, nesterov: bool = True,
        scale: Schedule = None) -> optax.GradientTransformation:
  """scikit-learn's SGD solver (see the module doc). The same object for the same arguments, so
  an epoch compiled on it is reused."""
  def init(params):
    return SGDState(jnp.asarray(learning_rate, _dtype(params)), jnp.zeros((), jnp.int32),
                    jax.tree.map(jnp.zeros_like, params))

  def update(grads, state, params=None):
    del params
    lr = _rate(state, scale)
    velocity = jax.tree.map(lambda v, g: momentum * v - lr * g, state.velocity, grads)
    updates = (jax.tree.map(lambda v, g: momentum * v - lr * g, velocity, grads) if nesterov
               else velocity)
    return updates, SGDState(state.learning_rate, state.count + 1, velocity)

  return optax.GradientTransformation(init, update)


@functools.lru_cache(maxsize=64)
def adam(learning_rate: float, beta_1: float = 0.9, beta_2: float = 0.999, epsilon: float = 1e-8,
         scale: Schedule = None) -> optax.GradientTransformation:
  """scikit-learn's Adam solver (see the module doc); the same object for the same arguments."""
  def init(params):
    return AdamState(jnp.asarray(learning_rate, _dtype(params)), jnp.zeros((), jnp.int32),
                     jax.tree.map(jnp.zeros_like, params), jax.tree.map(jnp.zeros_like, params))

  def update(grads, state, params=None):
    del params
    t = state.count + 1
    mu = jax.tree.map(lambda m, g: beta_1 * m + (1 - beta_1) * g, state.mu, grads)
    nu = jax.tree.map(lambda v, g: beta_2 * v + (1 - beta_2) * g * g, state.nu, grads)
    dtype = state.learning_rate.dtype
    tf = t.astype(dtype)
    step = (_rate(state, scale) * jnp.sqrt(1 - jnp.asarray(beta_2, dtype) ** tf)
            / (1 - jnp.asarray(beta_1, dtype) ** tf))
    updates = jax.tree.map(lambda m, v: -step * m / (jnp.sqrt(v) + epsilon), mu, nu)
    return updates, AdamState(state.learning_rate, t, mu, nu)

  return optax.GradientTransformation(init, update)


def with_learning_rate(state: Any, value: float) -> Any:
  """`state` with its base learning rate set to `value` (same dtype, so no recompiling); a
  wrapper's state (adaptive clipping's, `privacy.AdaptiveClipState`) has it set inside."""
  if hasattr(state, "inner"):
    return state._replace(inner=with_learning_rate(state.inner, value))
  return state._replace(learning_rate=jnp.asarray(value, state.learning_rate.dtype))


def invscaling_rate(learning_rate_init: float, samples_seen: int, power_t: float) -> float:
  """scikit-learn's "invscaling" rate after `samples_seen` training samples (its `t_`):
  learning_rate_init / (samples_seen + 1) ** power_t."""
  return float(learning_rate_init) / (samples_seen + 1) ** power_t
