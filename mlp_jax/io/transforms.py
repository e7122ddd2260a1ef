"""Splits, scaling and augmentation of a `Dataset`, all NumPy on the host.

`train_val_split` holds out a fraction of each class (`stratified_indices`, also behind
`load_digits`'s test part); `fit_scaler` standardises with statistics of the training rows only;
`shift_augment` adds one-pixel shifts of every image.

    train, val = train_val_split(ds, val_fraction=0.1)
    scaler = fit_scaler(train.x)                         # statistics of the training part only
    x_train, x_val = scaler.apply(train.x), scaler.apply(val.x)
"""

import math
import operator
from typing import NamedTuple, Tuple, Union

import numpy as np
from numpy.typing import ArrayLike

from mlp_jax.core import validation
from mlp_jax.errors import InputError, InputTypeError
from mlp_jax.io.data_checks import Dataset

Seed = Union[int, np.integer]              # a split seed
MIN_STD = 1e-6           # a feature with a smaller std is left unscaled (constant pixels)


class Scaler(NamedTuple):
  """Per-feature standardisation `(x - mean) / scale`, fitted on training data only."""
  mean: np.ndarray
  scale: np.ndarray

  def apply(self, x: ArrayLike) -> np.ndarray:
    """x standardised feature by feature, as float32."""
    return apply_scaler(self, x)


# --- splits -----------------------------------------------------------------------------------


def check_fraction(value, name: str) -> float:
  """A real number strictly between 0 and 1."""
  return float(validation.check_real(value, name, open_low=True, high=1.0))


def stratified_indices(y: np.ndarray, fraction: float, seed):
  """(kept, held) shuffled row indices, `fraction` of each class held out.

  A class of one row is kept; every class with >= 2 rows has at least one row on each side;
  within those bounds ceil(fraction * N) rows are held, shared among classes by largest remainder.
  """
  rng = np.random.default_rng(seed)
  _, label_index, counts = np.unique(y, return_inverse=True, return_counts=True)
  label_index = label_index.reshape(-1)
  quotas = fraction * counts
  low, high = np.where(counts >= 2, 1, 0), np.where(counts >= 2, counts - 1, 0)
  held = np.clip(np.floor(quotas).astype(np.int64), low, high)
  extra = math.ceil(fraction * len(y)) - int(held.sum())
  if extra > 0:  # one more to the classes furthest below their quota
    order = [k for k in np.argsort(held - quotas, kind="stable") if held[k] < high[k]]
    held[order[:extra]] += 1
  elif extra < 0:  # one fewer from the classes furthest above it
    order = [k for k in np.argsort(quotas - held, kind="stable") if held[k] > low[k]]
    held[order[:-extra]] -= 1
  order = rng.permutation(len(y))
  order = order[np.argsort(label_index[order], kind="stable")]  # by class, shuffled within
  starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
  sorted_labels = label_index[order]
  is_held = np.arange(len(y)) - starts[sorted_labels] < held[sorted_labels]
  return rng.permutation(order[~is_held]), rng.permutation(order[is_held])


def _as_dataset(ds, name: str = "ds") -> Dataset:
  """ds as a `Dataset` of NumPy arrays: x (N, n) and y (N,)."""
  try:
    x, y = ds
  except (TypeError, ValueError) as e:
    raise InputTypeError(f"{name}: expected a Dataset(x, y), got {type(ds).__name__}") from e
  x, y = np.asarray(x), np.asarray(y)
  if x.ndim != 2 or y.ndim != 1 or x.shape[0] != y.shape[0]:
    raise InputError(f"{name}: expected x of shape (N, n) and y of shape (N,), got "
                     f"{x.shape} and {y.shape}")
  return Dataset(x, y)


def train_val_split(ds: Dataset, val_fraction: float = 0.1,
                    seed: Seed = 0) -> Tuple[Dataset, Dataset]:
  """(train, val): `val_fraction` of each class held out, deterministic from `seed`.

  The parts are disjoint and cover ds; every class with >= 2 samples appears in both.
  """
  x, y = _as_dataset(ds)
  val_fraction = check_fraction(val_fraction, "val_fraction")
  train, val = stratified_indices(y, val_fraction, seed)
  if not len(val):
    raise InputError(f"ds: no class has 2 or more of the {len(y)} samples, so no stratified "
                     "validation part can be held out")
  return Dataset(x[train], y[train]), Dataset(x[val], y[val])


# --- scaling ----------------------------------------------------------------------------------


SCALINGS = ("global", "feature", "none")


