"""The diagnosis names each kind of mistake in a hand derivation, where it sits, and a repro."""

import contextlib
import importlib.util
import io
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mlp_jax as mj
from conftest import make_batch, one_error_line, run_cli, trees_bit_equal
from mlp_jax.tools.diagnosis import KINDS, WHERE, diagnose, random_problem
from mlp_jax.tools.diagnosis_draws import param_leaves

_spec = importlib.util.spec_from_file_location(
    "seed_errata", pathlib.Path(__file__).parents[1] / "examples" / "seed_errata.py")
seed_errata = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(seed_errata)

# (layer sizes, m): m = 1 and m > widths; square first layers for transposes and (S3).
SHAPES = [((6, 5, 3), 7), ((8, 4, 3), 1)]
SQUARE = [((5, 5, 3), 7), ((4, 4, 3), 1)]
L2 = 0.3
W1, B1, W2, B2 = range(4)


def _problem(sizes, m):
  params = mj.init_params(jax.random.PRNGKey(m), sizes)
  x, y = make_batch(m, sizes, m, jnp.float32)
  return params, x, y


def _edit(index, fn):
  """mj.grads with leaf `index` (W1, b1, W2, b2 = 0..3) replaced by fn(g, theta, m, n, l2)."""
  def grad_fn(params, x, y, l2=0.0):
    leaves, treedef = jax.tree.flatten(mj.grads(params, x, y, l2))
    theta = jax.tree.leaves(params)[index]
    leaves[index] = fn(leaves[index], theta, x.shape[0], x.shape[1], l2)
    return jax.tree.unflatten(treedef, leaves)
  return grad_fn


def _masked_grads(mask):
  """The two-layer gradient (E7)-(E12) written out, with the ReLU derivative `mask(h)`."""
  def grad_fn(params, x, y, l2=0.0):
    (l1, l2_), m = params, x.shape[0]
    h = x @ l1.w + l1.b[None, :]
    a = jax.nn.relu(h)
    err = jax.nn.softmax(a @ l2_.w + l2_.b[None, :], axis=1) - jax.nn.one_hot(y, 3, dtype=x.dtype)
    delta = (err @ l2_.w.T) * mask(h)
    return (mj.Dense(x.T @ delta / m + l2 / m * l1.w, delta.sum(0) / m),
            mj.Dense(a.T @ err / m + l2 / m * l2_.w, err.sum(0) / m))
  return grad_fn


def _noisy(index, size):
  """A correct gradient with relative noise of `size` added to leaf `index`."""
  def noise(g, theta, m, n, l2):
    rng = np.random.default_rng(m + n)
    return g + size * jnp.abs(g).max() * jnp.asarray(rng.standard_normal(g.shape), g.dtype)
  return _edit(index, noise)


def _diagnosis(grad_fn, sizes, m, l2=L2, **kwargs):
  params, x, y = _problem(sizes, m)
  return diagnose(grad_fn, params, x, y, l2, **kwargs)


