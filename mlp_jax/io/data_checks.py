"""What a loader returns, and the checks it runs on what it read.

`Dataset` (x (N, n) float32, y (N,) int32) and `Splits` (train, test) are the types every loader
returns. `check_arrays` accepts only 2-D finite features of the expected width and integral labels
in 0..9 with matching, non-zero row counts; anything else is one `DataFileError` whose one-line
message (`file_error`) names the file and the problem.
"""

from typing import NamedTuple

import numpy as np

from mlp_jax.errors import DataFileError, one_line

NUM_CLASSES = 10         # digits 0..9
HUGE = 1e6               # feature magnitudes above this are rejected as out of range


class Dataset(NamedTuple):
  """Features x of shape (N, n), float32, and class labels y of shape (N,), int32."""
  x: np.ndarray
  y: np.ndarray


class Splits(NamedTuple):
  """A training set and a held-out test set."""
  train: Dataset
  test: Dataset


# --- errors -----------------------------------------------------------------------------------


def _number(value) -> str:
  """A value for a message: integral ones without a decimal point, others in %g form."""
  value = float(value)
  return str(int(value)) if value.is_integer() and abs(value) < 1e15 else f"{value:g}"


def file_error(source, problem: str) -> DataFileError:
  """The error to raise for `problem` in `source` (a path or a name), on one line."""
  return DataFileError(one_line(f"{source}: {problem}", limit=400))


# --- validation of what a loader read ---------------------------------------------------------


def check_arrays(source, x, y, data_name: str, target_name: str, num_features: int,
                 lines=None) -> None:
  """Raises `DataFileError` unless x (N, num_features) and y (N,) are finite, in range, 0..9.

  `lines`, when given, maps each row to its line in a text file, to say where a bad value is.
  """
  def first(row):
    return f"first on line {lines[row]}" if lines is not None else f"first in row {row}"

  def at(row):
    return f"on line {lines[row]}" if lines is not None else f"in {target_name} (row {row})"

  x, y = np.asarray(x), np.asarray(y)
  if x.dtype.kind not in "biuf":
    raise file_error(source, f"{data_name} has non-numeric dtype {x.dtype}")
  if y.dtype.kind not in "biuf":
    raise file_error(source, f"{target_name} has non-numeric dtype {y.dtype}")
  if x.ndim != 2:
    raise file_error(source, f"{data_name} is not 2-D (shape {x.shape}, expected "
                     f"(N, {num_features}))")
  if y.ndim == 2 and y.shape[1] == 1:
    y = y[:, 0]
  if y.ndim != 1:
    raise file_error(source, f"{target_name} is not 1-D (shape {y.shape}, expected (N,))")
  if x.shape[0] == 0 or y.shape[0] == 0:
    raise file_error(source, f"{data_name if x.shape[0] == 0 else target_name} is empty "
                     "(0 rows)")
  if x.shape[1] != num_features:
    raise file_error(source, f"{data_name} has {x.shape[1]} features per row, expected "
                     f"{num_features}")
  if x.shape[0] != y.shape[0]:
    raise file_error(source, f"{data_name} has {x.shape[0]} rows but {target_name} has "
                     f"{y.shape[0]}")
  bad = ~np.isfinite(x)
  if bad.any():
    row = int(np.flatnonzero(bad.any(axis=1))[0])
    raise file_error(source, f"{int(bad.sum())} NaN or Inf values in {data_name} "
                     f"({first(row)})")
  huge = np.abs(x) > HUGE
  if huge.any():
    row = int(np.flatnonzero(huge.any(axis=1))[0])
    raise file_error(source, f"{int(huge.sum())} huge values (magnitude > {HUGE:g}) in "
                     f"{data_name}, out of range ({first(row)})")
  bad = ~np.isfinite(y)
  if bad.any():
    row = int(np.flatnonzero(bad)[0])
    raise file_error(source, f"{int(bad.sum())} NaN or Inf values in {target_name} "
                     f"({first(row)})")
  fractional = y != np.round(y)
  if fractional.any():
    row = int(np.flatnonzero(fractional)[0])
    raise file_error(source, f"label {_number(y[row])} is not an integer {at(row)}")
  outside = (y < 0) | (y > NUM_CLASSES - 1)
  if outside.any():
    row = int(np.flatnonzero(outside)[0])
    raise file_error(source, f"label {_number(y[row])} outside 0..{NUM_CLASSES - 1} {at(row)}")


def to_dataset(x, y) -> Dataset:
  """A checked (x, y) as a `Dataset` of float32 rows and int32 labels."""
  y = np.asarray(y).reshape(-1)
  return Dataset(np.ascontiguousarray(x, dtype=np.float32), y.astype(np.int32))
