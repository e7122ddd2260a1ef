"""Data: USPS and 8x8 digits loaders, synthetic clusters, stratified splits, scaling, shifts.

Everything here is NumPy on the host; arrays go to JAX at the training boundary. A loader checks
what it read (2-D finite features of the expected width, integral labels in 0..9, matching and
non-zero row counts) and turns every failure -- a missing, empty, truncated, corrupt or malformed
file -- into one `DataFileError` whose one-line message names the file and the problem.

    splits = load_usps()                    # the copy bundled with the package; or a path:
    splits = load_usps("usps.h5")           # HDF5, zip.train[.gz], or their folder
    train, val = train_val_split(splits.train, val_fraction=0.1)
    scaler = fit_scaler(train.x)                         # statistics of the training part only
    x_train, x_val = scaler.apply(train.x), scaler.apply(val.x)

This module is the one call from a dataset name to scaled train / val / test (`prepare`), and
the public face of the modules beneath it, whose names it re-exports:

    data_checks   `Dataset`, `Splits`, and the checks a loader runs on what it read
    usps_files    USPS: HDF5 and ESL text, file access, the bundled copy (`load_usps`)
    sources       scikit-learn's 8x8 digits and synthetic clusters
    transforms    stratified splits, scaling, one-pixel shift augmentation
"""

import hashlib
from typing import NamedTuple, Optional, Tuple

import numpy as np

from mlp_jax.errors import InputError
from mlp_jax.io.data_checks import NUM_CLASSES, Dataset, Splits
from mlp_jax.io.sources import load_digits, make_synthetic
from mlp_jax.io.transforms import (SCALINGS, SHIFTS, Scaler, Seed, apply_scaler, fit_scaler,
                                   shift_augment, train_val_split)
from mlp_jax.io.usps_files import USPS_FEATURES, PathLike, load_usps

# The modules' limits and file constants, reachable as `data.NAME` as they were (not in `__all__`)
from mlp_jax.io.data_checks import HUGE  # noqa: F401
from mlp_jax.io.transforms import MIN_STD  # noqa: F401
from mlp_jax.io.usps_files import (BUNDLED_USPS, BUNDLED_USPS_SHA256, GZIP_MAGIC,  # noqa: F401
                                   HDF5_MAGIC, MAX_FILE_BYTES, MAX_TEXT_BYTES)

__all__ = [  # the public API (`dir(mj.data)`); the rest are this module's helpers and imports
    "apply_scaler", "Dataset", "DATASETS", "fingerprint", "fit_scaler", "load_digits",
    "load_splits", "load_usps", "make_synthetic", "NUM_CLASSES", "prepare", "Prepared", "Scaler",
    "SCALINGS", "shift_augment", "SHIFTS", "Splits", "train_val_split", "USPS_FEATURES",
]


# --- one call from a dataset name to scaled train / val / test ---------------------------------


DATASETS = ("digits", "usps", "synthetic")


def fingerprint(ds: Dataset) -> str:
  """sha256 of a dataset's features and labels (dtype, shape and bytes): the identity of the
  data a run trained on, whatever file or folder it came from."""
  h = hashlib.sha256()
  for a in (np.asarray(ds.x), np.asarray(ds.y)):
    h.update(f"{a.dtype.str}{a.shape}".encode("ascii"))
    h.update(np.ascontiguousarray(a).reshape(-1).view(np.uint8))
  return h.hexdigest()


class Prepared(NamedTuple):
  """Scaled splits ready to train on, with what made them."""
  train: Dataset            # scaled (and augmented, if asked)
  val: "Dataset | None"     # scaled; None when val_fraction is 0
  test: Dataset             # scaled with the training statistics
  raw_test: Dataset         # unscaled, for re-scaling with a stored scaler
  scaler: Scaler
  num_classes: int
  image_shape: tuple        # (height, width) of the images


def load_splits(dataset: str = "digits", path: Optional[PathLike] = None, *, seed: Seed = 0,
                num_samples: int = 2000) -> Tuple[Splits, Tuple[int, int]]:
  """(Splits, (height, width)): a dataset by name, unscaled; see `prepare` for the names."""
  if dataset == "digits":
    return load_digits(seed=seed), (8, 8)
  if dataset == "usps":
    return load_usps(path), (16, 16)
  if dataset == "synthetic":
    full = make_synthetic(num_samples, seed=seed)
    rest, test = train_val_split(full, 0.2, seed)
    return Splits(rest, test), (16, 16)
  raise InputError(f"dataset: expected one of {', '.join(DATASETS)}, got {dataset!r}")


def prepare(dataset: str = "digits", path: Optional[PathLike] = None, *,
            val_fraction: float = 0.1, seed: Seed = 0,
            augment: bool = False, num_samples: int = 2000, scaling: str = "global",
            shifts: int = 4) -> Prepared:
  """Loads a dataset, carves the validation part from its training set, fits the scaler on
  the (possibly augmented) training part only, and scales all three.

  Args:
    dataset: "digits" (bundled 8x8, 20% held out), "usps" (from `path`), or "synthetic"
      (`num_samples` Gaussian clusters of 256 features, 20% held out).
    path: the USPS file or folder (see `load_usps`).
    val_fraction: fraction of the training set held out for validation; 0 for none.
    seed: the seed of the splits.
    augment: add one-pixel shifts of the training images (after the validation split, so no
      shifted copy of a validation image is trained on).
    shifts: with `augment`, 4 (up, down, left, right: x5 rows) or 8 (and the diagonals: x9);
      see `shift_augment`.
    scaling: "global" (default: one mean and std for all pixels), "feature" or "none"; see
      `fit_scaler`. Fitted on the training part only.
  """
  splits, shape = load_splits(dataset, path, seed=seed, num_samples=num_samples)
  val_fraction = float(val_fraction)
  if val_fraction > 0:
    train, val = train_val_split(splits.train, val_fraction, seed)
  else:
    train, val = splits.train, None
  if augment:
    train = shift_augment(train, shape, shifts)
  scaler = fit_scaler(train.x, scaling)
  scale = lambda ds: Dataset(scaler.apply(ds.x), ds.y)
  return Prepared(scale(train), None if val is None else scale(val), scale(splits.test),
                  splits.test, scaler, NUM_CLASSES, shape)


def __dir__():
  """The public API only (`__all__`), not the modules and helpers imported to build it."""
  return sorted(__all__)