# (case id, grad_fn, the leaf to look at, kind, factor or detail it must name, every leaf that
# fails, shapes)
MISTAKES = [
    ("b1_m_over_n", _edit(B1, lambda g, t, m, n, l2: g * m / n), "b1", "scale", "m/n", "b1",
     SHAPES),
    ("W2_times_1.5", _edit(W2, lambda g, t, m, n, l2: 1.5 * g), "W2", "scale", "1.5", "W2",
     SHAPES),
    ("b2_over_m", _edit(B2, lambda g, t, m, n, l2: g / m), "b2", "scale", "1/m", "b2", SHAPES),
    ("W2_negated", _edit(W2, lambda g, t, m, n, l2: -g), "W2", "sign_flip", "whole", "W2",
     SHAPES),
    ("W1_data_negated", _edit(W1, lambda g, t, m, n, l2: 2 * l2 / m * t - g), "W1", "sign_flip",
     "data_term", "W1", SHAPES),
    ("W1_transposed", _edit(W1, lambda g, t, m, n, l2: g.T), "W1", "transpose", "whole", "W1",
     SQUARE),
    ("W1_no_penalty", _edit(W1, lambda g, t, m, n, l2: g - l2 / m * t), "W1", "missing_penalty",
     "0", "W1", SHAPES),
    ("W2_penalty_twice", _edit(W2, lambda g, t, m, n, l2: g + l2 / m * t), "W2", "extra_penalty",
     "twice", "W2", SHAPES),
    ("b1_penalised", _edit(B1, lambda g, t, m, n, l2: g + l2 / m * t), "b1", "extra_penalty",
     "bias_penalty", "b1", SHAPES),
    ("W1_lambda_W", _edit(W1, lambda g, t, m, n, l2: g + (l2 - l2 / m) * t), "W1",
     "penalty_scale", "m", "W1", SHAPES),
    ("W2_lambda_over_2m", _edit(W2, lambda g, t, m, n, l2: g - l2 / (2 * m) * t), "W2",
     "penalty_scale", "1/2", "W2", SHAPES),
    ("relu_h_ge_0", _masked_grads(lambda h: (h >= 0).astype(h.dtype)), "W1", "relu_mask",
     "tie_one", "W1 b1", SHAPES),
    ("relu_missing", _masked_grads(lambda h: jnp.ones_like(h)), "b1", "relu_mask", "no_mask",
     "W1 b1", SHAPES),
    ("S3_wrong_index", seed_errata.erratum_grad_fn("S3"), "W1", "relu_mask", "wrong_index", "W1",
     SQUARE),
    ("b2_summed", _edit(B2, lambda g, t, m, n, l2: m * g), "b2", "sum_not_mean", "m", "b2",
     SHAPES),
    ("W2_whole_times_m", _edit(W2, lambda g, t, m, n, l2: m * g), "W2", "sum_not_mean", "whole",
     "W2", SHAPES),
    ("S2_data_term_summed", seed_errata.erratum_grad_fn("S2"), "W2", "sum_not_mean", "data_term",
     "W2", SHAPES),
    ("S1_swapped_cases", seed_errata.erratum_grad_fn("S1"), "b2", "output_error",
     "swapped_cases", "W1 b1 W2 b2", SHAPES),
]
CASES = [pytest.param(fn, name, kind, tag, tuple(failed.split()), sizes, m,
                      id=f"{case}-{'x'.join(map(str, sizes))}-m{m}")
         for case, fn, name, kind, tag, failed, shapes in MISTAKES for sizes, m in shapes]


@pytest.mark.parametrize("sizes,m", SHAPES + SQUARE[:1])
@pytest.mark.parametrize("grad_fn", [mj.grads, seed_errata.erratum_grad_fn(None)],
                         ids=["mj.grads", "source-corrected"])
def test_correct_gradient_passes_with_no_mistake(grad_fn, sizes, m):
  d = _diagnosis(grad_fn, sizes, m)
  assert d.passed and d.failed == ()
  assert [e.name for e in d.entries] == ["W1", "b1", "W2", "b2"]
  assert all(e.kind is None and e.repro is None and e.rel_err <= 1e-12 for e in d.entries)
  assert str(d).endswith("PASSED")


@pytest.mark.parametrize("grad_fn,name,kind,tag,failed,sizes,m", CASES)
def test_each_mistake_is_diagnosed_as_its_kind(grad_fn, name, kind, tag, failed, sizes, m):
  d = _diagnosis(grad_fn, sizes, m, repro=False)
  assert d.failed == failed, str(d)
  entry = d[name]
  assert entry.rel_err > 1e-12
  assert entry.kind == kind, str(d)
  assert tag in (entry.factor, entry.detail), str(d)
  assert all(d[other].kind == kind for other in failed), str(d)
  assert kind in KINDS and entry.where in WHERE


def test_S4_on_the_source_network_is_b1_off_by_m_over_n():
  """(S4) divides dL/db1 by n = 256: b1 is off by the constant factor m/n on every draw."""
  params = mj.init_params(jax.random.PRNGKey(0), (256, 256, 10))
  x, y = make_batch(1, (256, 256, 10), 37, jnp.float32)
  d = diagnose(seed_errata.erratum_grad_fn("S4"), params, jnp.abs(x), y, 0.1)
  assert d.failed == ("b1",)
  b1 = d["b1"]
  assert (b1.kind, b1.factor, b1.where) == ("scale", "m/n", "all")
  assert "off by the constant factor m/n" in b1.explanation
  assert abs(b1.rel_errs[0] - (1 - 37 / 256)) < 1e-12  # the given batch: as check_gradients says
  assert sum(b1.repro.layer_sizes) + b1.repro.m <= 8, b1.repro
  assert "off by the constant factor m/n" in str(d)


