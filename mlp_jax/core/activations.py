"""Hidden-layer activations, each with its hand-derived derivative beside it, (E16)-(E21), and
its second derivative, (E31).

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
from typing import Callable, Dict, NamedTuple, Tuple

import jax
import jax.numpy as jnp

LEAKY_SLOPE = 0.01  # alpha of leaky_relu unless given: PyTorch's and jax.nn's default
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_GELU_CUBIC = 0.044715  # the cubic term of GELU's tanh form (Hendrycks and Gimpel, 2016)


class Activation(NamedTuple):
  """A hidden layer's nonlinearity a = g(h) and its derivative, named by value: two equal
  `Activation`s compute the same function, so one serves as a static argument of a compiled
  program (the same spec reuses the program) and is saved as its `spec` text."""
  name: str           # a key of `FORMULAS`
  slope: float = 0.0  # alpha of leaky_relu; 0 for the others

  def forward(self, h: jax.Array) -> jax.Array:
    """a = g(h), elementwise."""
    return FORMULAS[self.name][0](h, self.slope)

  def derivative(self, h: jax.Array, a: jax.Array) -> jax.Array:
    """g'(h), elementwise, from h and the layer's output a = g(h) (each formula reads the one
    that is cheaper)."""
    return FORMULAS[self.name][1](h, a, self.slope)

  def second_derivative(self, h: jax.Array, a: jax.Array) -> jax.Array:
    """g''(h), elementwise, (E31): what the Hessian adds to the Gauss-Newton matrix; 0 (away
    from the kinks) for the piecewise-linear activations."""
    return SECOND_DERIVATIVES[self.name](h, a)

  @property
  def piecewise_linear(self) -> bool:
    """g'' = 0 wherever it exists (identity, ReLU, leaky ReLU): the Hessian of a network of
    these is its Gauss-Newton matrix, (E32)."""
    return self.name in PIECEWISE_LINEAR

  def backward_factor(self, h: jax.Array, a: jax.Array) -> jax.Array:
    """What the backward pass applies to Delta_{l+1} W_{l+1}^T: g'(h), except for ReLU the bool
    mask 1[a > 0], which `backprop_errors` selects with, as (E10) is computed."""
    return a > 0 if self.name == "relu" else self.derivative(h, a)

  @property
  def spec(self) -> str:
    """The text that names it: "tanh", or "leaky_relu:0.2" for a slope other than 0.01."""
    if self.name == "leaky_relu" and self.slope != LEAKY_SLOPE:
      return f"leaky_relu:{self.slope:g}"
    return self.name


def identity() -> Activation:
  """(E16) a = h; g' = 1."""
  return Activation("identity")


def logistic() -> Activation:
  """(E17) a = sigma(h) = 1 / (1 + e^-h); g' = a (1 - a), from the output."""
  return Activation("logistic")


def tanh() -> Activation:
  """(E18) a = tanh h; g' = 1 - a^2, from the output."""
  return Activation("tanh")


def relu() -> Activation:
  """(E19) a = max(0, h); g' = 1[a > 0] (= 1[h > 0]; 0 at h = 0), as (E10) has it."""
  return Activation("relu")


def leaky_relu(slope: float = LEAKY_SLOPE) -> Activation:
  """(E20) a = h for h > 0, alpha h otherwise; g' = 1 where a > 0, else alpha (alpha at h = 0).
  The sign of a is the sign of h for alpha > 0."""
  return Activation("leaky_relu", float(slope))


def gelu(approximate: bool = False) -> Activation:
  """(E21) exact: a = h Phi(h), g' = Phi(h) + h phi(h), with Phi and phi the standard normal's
  distribution and density. Tanh form ("gelu_tanh"): a = (h / 2)(1 + t), t = tanh(u),
  u = sqrt(2/pi)(h + c h^3), c = 0.044715; g' = (1 + t) / 2 + (h / 2)(1 - t^2) u', with
  u' = sqrt(2/pi)(1 + 3 c h^2). Both from h (the output alone does not determine h)."""
  return Activation("gelu_tanh" if approximate else "gelu")


