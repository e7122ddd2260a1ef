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
"""

import contextlib
import gzip
import hashlib
import io
import math
import operator
import os
import pathlib
import re
import stat
import zlib
from typing import NamedTuple, Optional, Tuple, Union

import numpy as np
from numpy.typing import ArrayLike

from mlp_jax.core import checks
from mlp_jax.errors import (DataFileError, InputError, InputTypeError, MLPJaxError, describe,
                            one_line, optional_import)

__all__ = [  # the public API (`dir(mj.data)`); the rest are this module's helpers and imports
    "apply_scaler", "Dataset", "DATASETS", "fingerprint", "fit_scaler", "load_digits",
    "load_splits", "load_usps", "make_synthetic", "NUM_CLASSES", "prepare", "Prepared", "Scaler",
    "SCALINGS", "shift_augment", "SHIFTS", "Splits", "train_val_split", "USPS_FEATURES",
]

PathLike = Union[str, "os.PathLike[str]"]  # a file or folder
Seed = Union[int, np.integer]              # a split seed
USPS_FEATURES = 256      # 16x16 images, flattened row-major
NUM_CLASSES = 10         # digits 0..9
HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
GZIP_MAGIC = b"\x1f\x8b"
HUGE = 1e6               # feature magnitudes above this are rejected as out of range
MIN_STD = 1e-6           # a feature with a smaller std is left unscaled (constant pixels)
MAX_TEXT_BYTES = 1 << 30  # a gzipped ESL file may not decompress to more than this
MAX_FILE_BYTES = 1 << 30  # nor may a data file be larger

_HDF5_LAYOUT = "expected groups train/test with datasets data/target"
_NOT_TEXT = re.compile(rb"[^\t\n\r\x20-\x7e]")  # ESL text is printable ASCII and whitespace
_CHUNK_ROWS = 1 << 16


class Dataset(NamedTuple):
  """Features x of shape (N, n), float32, and class labels y of shape (N,), int32."""
  x: np.ndarray
  y: np.ndarray


class Splits(NamedTuple):
  """A training set and a held-out test set."""
  train: Dataset
  test: Dataset


class Scaler(NamedTuple):
  """Per-feature standardisation `(x - mean) / scale`, fitted on training data only."""
  mean: np.ndarray
  scale: np.ndarray

  def apply(self, x: ArrayLike) -> np.ndarray:
    """x standardised feature by feature, as float32."""
    return apply_scaler(self, x)


# --- errors -----------------------------------------------------------------------------------


def _number(value) -> str:
  """A value for a message: integral ones without a decimal point, others in %g form."""
  value = float(value)
  return str(int(value)) if value.is_integer() and abs(value) < 1e15 else f"{value:g}"


def _error(source, problem: str) -> DataFileError:
  """The error to raise for `problem` in `source` (a path or a name), on one line."""
  return DataFileError(one_line(f"{source}: {problem}", limit=400))


# --- validation of what a loader read ---------------------------------------------------------


def _check_arrays(source, x, y, data_name: str, target_name: str, num_features: int,
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
    raise _error(source, f"{data_name} has non-numeric dtype {x.dtype}")
  if y.dtype.kind not in "biuf":
    raise _error(source, f"{target_name} has non-numeric dtype {y.dtype}")
  if x.ndim != 2:
    raise _error(source, f"{data_name} is not 2-D (shape {x.shape}, expected (N, {num_features}))")
  if y.ndim == 2 and y.shape[1] == 1:
    y = y[:, 0]
  if y.ndim != 1:
    raise _error(source, f"{target_name} is not 1-D (shape {y.shape}, expected (N,))")
  if x.shape[0] == 0 or y.shape[0] == 0:
    raise _error(source, f"{data_name if x.shape[0] == 0 else target_name} is empty (0 rows)")
  if x.shape[1] != num_features:
    raise _error(source, f"{data_name} has {x.shape[1]} features per row, expected {num_features}")
  if x.shape[0] != y.shape[0]:
    raise _error(source, f"{data_name} has {x.shape[0]} rows but {target_name} has {y.shape[0]}")
  bad = ~np.isfinite(x)
  if bad.any():
    row = int(np.flatnonzero(bad.any(axis=1))[0])
    raise _error(source, f"{int(bad.sum())} NaN or Inf values in {data_name} ({first(row)})")
  huge = np.abs(x) > HUGE
  if huge.any():
    row = int(np.flatnonzero(huge.any(axis=1))[0])
    raise _error(source, f"{int(huge.sum())} huge values (magnitude > {HUGE:g}) in {data_name}, "
                 f"out of range ({first(row)})")
  bad = ~np.isfinite(y)
  if bad.any():
    row = int(np.flatnonzero(bad)[0])
    raise _error(source, f"{int(bad.sum())} NaN or Inf values in {target_name} ({first(row)})")
  fractional = y != np.round(y)
  if fractional.any():
    row = int(np.flatnonzero(fractional)[0])
    raise _error(source, f"label {_number(y[row])} is not an integer {at(row)}")
  outside = (y < 0) | (y > NUM_CLASSES - 1)
  if outside.any():
    row = int(np.flatnonzero(outside)[0])
    raise _error(source, f"label {_number(y[row])} outside 0..{NUM_CLASSES - 1} {at(row)}")


def _dataset(x, y) -> Dataset:
  """A checked (x, y) as a `Dataset` of float32 rows and int32 labels."""
  y = np.asarray(y).reshape(-1)
  return Dataset(np.ascontiguousarray(x, dtype=np.float32), y.astype(np.int32))


# --- USPS: HDF5 -------------------------------------------------------------------------------


def _read_hdf5_part(path, f, part: str) -> Dataset:
  """Group `part` ('train' or 'test') of an open HDF5 file, checked."""
  import h5py
  arrays = []
  try:
    group = f.get(part)
    if not isinstance(group, h5py.Group):
      raise _error(path, f"missing group '{part}' ({_HDF5_LAYOUT})")
    for name in ("data", "target"):
      node = group.get(name)
      if not isinstance(node, h5py.Dataset):
        raise _error(path, f"missing dataset '{part}/{name}' ({_HDF5_LAYOUT})")
      if node.dtype.kind not in "biuf":
        raise _error(path, f"{part}/{name} has non-numeric dtype {node.dtype}")
      arrays.append(np.asarray(node[()]))
  except MLPJaxError:
    raise
  except Exception as e:  # h5py raises OSError, KeyError, ValueError, RuntimeError, ...
    raise _error(path, f"truncated or corrupt HDF5 file ({describe(e)}, reading '{part}')") from e
  x, y = arrays
  _check_arrays(path, x, y, f"{part}/data", f"{part}/target", USPS_FEATURES)
  return _dataset(x, y)


def _read_hdf5(path: pathlib.Path) -> Splits:
  """Groups train and test, each with datasets data (N, 256) and target (N,)."""
  h5py = optional_import("h5py", "hdf5", "reading an HDF5 file")
  try:
    f = h5py.File(path, "r", locking=False)
  except Exception as e:
    raise _error(path, f"truncated or corrupt HDF5 file ({describe(e)})") from e
  try:
    with f:
      return Splits(_read_hdf5_part(path, f, "train"), _read_hdf5_part(path, f, "test"))
  except MLPJaxError:
    raise
  except Exception as e:  # closing a damaged file can fail too
    raise _error(path, f"truncated or corrupt HDF5 file ({describe(e)})") from e


# --- USPS: ESL text ---------------------------------------------------------------------------


def _gunzip(path, raw: bytes) -> bytes:
  """The decompressed bytes of a gzip file, at most `MAX_TEXT_BYTES`."""
  try:
    with gzip.GzipFile(fileobj=io.BytesIO(raw)) as f:
      out = f.read(MAX_TEXT_BYTES + 1)
  except Exception as e:  # EOFError, gzip.BadGzipFile, zlib.error, ...
    raise _error(path, f"truncated or corrupt gzip file ({describe(e)})") from e
  if len(out) > MAX_TEXT_BYTES:
    raise _error(path, f"gzip file decompresses to more than {MAX_TEXT_BYTES} bytes, "
                 "too large for ESL text")
  return out


def _esl_text(path, raw: bytes) -> str:
  """The text of a (possibly gzipped) ESL file; anything else is 'not HDF5 nor ESL text'."""
  gzipped = raw.startswith(GZIP_MAGIC)
  if gzipped:
    raw = _gunzip(path, raw)
  if not raw.strip():
    raise _error(path, "empty file" + (" (after gunzip)" if gzipped else ""))
  if raw.startswith(HDF5_MAGIC):
    raise _error(path, "is HDF5, expected ESL text like the training file")
  bad = _NOT_TEXT.search(raw)
  if bad:
    raise _error(path, f"not HDF5 nor ESL text (byte 0x{bad.group()[0]:02x} at offset "
                 f"{bad.start()}{' after gunzip' if gzipped else ''})")
  return raw.decode("ascii")


def _parse_esl(path, text: str) -> Dataset:
  """Lines `label v1 ... v256` with values in [-1, 1], as a `Dataset` scaled to [0, 1]."""
  width = USPS_FEATURES + 1
  rows, lines = [], []
  for number, line in enumerate(text.splitlines(), start=1):
    tokens = line.split()
    if not tokens:
      continue
    if len(tokens) != width:
      raise _error(path, f"line {number} has {len(tokens)} values, expected {width} "
                   f"(label + {USPS_FEATURES} features)")
    rows.append(tokens)
    lines.append(number)
  if not rows:
    raise _error(path, "empty file (no data lines)")
  try:
    values = np.array(rows, dtype=np.float64)
  except ValueError as e:
    for tokens, number in zip(rows, lines):
      for token in tokens:
        try:
          float(token)
        except ValueError:
          raise _error(path, f"non-numeric value {one_line(repr(token), 40)} on line {number}"
                       ) from e
    raise _error(path, f"non-numeric value ({describe(e)})") from e
  x, y = values[:, 1:], values[:, 0]
  _check_arrays(path, x, y, "features", "labels", USPS_FEATURES, lines)
  return _dataset((x + 1.0) / 2.0, y)


def _read_esl(path: pathlib.Path) -> Dataset:
  """One ESL text file (plain or gzip, told apart by content), checked and scaled to [0, 1]."""
  return _parse_esl(path, _esl_text(path, _read_bytes(path)))


def _esl_test_path(train_path: pathlib.Path) -> pathlib.Path:
  """The test file beside an ESL training file: 'train' replaced by 'test' in the name."""
  name = train_path.name
  if "train" not in name:
    raise _error(train_path, "cannot locate the ESL test file: the name has no 'train' to "
                 "replace with 'test' (expected zip.train[.gz] beside zip.test[.gz])")
  test_path = train_path.with_name(name.replace("train", "test"))
  other = (test_path.with_name(test_path.name[:-3]) if test_path.name.endswith(".gz")
           else test_path.with_name(test_path.name + ".gz"))
  for candidate in (test_path, other):
    if candidate.is_file():
      return candidate
  raise _error(test_path, f"no such file (the ESL test file expected beside {name})")


# --- USPS: files and formats ------------------------------------------------------------------


@contextlib.contextmanager
def _reading(path: pathlib.Path):
  """Turns the OS's errors about opening or reading `path` into one `DataFileError`."""
  try:
    yield
  except FileNotFoundError as e:
    raise _error(path, "no such file") from e
  except IsADirectoryError as e:
    raise _error(path, "is a directory, expected a file") from e
  except OSError as e:
    raise _error(path, f"cannot read file ({describe(e)})") from e