@pytest.mark.parametrize("index,name", [(W1, "W1"), (B2, "b2")])
@pytest.mark.parametrize("size", [1e-3, 1e-7])
def test_noise_is_unexplained_never_a_pattern(index, name, size):
  d = _diagnosis(_noisy(index, size), (6, 5, 3), 7, repro=False)
  assert d.failed == (name,)
  assert d[name].kind == "unexplained", str(d)


def test_a_factor_that_changes_with_m_unlike_any_size_ratio_is_unexplained():
  """A hard-coded batch size 7 (g * 7 / m) is proportional on each draw, but not one factor."""
  d = _diagnosis(_edit(B1, lambda g, t, m, n, l2: g * 7 / m), (6, 5, 3), 7, repro=False)
  assert d["b1"].kind == "unexplained"
  assert "factor changes between draws" in d["b1"].explanation


def test_where_names_rows_columns_and_sign():
  zero_row = _edit(W1, lambda g, t, m, n, l2: g.at[2].set(0.0))
  zero_col = _edit(W2, lambda g, t, m, n, l2: g.at[:, 1].multiply(-1.0))
  rows, cols = (_diagnosis(f, (6, 5, 3), 7, repro=False) for f in (zero_row, zero_col))
  assert (rows["W1"].where, rows["W1"].where_indices) == ("rows", (2,))
  assert (cols["W2"].where, cols["W2"].where_indices) == ("columns", (1,))
  assert "opposite sign" in cols["W2"].where_text
  flipped = _diagnosis(_edit(B2, lambda g, t, m, n, l2: -g), (6, 5, 3), 7, repro=False)
  assert flipped["b2"].where == "sign"


def test_minimal_repro_is_small_and_its_snippet_runs():
  grad_fn = _edit(B1, lambda g, t, m, n, l2: g * m / n)
  d = _diagnosis(grad_fn, (8, 4, 3), 7)
  repro = d["b1"].repro
  assert repro.layer_sizes == (2, 2, 2) and repro.m == 1 and repro.rel_err > 1e-12
  out = io.StringIO()
  before = jax.config.jax_enable_x64
  try:  # the snippet turns x64 on globally, as a user's script would: undo it for the next tests
    with contextlib.redirect_stdout(out), jax.enable_x64(True):
      exec(repro.snippet, {"grad_fn": grad_fn})
  finally:
    jax.config.update("jax_enable_x64", before)
  assert "b1 got:" in out.getvalue() and "rel. error: 0.5" in out.getvalue()


def test_relu_tie_mistake_repro_uses_a_ties_problem():
  d = _diagnosis(_masked_grads(lambda h: (h >= 0).astype(h.dtype)), (6, 5, 3), 7)
  assert d.failed == ("W1", "b1")
  assert d["b1"].rel_errs[:-1] == pytest.approx([0.0] * (len(d.draws) - 1), abs=1e-12)
  assert d["b1"].repro.ties and "ties=True" in d["b1"].repro.snippet


def test_each_leaf_says_whether_it_is_a_weight_and_where_it_sits():
  params = mj.init_params(jax.random.PRNGKey(0), (6, 5, 4, 3))
  leaves = param_leaves(params)
  assert [(leaf.name, leaf.is_weight, leaf.subscript) for leaf in leaves] == [
      ("W1", True, "[0][0]"), ("b1", False, "[0][1]"), ("W2", True, "[1][0]"),
      ("b2", False, "[1][1]"), ("W3", True, "[2][0]"), ("b3", False, "[2][1]")]
  flat = jax.tree.leaves(params)
  assert all(flat[leaf.index] is getattr(params[leaf.layer], leaf.field) for leaf in leaves)


