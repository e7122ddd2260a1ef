"""Hidden-layer activations, each with its hand-derived derivative beside it, (E16)-(E21).

    act = ACTIVATIONS["tanh"]
    a = act.forward(h)                  # (m, d) layer output from the pre-activation h
    g = act.derivative(h, a)            # (m, d) g'(h), read from whichever of h, a is cheaper

The backward pass needs g'(h) of every hidden layer, (E10) generalised:
Delta_l = (Delta_{l+1} W_{l+1}^T) * g'(H_l). Each derivative is written from the quantity it is
cheapest to read: the logistic and tanh ones from the layer's output (sigma (1 - sigma),
1 - tanh^2), so the forward pass keeps only A_l; ReLU and leaky ReLU from the sign of the output
(the same as the sign of h); GELU from h. At a kink the derivative is the left one: 0 for ReLU,
alpha for leaky ReLU at h = 0, which is also what `jax.grad` of each `forward` gives there.
`backprop.backprop_errors(..., masks=...)` takes these derivatives in place of the ReLU masks.
"""

import math
from typing import Callable, Dict, NamedTuple

import jax
import jax.numpy as jnp

LEAKY_SLOPE = 0.01  # alpha of leaky_relu unless given: PyTorch's and jax.nn's default
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_GELU_CUBIC = 0.044715  # the cubic term of GELU's tanh form (Hendrycks and Gimpel, 2016)


class Activation(NamedTuple):
  """A hidden layer's nonlinearity a = g(h) and its derivative."""
  name: str
  forward: Callable[[jax.Array], jax.Array]                # h -> a, elementwise
  derivative: Callable[[jax.Array, jax.Array], jax.Array]  # (h, a) -> g'(h), elementwise


def identity() -> Activation:
  """(E16) a = h; g' = 1."""
  return Activation("identity", lambda h: h, lambda h, a: jnp.ones_like(a))


def logistic() -> Activation:
  """(E17) a = sigma(h) = 1 / (1 + e^-h); g' = a (1 - a), from the output."""
  return Activation("logistic", jax.nn.sigmoid, lambda h, a: a * (1 - a))


def tanh() -> Activation:
  """(E18) a = tanh h; g' = 1 - a^2, from the output."""
  return Activation("tanh", jnp.tanh, lambda h, a: 1 - jnp.square(a))


def relu() -> Activation:
  """(E19) a = max(0, h); g' = 1[a > 0] (= 1[h > 0]; 0 at h = 0), as (E10) has it."""
  return Activation("relu", jax.nn.relu, lambda h, a: (a > 0).astype(a.dtype))


def leaky_relu(slope: float = LEAKY_SLOPE) -> Activation:
  """(E20) a = h for h > 0, alpha h otherwise; g' = 1 where a > 0, else alpha (alpha at h = 0).
  The sign of a is the sign of h for alpha > 0."""
  def forward(h):
    return jnp.where(h > 0, h, slope * h)

  def derivative(h, a):
    return jnp.where(a > 0, jnp.ones_like(a), jnp.full_like(a, slope))

  return Activation("leaky_relu", forward, derivative)


def gelu(approximate: bool = False) -> Activation:
  """(E21) exact: a = h Phi(h), g' = Phi(h) + h phi(h), with Phi and phi the standard normal's
  distribution and density. Tanh form: a = (h / 2)(1 + t), t = tanh(u),
  u = sqrt(2/pi)(h + c h^3), c = 0.044715; g' = (1 + t) / 2 + (h / 2)(1 - t^2) u', with
  u' = sqrt(2/pi)(1 + 3 c h^2). Both from h (the output alone does not determine h)."""
  if approximate:
    def forward(h):
      return 0.5 * h * (1 + jnp.tanh(_SQRT_2_OVER_PI * (h + _GELU_CUBIC * h ** 3)))

    def derivative(h, a):
      t = jnp.tanh(_SQRT_2_OVER_PI * (h + _GELU_CUBIC * h ** 3))
      du = _SQRT_2_OVER_PI * (1 + 3 * _GELU_CUBIC * jnp.square(h))
      return 0.5 * (1 + t) + 0.5 * h * (1 - jnp.square(t)) * du

    return Activation("gelu_tanh", forward, derivative)

  def forward_exact(h):
    return h * _normal_cdf(h)

  def derivative_exact(h, a):
    return _normal_cdf(h) + h * jnp.exp(-0.5 * jnp.square(h)) / math.sqrt(2 * math.pi)

  return Activation("gelu", forward_exact, derivative_exact)


def _normal_cdf(h: jax.Array) -> jax.Array:
  """Phi(h) = (1 + erf(h / sqrt 2)) / 2."""
  return 0.5 * (1 + jax.scipy.special.erf(h / math.sqrt(2.0)))


# Every activation by name, at its default parameters.
ACTIVATIONS: Dict[str, Activation] = {
    "identity": identity(), "logistic": logistic(), "tanh": tanh(), "relu": relu(),
    "leaky_relu": leaky_relu(), "gelu": gelu(), "gelu_tanh": gelu(approximate=True),
}
