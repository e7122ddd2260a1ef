"""Data made in memory: scikit-learn's 8x8 digits split stratified and deterministic from the seed,
and synthetic class clusters balanced, separable at low noise and built in chunks of rows."""

import numpy as np
import pytest

from mlp_jax.errors import InputError
from mlp_jax.io import sources
from conftest import assert_splits_equal

# --- 8x8 digits --------------------------------------------------------------------------------


def test_load_digits_shapes_dtypes_and_raw_values():
  splits = sources.load_digits()
  assert splits.train.x.shape == (1437, 64) and splits.test.x.shape == (360, 64)
  assert splits.train.y.shape == (1437,) and splits.test.y.shape == (360,)
  for part in splits:
    assert part.x.dtype == np.float32 and part.y.dtype == np.int32
    assert part.x.min() == 0.0 and part.x.max() == 16.0  # raw, unscaled
  assert sorted(set(splits.test.y.tolist())) == list(range(10))


def test_load_digits_is_stratified():
  splits = sources.load_digits(test_fraction=0.25)
  test_counts = np.bincount(splits.test.y, minlength=10)
  all_counts = test_counts + np.bincount(splits.train.y, minlength=10)
  assert all_counts.sum() == 1797
  assert np.all(np.abs(test_counts - 0.25 * all_counts) <= 1), test_counts


def test_load_digits_is_deterministic_from_seed():
  assert_splits_equal(sources.load_digits(seed=3), sources.load_digits(seed=3))
  assert not np.array_equal(sources.load_digits(seed=3).test.x, sources.load_digits(seed=4).test.x)


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.5, 2.0])
def test_load_digits_rejects_bad_fractions(fraction):
  with pytest.raises(InputError, match="test_fraction"):
    sources.load_digits(test_fraction=fraction)


# --- synthetic data ----------------------------------------------------------------------------


def test_make_synthetic_shapes_dtypes_and_balance():
  ds = sources.make_synthetic(1003, num_features=7, num_classes=5)
  assert ds.x.shape == (1003, 7) and ds.y.shape == (1003,)
  assert ds.x.dtype == np.float32 and ds.y.dtype == np.int32
  counts = np.bincount(ds.y)
  assert len(counts) == 5 and counts.max() - counts.min() <= 1


def test_make_synthetic_is_deterministic_from_seed():
  a, b = sources.make_synthetic(500, seed=1), sources.make_synthetic(500, seed=1)
  np.testing.assert_array_equal(a.x, b.x)
  np.testing.assert_array_equal(a.y, b.y)
  assert not np.array_equal(a.x, sources.make_synthetic(500, seed=2).x)


def test_make_synthetic_clusters_are_separable_at_low_noise():
  ds = sources.make_synthetic(2000, num_features=16, num_classes=4, noise=0.05)
  means = np.stack([ds.x[ds.y == k].mean(axis=0) for k in range(4)])
  nearest = np.argmin(((ds.x[:, None, :] - means[None]) ** 2).sum(-1), axis=1)
  assert (nearest == ds.y).all()


def test_make_synthetic_large_in_chunks():
  ds = sources.make_synthetic(150_000, num_features=8, seed=5)  # more than one chunk of rows
  assert ds.x.shape == (150_000, 8) and np.isfinite(ds.x).all()
  head, tail = slice(0, 65_536), slice(131_072, None)  # the first and the last chunk of rows
  means = np.stack([ds.x[head][ds.y[head] == k].mean(axis=0) for k in range(10)])
  residual = ds.x[tail] - means[ds.y[tail]]  # the centre was added in the last chunk too
  assert abs(float(residual.mean())) < 0.05 and abs(float(residual.std()) - 1.0) < 0.05


@pytest.mark.parametrize("kwargs", [{"num_samples": 0}, {"num_samples": 10, "noise": -1.0},
                                    {"num_samples": 10, "num_classes": 0},
                                    {"num_samples": 10, "noise": float("nan")}])
def test_make_synthetic_rejects_bad_arguments(kwargs):
  bad = "noise" if "noise" in kwargs else next(k for k, v in kwargs.items() if v == 0)
  with pytest.raises(InputError, match=bad):
    sources.make_synthetic(**kwargs)
