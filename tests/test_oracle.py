"""The oracle and its report: it passes the library's gradients and catches each erratum (S1)-(S4)."""

import importlib.util
import pathlib

import jax
import jax.numpy as jnp
import pytest

import mlp_jax as mj
from conftest import make_batch

_spec = importlib.util.spec_from_file_location(
    "seed_errata", pathlib.Path(__file__).parents[1] / "examples" / "seed_errata.py")
seed_errata = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(seed_errata)

# Which parameters each erratum corrupts (W1, b1, W2, b2 in tree order).
WRONG = {None: set(), "S1": {"W1", "b1", "W2", "b2"}, "S2": {"W2"}, "S3": {"W1"}, "S4": {"b1"}}


def _setup(dtype, m=37, sizes=(256, 256, 10)):
  params = mj.init_params(jax.random.PRNGKey(0), sizes, dtype)
  x, y = make_batch(1, sizes, m, dtype)
  return params, jnp.abs(x), y


def test_report_passes_analytic_gradients(dtype):
  params, x, y = _setup(dtype)
  report = mj.check_gradients(params, x, y, 0.1)
  assert report.passed
  assert [c.name for c in report.checks] == ["W1", "b1", "W2", "b2"]
  assert report.rtol == {"float32": 1e-5, "float64": 1e-12}[dtype.name]
  text = str(report)
  assert "PASSED" in text and "W1" in text and "256x256" in text
  assert report.to_dict()["passed"] is True


@pytest.mark.parametrize("erratum", list(WRONG))
def test_oracle_catches_each_erratum(erratum, dtype):
  params, x, y = _setup(dtype)
  report = mj.check_gradients(params, x, y, 0.1, grad_fn=seed_errata.erratum_grad_fn(erratum))
  failed = {c.name for c in report.checks if not c.passed}
  assert failed == WRONG[erratum], str(report)
  assert report.passed == (erratum is None)


def test_S4_is_off_by_m_over_n_and_invisible_when_m_equals_n():
  """(S4) divides dL/db1 by n: relative error 1 - m/n (0.86 at m = 37, n = 256), 0 at m = n."""
  with jax.enable_x64(True):
    params, x, y = _setup(jnp.float64, m=37)
    report = mj.check_gradients(params, x, y, grad_fn=seed_errata.erratum_grad_fn("S4"))
    b1 = {c.name: c for c in report.checks}["b1"]
    assert not b1.passed
    assert abs(b1.rel_err - (1 - 37 / 256)) < 1e-12
    params, x, y = _setup(jnp.float64, m=256)
    assert mj.check_gradients(params, x, y, grad_fn=seed_errata.erratum_grad_fn("S4")).passed


def test_finite_differences_catch_a_wrong_oracle_scale():
  """The FD column checks jax.grad itself: it is a real measurement, not a constant."""
  from mlp_jax.oracle import check as oracle
  with jax.enable_x64(True):
    params, x, y = _setup(jnp.float64, m=9, sizes=(6, 5, 3))
    fd, exact = oracle._directional_fd(params, x, y, 0.0, jax.random.PRNGKey(0), 1e-6, 4)
    assert mj.relative_error(fd, exact) < 1e-6
    assert mj.relative_error(fd, 1.01 * exact) > 5e-3
    # A real measurement: a large step moves it off the exact derivative (ReLU kinks, curvature).
    coarse, _ = oracle._directional_fd(params, x, y, 0.0, jax.random.PRNGKey(0), 1.0, 4)
    assert mj.relative_error(coarse, exact) > 1e-3


def test_report_fails_when_finite_differences_disagree_with_the_oracle(monkeypatch):
  """A correct analytic gradient still fails the report if jax.grad disagrees with FD."""
  from mlp_jax.oracle import check as oracle
  true_fd = oracle._directional_fd

  def off_by_one_percent(*args, **kwargs):
    fd, exact = true_fd(*args, **kwargs)
    return 1.01 * fd, exact

  monkeypatch.setattr(oracle, "_directional_fd", off_by_one_percent)
  with jax.enable_x64(True):
    params, x, y = _setup(jnp.float64, m=9, sizes=(6, 5, 3))
    report = mj.check_gradients(params, x, y, 0.1)
  assert not report.passed
  assert all(c.rel_err <= report.rtol and not c.passed for c in report.checks)
  assert all(abs(c.fd_rel_err - 0.01) < 1e-4 for c in report.checks), str(report)