def test_random_problem_ties_are_exact_zeros():
  with jax.enable_x64(True):
    params, x, y = random_problem(3, (6, 5, 4, 3), 4, ties=True)
    h1 = x @ params[0].w + params[0].b[None, :]
    h2 = jax.nn.relu(h1) @ params[1].w + params[1].b[None, :]
    assert params[0].w.dtype == jnp.float64 and y.dtype == jnp.int32
    assert bool((h1[0, ::2] == 0).all()) and bool((h2[0, ::2] == 0).all())


def test_report_is_a_table_and_json():
  d = _diagnosis(_edit(B1, lambda g, t, m, n, l2: g * m / n), (6, 5, 3), 7)
  text = str(d)
  for word in ("param", "result", "rel. error", "where", "likely mistake", "minimal reproduction",
               "random_problem(0, (2, 2, 2), m=1)", "FAILED: b1"):
    assert word in text, text
  record = json.loads(json.dumps(d.to_dict()))
  assert record["passed"] is False
  assert record["entries"][1]["kind"] == "scale" and record["entries"][1]["factor"] == "m/n"
  assert [draw["m"] for draw in record["draws"]] == [7, 7, 13, 11, 13]  # 5 is a width


def test_nonfinite_gradient_is_reported_not_raised():
  d = _diagnosis(_edit(B2, lambda g, t, m, n, l2: g / 0.0), (6, 5, 3), 7, repro=False)
  assert d["b2"].kind == "unexplained" and d["b2"].where in ("nonfinite", "sign", "all")
  json.dumps(d.to_dict(), allow_nan=False)


@pytest.mark.parametrize("grad_fn,error,message", [
    (lambda params, x: mj.grads(params, x, None), mj.InputTypeError,
     r"grad_fn\(params, x, y, l2\).*TypeError"),
    (lambda p, x, y, l2: {"W1": 0}, mj.InputTypeError,
     r"a tuple of 2 mlp_jax.Dense.*got a dict"),
    (lambda p, x, y, l2: mj.grads(p, x, y, l2)[:1], mj.InputTypeError,
     r"a tuple of 2 mlp_jax.Dense.*got a tuple of 1 items"),
    (_edit(W1, lambda g, t, m, n, l2: g.T), mj.InputError,
     r"grad_fn returned W1 of shape \(5, 6\), expected \(6, 5\) \(its transpose"),
    (_edit(B1, lambda g, t, m, n, l2: g[:-1]), mj.InputError,
     r"grad_fn returned b1 of shape \(4,\), expected \(5,\)"),
    (_edit(B2, lambda g, t, m, n, l2: None), mj.InputTypeError,
     r"grad_fn returned b2 of type NoneType, expected an array of shape \(3,\)"),
    (_edit(B2, lambda g, t, m, n, l2: [0.0, 0.0, 0.0]), mj.InputTypeError,
     r"grad_fn returned b2 of type list"),
    ("not a function", mj.InputTypeError, r"grad_fn must be callable"),
], ids=["signature", "dict", "too-few-layers", "non-square-transpose", "short-bias", "none-leaf",
        "list-leaf", "not-callable"])
def test_bad_grad_fn_raises_a_clear_error(grad_fn, error, message):
  with pytest.raises(error, match=message):
    _diagnosis(grad_fn, (6, 5, 3), 7)


# --------------------- other networks: the activations (E16)-(E21) and outputs (E22)-(E25)

def _gelu_derivative(h):
  """Phi(h) + h phi(h), (E21)."""
  return jax.scipy.stats.norm.cdf(h) + h * jax.scipy.stats.norm.pdf(h)


# activation spec -> (g(h), g'(h) from (h, a)), written out here, (E16)-(E21)
HIDDEN = {
    "relu": (jax.nn.relu, lambda h, a: (h > 0).astype(h.dtype)),
    "logistic": (jax.nn.sigmoid, lambda h, a: a * (1 - a)),
    "tanh": (jnp.tanh, lambda h, a: 1 - a ** 2),
    "leaky_relu:0.2": (lambda h: jnp.where(h > 0, h, 0.2 * h),
                       lambda h, a: jnp.where(h > 0, 1.0, 0.2)),
    "gelu": (lambda h: h * jax.scipy.stats.norm.cdf(h), lambda h, a: _gelu_derivative(h)),
}
# output -> its output error dl/dz from (z, y), written out here, (E7), (E23)-(E25)
ERRORS = {
    "softmax_cross_entropy":
        lambda z, y: jax.nn.softmax(z, axis=1) - jax.nn.one_hot(y, z.shape[1], dtype=z.dtype),
    "sigmoid_binary_cross_entropy": lambda z, y: jax.nn.sigmoid(z) - y,
    "identity_squared_error": lambda z, y: (z - y) / z.shape[1],
    "poisson_log_link": lambda z, y: jnp.exp(z) - y,
}
SOFTMAX, SIGMOID, SQUARED, POISSON = ERRORS


