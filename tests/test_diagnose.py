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
from conftest import make_batch
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
