"""USPS files: the HDF5 and ESL text formats, told apart by content, and the copy bundled here.

`load_usps()` decodes the package's `usps.npz`; `load_usps(path)` reads an HDF5 file (groups
train/test with datasets data/target), an ESL text pair (zip.train and zip.test, plain or gzip),
or a folder holding either. Only regular files of at most `MAX_FILE_BYTES` are opened, and every
failure -- missing, empty, truncated, corrupt or malformed -- is one `DataFileError` naming the
file and the problem.
"""

import contextlib
import gzip
import io
import os
import pathlib
import re
import stat
import zlib
from typing import Optional, Union

import numpy as np

from mlp_jax.errors import InputTypeError, MLPJaxError, describe, one_line, optional_import
from mlp_jax.io.data_checks import Dataset, Splits, check_arrays, file_error, to_dataset

PathLike = Union[str, "os.PathLike[str]"]  # a file or folder
USPS_FEATURES = 256      # 16x16 images, flattened row-major
HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
GZIP_MAGIC = b"\x1f\x8b"
MAX_TEXT_BYTES = 1 << 30  # a gzipped ESL file may not decompress to more than this
MAX_FILE_BYTES = 1 << 30  # nor may a data file be larger

_HDF5_LAYOUT = "expected groups train/test with datasets data/target"
_NOT_TEXT = re.compile(rb"[^\t\n\r\x20-\x7e]")  # ESL text is printable ASCII and whitespace


# --- USPS: HDF5 -------------------------------------------------------------------------------


def _read_hdf5_part(path, f, part: str) -> Dataset:
  """Group `part` ('train' or 'test') of an open HDF5 file, checked."""
  import h5py
  arrays = []
  try:
    group = f.get(part)
    if not isinstance(group, h5py.Group):
      raise file_error(path, f"missing group '{part}' ({_HDF5_LAYOUT})")
    for name in ("data", "target"):
      node = group.get(name)
      if not isinstance(node, h5py.Dataset):
        raise file_error(path, f"missing dataset '{part}/{name}' ({_HDF5_LAYOUT})")
      if node.dtype.kind not in "biuf":
        raise file_error(path, f"{part}/{name} has non-numeric dtype {node.dtype}")
      arrays.append(np.asarray(node[()]))
  except MLPJaxError:
    raise
  except Exception as e:  # h5py raises OSError, KeyError, ValueError, RuntimeError, ...
    raise file_error(path, f"truncated or corrupt HDF5 file ({describe(e)}, reading "
                     f"'{part}')") from e
  x, y = arrays
  check_arrays(path, x, y, f"{part}/data", f"{part}/target", USPS_FEATURES)
  return to_dataset(x, y)


def _read_hdf5(path: pathlib.Path) -> Splits:
  """Groups train and test, each with datasets data (N, 256) and target (N,)."""
  h5py = optional_import("h5py", "hdf5", "reading an HDF5 file")
  try:
    f = h5py.File(path, "r", locking=False)
  except Exception as e:
    raise file_error(path, f"truncated or corrupt HDF5 file ({describe(e)})") from e
  try:
    with f:
      return Splits(_read_hdf5_part(path, f, "train"), _read_hdf5_part(path, f, "test"))
  except MLPJaxError:
    raise
  except Exception as e:  # closing a damaged file can fail too
    raise file_error(path, f"truncated or corrupt HDF5 file ({describe(e)})") from e


# --- USPS: ESL text ---------------------------------------------------------------------------


def _gunzip(path, raw: bytes) -> bytes:
  """The decompressed bytes of a gzip file, at most `MAX_TEXT_BYTES`."""
  try:
    with gzip.GzipFile(fileobj=io.BytesIO(raw)) as f:
      out = f.read(MAX_TEXT_BYTES + 1)
  except Exception as e:  # EOFError, gzip.BadGzipFile, zlib.error, ...
    raise file_error(path, f"truncated or corrupt gzip file ({describe(e)})") from e
  if len(out) > MAX_TEXT_BYTES:
    raise file_error(path, f"gzip file decompresses to more than {MAX_TEXT_BYTES} bytes, "
                     "too large for ESL text")
  return out