def _written_out(activation, output, *, derivative=None, layer=None, error=None, mean=True):
  """The gradient (E7)-(E12) of a network, with (E16)-(E25), written out by hand for any depth:
  `activation` "tanh" or "tanh,relu" (one per hidden layer), the output's error. A mistake:
  `derivative(h, a)` for g' in hidden layer `layer` (from 1; None: every layer), `error(z, y)`
  for the output error, or (mean=False) the batch sum where the derivation takes the mean."""
  names = activation.split(",")

  def grad_fn(params, x, y, l2=0.0):
    m, hs, acts = x.shape[0], [], [x]
    for i, dense in enumerate(params[:-1]):
      hs.append(acts[-1] @ dense.w + dense.b[None, :])
      acts.append(HIDDEN[names[i % len(names)]][0](hs[-1]))
    z = acts[-1] @ params[-1].w + params[-1].b[None, :]
    delta = (error or ERRORS[output])(z, y) / (m if mean else 1)
    grads = []
    for l in range(len(params) - 1, -1, -1):
      grads.insert(0, mj.Dense(acts[l].T @ delta + l2 / m * params[l].w, delta.sum(0)))
      if l:
        wrong = derivative is not None and layer in (None, l)
        g = derivative if wrong else HIDDEN[names[(l - 1) % len(names)]][1]
        delta = (delta @ params[l].w.T) * g(hs[l - 1], acts[l])
    return tuple(grads)
  return grad_fn


def _targets(output, m, k, seed=0):
  """Targets of the output's kind: labels (m,), 0/1 indicators, reals or counts (m, K)."""
  rng = np.random.default_rng(seed)
  if output == SOFTMAX:
    return jnp.asarray(rng.integers(0, k, m), jnp.int32)
  draw = {SIGMOID: lambda: rng.integers(0, 2, (m, k)), SQUARED: lambda: rng.normal(0, 1, (m, k)),
          POISSON: lambda: rng.poisson(1.0, (m, k))}[output]
  return jnp.asarray(draw(), jnp.float32)


def _net_diagnosis(grad_fn, activation, output, sizes=(6, 5, 3), m=7, **kwargs):
  params = mj.init_params(jax.random.PRNGKey(m), sizes)
  x, _ = make_batch(m, sizes, m, jnp.float32)
  spec = activation.split(",") if "," in activation else activation
  return diagnose(grad_fn, params, x, _targets(output, m, sizes[-1]), L2, activation=spec,
                  output=output, **kwargs)