def _gelu_tanh_forward(h, slope):
  return 0.5 * h * (1 + jnp.tanh(_SQRT_2_OVER_PI * (h + _GELU_CUBIC * h ** 3)))


def _gelu_tanh_derivative(h, a, slope):
  t = jnp.tanh(_SQRT_2_OVER_PI * (h + _GELU_CUBIC * h ** 3))
  du = _SQRT_2_OVER_PI * (1 + 3 * _GELU_CUBIC * jnp.square(h))
  return 0.5 * (1 + t) + 0.5 * h * (1 - jnp.square(t)) * du


def _normal_cdf(h: jax.Array) -> jax.Array:
  """Phi(h) = (1 + erf(h / sqrt 2)) / 2."""
  return 0.5 * (1 + jax.scipy.special.erf(h / math.sqrt(2.0)))


# name -> (forward(h, slope), derivative(h, a, slope)), the formulas of (E16)-(E21).
FORMULAS: Dict[str, Tuple[Callable, Callable]] = {
    "identity": (lambda h, s: h, lambda h, a, s: jnp.ones_like(a)),
    "logistic": (lambda h, s: jax.nn.sigmoid(h), lambda h, a, s: a * (1 - a)),
    "tanh": (lambda h, s: jnp.tanh(h), lambda h, a, s: 1 - jnp.square(a)),
    "relu": (lambda h, s: jax.nn.relu(h), lambda h, a, s: (a > 0).astype(a.dtype)),
    "leaky_relu": (lambda h, s: jnp.where(h > 0, h, s * h),
                   lambda h, a, s: jnp.where(a > 0, jnp.ones_like(a), jnp.full_like(a, s))),
    "gelu": (lambda h, s: h * _normal_cdf(h),
             lambda h, a, s: _normal_cdf(h) + h * jnp.exp(-0.5 * jnp.square(h))
             / math.sqrt(2 * math.pi)),
    "gelu_tanh": (_gelu_tanh_forward, _gelu_tanh_derivative),
}

PIECEWISE_LINEAR = frozenset({"identity", "relu", "leaky_relu"})


def _gelu_tanh_second(h, a):
  """(E31) g'' = (1 - t^2)(u' - h t u'^2 + (h / 2) u''), u'' = sqrt(2/pi) 6 c h."""
  t = jnp.tanh(_SQRT_2_OVER_PI * (h + _GELU_CUBIC * h ** 3))
  du = _SQRT_2_OVER_PI * (1 + 3 * _GELU_CUBIC * jnp.square(h))
  ddu = _SQRT_2_OVER_PI * 6 * _GELU_CUBIC * h
  return (1 - jnp.square(t)) * (du - h * t * jnp.square(du) + 0.5 * h * ddu)


# name -> g''(h, a), (E31); each from the quantity its first derivative reads.
SECOND_DERIVATIVES: Dict[str, Callable] = {
    **{name: (lambda h, a: jnp.zeros_like(a)) for name in PIECEWISE_LINEAR},
    "logistic": lambda h, a: a * (1 - a) * (1 - 2 * a),
    "tanh": lambda h, a: -2 * a * (1 - jnp.square(a)),
    "gelu": lambda h, a: (2 - jnp.square(h)) * jnp.exp(-0.5 * jnp.square(h))
    / math.sqrt(2 * math.pi),
    "gelu_tanh": _gelu_tanh_second,
}

# Every activation by name, at its default parameters.
ACTIVATIONS: Dict[str, Activation] = {
    "identity": identity(), "logistic": logistic(), "tanh": tanh(), "relu": relu(),
    "leaky_relu": leaky_relu(), "gelu": gelu(), "gelu_tanh": gelu(approximate=True),
}