def _check_regular(path: pathlib.Path) -> None:
  """A regular file of at most `MAX_FILE_BYTES`: a FIFO or device would hang or never end."""
  with _reading(path):
    info = path.stat()
  if stat.S_ISDIR(info.st_mode):
    raise _error(path, "is a directory, expected a file")
  if not stat.S_ISREG(info.st_mode):
    raise _error(path, "is not a regular file (a pipe, socket or device)")
  if info.st_size > MAX_FILE_BYTES:
    raise _error(path, f"is {info.st_size} bytes, more than the {MAX_FILE_BYTES} a USPS file "
                 "can need")


def _read_bytes(path: pathlib.Path) -> bytes:
  """The whole file, or `DataFileError` saying why not."""
  _check_regular(path)
  with _reading(path):
    return path.read_bytes()


def _head(path: pathlib.Path, size: int = 8) -> bytes:
  """The first `size` bytes of a file, which must exist and be non-empty."""
  _check_regular(path)
  with _reading(path), open(path, "rb") as f:
    head = f.read(size)
  if not head:
    raise _error(path, "empty file")
  return head


def _resolve(path) -> pathlib.Path:
  """A file path from a file or a directory holding usps.h5 or zip.train[.gz]."""
  try:
    path = pathlib.Path(os.fspath(path)).expanduser()
  except TypeError as e:
    raise InputTypeError(f"path: expected a str or os.PathLike, got {type(path).__name__}") from e
  try:
    is_dir = path.is_dir()
  except (OSError, ValueError) as e:
    raise _error(path, f"cannot read path ({describe(e)})") from e
  if not is_dir:
    return path
  for name in ("usps.h5", "zip.train", "zip.train.gz"):
    try:
      found = (path / name).is_file()
    except OSError as e:  # e.g. a folder without search (x) permission
      raise _error(path, f"cannot look inside the folder ({describe(e)})") from e
    if found:
      return path / name
  raise _error(path, "directory holds none of usps.h5, zip.train, zip.train.gz")


