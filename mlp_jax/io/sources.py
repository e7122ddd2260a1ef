"""Data sets made in memory: scikit-learn's 8x8 digits, and Gaussian class clusters of any size.

    splits = load_digits(test_fraction=0.2, seed=0)      # raw pixel values 0..16
    ds = make_synthetic(10_000, num_features=256, seed=0)
"""

import numpy as np

from mlp_jax.core import validation
from mlp_jax.errors import optional_import
from mlp_jax.io.data_checks import Dataset, Splits, check_arrays, to_dataset
from mlp_jax.io.transforms import Seed, check_fraction, stratified_indices

_CHUNK_ROWS = 1 << 16


def load_digits(test_fraction: float = 0.2, seed: Seed = 0) -> Splits:
  """scikit-learn's bundled 8x8 digits (1797 x 64, values 0..16), split stratified by class.

  `test_fraction` of each class (ceil over the whole set) is held out, chosen by `seed`.
  Features are the raw values as float32: scale them with `fit_scaler` on the training part.
  """
  test_fraction = check_fraction(test_fraction, "test_fraction")
  # imported here: scikit-learn is slow to import, and optional
  datasets = optional_import("sklearn.datasets", "digits", "the 8x8 digits")
  bunch = datasets.load_digits()
  x, y = np.asarray(bunch.data), np.asarray(bunch.target)
  check_arrays("sklearn.datasets.load_digits", x, y, "data", "target", 64)
  train, test = stratified_indices(y, test_fraction, seed)
  return Splits(to_dataset(x[train], y[train]), to_dataset(x[test], y[test]))


def make_synthetic(num_samples: int, num_features: int = 256, num_classes: int = 10,
                   seed: Seed = 0, noise: float = 1.0) -> Dataset:
  """Gaussian class clusters, float32, deterministic from `seed`, for benchmarks of any size.

  Class centres are drawn N(0, 1) per feature; each row is its centre plus `noise` * N(0, 1).
  Labels are balanced (counts differ by at most one) and shuffled.
  """
  num_samples = validation.check_int(num_samples, "num_samples")
  num_features = validation.check_int(num_features, "num_features")
  num_classes = validation.check_int(num_classes, "num_classes")
  noise = float(validation.check_real(noise, "noise"))
  rng = np.random.default_rng(seed)
  centres = rng.standard_normal((num_classes, num_features), dtype=np.float32)
  y = (np.arange(num_samples) % num_classes).astype(np.int32)
  rng.shuffle(y)
  x = rng.standard_normal((num_samples, num_features), dtype=np.float32)
  x *= np.float32(noise)
  for start in range(0, num_samples, _CHUNK_ROWS):  # no (N, n) temporary for centres[y]
    x[start:start + _CHUNK_ROWS] += centres[y[start:start + _CHUNK_ROWS]]
  return Dataset(x, y)
