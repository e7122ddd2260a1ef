"""Hidden activations (E16)-(E21): each hand-derived derivative against jax.grad of its forward,
the convention at the kinks, and the generalised recursion (E10) through a whole network."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mlp_jax.core import backprop, model
from mlp_jax.core.activations import ACTIVATIONS, leaky_relu
from mlp_jax.core.objective import cross_entropy, log_softmax, penalised_mean
from conftest import assert_tree_close, forward_with_derivatives, make_batch

NAMES = sorted(ACTIVATIONS)
REFERENCE = {  # what each forward must equal: JAX's own function of the same name
    "identity": lambda h: h, "logistic": jax.nn.sigmoid, "tanh": jnp.tanh, "relu": jax.nn.relu,
    "leaky_relu": lambda h: jax.nn.leaky_relu(h, 0.01),
    "gelu": lambda h: jax.nn.gelu(h, approximate=False),
    "gelu_tanh": lambda h: jax.nn.gelu(h, approximate=True),
}


def _points(dtype, seed=0, size=(7, 13)):
  """Pre-activations over [-6, 6], none within 1e-3 of the kink at 0."""
  h = np.random.default_rng(seed).uniform(-6, 6, size)
  h = np.where(np.abs(h) < 1e-3, 0.5, h)
  return jnp.asarray(h, dtype)


def _autodiff_derivative(forward, h):
  return jax.vmap(jax.vmap(jax.grad(forward)))(h)


@pytest.mark.parametrize("name", NAMES)
def test_forward_is_the_named_function(name, dtype, rtol):
  h = _points(dtype)
  assert_tree_close(ACTIVATIONS[name].forward(h), REFERENCE[name](h), rtol)


@pytest.mark.parametrize("name", NAMES)
def test_derivative_matches_jax_grad_away_from_kinks(name, dtype, rtol):
  act = ACTIVATIONS[name]
  h = _points(dtype)
  ours = act.derivative(h, act.forward(h))
  assert_tree_close(ours, _autodiff_derivative(act.forward, h), rtol)


@pytest.mark.parametrize("slope", [0.01, 0.2, 1.5])
def test_leaky_slope_is_a_parameter(slope, dtype, rtol):
  act = leaky_relu(slope)
  h = _points(dtype)
  assert_tree_close(act.derivative(h, act.forward(h)), _autodiff_derivative(act.forward, h), rtol)
  assert_tree_close(act.forward(h), jax.nn.leaky_relu(h, slope), rtol)


@pytest.mark.parametrize("name, expected", [("relu", 0.0), ("leaky_relu", 0.01)])
def test_the_kink_takes_the_left_derivative(name, expected, dtype):
  act = ACTIVATIONS[name]
  zero = jnp.zeros((1, 1), dtype)
  assert float(act.derivative(zero, act.forward(zero))[0, 0]) == pytest.approx(expected)
  assert float(jax.grad(lambda h: act.forward(h).sum())(zero)[0, 0]) == pytest.approx(expected)


def _objective(params, x, y, l2, act):
  """(E6) for a network whose hidden layers all use `act`: the oracle's function."""
  _, _, logits = forward_with_derivatives(params, x, act)
  return penalised_mean(cross_entropy(log_softmax(logits), y), params, l2, x.shape[0])


def _hand_grads(params, x, y, l2, act):
  """(E7)-(E12) with (E10) generalised: the ReLU masks replaced by g'(H_l) of the activation."""
  activations, derivatives, logits = forward_with_derivatives(params, x, act)
  error = jnp.exp(log_softmax(logits)) - jax.nn.one_hot(y, logits.shape[1], dtype=logits.dtype)
  deltas = backprop.backprop_errors(params, activations, error / x.shape[0],
                                    masks=derivatives)
  return backprop.layer_grads(params, activations, deltas, l2, x.shape[0])


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("sizes, m", [((6, 9, 4), 5), ((6, 8, 7, 3), 11), ((6, 9, 4), 1)],
                         ids=["one-hidden-m5", "two-hidden-m11", "one-hidden-m1"])
def test_the_recursion_E10_carries_every_activation(name, sizes, m, dtype, rtol):
  params = model.init_params(jax.random.PRNGKey(3), sizes, jnp.dtype(dtype))
  x, y = make_batch(4, sizes, m, dtype)
  act = ACTIVATIONS[name]
  reference = jax.grad(_objective)(params, x, y, 0.3, act)
  assert_tree_close(_hand_grads(params, x, y, 0.3, act), reference, rtol)
