"""Outputs and losses (E22)-(E26): each output error against jax.grad of its loss, each loss (with
per-example weights) against scikit-learn's, and the weighted objective's gradient through the
backward pass, against jax.grad and against scikit-learn's own backprop."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mlp_jax.core import backprop, model
from mlp_jax.core.activations import ACTIVATIONS
from mlp_jax.core.objective import penalised_mean
from mlp_jax.core.outputs import OUTPUTS, weighted_top_error
from conftest import assert_tree_close, forward_with_derivatives

NAMES = sorted(OUTPUTS)


def _problem(name, dtype, m=9, k=4, seed=0):
  """Logits z (m, K) in [-4, 4] and targets of the kind the output takes."""
  rng = np.random.default_rng(seed)
  z = jnp.asarray(rng.uniform(-4, 4, (m, k)), dtype)
  if name == "softmax_cross_entropy":
    y = jnp.asarray(rng.integers(0, k, m), jnp.int32)
  elif name == "sigmoid_binary_cross_entropy":
    y = jnp.asarray(rng.integers(0, 2, (m, k)), dtype)
  elif name == "identity_squared_error":
    y = jnp.asarray(rng.normal(0, 2, (m, k)), dtype)
  else:  # Poisson counts, zeros included
    y = jnp.asarray(rng.poisson(2.0, (m, k)), dtype)
  return z, y


@pytest.mark.parametrize("name", NAMES)
def test_output_error_matches_jax_grad_of_the_loss(name, dtype, rtol):
  out = OUTPUTS[name]
  z, y = _problem(name, dtype)
  reference = jax.grad(lambda z: out.loss(z, y).sum())(z)
  assert_tree_close(out.error(z, y), reference, rtol)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("k", [1, 3])
def test_weighted_loss_is_scikit_learns(name, k):
  base = pytest.importorskip("sklearn.neural_network._base")
  if name == "softmax_cross_entropy" and k == 1:
    pytest.skip("softmax needs two classes or more")
  with jax.enable_x64(True):
    out = OUTPUTS[name]
    z, y = _problem(name, jnp.float64, m=11, k=k, seed=k)
    s = np.random.default_rng(5).uniform(0.1, 3.0, 11)
    ours = float((out.loss(z, y) * s).sum() / s.sum())
    yhat, target = np.asarray(out.predict(z)), np.asarray(y)
    theirs = {
        "softmax_cross_entropy": lambda: base.log_loss(np.eye(k)[target], yhat, s),
        "sigmoid_binary_cross_entropy": lambda: base.binary_log_loss(target, yhat, s),
        "identity_squared_error": lambda: base.squared_loss(target, yhat, s),
        "poisson_log_link": lambda: base.poisson_loss(target, yhat, s),
    }[name]()
  assert ours == pytest.approx(theirs, rel=1e-12)


def test_binary_cross_entropy_is_finite_at_extreme_logits():
  out = OUTPUTS["sigmoid_binary_cross_entropy"]
  z = jnp.asarray([[1e4, -1e4, 30.0]], jnp.float32)
  y = jnp.asarray([[0.0, 1.0, 1.0]], jnp.float32)
  np.testing.assert_allclose(np.asarray(out.loss(z, y)), [2e4], rtol=1e-6)
  np.testing.assert_array_equal(np.asarray(out.error(z, y)), [[1.0, -1.0, 0.0]])


def _weighted_objective(params, x, y, s, l2, act, out):
  """(E26): sum_i s_i l_i / sum_i s_i + lambda / (2 sum_i s_i) sum ||W||^2."""
  _, _, z = forward_with_derivatives(params, x, act)
  return penalised_mean(out.loss(z, y), params, l2, s.sum(), weights=s)


def _hand_grads(params, x, y, s, l2, act, out):
  """The weighted objective's gradient: (E26)'s top error, then (E10) and (E8)-(E12)."""
  activations, derivatives, z = forward_with_derivatives(params, x, act)
  top = weighted_top_error(out.error(z, y), s)
  deltas = backprop.backprop_errors(params, activations, top, masks=derivatives)
  return backprop.layer_grads(params, activations, deltas, l2, s.sum())


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("activation", ["relu", "tanh", "logistic"])
def test_weighted_gradient_through_the_network_matches_jax_grad(name, activation, dtype, rtol):
  sizes, m = (5, 7, 4), 9
  params = model.init_params(jax.random.PRNGKey(1), sizes, jnp.dtype(dtype))
  x = jnp.asarray(np.random.default_rng(2).normal(size=(m, 5)), dtype)
  _, y = _problem(name, dtype, m=m, k=4, seed=3)
  s = jnp.asarray(np.random.default_rng(4).uniform(0.1, 3.0, m), dtype)
  act, out = ACTIVATIONS[activation], OUTPUTS[name]
  reference = jax.grad(_weighted_objective)(params, x, y, s, 0.7, act, out)
  assert_tree_close(_hand_grads(params, x, y, s, 0.7, act, out), reference, rtol)


def test_unit_weights_give_back_E6(dtype, rtol):
  params = model.init_params(jax.random.PRNGKey(1), (5, 7, 4), jnp.dtype(dtype))
  x = jnp.asarray(np.random.default_rng(2).normal(size=(6, 5)), dtype)
  _, y = _problem("softmax_cross_entropy", dtype, m=6, k=4)
  act, out = ACTIVATIONS["relu"], OUTPUTS["softmax_cross_entropy"]
  ones = jnp.ones(6, dtype)
  loss, grads = backprop.loss_and_grads(params, x, y, 0.7)
  assert_tree_close(_weighted_objective(params, x, y, ones, 0.7, act, out), loss, rtol)
  assert_tree_close(_hand_grads(params, x, y, ones, 0.7, act, out), grads, rtol)


@pytest.mark.parametrize("activation", ["identity", "logistic", "tanh", "relu"])
def test_weighted_regression_loss_and_gradient_are_scikit_learns_backprop(activation):
  """scikit-learn's MLPRegressor (K = 1) on the same weights: its `_backprop` returns the loss
  of (E24)-(E26) and the same gradient, per-example weights and their normalisation included."""
  neural_network = pytest.importorskip("sklearn.neural_network")
  rng = np.random.default_rng(7)
  x, y = rng.normal(size=(13, 5)), rng.normal(size=13)
  s, l2 = rng.uniform(0.1, 3.0, 13), 0.7
  with jax.enable_x64(True):
    params = model.init_params(jax.random.PRNGKey(1), (5, 6, 4, 1), jnp.float64)
    act, out = ACTIVATIONS[activation], OUTPUTS["identity_squared_error"]
    args = (params, jnp.asarray(x), jnp.asarray(y[:, None]), jnp.asarray(s), l2, act, out)
    ours_loss, ours_grads = _weighted_objective(*args), _hand_grads(*args)
  reg = neural_network.MLPRegressor(hidden_layer_sizes=(6, 4), activation=activation, alpha=l2,
                                    max_iter=1)
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # one iteration does not converge
    reg.fit(x, y)
  reg.coefs_ = [np.asarray(layer.w) for layer in params]
  reg.intercepts_ = [np.asarray(layer.b) for layer in params]
  activations = [x] + [None] * (len(params))
  deltas = [None] * len(params)
  coef_grads = [np.empty_like(w) for w in reg.coefs_]
  intercept_grads = [np.empty_like(b) for b in reg.intercepts_]
  loss, coef_grads, intercept_grads = reg._backprop(x, y[:, None], s, activations, deltas,
                                                     coef_grads, intercept_grads)
  assert float(ours_loss) == pytest.approx(loss, rel=1e-12)
  for layer, gw, gb in zip(ours_grads, coef_grads, intercept_grads):
    np.testing.assert_allclose(np.asarray(layer.w), gw, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(np.asarray(layer.b), gb, rtol=1e-10, atol=1e-14)


def test_scikit_learns_multi_output_gradient_is_K_times_that_of_its_loss():
  """With K outputs scikit-learn reports (E24), half the mean over outputs, but backpropagates
  yhat - y: its output-layer bias gradient is K times the gradient of the loss it reports, ours
  (E24) exactly (no penalty, unit weights, so the bias gradient is the mean output error)."""
  neural_network = pytest.importorskip("sklearn.neural_network")
  rng = np.random.default_rng(8)
  k = 3
  x, y = rng.normal(size=(10, 4)), rng.normal(size=(10, k))
  reg = neural_network.MLPRegressor(hidden_layer_sizes=(5,), alpha=0.0, max_iter=1)
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    reg.fit(x, y)
  activations = [x, None, None]
  coef_grads = [np.empty_like(w) for w in reg.coefs_]
  intercept_grads = [np.empty_like(b) for b in reg.intercepts_]
  _, _, intercept_grads = reg._backprop(x, y, None, activations, [None, None], coef_grads,
                                        intercept_grads)
  yhat = activations[-1]
  with jax.enable_x64(True):
    out = OUTPUTS["identity_squared_error"]
    ours = np.asarray(jnp.mean(out.error(jnp.asarray(yhat), jnp.asarray(y)), axis=0))
    of_loss = np.asarray(jax.grad(lambda z: out.loss(z, jnp.asarray(y)).mean())(
        jnp.asarray(yhat)).sum(axis=0))
  np.testing.assert_allclose(ours, of_loss, rtol=1e-12)
  np.testing.assert_allclose(intercept_grads[-1], k * ours, rtol=1e-12)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("activation", ["identity", "logistic", "tanh", "leaky_relu", "gelu"])
def test_per_example_norms_E15_carry_over_to_every_activation_and_output(name, activation,
                                                                         dtype, rtol):
  """(E13)-(E15) read only the layer inputs and the error signals, so the per-example norms of
  `per_example` hold for any activation and output once the error signals are theirs."""
  from mlp_jax.core import per_example
  sizes, m = (5, 7, 6, 4), 8
  params = model.init_params(jax.random.PRNGKey(1), sizes, jnp.dtype(dtype))
  x = jnp.asarray(np.random.default_rng(2).normal(size=(m, 5)), dtype)
  _, y = _problem(name, dtype, m=m, k=4, seed=3)
  act, out = ACTIVATIONS[activation], OUTPUTS[name]
  activations, derivatives, z = forward_with_derivatives(params, x, act)
  deltas = backprop.backprop_errors(params, activations, out.error(z, y), masks=derivatives)
  ours = per_example._global_norms(activations, deltas)

  def example_loss(params, xi, yi):
    _, _, zi = forward_with_derivatives(params, xi[None], act)
    return out.loss(zi, yi[None])[0]

  per_example_grads = jax.vmap(jax.grad(example_loss), in_axes=(None, 0, 0))(params, x, y)
  reference = jnp.sqrt(sum(jnp.sum(jnp.square(g.reshape(m, -1)), axis=1)
                           for g in jax.tree.leaves(per_example_grads)))
  assert_tree_close(ours, reference, rtol)