def fit_scaler(x: ArrayLike, mode: str = "feature") -> Scaler:
  """Mean and std of (training) rows x; a std below `MIN_STD` becomes 1.

  mode: "feature" standardises each feature on its own; "global" uses one mean and std over all
  pixels, which keeps the images' geometry (a rarely-inked border pixel is not blown up by its
  tiny std); "none" is the identity.
  """
  if mode not in SCALINGS:
    raise InputError(f"scaling: expected one of {', '.join(SCALINGS)}, got {mode!r}")
  x = np.asarray(x)
  if x.ndim != 2 or x.shape[0] < 1:
    raise InputError(f"x: expected shape (N, n) with N >= 1, got {x.shape}")
  if x.dtype.kind not in "biuf":
    raise InputTypeError(f"x: expected a real dtype, got {x.dtype}")
  if not np.isfinite(x).all():
    raise InputError(f"x: expected finite values, got {int((~np.isfinite(x)).sum())} NaN or Inf")
  n = x.shape[1]
  if mode == "none":
    return Scaler(np.zeros(n, np.float32), np.ones(n, np.float32))
  f64 = np.float64  # statistics accumulated in float64, without a float64 copy of x
  if mode == "global":
    mean, std = np.full(n, x.mean(dtype=f64)), np.full(n, x.std(dtype=f64))
  else:
    mean, std = x.mean(axis=0, dtype=f64), x.std(axis=0, dtype=f64)
  scale = np.where(std < MIN_STD, 1.0, std)
  return Scaler(mean.astype(np.float32), scale.astype(np.float32))


def apply_scaler(scaler: Scaler, x: ArrayLike) -> np.ndarray:
  """(x - mean) / scale as float32, feature by feature."""
  mean, scale = np.asarray(scaler.mean, np.float32), np.asarray(scaler.scale, np.float32)
  x = np.asarray(x)
  if x.ndim < 1 or x.shape[-1] != mean.shape[0]:
    raise InputError(f"x: expected {mean.shape[0]} features per row (as the scaler was fitted), "
                     f"got shape {x.shape}")
  return (x.astype(np.float32, copy=False) - mean) / scale


# --- augmentation -----------------------------------------------------------------------------


# (rows, columns) each image's content moves by: up, down, left, right, then the diagonals.
SHIFTS = ((-1, 0), (1, 0), (0, -1), (0, 1), (-1, -1), (-1, 1), (1, -1), (1, 1))


def _span(d: int, size: int):
  """(destination, source) slices that move a length-`size` axis by d pixels."""
  return slice(max(d, 0), size + min(d, 0)), slice(max(-d, 0), size + min(-d, 0))


def shift_augment(ds: Dataset, image_shape: Tuple[int, int], neighbours: int = 4) -> Dataset:
  """ds plus its images shifted by one pixel: (1 + neighbours)x the rows, originals first.

  neighbours: 4 shifts each image up, down, left and right; 8 adds the four diagonal shifts
  (every offset in {-1, 0, 1}^2). Rows are images of `image_shape` (height, width) flattened
  row-major, e.g. (16, 16) for USPS; vacated pixels take the dataset's minimum value (the
  background). Labels are repeated. Order: all originals, then all images of each shift in
  turn, in the order of `SHIFTS`.
  """
  x, y = _as_dataset(ds)
  try:
    height, width = (operator.index(d) for d in image_shape)
  except (TypeError, ValueError) as e:
    raise InputError(f"image_shape: expected (height, width), got {image_shape!r}") from e
  if height < 1 or width < 1 or height * width != x.shape[1]:
    raise InputError(f"image_shape: {tuple(image_shape)} has {height * width} pixels, expected "
                     f"{x.shape[1]} (the features per row of ds.x)")
  if neighbours not in (4, 8):
    raise InputError(f"neighbours: expected 4 or 8 one-pixel shifts, got {neighbours!r}")
  if x.shape[0] == 0:
    raise InputError("ds: expected at least one image, got 0 rows")
  images = x.reshape(-1, height, width)
  out = np.full((1 + neighbours,) + images.shape, x.min(), dtype=x.dtype)
  out[0] = images
  for k, (dy, dx) in enumerate(SHIFTS[:neighbours], start=1):
    (rows_to, rows_from), (cols_to, cols_from) = _span(dy, height), _span(dx, width)
    out[k, :, rows_to, cols_to] = images[:, rows_from, cols_from]
  return Dataset(out.reshape(-1, x.shape[1]), np.tile(y, 1 + neighbours))