# The USPS copy inside the package: pixel k / 2000 of the ESL values (2v - 1) * 1000 + 1000 as
# uint16, labels as uint8 (docs/data.md: provenance, sha256, how it was made).
BUNDLED_USPS = "usps.npz"
BUNDLED_USPS_SHA256 = "1c7bdaf547f2b03055c2d162727b396c0cd4c5f89f9932e82f68847ffd774f5b"


def _bundled_usps() -> Splits:
  """The bundled USPS, decoded bit for bit to the float32 values of the usual HDF5 copy."""
  from importlib import resources
  with resources.files(__package__).joinpath(BUNDLED_USPS).open("rb") as f:
    with np.load(f, allow_pickle=False) as npz:
      arrays = {name: npz[name] for name in npz.files}

  def part(name):
    k = arrays[f"{name}_x"].astype(np.int32)
    x = (((k - 1000) / 1000).astype(np.float32) + np.float32(1)) / np.float32(2)
    return _dataset(x, arrays[f"{name}_y"])

  return Splits(part("train"), part("test"))


def load_usps(path: Optional[PathLike] = None) -> Splits:
  """USPS digits (7291 train / 2007 test, 256 features in [0, 1], labels 0..9).

  Without `path`, the copy bundled with the package (no file or download needed). With one,
  the format is told from the content, not the name: HDF5 with groups train/test, each holding
  datasets data (N, 256) and target (N,) (needs h5py: the `hdf5` extra); or ESL text (plain or
  gzip), where `path` is zip.train and zip.test lies beside it, each line `label v1 ... v256`
  with v in [-1, 1], returned as (v + 1) / 2. `path` may also be a directory holding usps.h5 or
  zip.train[.gz]. Every failure is a `DataFileError` naming the file and the problem.
  """
  if path is None:
    return _bundled_usps()
  path = _resolve(path)
  try:
    if _head(path).startswith(HDF5_MAGIC):
      return _read_hdf5(path)
    train = _read_esl(path)
    test_path = _esl_test_path(path)
    return Splits(train, _read_esl(test_path))
  except MLPJaxError:
    raise
  except (OSError, EOFError, ValueError, KeyError, RuntimeError, zlib.error) as e:  # a net
    raise _error(path, f"cannot read ({describe(e)})") from e


