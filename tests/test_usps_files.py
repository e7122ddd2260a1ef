"""USPS files: HDF5 and ESL text told apart by content give the same checked float32/int32 splits,
the bundled copy is the recorded one, and every bad file is one DataFileError naming the file."""

import gzip
import hashlib
import io
import pathlib

import h5py
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from mlp_jax.errors import DataFileError
from mlp_jax.io import usps_files
from mlp_jax.io.data_checks import Dataset, Splits
from mlp_jax.io.usps_files import load_usps
from conftest import assert_splits_equal, usps_like

USPS_H5 = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data" / "usps" / "usps.h5"
TRAIN_COUNTS = [1194, 1005, 731, 658, 652, 556, 664, 645, 542, 644]
TEST_COUNTS = [359, 264, 198, 166, 200, 160, 170, 147, 166, 177]
FUZZ = settings(max_examples=50, deadline=None)


# --- small USPS-like files ---------------------------------------------------------------------

TRAIN, TEST = usps_like(0, 20), usps_like(1, 10)


def h5_parts(train=TRAIN, test=TEST):
  return {"train": {"data": train.x, "target": train.y},
          "test": {"data": test.x, "target": test.y}}


def write_h5(path, parts=None, **dataset_kwargs):
  with h5py.File(path, "w") as f:
    for group, members in (h5_parts() if parts is None else parts).items():
      g = f.create_group(group)
      for name, value in members.items():
        g.create_dataset(name, data=value, **dataset_kwargs)
  return path


def esl_lines(ds):
  """ESL text lines: label as "6.0000", then 256 values 2v - 1 in [-1, 1]."""
  return [" ".join([f"{label:.4f}"] + [f"{v:.4f}" for v in 2.0 * row - 1.0])
          for row, label in zip(ds.x.astype(np.float64), ds.y)]


def esl_bytes(lines, gz=False):
  raw = ("\n".join(lines) + "\n").encode("ascii")
  return gzip.compress(raw, mtime=0) if gz else raw


def write_esl(directory, train=TRAIN, test=TEST, gz=False, name="zip.train"):
  """name (the training file) and name with 'train' -> 'test' beside it; returns the first."""
  train_path = directory / name
  train_path.write_bytes(esl_bytes(esl_lines(train), gz))
  (directory / name.replace("train", "test")).write_bytes(esl_bytes(esl_lines(test), gz))
  return train_path


def assert_proper_usps(splits):
  assert isinstance(splits, Splits)
  for part in splits:
    assert part.x.dtype == np.float32 and part.y.dtype == np.int32
    assert part.x.ndim == 2 and part.x.shape[1] == 256 and part.x.shape[0] == part.y.shape[0] > 0
    assert np.isfinite(part.x).all() and part.y.min() >= 0 and part.y.max() <= 9


# --- the real USPS: bundled with the package, and the shared HDF5 copy when present ----------


@pytest.fixture(scope="module")
def usps():
  """The USPS copy inside the package: no file or download needed."""
  return load_usps()


def test_real_usps_sizes_labels_and_range(usps):
  assert usps.train.x.shape == (7291, 256) and usps.test.x.shape == (2007, 256)
  assert_proper_usps(usps)
  assert np.bincount(usps.train.y, minlength=10).tolist() == TRAIN_COUNTS
  assert np.bincount(usps.test.y, minlength=10).tolist() == TEST_COUNTS
  for part in usps:
    assert part.x.min() >= 0.0 and part.x.max() <= 1.0
    k = part.x.astype(np.float64) * 2000  # every pixel one of the 2001 ESL levels
    assert np.abs(k - np.rint(k)).max() < 1e-3


def test_bundled_usps_file_is_the_recorded_one():
  """Provenance: docs/data.md records this sha256 of the package's usps.npz."""
  from importlib import resources
  raw = resources.files("mlp_jax.io").joinpath(usps_files.BUNDLED_USPS).read_bytes()
  assert hashlib.sha256(raw).hexdigest() == usps_files.BUNDLED_USPS_SHA256
  assert len(raw) < 1_800_000  # uint16 levels, compressed
  with np.load(io.BytesIO(raw)) as npz:
    assert {n: (npz[n].dtype.name, npz[n].shape) for n in npz.files} == {
        "train_x": ("uint16", (7291, 256)), "train_y": ("uint8", (7291,)),
        "test_x": ("uint16", (2007, 256)), "test_y": ("uint8", (2007,))}