DEEP = (6, 5, 4, 3)
SUMMED = "data_term whole data_term whole"  # a bias has no penalty: all of it is data term
# (case id, activation, output, the mistake (keywords of _written_out), kind, detail (or one per
# leaf that fails), every leaf that fails (all of them name the mistake), layer sizes)
NET_MISTAKES = [
    ("logistic_derivative_is_a", "logistic", SOFTMAX, dict(derivative=lambda h, a: a),
     "activation_derivative", "function_not_derivative", "W1 b1", SHAPES[0][0]),
    ("logistic_derivative_on_h", "logistic", SIGMOID, dict(derivative=lambda h, a: h * (1 - h)),
     "activation_derivative", "wrong_quantity", "W1 b1", SHAPES[0][0]),
    ("tanh_derivative_1_minus_a", "tanh", SQUARED, dict(derivative=lambda h, a: 1 - a),
     "activation_derivative", "one_minus_a", "W1 b1", SHAPES[0][0]),
    ("tanh_derivative_on_h", "tanh", POISSON, dict(derivative=lambda h, a: 1 - h ** 2),
     "activation_derivative", "wrong_quantity", "W1 b1", SHAPES[0][0]),
    ("tanh_derivative_missing", "tanh", SOFTMAX, dict(derivative=lambda h, a: 1.0),
     "activation_derivative", "no_derivative", "W1 b1", SHAPES[0][0]),
    ("leaky_slope_dropped", "leaky_relu:0.2", SOFTMAX,
     dict(derivative=lambda h, a: (a > 0).astype(a.dtype)), "activation_derivative", "no_slope",
     "W1 b1", SHAPES[0][0]),
    ("gelu_derivative_on_a", "gelu", SQUARED, dict(derivative=lambda h, a: _gelu_derivative(a)),
     "activation_derivative", "wrong_quantity", "W1 b1", SHAPES[0][0]),
    ("logistic_layer_2_is_a", "tanh,logistic", SIGMOID, dict(derivative=lambda h, a: a, layer=2),
     "activation_derivative", "function_not_derivative@2", "W1 b1 W2 b2", DEEP),
    ("tanh_every_layer_on_h", "tanh", SOFTMAX, dict(derivative=lambda h, a: 1 - h ** 2),
     "activation_derivative", "wrong_quantity wrong_quantity wrong_quantity@2 wrong_quantity@2",
     "W1 b1 W2 b2", DEEP),   # W2, b2 see hidden layer 2's derivative only
    ("sigmoid_error_times_2", "relu", SIGMOID,
     dict(error=lambda z, y: 2 * (jax.nn.sigmoid(z) - y)), "output_error", "factor_2",
     "W1 b1 W2 b2", SHAPES[0][0]),
    ("sigmoid_error_on_z", "tanh", SIGMOID, dict(error=lambda z, y: z - y), "output_error",
     "linear_output", "W1 b1 W2 b2", SHAPES[0][0]),
    ("squared_error_times_2", "tanh", SQUARED, dict(error=lambda z, y: 2 * (z - y) / z.shape[1]),
     "output_error", "factor_2", "W1 b1 W2 b2", SHAPES[0][0]),
    ("squared_error_no_1_over_K", "relu", SQUARED, dict(error=lambda z, y: z - y),
     "output_error", "no_over_K", "W1 b1 W2 b2", SHAPES[0][0]),
    ("squared_error_2_no_1_over_K", "logistic", SQUARED, dict(error=lambda z, y: 2 * (z - y)),
     "output_error", "factor_2_no_over_K", "W1 b1 W2 b2", SHAPES[0][0]),
    ("poisson_error_on_z", "relu", POISSON, dict(error=lambda z, y: z - y), "output_error",
     "linear_output", "W1 b1 W2 b2", SHAPES[0][0]),
    ("poisson_error_on_z_deep", "tanh,relu", POISSON, dict(error=lambda z, y: z - y),
     "output_error", "linear_output", "W1 b1 W2 b2 W3 b3", DEEP),
    ("sigmoid_summed", "logistic", SIGMOID, dict(mean=False), "sum_not_mean", SUMMED,
     "W1 b1 W2 b2", SHAPES[0][0]),
    ("squared_summed", "tanh", SQUARED, dict(mean=False), "sum_not_mean", SUMMED,
     "W1 b1 W2 b2", SHAPES[0][0]),
    ("poisson_summed", "gelu", POISSON, dict(mean=False), "sum_not_mean", SUMMED,
     "W1 b1 W2 b2", SHAPES[0][0]),
]


@pytest.mark.parametrize(
    "activation,output,mistake,kind,detail,failed,sizes",
    [pytest.param(*case[1:], id=case[0]) for case in NET_MISTAKES])
def test_each_network_mistake_is_diagnosed_as_its_kind(activation, output, mistake, kind,
                                                        detail, failed, sizes):
  d = _net_diagnosis(_written_out(activation, output, **mistake), activation, output, sizes,
                     repro=False)
  assert d.failed == tuple(failed.split()), str(d)
  details = detail.split() if " " in detail else [detail] * len(d.failed)
  for name, want in zip(d.failed, details):
    assert (d[name].kind, d[name].detail) == (kind, want), str(d)
    assert d[name].rel_err > 1e-12 and d[name].explanation
  assert kind in KINDS and d.network == mj.Network(
      mj.core.network.make_network(activation.split(","), output).activation
      if "," in activation else mj.core.network.parse_activation(activation), output).describe()


