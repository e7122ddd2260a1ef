"""Property tests: for random architectures, batches, lambda and data the analytic gradient,
the per-example gradients and their norms agree with autodiff (float64 bar)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
from hypothesis import given, settings, strategies as st

import mlp_jax as mj
from conftest import RTOL, assert_tree_close

problems = st.fixed_dictionaries({
    "sizes": st.lists(st.integers(1, 12), min_size=2, max_size=5).map(tuple),
    "m": st.integers(1, 17),
    "l2": st.one_of(st.just(0.0), st.floats(1e-4, 10.0)),
    "scale": st.floats(0.1, 30.0),
    "seed": st.integers(0, 2**31 - 1),
})


def _build(p):
  rng = np.random.default_rng(p["seed"])
  params = mj.init_params(jax.random.PRNGKey(p["seed"] % 1000), p["sizes"], jnp.float64)
  x = jnp.asarray(p["scale"] * rng.standard_normal((p["m"], p["sizes"][0])))
  y = jnp.asarray(rng.integers(0, p["sizes"][-1], p["m"]).astype(np.int32))
  return params, x, y


@settings(max_examples=30, deadline=None)
@given(problems)
def test_analytic_equals_autodiff_for_random_problems(p):
  with jax.enable_x64(True):
    params, x, y = _build(p)
    assert_tree_close(mj.grads(params, x, y, p["l2"]),
                      mj.autodiff_grads(params, x, y, p["l2"]), RTOL["float64"])


@settings(max_examples=20, deadline=None)
@given(problems)
def test_per_example_and_norms_for_random_problems(p):
  with jax.enable_x64(True):
    params, x, y = _build(p)
    want = mj.autodiff_per_sample_grads(params, x, y)
    assert_tree_close(mj.per_sample_grads(params, x, y), want, RTOL["float64"])
    np.testing.assert_allclose(mj.per_sample_grad_norms(params, x, y),
                               jax.vmap(optax.tree.norm)(want), rtol=1e-11, atol=1e-300)