def test_bundled_usps_decodes_bit_for_bit_to_the_hdf5_copy(usps):
  if not USPS_H5.is_file():
    pytest.skip(f"the shared USPS copy is absent (expected {USPS_H5}, see shared/data/README.md)")
  from_h5 = load_usps(USPS_H5)
  for ours, theirs in zip(usps, from_h5):
    assert ours.x.dtype == theirs.x.dtype == np.float32
    assert ours.x.tobytes() == theirs.x.tobytes()  # every bit of every pixel
    assert np.array_equal(ours.y, theirs.y) and ours.y.dtype == theirs.y.dtype
  assert_splits_equal(load_usps(str(USPS_H5.parent)), usps)


# --- formats, told by content ------------------------------------------------------------------


def test_hdf5_and_esl_plain_and_gz_give_identical_arrays(tmp_path):
  from_h5 = load_usps(write_h5(tmp_path / "usps.h5"))
  assert_splits_equal(from_h5, Splits(TRAIN, TEST))
  for gz in (False, True):
    directory = tmp_path / ("gz" if gz else "plain")
    directory.mkdir()
    name = "zip.train.gz" if gz else "zip.train"
    assert_splits_equal(load_usps(write_esl(directory, gz=gz, name=name)), from_h5)


def test_esl_labels_and_values_are_mapped_to_the_hdf5_scale(tmp_path):
  splits = load_usps(write_esl(tmp_path))
  assert splits.train.x.min() == 0.0 and splits.train.x.max() == 1.0  # ESL -1 and 1
  np.testing.assert_array_equal(splits.test.y, TEST.y)


def test_hdf5_named_txt_loads(tmp_path):
  assert_splits_equal(load_usps(write_h5(tmp_path / "data.txt")), Splits(TRAIN, TEST))


def test_esl_named_h5_loads(tmp_path):
  assert_splits_equal(load_usps(write_esl(tmp_path, name="train.h5")), Splits(TRAIN, TEST))


def test_gzip_told_by_magic_not_by_suffix(tmp_path):
  gz_named_plain = write_esl(tmp_path, gz=True, name="zip.train")
  assert_splits_equal(load_usps(gz_named_plain), Splits(TRAIN, TEST))
  other = tmp_path / "other"
  other.mkdir()
  plain_named_gz = write_esl(other, gz=False, name="zip.train.gz")
  assert_splits_equal(load_usps(plain_named_gz), Splits(TRAIN, TEST))


def test_esl_test_file_found_with_or_without_gz(tmp_path):
  (tmp_path / "zip.train.gz").write_bytes(esl_bytes(esl_lines(TRAIN), gz=True))
  (tmp_path / "zip.test").write_bytes(esl_bytes(esl_lines(TEST)))
  assert_splits_equal(load_usps(tmp_path / "zip.train.gz"), Splits(TRAIN, TEST))


@pytest.mark.parametrize("layout", ["h5", "esl", "esl_gz"])
def test_directory_holding_the_files_loads(tmp_path, layout):
  if layout == "h5":
    write_h5(tmp_path / "usps.h5")
  else:
    write_esl(tmp_path, gz=layout == "esl_gz",
              name="zip.train.gz" if layout == "esl_gz" else "zip.train")
  assert_splits_equal(load_usps(tmp_path), Splits(TRAIN, TEST))


def test_esl_blank_lines_and_crlf_are_accepted(tmp_path):
  lines = esl_lines(TRAIN)
  (tmp_path / "zip.train").write_bytes(("\r\n\r\n".join(lines) + "\r\n").encode())
  (tmp_path / "zip.test").write_bytes(esl_bytes(esl_lines(TEST)))
  assert_splits_equal(load_usps(tmp_path / "zip.train"), Splits(TRAIN, TEST))


# --- bad files ---------------------------------------------------------------------------------


def _esl_with(tmp_path, line, tokens):
  """zip.train whose 1-based `line` is replaced by `tokens`, with a good zip.test beside."""
  lines = esl_lines(TRAIN)
  lines[line - 1] = " ".join(tokens)
  write_esl(tmp_path)
  (tmp_path / "zip.train").write_bytes(esl_bytes(lines))
  return tmp_path / "zip.train"


def _esl_token(tmp_path, line, position, token):
  tokens = esl_lines(TRAIN)[line - 1].split()
  tokens[position] = token
  return _esl_with(tmp_path, line, tokens)


def _h5_with(tmp_path, part, name, value, name_in_file="bad.h5"):
  parts = h5_parts()
  if value is None:
    del parts[part][name]
  else:
    parts[part][name] = value
  return write_h5(tmp_path / name_in_file, parts)


