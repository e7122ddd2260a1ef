"""Per-example gradients (E13), their mean (E14), norms (E15) and clipped means."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import mlp_jax as mj
from conftest import assert_tree_close, make_batch, shape_id

SHAPES = [((256, 256, 10), 37), ((256, 256, 10), 1), ((256, 512, 128, 10), 16), ((5, 3, 2), 7)]


def _setup(shape, dtype, seed=0):
  sizes, m = shape
  params = mj.init_params(jax.random.PRNGKey(seed), sizes, dtype)
  x, y = make_batch(seed + 1, sizes, m, dtype)
  return params, x, y


def _single_sample_analytic(params, x_i, y_i):
  """The batch analytic gradient at m = 1 is dl_i/dtheta when lambda = 0."""
  return mj.grads(params, x_i[None], y_i[None])


@pytest.mark.parametrize("shape", SHAPES, ids=shape_id)
def test_per_sample_grads_E13_match_vmap_grad(shape, dtype, rtol):
  params, x, y = _setup(shape, dtype)
  want = mj.autodiff_per_sample_grads(params, x, y)
  assert_tree_close(mj.per_sample_grads(params, x, y), want, rtol)
  assert_tree_close(jax.vmap(_single_sample_analytic, in_axes=(None, 0, 0))(params, x, y),
                    want, rtol)


@pytest.mark.parametrize("chunk_size", [1, 5, 64])
def test_per_sample_grads_chunked_equal_unchunked(chunk_size, dtype, rtol):
  params, x, y = _setup(((7, 6, 3), 23), dtype)
  assert_tree_close(mj.per_sample_grads(params, x, y, chunk_size=chunk_size),
                    mj.per_sample_grads(params, x, y), rtol)


@pytest.mark.parametrize("l2", [0.0, 0.4])
@pytest.mark.parametrize("shape", SHAPES, ids=shape_id)
def test_mean_of_per_sample_plus_penalty_is_batch_gradient_E14(shape, l2, dtype, rtol):
  params, x, y = _setup(shape, dtype)
  m = x.shape[0]
  per = mj.per_sample_grads(params, x, y)
  mean = tuple(mj.Dense(g.w.mean(0) + l2 / m * p.w, g.b.mean(0)) for g, p in zip(per, params))
  assert_tree_close(mean, mj.grads(params, x, y, l2), rtol)


@pytest.mark.parametrize("shape", SHAPES, ids=shape_id)
def test_per_sample_norms_E15_match_vmap_grad_norms(shape, dtype, rtol):
  params, x, y = _setup(shape, dtype)
  per = mj.autodiff_per_sample_grads(params, x, y)
  np.testing.assert_allclose(mj.per_sample_grad_norms(params, x, y),
                             jax.vmap(optax.tree.norm)(per), rtol=10 * rtol)
  layer_norms = mj.per_sample_layer_norms(params, x, y)
  for got, g in zip(layer_norms, per):
    np.testing.assert_allclose(got.w, jnp.sqrt((g.w ** 2).sum((1, 2))), rtol=10 * rtol)
    np.testing.assert_allclose(got.b, jnp.sqrt((g.b ** 2).sum(1)), rtol=10 * rtol)


def _explicit_clipped_mean(params, x, y, clip_norm, l2):
  per = mj.autodiff_per_sample_grads(params, x, y)
  norms = jax.vmap(optax.tree.norm)(per)
  scale = jnp.minimum(1, clip_norm / norms)
  m = x.shape[0]
  return tuple(
      mj.Dense(jnp.einsum("m,mij->ij", scale, g.w) / m + l2 / m * p.w,
               jnp.einsum("m,mj->j", scale, g.b) / m)
      for g, p in zip(per, params))


@pytest.mark.parametrize("l2", [0.0, 0.3])
@pytest.mark.parametrize("shape", SHAPES, ids=shape_id)
def test_clipped_mean_matches_explicit_clipping(shape, l2, dtype, rtol):
  params, x, y = _setup(shape, dtype)
  norms = mj.per_sample_grad_norms(params, x, y)
  clip = float(jnp.median(norms))  # about half the examples are clipped
  got = mj.clipped_mean_grads(params, x, y, clip, l2)
  assert_tree_close(got, _explicit_clipped_mean(params, x, y, clip, l2), 10 * rtol)


def test_clipping_leaves_small_and_zero_gradients_untouched(dtype, rtol):
  params, x, y = _setup(((5, 4, 3), 6), dtype)
  # Example 0 gets a zero gradient: all of its hidden units are dead and its logits are exact.
  x = x.at[0].set(0)
  params = (mj.Dense(params[0].w, -jnp.ones((4,), dtype)), params[1])
  params = (params[0], mj.Dense(params[1].w, jnp.asarray([0.0, -1e3, -1e3], dtype)))
  y = y.at[0].set(0)
  norms = mj.per_sample_grad_norms(params, x, y)
  assert float(norms[0]) == 0.0
  big = float(norms.max()) * 2
  assert_tree_close(mj.clipped_mean_grads(params, x, y, big), mj.grads(params, x, y), rtol)
  assert_tree_close(mj.clipped_mean_grads(params, x, y, 1e30, 0.5),
                    mj.grads(params, x, y, 0.5), rtol)
  tiny = mj.clipped_mean_grads(params, x, y, 1e-3)
  assert all(bool(jnp.isfinite(g).all()) for g in jax.tree.leaves(tiny))


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf")])
def test_clip_norm_must_be_positive_and_finite(bad):
  params, x, y = _setup(((5, 4, 3), 6), jnp.float32)
  with pytest.raises(mj.InputError, match="clip_norm"):
    mj.clipped_mean_grads(params, x, y, bad)


@pytest.mark.parametrize("bad, error", [(0, mj.InputError), (-3, mj.InputError),
                                        (2.5, mj.InputTypeError), (True, mj.InputTypeError)])
def test_chunk_size_must_be_positive_int(bad, error):
  params, x, y = _setup(((5, 4, 3), 6), jnp.float32)
  with pytest.raises(error, match="chunk_size: expected an int >= 1"):
    mj.per_sample_grads(params, x, y, chunk_size=bad)
