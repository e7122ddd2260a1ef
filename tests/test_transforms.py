"""Transforms: stratified train/validation splits, scaling fitted on training rows only, and
one-pixel shift augmentation, each doing what it says and refusing what does not fit."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from mlp_jax.errors import InputError
from mlp_jax.io import transforms
from mlp_jax.io.data_checks import Dataset
from mlp_jax.io.sources import make_synthetic
from conftest import usps_like

FUZZ = settings(max_examples=50, deadline=None)

# --- train/validation split --------------------------------------------------------------------


def indexed(labels):
  """A Dataset whose rows are their own indices, so parts can be traced back."""
  labels = np.asarray(labels, np.int32)
  return Dataset(np.arange(len(labels), dtype=np.float32)[:, None], labels)


UNEVEN = np.repeat(np.arange(6), [2, 3, 50, 100, 1, 17])


def test_train_val_split_is_disjoint_covering_and_stratified():
  train, val = transforms.train_val_split(indexed(UNEVEN), val_fraction=0.2)
  train_rows, val_rows = train.x[:, 0].astype(int), val.x[:, 0].astype(int)
  assert not set(train_rows) & set(val_rows)
  assert sorted(np.concatenate([train_rows, val_rows])) == list(range(len(UNEVEN)))
  np.testing.assert_array_equal(train.y, UNEVEN[train_rows])
  np.testing.assert_array_equal(val.y, UNEVEN[val_rows])
  for k, count in enumerate(np.bincount(UNEVEN)):
    in_val = int((val.y == k).sum())
    if count >= 2:
      assert 1 <= in_val <= count - 1 and abs(in_val - 0.2 * count) <= 1, (k, in_val)
    else:
      assert in_val == 0
  assert len(val.y) == np.ceil(0.2 * len(UNEVEN))


@FUZZ
@given(labels=st.lists(st.integers(0, 6), min_size=2, max_size=200),
       fraction=st.floats(0.01, 0.99), seed=st.integers(0, 2**32 - 1))
def test_train_val_split_properties_for_random_labels(labels, fraction, seed):
  labels = np.asarray(labels)
  counts = np.bincount(labels, minlength=7)
  if counts.max() < 2:
    return  # no stratified validation part exists (rejected, tested below)
  train, val = transforms.train_val_split(indexed(labels), val_fraction=fraction, seed=seed)
  rows = np.concatenate([train.x[:, 0], val.x[:, 0]]).astype(int)
  assert sorted(rows) == list(range(len(labels)))  # disjoint and covering
  for k in np.flatnonzero(counts >= 2):
    assert (train.y == k).any() and (val.y == k).any()
  assert not np.isin(val.y, np.flatnonzero(counts == 1)).any()


def test_train_val_split_is_deterministic_from_seed():
  ds = make_synthetic(300, num_features=3)
  (a, b), (c, d) = transforms.train_val_split(ds, seed=7), transforms.train_val_split(ds, seed=7)
  for p, q in ((a, c), (b, d)):
    np.testing.assert_array_equal(p.x, q.x)
    np.testing.assert_array_equal(p.y, q.y)
  assert not np.array_equal(b.x, transforms.train_val_split(ds, seed=8)[1].x)


def test_train_val_split_rejects_bad_input():
  with pytest.raises(InputError, match="val_fraction"):
    transforms.train_val_split(indexed(UNEVEN), val_fraction=1.0)
  with pytest.raises(InputError, match="no class has 2 or more"):
    transforms.train_val_split(indexed([0, 1, 2]))
  with pytest.raises(InputError, match="expected x of shape"):
    transforms.train_val_split(Dataset(np.zeros((3, 2)), np.zeros(4, np.int32)))


# --- scaling -----------------------------------------------------------------------------------


def test_fit_scaler_uses_training_data_only():
  rng = np.random.default_rng(0)
  train_x = (3.0 + 2.0 * rng.standard_normal((500, 4))).astype(np.float32)
  train_x[:, 2] = 7.0  # a constant pixel
  test_x = train_x + 5.0
  scaler = transforms.fit_scaler(train_x)
  np.testing.assert_allclose(scaler.mean, train_x.mean(axis=0), rtol=1e-6)
  assert scaler.scale[2] == 1.0
  scaled = scaler.apply(train_x)
  assert scaled.dtype == np.float32
  np.testing.assert_allclose(scaled.mean(axis=0), 0.0, atol=1e-5)
  np.testing.assert_allclose(scaled.std(axis=0)[[0, 1, 3]], 1.0, rtol=1e-5)
  assert (scaled[:, 2] == 0.0).all()
  scaled_test = transforms.apply_scaler(scaler, test_x)  # 5 in train units off, not re-centred
  np.testing.assert_allclose(scaled_test - scaled,
                             np.broadcast_to(5.0 / scaler.scale, scaled.shape), rtol=1e-4)


def test_scaler_rejects_bad_input():
  scaler = transforms.fit_scaler(np.ones((3, 4), np.float32))
  with pytest.raises(InputError, match="4 features"):
    scaler.apply(np.ones((2, 5), np.float32))
  with pytest.raises(InputError, match="finite"):
    transforms.fit_scaler(np.array([[1.0, np.nan]]))
  with pytest.raises(InputError, match="shape"):
    transforms.fit_scaler(np.zeros((0, 3)))


# --- shift augmentation ------------------------------------------------------------------------


def test_shift_augment_shifts_a_known_image_and_fills_with_the_minimum():
  image = np.array([[1, 2, 3], [4, 5, 6]], np.float32)
  ds = Dataset(np.stack([image.ravel(), np.full(6, -1.0, np.float32)]), np.array([3, 8], np.int32))
  out = transforms.shift_augment(ds, (2, 3))
  f = -1.0  # the dataset's minimum, from the second image
  want = [image, [[4, 5, 6], [f, f, f]], [[f, f, f], [1, 2, 3]], [[2, 3, f], [5, 6, f]],
          [[f, 1, 2], [f, 4, 5]]]
  assert out.x.shape == (10, 6) and out.x.dtype == np.float32
  for i, expected in enumerate(want):
    np.testing.assert_array_equal(out.x[2 * i].reshape(2, 3), expected)
    np.testing.assert_array_equal(out.x[2 * i + 1], np.full(6, -1.0))
  np.testing.assert_array_equal(out.y, np.tile([3, 8], 5))


def test_shift_augment_usps_size_keeps_originals_first():
  ds = usps_like(2, 7)
  out = transforms.shift_augment(ds, (16, 16))
  assert out.x.shape == (35, 256) and out.y.shape == (35,)
  np.testing.assert_array_equal(out.x[:7], ds.x)


def test_shift_augment_eight_neighbours_adds_the_diagonals_after_the_four():
  image = np.array([[1, 2, 3], [4, 5, 6]], np.float32)
  ds = Dataset(image.ravel()[None], np.array([7], np.int32))
  out = transforms.shift_augment(ds, (2, 3), neighbours=8)
  f = 1.0  # the minimum
  four = transforms.shift_augment(ds, (2, 3))
  diagonals = [[[5, 6, f], [f, f, f]],   # up-left
               [[f, 4, 5], [f, f, f]],   # up-right
               [[f, f, f], [2, 3, f]],   # down-left
               [[f, f, f], [f, 1, 2]]]   # down-right
  assert out.x.shape == (9, 6)
  np.testing.assert_array_equal(out.x[:5], four.x)
  for i, expected in enumerate(diagonals):
    np.testing.assert_array_equal(out.x[5 + i].reshape(2, 3), expected)
  np.testing.assert_array_equal(out.y, np.full(9, 7))


@pytest.mark.parametrize("neighbours", [4, 8])
def test_shift_augment_matches_a_padded_crop(neighbours):
  # Independent construction: pad by one background pixel, crop the window at the offset.
  ds = usps_like(3, 4)
  out = transforms.shift_augment(ds, (16, 16), neighbours)
  padded = np.pad(ds.x.reshape(-1, 16, 16), ((0, 0), (1, 1), (1, 1)), constant_values=ds.x.min())
  for k, (dy, dx) in enumerate(transforms.SHIFTS[:neighbours], start=1):
    want = padded[:, 1 - dy:17 - dy, 1 - dx:17 - dx].reshape(-1, 256)
    np.testing.assert_array_equal(out.x[4 * k:4 * (k + 1)], want)


def test_shift_augment_rejects_other_neighbour_counts():
  with pytest.raises(InputError, match="neighbours"):
    transforms.shift_augment(usps_like(0, 2), (16, 16), neighbours=6)


@pytest.mark.parametrize("shape", [(16, 16), (4,), (0, 6), "ab"])
def test_shift_augment_rejects_a_shape_that_does_not_fit(shape):
  ds = Dataset(np.zeros((2, 6), np.float32), np.zeros(2, np.int32))
  with pytest.raises(InputError, match="image_shape"):
    transforms.shift_augment(ds, shape)
