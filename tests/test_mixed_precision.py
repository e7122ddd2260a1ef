"""bfloat16 GEMMs with float32 parameters, accumulation and softmax."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import mlp_jax as mj
from conftest import make_batch, tree_rel_errors

# bfloat16 keeps 8 significant bits (unit roundoff 2^-9 ~ 2e-3); products are accumulated in
# float32, so whole-array relative errors stay a few times that. The oracle is jax.grad of the
# same bfloat16-GEMM forward pass; the bar:
BF16_RTOL = 1e-2


@pytest.mark.parametrize("sizes, m", [((256, 256, 10), 64), ((256, 512, 128, 10), 33)])
def test_bf16_analytic_gradients_match_the_float32_oracle(sizes, m):
  params = mj.init_params(jax.random.PRNGKey(0), sizes)
  x, y = make_batch(0, sizes, m, jnp.float32)
  loss, got = mj.loss_and_grads(params, x, y, 0.1, compute_dtype=jnp.bfloat16)
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(got))
  assert loss.dtype == jnp.float32
  errors = tree_rel_errors(got, mj.autodiff_grads(params, x, y, 0.1, compute_dtype=jnp.bfloat16))
  assert max(errors) <= BF16_RTOL, errors
  against_f32 = tree_rel_errors(got, mj.autodiff_grads(params, x, y, 0.1))
  assert min(against_f32) > 1e-4  # the GEMMs really ran in bfloat16
  assert max(against_f32) < 0.1   # and bfloat16 stays close to the float32 gradient
  np.testing.assert_allclose(loss, mj.loss(params, x, y, 0.1), rtol=BF16_RTOL)


def _dot_operand_dtypes(jaxpr):
  """The operand dtypes of every dot_general in a jaxpr, nested jaxprs included."""
  found = []
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "dot_general":
      found.append(tuple(v.aval.dtype for v in eqn.invars))
    for value in eqn.params.values():  # sub-jaxprs of pjit, scan, cond, ...
      for item in value if isinstance(value, (tuple, list)) else (value,):
        sub = getattr(item, "jaxpr", item)
        if hasattr(sub, "eqns"):
          found += _dot_operand_dtypes(sub)
  return found


@pytest.mark.parametrize("sizes", [(256, 256, 10), (256, 512, 128, 10)])
def test_bf16_runs_every_gemm_forward_and_backward_in_bfloat16(sizes):
  from mlp_jax.core import backprop
  params = mj.init_params(jax.random.PRNGKey(0), sizes)
  x, y = make_batch(0, sizes, 8, jnp.float32)
  jaxpr = jax.make_jaxpr(lambda p, x, y: backprop.objective_and_grads(
      p, x, y, 0.1, compute_dtype=jnp.bfloat16))(params, x, y)
  dots = _dot_operand_dtypes(jaxpr.jaxpr)
  layers = len(sizes) - 1
  assert len(dots) == 3 * layers - 1  # L forward, L - 1 error signals (E10), L weight gradients
  assert all(dtypes == (jnp.bfloat16, jnp.bfloat16) for dtypes in dots), dots


def test_bf16_training_reaches_float32_accuracy(standard_promotion):
  data = mj.data.make_synthetic(1200, 64, 10, seed=1, noise=2.0)
  train, test = mj.data.train_val_split(data, 0.25, seed=0)
  params = mj.init_params(jax.random.PRNGKey(0), (64, 128, 10))
  accs = {}
  for name, dtype in (("f32", None), ("bf16", jnp.bfloat16)):
    result = mj.fit(params, train, optimizer=optax.adam(1e-3), epochs=8, batch_size=64,
                    compute_dtype=dtype)
    accs[name] = mj.evaluate(result.params, *test)[1]
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(result.params))
  assert accs["f32"] > 0.8
  assert abs(accs["bf16"] - accs["f32"]) <= 0.02, accs
