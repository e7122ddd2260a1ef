"""Every network the engine supports, through the public API, against the oracle: the hidden
activations (E16)-(E21), one for all hidden layers or one per layer, times the outputs
(E22)-(E25), with per-example weights (E26); the batch gradient (E7)-(E12) against jax.grad, the
per-example gradients, norms and clipped means (E13)-(E15) against vmap(grad), jax.grad against
central differences, the input errors each network's targets bring, and bfloat16 GEMMs."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import mlp_jax as mj
from conftest import (RTOL, assert_tree_close, call, make_batch, make_targets, network_batch,
                      tree_rel_errors, weighted_gradient_scale)
from mlp_jax.oracle.check import gradient_scale, per_example_gradient_scale

ACTIVATIONS = sorted(mj.ACTIVATIONS)
OUTPUTS = sorted(mj.OUTPUTS)
L2 = 0.3
ONE_HIDDEN = ((6, 9, 4), 5)   # m != n
SINGLE = ((6, 9, 4), 1)       # m = 1
TWO_HIDDEN = ((5, 8, 7, 4), 9)


def _network_id(activation):
  return activation if isinstance(activation, str) else "+".join(activation)


def _setup(shape, dtype, output, seed=0):
  sizes, m = shape
  params = mj.init_params(jax.random.PRNGKey(seed), sizes, dtype)
  x, y = network_batch(seed + 1, sizes, m, dtype, output)
  return params, x, y


def _assert_matches_autodiff(params, x, y, rtol, activation, output, l2=L2, **kwargs):
  """loss_and_grads and grads against autodiff_grads, floored by `gradient_scale`; the loss
  against mj.loss. Returns the analytic (loss, grads)."""
  net = dict(activation=activation, output=output)
  loss, got = mj.loss_and_grads(params, x, y, l2, **net, **kwargs)
  want = mj.autodiff_grads(params, x, y, l2, **net, **kwargs)
  scale = gradient_scale(params, x, y, l2, **net)
  assert_tree_close(got, want, rtol, scale)
  assert_tree_close(mj.grads(params, x, y, l2, **net, **kwargs), want, rtol, scale)
  np.testing.assert_allclose(loss, mj.loss(params, x, y, l2, **net, **kwargs), rtol=rtol)
  assert loss.dtype == params[0].w.dtype
  return loss, got


# ---------------------------------------------------- the batch gradient (E7)-(E12), (E16)-(E25)


@pytest.mark.parametrize("output", OUTPUTS)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_every_activation_and_output_matches_jax_grad(activation, output, dtype, rtol):
  params, x, y = _setup(ONE_HIDDEN, dtype, output, seed=3)
  _assert_matches_autodiff(params, x, y, rtol, activation, output)


SINGLE_EXAMPLE = {  # one network per output, so the four cover several activations
    "identity_squared_error": "gelu_tanh", "poisson_log_link": "logistic",
    "sigmoid_binary_cross_entropy": "leaky_relu", "softmax_cross_entropy": "identity"}


@pytest.mark.parametrize("output", OUTPUTS)
def test_a_single_example_matches_jax_grad(output, dtype, rtol):
  params, x, y = _setup(SINGLE, dtype, output, seed=2)
  _assert_matches_autodiff(params, x, y, rtol, SINGLE_EXAMPLE[output], output)


@pytest.mark.parametrize("jit_mode", ["jit", "nojit"])
@pytest.mark.parametrize("activation, output", [
    (("logistic", "leaky_relu:0.2"), "identity_squared_error"),
    ("gelu", "sigmoid_binary_cross_entropy")], ids=_network_id)
def test_compiled_and_op_by_op_calls_match_jax_grad(activation, output, jit_mode):
  """Inside a user's jax.jit (traced inputs: static checks only) and under jax.disable_jit,
  with per-example weights passed through (float32: the dtypes are the grid's business)."""
  dtype, rtol = jnp.dtype(jnp.float32), RTOL["float32"]
  net = dict(activation=activation, output=output)
  params, x, y = _setup((TWO_HIDDEN[0], 7), dtype, output, seed=3)
  s = jnp.asarray(np.random.default_rng(3).uniform(0.2, 2.0, 7), dtype)
  fn = functools.partial(mj.loss_and_grads, **net)  # the network is static: not a jit argument
  loss, got = call(fn, jit_mode, params, x, y, L2, sample_weight=s)
  want = mj.autodiff_grads(params, x, y, L2, sample_weight=s, **net)
  scale = weighted_gradient_scale(params, x, y, s / s.sum(), L2 / float(s.sum()), **net)
  assert_tree_close(got, want, rtol, scale)
  np.testing.assert_allclose(loss, mj.loss(params, x, y, L2, sample_weight=s, **net), rtol=rtol)


def test_weighted_scale_with_unit_weights_is_the_gradient_scale(dtype, rtol):
  """The conftest helper the weighted tests floor with: 1/m and lambda/m give `gradient_scale`."""
  net = dict(activation=("tanh", "gelu"), output="poisson_log_link")
  params, x, y = _setup(TWO_HIDDEN, dtype, net["output"])
  m = x.shape[0]
  assert_tree_close(weighted_gradient_scale(params, x, y, jnp.full((m,), 1 / m), L2 / m, **net),
                    gradient_scale(params, x, y, L2, **net), rtol)


# ------------------------------------------ per-layer activations and the leaky slope (E16)-(E21)


def _softmax_loss(z, y):
  return -jnp.take_along_axis(jax.nn.log_softmax(z), y[:, None], axis=1)[:, 0]


# Each output's per-example loss written with JAX's own functions, independent of core/outputs.
EXPLICIT_LOSS = {
    "softmax_cross_entropy": _softmax_loss,
    "sigmoid_binary_cross_entropy": lambda z, y: -jnp.sum(
        y * jax.nn.log_sigmoid(z) + (1 - y) * jax.nn.log_sigmoid(-z), axis=1),
    "identity_squared_error": lambda z, y: 0.5 * jnp.mean(jnp.square(z - y), axis=1),
    "poisson_log_link": lambda z, y: jnp.sum(
        jnp.exp(z) - y * z + jax.scipy.special.xlogy(y, y) - y, axis=1),
}


def _explicit_objective(params, x, y, l2, hidden, output):
  """(E6) written out: `hidden`, one JAX function per hidden layer in order; no library code."""
  a = x
  for layer, g in zip(params[:-1], hidden):
    a = g(a @ layer.w + layer.b[None, :])
  z = a @ params[-1].w + params[-1].b[None, :]
  penalty = sum(jnp.sum(jnp.square(layer.w)) for layer in params)
  return EXPLICIT_LOSS[output](z, y).mean() + l2 / (2 * x.shape[0]) * penalty


@pytest.mark.parametrize("output", ["poisson_log_link", "softmax_cross_entropy"])
def test_one_activation_per_hidden_layer_in_order(output, dtype, rtol):
  """("tanh", "leaky_relu:0.2"): tanh after the first hidden layer, leaky ReLU of slope 0.2
  after the second, against jax.grad of the objective written out, and the reverse order
  differs."""
  params, x, y = _setup(TWO_HIDDEN, dtype, output, seed=4)
  hidden = (jnp.tanh, lambda h: jax.nn.leaky_relu(h, 0.2))
  explicit = jax.grad(_explicit_objective)(params, x, y, L2, hidden, output)
  activation = ("tanh", "leaky_relu:0.2")
  _, got = _assert_matches_autodiff(params, x, y, rtol, activation, output)
  assert_tree_close(got, explicit, rtol, gradient_scale(params, x, y, L2, activation=activation,
                                                        output=output))
  spelled = [mj.Activation("tanh"), mj.Activation("leaky_relu", 0.2)]  # a list of Activations
  assert_tree_close(mj.grads(params, x, y, L2, activation=spelled, output=output), got, rtol)
  reverse = mj.grads(params, x, y, L2, activation=activation[::-1], output=output)
  assert max(tree_rel_errors(reverse, explicit)) > 1e-2


@pytest.mark.parametrize("slope", ["leaky_relu:0.2", "leaky_relu:1.5"])
def test_leaky_relu_takes_its_slope(slope, dtype, rtol):
  """A non-default slope alpha is the one differentiated (E20), against jax.nn.leaky_relu."""
  output = "sigmoid_binary_cross_entropy"
  params, x, y = _setup(ONE_HIDDEN, dtype, output, seed=5)
  alpha = float(slope.partition(":")[2])
  explicit = jax.grad(_explicit_objective)(params, x, y, L2,
                                           (lambda h: jax.nn.leaky_relu(h, alpha),), output)
  _, got = _assert_matches_autodiff(params, x, y, rtol, slope, output)
  assert_tree_close(got, explicit, rtol, gradient_scale(params, x, y, L2, activation=slope,
                                                        output=output))
  default = mj.grads(params, x, y, L2, activation="leaky_relu", output=output)
  assert max(tree_rel_errors(default, explicit)) > 1e-3  # alpha = 0.01 is another gradient


# ----------------------------------------------- per-example gradients, norms, clipping (E13)-(E15)

PER_EXAMPLE_ACTIVATION = {  # one network per output: one activation for all, or one per layer
    "identity_squared_error": ("logistic", "relu"), "poisson_log_link": "gelu_tanh",
    "sigmoid_binary_cross_entropy": "tanh", "softmax_cross_entropy": ("gelu", "leaky_relu:0.2")}


@pytest.mark.parametrize("output", OUTPUTS)
def test_per_example_gradients_norms_and_clipping_E13_to_E15(output, dtype, rtol):
  """(E13)-(E15) read only the layer inputs and the error signals, so they carry over to every
  network: per-example gradients against vmap(grad), held to each example's own scale; their
  mean plus the penalty is the batch gradient (E14); the norms (E15) against the norms of
  vmap(grad) (|norm - reference| <= ||g_i - g_ref_i||, so they inherit the floor); the clipped
  mean against clipping vmap(grad) by hand, (1/m) sum_i min(1, C/||g_i||) g_i + (lambda/m) W."""
  net = dict(activation=PER_EXAMPLE_ACTIVATION[output], output=output)
  params, x, y = _setup(TWO_HIDDEN, dtype, output, seed=6)
  m = x.shape[0]
  per = mj.autodiff_per_sample_grads(params, x, y, **net)
  scale = per_example_gradient_scale(params, x, y, **net)
  got = mj.per_sample_grads(params, x, y, **net)
  assert_tree_close(got, per, rtol, scale)

  mean = tuple(mj.Dense(g.w.mean(0) + L2 / m * p.w, g.b.mean(0)) for g, p in zip(got, params))
  assert_tree_close(mean, mj.grads(params, x, y, L2, **net), rtol,
                    weighted_gradient_scale(params, x, y, jnp.full((m,), 1 / m), L2 / m, **net))

  norms = jax.vmap(optax.tree.norm)(per)
  floor = np.maximum(norms, jax.vmap(optax.tree.norm)(scale))
  got_norms = mj.per_sample_grad_norms(params, x, y, **net)
  assert np.all(np.abs(got_norms - norms) <= 10 * rtol * floor), (got_norms, norms)
  for layer, g, s in zip(mj.per_sample_layer_norms(params, x, y, **net), per, scale):
    for leaf, ref, leaf_scale, axes in ((layer.w, g.w, s.w, (1, 2)), (layer.b, g.b, s.b, 1)):
      ref_norm = jnp.sqrt(jnp.sum(jnp.square(ref), axis=axes))
      leaf_floor = np.maximum(ref_norm, jnp.sqrt(jnp.sum(jnp.square(leaf_scale), axis=axes)))
      assert np.all(np.abs(leaf - ref_norm) <= 10 * rtol * leaf_floor), (leaf, ref_norm)

  clip = float(jnp.median(norms))
  assert 0 < int(jnp.sum(norms > clip)) < m  # some examples clipped, some not
  c = jnp.minimum(1, clip / norms)
  want = tuple(mj.Dense(jnp.einsum("m,mij->ij", c, g.w) / m + L2 / m * p.w,
                        jnp.einsum("m,mj->j", c, g.b) / m) for g, p in zip(per, params))
  assert_tree_close(mj.clipped_mean_grads(params, x, y, clip, L2, **net), want, 10 * rtol,
                    weighted_gradient_scale(params, x, y, c / m, L2 / m, **net))


@pytest.mark.parametrize("activation, output, chunk_size", [
    ("logistic", "poisson_log_link", 1),
    (("leaky_relu:0.2", "gelu_tanh"), "softmax_cross_entropy", 4)],
    ids=["logistic-poisson_log_link-1", "leaky_relu:0.2+gelu_tanh-softmax_cross_entropy-4"])
def test_chunked_per_sample_grads_match_vmap_grad(activation, output, chunk_size, dtype, rtol):
  net = dict(activation=activation, output=output)
  params, x, y = _setup(TWO_HIDDEN, dtype, output, seed=7)  # m = 9: chunks of 4 leave one over
  got = mj.per_sample_grads(params, x, y, chunk_size=chunk_size, **net)
  assert_tree_close(got, mj.autodiff_per_sample_grads(params, x, y, **net), rtol,
                    per_example_gradient_scale(params, x, y, **net))


# ------------------------------------------------------------------------- sample weights (E26)

WEIGHTED_ACTIVATION = {  # one network per output, so the four cover several activations
    "identity_squared_error": "logistic", "poisson_log_link": "tanh",
    "sigmoid_binary_cross_entropy": "gelu", "softmax_cross_entropy": "leaky_relu:0.2"}


@pytest.mark.parametrize("output", OUTPUTS)
def test_weighted_gradient_E26_matches_jax_grad(output, dtype, rtol):
  net = dict(activation=WEIGHTED_ACTIVATION[output], output=output)
  params, x, y = _setup(ONE_HIDDEN, dtype, output, seed=8)
  s = jnp.asarray([0.5, 3.0, 0.1, 1.0, 2.2], dtype)
  loss, got = mj.loss_and_grads(params, x, y, L2, sample_weight=s, **net)
  want = mj.autodiff_grads(params, x, y, L2, sample_weight=s, **net)
  total = float(s.sum())
  assert_tree_close(got, want, rtol, weighted_gradient_scale(params, x, y, s / total,
                                                             L2 / total, **net))
  np.testing.assert_allclose(loss, mj.loss(params, x, y, L2, sample_weight=s, **net), rtol=rtol)
  unweighted = mj.grads(params, x, y, L2, **net)
  assert max(tree_rel_errors(got, unweighted)) > 1e-2  # the weights change the gradient


@pytest.mark.parametrize("output", OUTPUTS)
def test_integer_weights_equal_repeated_rows_and_unit_weights_none(output, dtype, rtol):
  """s_i copies of row i (0: the row dropped), the penalty over m = sum(s) included; all ones
  give back (E6)."""
  net = dict(activation=WEIGHTED_ACTIVATION[output], output=output)
  params, x, y = _setup(ONE_HIDDEN, dtype, output, seed=9)
  counts = np.asarray([2, 0, 1, 3, 1])
  loss, got = mj.loss_and_grads(params, x, y, L2, sample_weight=jnp.asarray(counts), **net)
  x_rep, y_rep = jnp.repeat(x, counts, axis=0), jnp.repeat(y, counts, axis=0)
  loss_rep, want = mj.loss_and_grads(params, x_rep, y_rep, L2, **net)
  assert_tree_close(got, want, rtol, gradient_scale(params, x_rep, y_rep, L2, **net))
  np.testing.assert_allclose(loss, loss_rep, rtol=rtol)
  np.testing.assert_allclose(mj.loss(params, x, y, L2, sample_weight=counts, **net), loss_rep,
                             rtol=rtol)

  ones = jnp.ones((x.shape[0],), dtype)
  loss, got = mj.loss_and_grads(params, x, y, L2, sample_weight=ones, **net)
  loss_plain, want = mj.loss_and_grads(params, x, y, L2, **net)
  assert_tree_close(got, want, rtol, gradient_scale(params, x, y, L2, **net))
  np.testing.assert_allclose(loss, loss_plain, rtol=rtol)
  np.testing.assert_allclose(mj.loss(params, x, y, L2, sample_weight=ones, **net), loss_plain,
                             rtol=rtol)


# ------------------------------------------- central differences in float64: the oracle checked

KINK_MARGIN = 1e-2  # far beyond the reach of the FD step, 1e-6 * (||x_i|| ||direction|| + 1)
# Every activation once and every output at least once (tanh: in the test after this one). Each
# network compiles the check's finite differences anew (~5 s of CPU; more with more layers):
# hence not the whole grid.
FD_NETWORKS = [
    ("identity", "poisson_log_link"), ("logistic", "sigmoid_binary_cross_entropy"),
    ("relu", "identity_squared_error"), ("leaky_relu", "softmax_cross_entropy"),
    ("gelu", "sigmoid_binary_cross_entropy"), ("gelu_tanh", "poisson_log_link")]


def _fd_setup(output):
  """float64 data of a one-hidden-layer net whose hidden pre-activations all lie KINK_MARGIN or
  more from ReLU's kink at 0, so central differences of (leaky) ReLU nets are smooth."""
  params, x, y = _setup(ONE_HIDDEN, jnp.float64, output, seed=3)
  h = x @ params[0].w + params[0].b[None, :]
  assert float(jnp.min(jnp.abs(h))) > KINK_MARGIN  # the data, not luck, keeps FD off the kink
  return params, x, y


@pytest.mark.parametrize("activation, output", FD_NETWORKS, ids=_network_id)
def test_check_gradients_passes_in_float64(activation, output):
  """The report of the network: analytic against jax.grad to 1e-12, and jax.grad against central
  differences to 1e-6."""
  with jax.enable_x64(True):
    params, x, y = _fd_setup(output)
    report = mj.check_gradients(params, x, y, L2, activation=activation, output=output)
  assert report.passed, str(report)
  assert report.rtol == RTOL["float64"]
  assert report.network == f"activation {activation}, output {output}"


def _tanh_grads(derivative, output):
  """The analytic gradient of a tanh network with g'(h) computed as `derivative(a)` from the
  layer's output a = tanh(h): 1 - a^2 is (E18); anything else is a mistake to catch."""
  from mlp_jax.core import backprop, model
  from mlp_jax.core.network import make_network
  net = make_network("tanh", output)

  def grad_fn(params, x, y, l2):
    z, activations, _ = model.forward_pass(params, x, net=net)
    _, error = backprop.losses_and_errors(net, z, y)
    m = x.shape[0]
    masks = tuple(derivative(a) for a in activations[1:])
    deltas = backprop.backprop_errors(params, activations, error / m, masks=masks)
    return backprop.layer_grads(params, activations, deltas, l2, m)
  return grad_fn


def test_check_gradients_passes_tanh_and_fails_a_wrong_derivative():
  """The library's tanh network passes; a hand-written gradient with tanh's derivative taken as
  1 - a instead of 1 - a^2 fails on W1 and b1 (the only parameters behind the hidden layer),
  while the same function written correctly passes."""
  output = "identity_squared_error"
  with jax.enable_x64(True):
    params, x, y = _fd_setup(output)
    net = dict(activation="tanh", output=output)
    library = mj.check_gradients(params, x, y, L2, **net)
    right = mj.check_gradients(params, x, y, L2, grad_fn=_tanh_grads(lambda a: 1 - a * a, output),
                               **net)
    wrong = mj.check_gradients(params, x, y, L2, grad_fn=_tanh_grads(lambda a: 1 - a, output),
                               **net)
  assert library.passed, str(library)
  assert right.passed, str(right)
  assert not wrong.passed
  assert {c.name for c in wrong.checks if not c.passed} == {"W1", "b1"}, str(wrong)
  assert min(c.floored_err for c in wrong.checks if not c.passed) > 1e-2
  assert all(c.fd_rel_err <= wrong.fd_rtol for c in wrong.checks)  # the oracle itself is fine
  assert "FAILED" in str(wrong)


# ------------------------------------------------------------------------------ input errors

SIZES, M = (6, 9, 4), 5
DEEP = (6, 8, 7, 4)


def _case_inputs(case):
  """(params, x, y, kwargs) of a bad call, float32."""
  params = mj.init_params(jax.random.PRNGKey(0), SIZES)
  x, labels = make_batch(0, SIZES, M, jnp.float32)
  real = make_targets(1, "identity_squared_error", M, SIZES[-1], jnp.float32)
  return {
      "float_labels_for_softmax": (params, x, real[:, 0], {}),
      "real_matrix_for_softmax": (params, x, real, {}),
      "labels_for_squared_error": (params, x, labels, {"output": "identity_squared_error"}),
      "labels_for_poisson": (params, x, labels, {"output": "poisson_log_link"}),
      "label_out_of_range": (params, x, labels.at[0].set(SIZES[-1]), {}),
      "sigmoid_target_above_1": (params, x, jnp.zeros_like(real).at[0, 0].set(1.5),
                                 {"output": "sigmoid_binary_cross_entropy"}),
      "sigmoid_target_below_0": (params, x, jnp.zeros_like(real).at[1, 2].set(-0.5),
                                 {"output": "sigmoid_binary_cross_entropy"}),
      "negative_poisson_count": (params, x, jnp.abs(real).at[2, 1].set(-1.0),
                                 {"output": "poisson_log_link"}),
      "nan_target": (params, x, real.at[3, 0].set(jnp.nan),
                     {"output": "identity_squared_error"}),
      "inf_poisson_target": (params, x, jnp.abs(real).at[3, 0].set(jnp.inf),
                             {"output": "poisson_log_link"}),
      "unknown_activation": (params, x, labels, {"activation": "swish"}),
      "parameter_on_another_activation": (params, x, labels, {"activation": "tanh:0.2"}),
      "negative_leaky_slope": (params, x, labels, {"activation": "leaky_relu:-0.1"}),
      "unknown_output": (params, x, labels, {"output": "softmax"}),
      "short_per_layer_tuple": (mj.init_params(jax.random.PRNGKey(0), DEEP), x, labels,
                                {"activation": ("tanh",)}),
      "long_per_layer_tuple": (mj.init_params(jax.random.PRNGKey(0), DEEP), x, labels,
                               {"activation": ("tanh", "relu", "gelu")}),
      "unknown_name_in_tuple": (mj.init_params(jax.random.PRNGKey(0), DEEP), x, labels,
                                {"activation": ("tanh", "swish")}),
  }[case]


# case -> (error, the message's start). Value errors need the values; static ones do not.
STATIC_CASES = {
    "float_labels_for_softmax": (mj.InputTypeError, r"y: expected an integer dtype"),
    "real_matrix_for_softmax": (mj.InputError, r"y: expected integer labels of shape \(5,\)"),
    "labels_for_squared_error": (mj.InputError, r"y: expected real values \(m, K\) of shape "
                                 r"\(5, 4\) for output identity_squared_error, got \(5,\)"),
    "labels_for_poisson": (mj.InputError, r"y: expected counts .* for output poisson_log_link"),
    "unknown_activation": (mj.InputError, r"activation: expected one of .*got 'swish'"),
    "parameter_on_another_activation": (mj.InputError, r"activation: only leaky_relu takes a"),
    "negative_leaky_slope": (mj.InputError, r"activation: expected a leaky_relu slope .* >= 0"),
    "unknown_output": (mj.InputError, r"output: expected one of .*got 'softmax'"),
    "short_per_layer_tuple": (mj.InputError,
                              r"activation: expected one activation per hidden layer \(2\), got 1"),
    "long_per_layer_tuple": (mj.InputError,
                             r"activation: expected one activation per hidden layer \(2\), got 3"),
    "unknown_name_in_tuple": (mj.InputError, r"activation\[1\]: expected one of .*'swish'"),
}
VALUE_CASES = {
    "label_out_of_range": (mj.InputError, r"y: expected labels in 0\.\.3, got values in .*4"),
    "sigmoid_target_above_1": (mj.InputError, r"y: expected indicators \(m, K\) in \[0, 1\] for "
                               r"output sigmoid_binary_cross_entropy, got values in .*1\.5"),
    "sigmoid_target_below_0": (mj.InputError, r"y: expected indicators .*got values in -0\.5"),
    "negative_poisson_count": (mj.InputError, r"y: expected counts \(m, K\) >= 0 for output "
                               r"poisson_log_link, got values in -1"),
    "nan_target": (mj.InputError, r"y: expected finite targets, got 1 NaN or Inf"),
    "inf_poisson_target": (mj.InputError, r"y: expected finite targets, got 1 NaN or Inf"),
}
# Calls that check values before computing (eager), and calls that compute, then read a flag
# the compiled call raised and only then name the problem (flag).
EAGER_CALLS = {
    "loss": mj.loss,
    "autodiff_grads": mj.autodiff_grads,
    "check_gradients": mj.check_gradients,
}
FLAG_CALLS = {
    "loss_and_grads": mj.loss_and_grads,
    "per_sample_grads": mj.per_sample_grads,
    "per_sample_grad_norms": mj.per_sample_grad_norms,
    "clipped_mean_grads": lambda params, x, y, **kw: mj.clipped_mean_grads(params, x, y, 1.0,
                                                                           **kw),
}
CALLS = {**EAGER_CALLS, **FLAG_CALLS}


@pytest.mark.parametrize("checks", ["on", "off"])
@pytest.mark.parametrize("entry", sorted(CALLS))
@pytest.mark.parametrize("case", sorted(STATIC_CASES))
def test_static_input_errors_name_the_argument(case, entry, checks):
  """Wrong kinds of targets and bad networks: refused before anything runs, value checks on or
  off."""
  params, x, y, kwargs = _case_inputs(case)
  error, message = STATIC_CASES[case]
  with mj.value_checks(checks == "on"), pytest.raises(error, match=message):
    CALLS[entry](params, x, y, **kwargs)


@pytest.mark.parametrize("entry", sorted(CALLS))
@pytest.mark.parametrize("case", sorted(VALUE_CASES))
def test_target_values_out_of_range_name_the_argument(case, entry):
  """Eager calls check the values first; flag calls find them from the flag they raise."""
  params, x, y, kwargs = _case_inputs(case)
  error, message = VALUE_CASES[case]
  with pytest.raises(error, match=message):
    CALLS[entry](params, x, y, **kwargs)


@pytest.mark.parametrize("entry", sorted(FLAG_CALLS))
def test_without_value_checks_a_nan_target_goes_unreported(entry):
  """`value_checks(False)` skips the flag's read-back: the static checks alone run, as inside a
  user's jax.jit, and a NaN target gives a NaN result rather than an error."""
  params, x, y, kwargs = _case_inputs("nan_target")
  with mj.value_checks(False):
    result = FLAG_CALLS[entry](params, x, y, **kwargs)
  assert not all(bool(jnp.isfinite(leaf).all()) for leaf in jax.tree.leaves(result))


BAD_WEIGHTS = {
    "negative": (lambda: jnp.asarray([1.0, -0.5, 1.0, 1.0, 1.0]), mj.InputError,
                 r"sample_weight: expected finite weights >= 0 with a positive sum, got values "
                 r"in -0\.5\.\.1"),
    "all_zero": (lambda: jnp.zeros((M,)), mj.InputError, r"sample_weight: .*summing to 0"),
    "nan": (lambda: jnp.ones((M,)).at[2].set(jnp.nan), mj.InputError,
            r"sample_weight: expected finite weights"),
    "too_long": (lambda: jnp.ones((M + 1,)), mj.InputError,
                 r"sample_weight: expected shape \(5,\), got \(6,\)"),
    "column": (lambda: jnp.ones((M, 1)), mj.InputError,
               r"sample_weight: expected shape \(5,\), got \(5, 1\)"),
    "bool": (lambda: jnp.ones((M,), bool), mj.InputTypeError,
             r"sample_weight: expected real values, got bool"),
}
WEIGHTED_CALLS = {"loss": mj.loss, "loss_and_grads": mj.loss_and_grads, "grads": mj.grads,
                  "autodiff_grads": mj.autodiff_grads}


@pytest.mark.parametrize("checks", ["on", "off"])
@pytest.mark.parametrize("entry", sorted(WEIGHTED_CALLS))
@pytest.mark.parametrize("bad", sorted(BAD_WEIGHTS))
def test_bad_sample_weight_names_the_argument(bad, entry, checks):
  """Weights are checked when given, whatever the value checks (they are never traced here)."""
  params = mj.init_params(jax.random.PRNGKey(0), SIZES)
  x = make_batch(0, SIZES, M, jnp.float32)[0]
  y = make_targets(1, "poisson_log_link", M, SIZES[-1], jnp.float32)
  weights, error, message = BAD_WEIGHTS[bad]
  with mj.value_checks(checks == "on"), pytest.raises(error, match=message):
    WEIGHTED_CALLS[entry](params, x, y, sample_weight=weights(), activation="tanh",
                          output="poisson_log_link")


# ------------------------------------------------------------------------ bfloat16 GEMMs

BF16_RTOL = 1e-2  # as tests/test_mixed_precision.py: 8 significant bits, float32 accumulation


def test_bf16_gemms_work_for_another_network():
  """bfloat16 GEMM inputs, float32 parameters and accumulation, for a per-layer network with
  sigmoid outputs: finite, close to jax.grad of the same bfloat16 forward pass, and to the
  float32 gradient within a loose bound."""
  output = "sigmoid_binary_cross_entropy"
  net = dict(activation=("gelu", "tanh"), output=output)
  sizes, m = (16, 32, 24, 4), 33
  params = mj.init_params(jax.random.PRNGKey(12), sizes)
  x, y = network_batch(12, sizes, m, jnp.float32, output)
  loss, got = mj.loss_and_grads(params, x, y, 0.1, compute_dtype=jnp.bfloat16, **net)
  assert loss.dtype == jnp.float32 and bool(jnp.isfinite(loss))
  assert all(leaf.dtype == jnp.float32 and bool(jnp.isfinite(leaf).all())
             for leaf in jax.tree.leaves(got))
  bf16_oracle = mj.autodiff_grads(params, x, y, 0.1, compute_dtype=jnp.bfloat16, **net)
  assert max(tree_rel_errors(got, bf16_oracle)) <= BF16_RTOL
  against_f32 = tree_rel_errors(got, mj.grads(params, x, y, 0.1, **net),
                                gradient_scale(params, x, y, 0.1, **net))
  assert min(against_f32) > 1e-5  # the GEMMs really ran in bfloat16
  assert max(against_f32) < 0.05  # and stay close to the float32 gradient
  np.testing.assert_allclose(loss, mj.loss(params, x, y, 0.1, **net), rtol=BF16_RTOL)