NETWORKS = [("logistic", SIGMOID), ("tanh", SQUARED), ("leaky_relu:0.2", POISSON),
            ("gelu", SOFTMAX), ("relu", POISSON), ("tanh,relu", SIGMOID)]


@pytest.mark.parametrize("activation,output", NETWORKS)
@pytest.mark.parametrize("by", ["written_out", "mj.grads"])
def test_correct_gradient_of_each_network_passes(activation, output, by):
  sizes = DEEP if "," in activation else SHAPES[0][0]
  spec = activation.split(",") if "," in activation else activation
  grad_fn = (_written_out(activation, output) if by == "written_out" else
             lambda p, x, y, l2: mj.grads(p, x, y, l2, activation=spec, output=output))
  d = _net_diagnosis(grad_fn, activation, output, sizes)
  assert d.passed and d.failed == (), str(d)
  assert all(e.kind is None and e.rel_err <= 1e-12 for e in d.entries)
  assert f"output {output}" in str(d).splitlines()[0]


def test_a_factor_2_on_one_parameter_is_a_scale_not_the_output_error():
  """A stray 2 in the output error reaches every parameter, the output bias too; on W2 alone it
  is a "scale"."""
  right = _written_out("tanh", SIGMOID)

  def grad_fn(params, x, y, l2):
    g = right(params, x, y, l2)
    w2 = 2 * g[1].w - l2 / x.shape[0] * params[1].w   # data term doubled, penalty right
    return (g[0], mj.Dense(w2, g[1].b))
  d = _net_diagnosis(grad_fn, "tanh", SIGMOID, repro=False)
  assert d.failed == ("W2",)
  assert (d["W2"].kind, d["W2"].factor, d["W2"].detail) == ("scale", "2", "data_term"), str(d)


def test_squared_error_with_K_2_names_both_readings():
  """At K = 2 the missing 1/K and the stray 2 are the same gradient: the report says so."""
  grad_fn = _written_out("tanh", SQUARED, error=lambda z, y: z - y)
  d = _net_diagnosis(grad_fn, "tanh", SQUARED, sizes=(6, 5, 2), repro=False)
  assert (d["b2"].kind, d["b2"].detail) == ("output_error", "no_over_K"), str(d)
  assert "equal at these sizes to" in d["b2"].explanation and "stray factor 2" in str(d)


def test_random_problem_draws_targets_of_the_outputs_kind():
  y = {out: np.asarray(random_problem(0, (4, 3, 5), 40, output=out)[2]) for out in ERRORS}
  assert y[SOFTMAX].dtype == np.int32 and y[SOFTMAX].shape == (40,)
  assert all(y[out].shape == (40, 5) and y[out].dtype == np.float64
             for out in (SIGMOID, SQUARED, POISSON))
  assert set(np.unique(y[SIGMOID])) == {0.0, 1.0}
  assert (y[POISSON] >= 0).all() and (y[POISSON] == np.round(y[POISSON])).all()
  assert (y[SQUARED] < 0).any() and not (y[SQUARED] == np.round(y[SQUARED])).all()
  # the parameters and features are the default draw's, whatever the output
  assert trees_bit_equal(random_problem(0, (4, 3, 5), 40, output=POISSON)[:2],
                         random_problem(0, (4, 3, 5), 40)[:2])


def test_network_mistake_repro_names_the_network_and_its_snippet_runs():
  grad_fn = _written_out("tanh", POISSON, error=lambda z, y: z - y)
  d = _net_diagnosis(grad_fn, "tanh", POISSON)
  text = str(d)
  assert text.splitlines()[0].startswith(
      "gradient diagnosis: layers (6, 5, 3), activation tanh, output poisson_log_link, float64")
  assert "output_error: the output error of (E25) is computed on the linear output" in text
  repro = d["b2"].repro
  assert "activation='tanh', output='poisson_log_link'" in repro.snippet
  out = io.StringIO()
  before = jax.config.jax_enable_x64
  try:
    with contextlib.redirect_stdout(out), jax.enable_x64(True):
      exec(repro.snippet, {"grad_fn": grad_fn})
  finally:
    jax.config.update("jax_enable_x64", before)
  shown = float(out.getvalue().split("rel. error:")[1])
  assert shown == pytest.approx(repro.rel_err, rel=1e-9) and shown > 1e-12