def _esl_text(path, raw: bytes) -> str:
  """The text of a (possibly gzipped) ESL file; anything else is 'not HDF5 nor ESL text'."""
  gzipped = raw.startswith(GZIP_MAGIC)
  if gzipped:
    raw = _gunzip(path, raw)
  if not raw.strip():
    raise file_error(path, "empty file" + (" (after gunzip)" if gzipped else ""))
  if raw.startswith(HDF5_MAGIC):
    raise file_error(path, "is HDF5, expected ESL text like the training file")
  bad = _NOT_TEXT.search(raw)
  if bad:
    raise file_error(path, f"not HDF5 nor ESL text (byte 0x{bad.group()[0]:02x} at offset "
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
      raise file_error(path, f"line {number} has {len(tokens)} values, expected {width} "
                       f"(label + {USPS_FEATURES} features)")
    rows.append(tokens)
    lines.append(number)
  if not rows:
    raise file_error(path, "empty file (no data lines)")
  try:
    values = np.array(rows, dtype=np.float64)
  except ValueError as e:
    for tokens, number in zip(rows, lines):
      for token in tokens:
        try:
          float(token)
        except ValueError:
          raise file_error(path, f"non-numeric value {one_line(repr(token), 40)} on line "
                           f"{number}") from e
    raise file_error(path, f"non-numeric value ({describe(e)})") from e
  x, y = values[:, 1:], values[:, 0]
  check_arrays(path, x, y, "features", "labels", USPS_FEATURES, lines)
  return to_dataset((x + 1.0) / 2.0, y)


def _read_esl(path: pathlib.Path) -> Dataset:
  """One ESL text file (plain or gzip, told apart by content), checked and scaled to [0, 1]."""
  return _parse_esl(path, _esl_text(path, _read_bytes(path)))


def _esl_test_path(train_path: pathlib.Path) -> pathlib.Path:
  """The test file beside an ESL training file: 'train' replaced by 'test' in the name."""
  name = train_path.name
  if "train" not in name:
    raise file_error(train_path, "cannot locate the ESL test file: the name has no 'train' "
                     "to replace with 'test' (expected zip.train[.gz] beside zip.test[.gz])")
  test_path = train_path.with_name(name.replace("train", "test"))
  other = (test_path.with_name(test_path.name[:-3]) if test_path.name.endswith(".gz")
           else test_path.with_name(test_path.name + ".gz"))
  for candidate in (test_path, other):
    if candidate.is_file():
      return candidate
  raise file_error(test_path, f"no such file (the ESL test file expected beside {name})")


# --- USPS: files and formats ------------------------------------------------------------------


@contextlib.contextmanager
def _reading(path: pathlib.Path):
  """Turns the OS's errors about opening or reading `path` into one `DataFileError`."""
  try:
    yield
  except FileNotFoundError as e:
    raise file_error(path, "no such file") from e
  except IsADirectoryError as e:
    raise file_error(path, "is a directory, expected a file") from e
  except OSError as e:
    raise file_error(path, f"cannot read file ({describe(e)})") from e


def _check_regular(path: pathlib.Path) -> None:
  """A regular file of at most `MAX_FILE_BYTES`: a FIFO or device would hang or never end."""
  with _reading(path):
    info = path.stat()
  if stat.S_ISDIR(info.st_mode):
    raise file_error(path, "is a directory, expected a file")
  if not stat.S_ISREG(info.st_mode):
    raise file_error(path, "is not a regular file (a pipe, socket or device)")
  if info.st_size > MAX_FILE_BYTES:
    raise file_error(path, f"is {info.st_size} bytes, more than the {MAX_FILE_BYTES} a USPS "
                     "file can need")


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
    raise file_error(path, "empty file")
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
    raise file_error(path, f"cannot read path ({describe(e)})") from e
  if not is_dir:
    return path
  for name in ("usps.h5", "zip.train", "zip.train.gz"):
    try:
      found = (path / name).is_file()
    except OSError as e:  # e.g. a folder without search (x) permission
      raise file_error(path, f"cannot look inside the folder ({describe(e)})") from e
    if found:
      return path / name
  raise file_error(path, "directory holds none of usps.h5, zip.train, zip.train.gz")


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
    return to_dataset(x, arrays[f"{name}_y"])

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
    raise file_error(path, f"cannot read ({describe(e)})") from e
