"""How the bars are defined (docs/derivation.md): the relative error with its floor, the floor
`gradient_scale` (the magnitude of the terms each gradient entry sums), and the Hypothesis
profiles that keep the property tests repeatable."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import settings

import mlp_jax as mj
from conftest import make_batch
from mlp_jax.oracle.check import gradient_scale, per_example_gradient_scale

SHAPES = [((256, 256, 10), 37), ((5, 3, 2), 7), ((7, 4, 9, 5, 3), 1), ((3, 11, 4), 2),
          ((6, 5, 4, 3), 13)]


def test_relative_error_floors_the_denominator_at_the_scale():
  a, r = np.array([1.0, 2.0, 2.0 + 3e-3]), np.array([1.0, 2.0, 2.0])  # ||a - r|| = 3e-3, ||r|| = 3
  assert mj.relative_error(a, r) == pytest.approx(1e-3, rel=1e-12)
  assert mj.relative_error(a, r, scale=None) == mj.relative_error(a, r)
  assert mj.relative_error(a, r, np.full(3, 0.5)) == mj.relative_error(a, r)  # ||scale|| < ||r||
  assert mj.relative_error(a, r, np.array([0.0, 0.0, 30.0])) == pytest.approx(1e-4, rel=1e-12)
  # Cancellation: a reference ~0 is held to its terms, not to itself.
  assert mj.relative_error([1e-17], [0.0]) == 1e-17                       # no denominator at all
  assert mj.relative_error([2e-17], [1e-17]) == pytest.approx(1.0)
  assert mj.relative_error([2e-17], [1e-17], [0.5]) == pytest.approx(2e-17)
  assert mj.relative_error(np.zeros(2), np.zeros(2), np.zeros(2)) == 0.0


def _brute_force_terms(params, x, y, l2):
  """Every term the gradient entries (E8)-(E12) sum, by enumerating the paths of the chain rule
  one example, one unit and one class at a time: {leaf name: array of lists of terms}."""
  p = [(np.asarray(l.w), np.asarray(l.b)) for l in params]
  x, y, m, depth = np.asarray(x), np.asarray(y), x.shape[0], len(p)
  terms = {(kind, l): np.empty(p[l][0 if kind == "W" else 1].shape, object)
           for l in range(depth) for kind in "Wb"}
  for cell in terms.values():
    for index in np.ndindex(cell.shape):
      cell[index] = []
  for i in range(m):
    a = [x[i]]
    for w, b in p[:-1]:
      a.append(np.maximum(a[-1] @ w + b, 0))
    z = a[-1] @ p[-1][0] + p[-1][1]
    yhat = np.exp(z - z.max()) / np.exp(z - z.max()).sum()

    def paths(l, q):  # the terms of dl_i/dh_l[q], layer l counted from 0
      if l == depth - 1:
        return [yhat[q], -float(q == y[i])]  # E = Yhat - Y as two terms, (E7)
      if a[l + 1][q] <= 0:
        return []  # the ReLU mask, (E10)
      return [p[l + 1][0][q, r] * t for r in range(p[l + 1][0].shape[1]) for t in paths(l + 1, r)]

    for l in range(depth):
      for q in range(p[l][0].shape[1]):
        delta = paths(l, q)
        terms["b", l][q] += [t / m for t in delta]
        for k in range(p[l][0].shape[0]):
          terms["W", l][k, q] += [a[l][k] * t / m for t in delta]
  for l in range(depth):
    for index in np.ndindex(p[l][0].shape):
      terms["W", l][index].append(l2 / m * p[l][0][index])  # the penalty, (E8), (E11)
  return terms


def test_gradient_scale_is_the_sum_of_the_magnitudes_of_the_terms_summed():
  """Against the chain rule expanded term by term on a 3-layer net: the signed terms add up to
  jax.grad (the expansion is complete), their magnitudes to `gradient_scale`."""
  with jax.enable_x64(True):
    sizes, m, l2 = (3, 4, 3, 2), 3, 0.3
    params = mj.init_params(jax.random.PRNGKey(2), sizes, jnp.float64)
    x, y = make_batch(2, sizes, m, jnp.float64)
    terms = _brute_force_terms(params, x, y, l2)
    scale, want = gradient_scale(params, x, y, l2), mj.autodiff_grads(params, x, y, l2)
    for l in range(len(params)):
      for kind, got_scale, got_grad in (("W", scale[l].w, want[l].w), ("b", scale[l].b, want[l].b)):
        cell = terms[kind, l]
        magnitudes = np.vectorize(lambda ts: sum(abs(t) for t in ts), otypes=[float])(cell)
        sums = np.vectorize(lambda ts: sum(ts), otypes=[float])(cell)
        np.testing.assert_allclose(sums, got_grad, rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(got_scale, magnitudes, rtol=1e-12, atol=0)


def test_gradient_scale_where_no_cancellation_is_possible():
  """One layer, every label the same class t, x > 0: each entry sums terms of one sign, so the
  scale is |gradient| plus exactly the 2 * Yhat * Y that E = Yhat - Y cancels in column t; and
  lambda adds (lambda / m) |W|, (E8)."""
  with jax.enable_x64(True):
    sizes, m = (6, 4), 9
    params = mj.init_params(jax.random.PRNGKey(1), sizes, jnp.float64)
    x, _ = make_batch(1, sizes, m, jnp.float64)
    x, y = jnp.abs(x), jnp.full((m,), 2, jnp.int32)
    g, scale = mj.autodiff_grads(params, x, y), gradient_scale(params, x, y)
    both = jax.nn.softmax(mj.forward(params, x)) * jax.nn.one_hot(y, 4, dtype=jnp.float64)
    np.testing.assert_allclose(scale[0].w, jnp.abs(g[0].w) + 2 / m * x.T @ both, rtol=1e-13)
    np.testing.assert_allclose(scale[0].b, jnp.abs(g[0].b) + 2 / m * both.sum(0), rtol=1e-13)
    off = np.arange(4) != 2  # no Y in these columns: the scale is exactly |gradient|
    np.testing.assert_allclose(scale[0].w[:, off], jnp.abs(g[0].w[:, off]), rtol=1e-13)
    penalised = gradient_scale(params, x, y, 0.7)
    np.testing.assert_allclose(penalised[0].w - scale[0].w, 0.7 / m * jnp.abs(params[0].w),
                               rtol=1e-12)
    np.testing.assert_array_equal(penalised[0].b, scale[0].b)


@pytest.mark.parametrize("l2", [0.0, 0.7])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s[0])) + f"-m{s[1]}")
def test_gradient_scale_bounds_the_gradient(shape, l2, dtype):
  sizes, m = shape
  params = mj.init_params(jax.random.PRNGKey(m), sizes, dtype)
  x, y = make_batch(m, sizes, m, dtype)
  scale = gradient_scale(params, x, y, l2)
  g = mj.autodiff_grads(params, x, y, l2)
  u = float(jnp.finfo(dtype).eps)
  for s, leaf in zip(jax.tree.leaves(scale), jax.tree.leaves(g)):
    assert s.shape == leaf.shape and s.dtype == leaf.dtype
    assert bool(jnp.all(s >= jnp.abs(leaf) - 1e3 * u * s))  # up to the roundoff it bounds


def test_per_example_scale_is_the_scale_of_each_example_alone():
  """(E13): one example, m = 1, no penalty; it bounds the per-example gradients."""
  with jax.enable_x64(True):
    sizes, m = (5, 4, 3), 6
    params = mj.init_params(jax.random.PRNGKey(4), sizes, jnp.float64)
    x, y = make_batch(4, sizes, m, jnp.float64)
    per_example = per_example_gradient_scale(params, x, y)
    for i in (0, 3, 5):
      alone = gradient_scale(params, x[i:i + 1], y[i:i + 1])
      for got, want in zip(jax.tree.leaves(per_example), jax.tree.leaves(alone)):
        np.testing.assert_allclose(got[i], want, rtol=1e-14)
    g = mj.autodiff_per_sample_grads(params, x, y)
    for s, leaf in zip(jax.tree.leaves(per_example), jax.tree.leaves(g)):
      assert s.shape == leaf.shape and bool(jnp.all(s >= jnp.abs(leaf) * (1 - 1e-12)))


def test_hypothesis_profiles_are_repeatable_unless_exploring(request):
  """No example database in either profile; the default one derandomized (tests/conftest.py)."""
  assert settings.get_profile("default").derandomize
  assert not settings.get_profile("explore").derandomize
  assert settings.get_profile("default").database is None
  assert settings.get_profile("explore").database is None
  chosen = request.config.getoption("hypothesis_profile", None)
  if chosen is None and "HYPOTHESIS_PROFILE" not in os.environ:
    assert settings.default.derandomize and settings.default.database is None