def test_default_network_named_explicitly_is_the_default_report():
  grad_fn = _edit(B1, lambda g, t, m, n, l2: g * m / n)
  params, x, y = _problem((6, 5, 3), 7)
  plain = diagnose(grad_fn, params, x, y, L2, repro=False)
  named = diagnose(grad_fn, params, x, y, L2, repro=False, activation="relu",
                   output="softmax_cross_entropy")
  assert str(plain) == str(named) and plain.to_dict() == named.to_dict()
  assert "activation" not in str(plain).splitlines()[0]


# ------------------------------------------------------- mlp-jax check --activation --output

SMALL = ["check", "--features", "6", "--hidden", "5", "4", "--classes", "3", "--m", "7"]


@pytest.mark.parametrize("activation,output", [("tanh,logistic", POISSON),
                                               ("leaky_relu:0.2", SIGMOID)])
def test_check_of_another_network_passes(activation, output, capsys):
  code, text, _ = run_cli(SMALL + ["--activation", activation, "--output", output], capsys)
  assert code == 0 and text.rstrip().endswith("PASSED"), text
  head = text.splitlines()[0]
  assert f"activation {activation}, output {output}" in head, head


def test_check_diagnoses_a_user_gradient_of_another_network(tmp_path, capsys):
  user = tmp_path / "my_poisson.py"
  user.write_text(
      "import jax.numpy as jnp\n"
      "import mlp_jax as mj\n"
      "def grads(params, x, y, l2):\n"
      "  (l1, l2_), m = params, x.shape[0]\n"
      "  h = x @ l1.w + l1.b[None, :]\n"
      "  a = jnp.tanh(h)\n"
      "  z = a @ l2_.w + l2_.b[None, :]\n"
      "  e = (z - y) / m                      # the mistake: z - y, not exp(z) - y\n"
      "  d = (e @ l2_.w.T) * (1 - a ** 2)\n"
      "  return (mj.Dense(x.T @ d + l2 / m * l1.w, d.sum(0)),\n"
      "          mj.Dense(a.T @ e + l2 / m * l2_.w, e.sum(0)))\n")
  args = ["check", "--features", "6", "--hidden", "5", "--classes", "3", "--m", "7",
          "--activation", "tanh", "--output", POISSON, "--grads", f"{user}:grads"]
  code, text, _ = run_cli(args, capsys)
  assert code == 1, text
  assert "activation tanh, output poisson_log_link" in text.splitlines()[0]
  assert text.count("output_error: the output error of (E25) is computed on the linear output") \
      == 4, text
  code, text, _ = run_cli(args[:-6] + ["--grads", f"{user}:grads"], capsys)  # softmax: labels
  assert code == 2 and "your function" in one_error_line(_)


@pytest.mark.parametrize("options,needle", [
    (["--activation", "tanh,relu,relu"], "--activation: expected one activation per hidden "
                                         "layer (2), got 3"),
    (["--activation", "leaky_relu:steep"], "--activation: expected leaky_relu:SLOPE"),
    (["--activation", "tanh,softsign"], "--activation[1]: expected one of"),
    (["--output", "hinge"], "--output: expected one of identity_squared_error, "),
], ids=["count", "slope", "name", "output"])
def test_check_refuses_a_bad_network_in_one_line(options, needle, capsys):
  code, _, err = run_cli(SMALL + options, capsys)
  assert code == 2 and needle in one_error_line(err), err


def test_check_help_names_every_activation_and_output(capsys):
  with pytest.raises(SystemExit):
    run_cli(["check", "--help"], capsys)
  text = capsys.readouterr().out
  for name in list(mj.ACTIVATIONS) + list(mj.OUTPUTS) + ["leaky_relu:SLOPE", "tanh,relu"]:
    assert name in text, name