# --- 8x8 digits and synthetic data ------------------------------------------------------------


def _fraction(value, name: str) -> float:
  """A real number strictly between 0 and 1."""
  return float(checks.check_real(value, name, open_low=True, high=1.0))


def _stratified_indices(y: np.ndarray, fraction: float, seed):
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


def load_digits(test_fraction: float = 0.2, seed: Seed = 0) -> Splits:
  """scikit-learn's bundled 8x8 digits (1797 x 64, values 0..16), split stratified by class.

  `test_fraction` of each class (ceil over the whole set) is held out, chosen by `seed`.
  Features are the raw values as float32: scale them with `fit_scaler` on the training part.
  """
  test_fraction = _fraction(test_fraction, "test_fraction")
  # imported here: scikit-learn is slow to import, and optional
  datasets = optional_import("sklearn.datasets", "digits", "the 8x8 digits")
  bunch = datasets.load_digits()
  x, y = np.asarray(bunch.data), np.asarray(bunch.target)
  _check_arrays("sklearn.datasets.load_digits", x, y, "data", "target", 64)
  train, test = _stratified_indices(y, test_fraction, seed)
  return Splits(_dataset(x[train], y[train]), _dataset(x[test], y[test]))


def make_synthetic(num_samples: int, num_features: int = 256, num_classes: int = 10,
                   seed: Seed = 0, noise: float = 1.0) -> Dataset:
  """Gaussian class clusters, float32, deterministic from `seed`, for benchmarks of any size.

  Class centres are drawn N(0, 1) per feature; each row is its centre plus `noise` * N(0, 1).
  Labels are balanced (counts differ by at most one) and shuffled.
  """
  num_samples = checks.check_int(num_samples, "num_samples")
  num_features = checks.check_int(num_features, "num_features")
  num_classes = checks.check_int(num_classes, "num_classes")
  noise = float(checks.check_real(noise, "noise"))
  rng = np.random.default_rng(seed)
  centres = rng.standard_normal((num_classes, num_features), dtype=np.float32)
  y = (np.arange(num_samples) % num_classes).astype(np.int32)
  rng.shuffle(y)
  x = rng.standard_normal((num_samples, num_features), dtype=np.float32)
  x *= np.float32(noise)
  for start in range(0, num_samples, _CHUNK_ROWS):  # no (N, n) temporary for centres[y]
    x[start:start + _CHUNK_ROWS] += centres[y[start:start + _CHUNK_ROWS]]
  return Dataset(x, y)


# --- splits, scaling, augmentation ------------------------------------------------------------


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
  val_fraction = _fraction(val_fraction, "val_fraction")
  train, val = _stratified_indices(y, val_fraction, seed)
  if not len(val):
    raise InputError(f"ds: no class has 2 or more of the {len(y)} samples, so no stratified "
                     "validation part can be held out")
  return Dataset(x[train], y[train]), Dataset(x[val], y[val])


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