def _nan_data():
  x = TRAIN.x.copy()
  x[2, 5] = np.nan
  x[3, 0] = np.inf
  x[7, 9] = -np.inf
  return x


def _truncated_h5(tmp_path):
  raw = write_h5(tmp_path / "full.h5").read_bytes()
  (tmp_path / "x.h5").write_bytes(raw[:len(raw) // 2])
  return tmp_path / "x.h5"


def _truncated_gz(tmp_path):
  write_esl(tmp_path, gz=True, name="zip.train.gz")
  raw = (tmp_path / "zip.train.gz").read_bytes()
  (tmp_path / "zip.train.gz").write_bytes(raw[:len(raw) // 2])
  return tmp_path / "zip.train.gz"


def _write(tmp_path, name, raw):
  (tmp_path / name).write_bytes(raw)
  return tmp_path / name


def _no_test_beside(tmp_path):
  write_esl(tmp_path)
  (tmp_path / "zip.test").unlink()
  return tmp_path / "zip.train"


BAD_FILES = {
    "missing": (lambda t: t / "none.h5", "no such file"),
    "empty": (lambda t: _write(t, "empty.txt", b""), "empty file"),
    "blank": (lambda t: _write(t, "zip.train", b" \n\n \n"), "empty file"),
    "unknown format": (lambda t: _write(t, "x.bin", bytes(range(256))), "not HDF5 nor ESL text"),
    "directory": (lambda t: t, "directory holds none of usps.h5, zip.train, zip.train.gz"),
    "esl short line": (lambda t: _esl_with(t, 17, esl_lines(TRAIN)[16].split()[:250]),
                       "line 17 has 250 values, expected 257 (label + 256 features)"),
    "esl non-numeric": (lambda t: _esl_token(t, 3, 10, "abc"), "non-numeric value 'abc' on line 3"),
    "esl nan": (lambda t: _esl_token(t, 2, 4, "nan"), "1 NaN or Inf values in features "
                "(first on line 2)"),
    "esl huge": (lambda t: _esl_token(t, 5, 1, "3e7"), "1 huge values (magnitude > 1e+06)"),
    "esl label 11": (lambda t: _esl_token(t, 4, 0, "11.0000"), "label 11 outside 0..9 on line 4"),
    "esl label -1": (lambda t: _esl_token(t, 4, 0, "-1.0000"), "label -1 outside 0..9 on line 4"),
    "esl label 2.5": (lambda t: _esl_token(t, 1, 0, "2.5"),
                      "label 2.5 is not an integer on line 1"),
    "esl no train in name": (lambda t: write_esl(t, name="digits.txt"), "no 'train' to replace"),
    "esl truncated gz": (_truncated_gz, "truncated or corrupt gzip file"),
    "h5 truncated": (_truncated_h5, "truncated or corrupt HDF5 file ("),
    "h5 missing group": (lambda t: write_h5(t / "usps.h5", {"train": h5_parts()["train"]}),
                         "missing group 'test' (expected groups train/test with datasets "
                         "data/target)"),
    "h5 missing dataset": (lambda t: _h5_with(t, "train", "target", None),
                           "missing dataset 'train/target'"),
    "h5 nan": (lambda t: _h5_with(t, "train", "data", _nan_data()),
               "3 NaN or Inf values in train/data (first in row 2)"),
    "h5 huge": (lambda t: _h5_with(t, "test", "data", TEST.x * 1e7),
                "huge values (magnitude > 1e+06) in test/data, out of range"),
    "h5 label 11": (lambda t: _h5_with(t, "train", "target", np.full(20, 11, np.int32)),
                    "label 11 outside 0..9 in train/target (row 0)"),
    "h5 fractional label": (lambda t: _h5_with(t, "test", "target", TEST.y + 0.5),
                            "label 0.5 is not an integer in test/target (row 0)"),
    "h5 row mismatch": (lambda t: _h5_with(t, "train", "target", TRAIN.y[:19]),
                        "train/data has 20 rows but train/target has 19"),
    "h5 1-D data": (lambda t: _h5_with(t, "train", "data", TRAIN.x[0]), "train/data is not 2-D"),
    "h5 wrong width": (lambda t: _h5_with(t, "test", "data", TEST.x[:, :100]),
                       "test/data has 100 features per row, expected 256"),
    "h5 empty": (lambda t: _h5_with(t, "train", "data", np.zeros((0, 256), np.float32)),
                 "train/data is empty"),
    "h5 text target": (lambda t: _h5_with(t, "train", "target", np.array([b"a"] * 20)),
                       "train/target has non-numeric dtype"),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_bad_file_is_one_data_file_error_naming_it(tmp_path, case):
  build, problem = BAD_FILES[case]
  path = build(tmp_path)
  with pytest.raises(DataFileError) as info:
    load_usps(path)
  message = str(info.value)
  assert isinstance(info.value, ValueError)
  assert message.startswith(f"{path}: ") and problem in message, message
  assert "\n" not in message


def test_missing_esl_test_file_is_named(tmp_path):
  with pytest.raises(DataFileError) as info:
    load_usps(_no_test_beside(tmp_path))
  assert str(info.value).startswith(f"{tmp_path / 'zip.test'}: no such file"), info.value


def test_bad_esl_test_file_is_named(tmp_path):
  write_esl(tmp_path)
  (tmp_path / "zip.test").write_bytes(b"1 2 3\n")
  with pytest.raises(DataFileError, match="zip.test: line 1 has 3 values"):
    load_usps(tmp_path / "zip.train")


def test_truncation_at_a_line_end_is_still_valid(tmp_path):
  train_path = write_esl(tmp_path)
  raw = train_path.read_bytes()
  train_path.write_bytes(b"\n".join(raw.split(b"\n")[:5]) + b"\n")
  splits = load_usps(train_path)
  assert_splits_equal(splits, Splits(Dataset(TRAIN.x[:5], TRAIN.y[:5]), TEST))


# --- fuzzing: any bytes give a DataFileError (or, if still valid, proper splits) ----------------


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory):
  """A folder with a good zip.test, and the bytes of good HDF5, plain and gzipped ESL files."""
  directory = tmp_path_factory.mktemp("fuzz")
  good = {"h5": write_h5(directory / "good.h5", compression="gzip").read_bytes(),
          "plain": esl_bytes(esl_lines(TRAIN)), "gz": esl_bytes(esl_lines(TRAIN), gz=True)}
  (directory / "zip.test").write_bytes(esl_bytes(esl_lines(TEST)))
  return directory, good


def load_or_data_error(directory, raw, name="zip.train"):
  path = directory / name
  path.write_bytes(raw)
  try:
    splits = load_usps(path)
  except DataFileError as e:
    message = str(e)
    assert message.startswith(str(directory)) and "\n" not in message, message
    return None
  assert_proper_usps(splits)
  return splits


@FUZZ
@given(raw=st.binary(max_size=4096))
def test_random_bytes_give_data_file_error(fuzz_dir, raw):
  assert load_or_data_error(fuzz_dir[0], raw) is None  # never a data set


@FUZZ
@given(magic=st.sampled_from([usps_files.HDF5_MAGIC, usps_files.GZIP_MAGIC, b"1.0000 "]),
       raw=st.binary(max_size=4096))
def test_random_bytes_behind_a_magic_give_data_file_error(fuzz_dir, magic, raw):
  assert load_or_data_error(fuzz_dir[0], magic + raw) is None  # never a data set


@FUZZ
@given(choice=st.data())
def test_truncated_hdf5_gives_data_file_error(fuzz_dir, choice):
  directory, good = fuzz_dir
  cut = choice.draw(st.integers(0, len(good["h5"]) - 1))
  assert load_or_data_error(directory, good["h5"][:cut], name="cut.h5") is None


@FUZZ
@given(choice=st.data())
def test_damaged_hdf5_gives_data_file_error_or_splits(fuzz_dir, choice):
  directory, good = fuzz_dir
  raw = bytearray(good["h5"])
  for _ in range(choice.draw(st.integers(1, 4))):
    raw[choice.draw(st.integers(0, len(raw) - 1))] = choice.draw(st.integers(0, 255))
  load_or_data_error(directory, bytes(raw), name="damaged.h5")


@pytest.mark.parametrize("kind", ["plain", "gz"])
@FUZZ
@given(choice=st.data())
def test_truncated_esl_gives_data_file_error_or_splits(fuzz_dir, kind, choice):
  directory, good = fuzz_dir
  cut = choice.draw(st.integers(0, len(good[kind]) - 1))
  splits = load_or_data_error(directory, good[kind][:cut])
  if splits is not None:  # cut at (or just inside) a line end: a prefix of the rows
    m = splits.train.x.shape[0]
    np.testing.assert_array_equal(splits.train.y, TRAIN.y[:m])
