"""Data: loaders give checked float32/int32 splits, formats are told by content, every bad file is
one DataFileError naming the file, and splits, scaling and shift augmentation do what they say."""

import gzip
import hashlib
import io
import pathlib

import h5py
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from mlp_jax.io import data
from mlp_jax.io.data import Dataset, Splits
from mlp_jax.errors import DataFileError, InputError

USPS_H5 = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data" / "usps" / "usps.h5"
TRAIN_COUNTS = [1194, 1005, 731, 658, 652, 556, 664, 645, 542, 644]
TEST_COUNTS = [359, 264, 198, 166, 200, 160, 170, 147, 166, 177]
FUZZ = settings(max_examples=50, deadline=None)


# --- small USPS-like files ---------------------------------------------------------------------


def usps_like(seed, m):
  """m rows of 256 values k/16 (exact in binary and as ESL's "%.4f" of 2v - 1), labels 0..9."""
  rng = np.random.default_rng(seed)
  x = (rng.integers(0, 17, size=(m, 256)) / 16).astype(np.float32)
  return Dataset(x, (np.arange(m) % 10).astype(np.int32))


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


def assert_splits_equal(got, want):
  for part_got, part_want in zip(got, want):
    np.testing.assert_array_equal(part_got.x, part_want.x)
    np.testing.assert_array_equal(part_got.y, part_want.y)
    assert part_got.x.dtype == np.float32 and part_got.y.dtype == np.int32


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
  return data.load_usps()


def test_dir_lists_the_public_api_only():
  """`dir(mj.data)` is its `__all__` (the README's loaders, the types and choices), not its
  imports; every public function and class defined here is in `__all__`, and each name exists."""
  assert dir(data) == sorted(data.__all__)
  assert not {"gzip", "np", "os", "checks", "Optional", "describe"} & set(dir(data))
  assert all(hasattr(data, name) for name in data.__all__)
  defined = {name for name, value in vars(data).items() if not name.startswith("_")
             and getattr(value, "__module__", None) == data.__name__}
  assert defined <= set(data.__all__)
  assert {"load_usps", "load_digits", "make_synthetic", "load_splits", "shift_augment",
          "prepare"} <= set(data.__all__)


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
  raw = resources.files("mlp_jax.io").joinpath(data.BUNDLED_USPS).read_bytes()
  assert hashlib.sha256(raw).hexdigest() == data.BUNDLED_USPS_SHA256
  assert len(raw) < 1_800_000  # uint16 levels, compressed
  with np.load(io.BytesIO(raw)) as npz:
    assert {n: (npz[n].dtype.name, npz[n].shape) for n in npz.files} == {
        "train_x": ("uint16", (7291, 256)), "train_y": ("uint8", (7291,)),
        "test_x": ("uint16", (2007, 256)), "test_y": ("uint8", (2007,))}


def test_bundled_usps_decodes_bit_for_bit_to_the_hdf5_copy(usps):
  if not USPS_H5.is_file():
    pytest.skip(f"the shared USPS copy is absent (expected {USPS_H5}, see shared/data/README.md)")
  from_h5 = data.load_usps(USPS_H5)
  for ours, theirs in zip(usps, from_h5):
    assert ours.x.dtype == theirs.x.dtype == np.float32
    assert ours.x.tobytes() == theirs.x.tobytes()  # every bit of every pixel
    assert np.array_equal(ours.y, theirs.y) and ours.y.dtype == theirs.y.dtype
  assert_splits_equal(data.load_usps(str(USPS_H5.parent)), usps)


# --- 8x8 digits --------------------------------------------------------------------------------


def test_load_digits_shapes_dtypes_and_raw_values():
  splits = data.load_digits()
  assert splits.train.x.shape == (1437, 64) and splits.test.x.shape == (360, 64)
  assert splits.train.y.shape == (1437,) and splits.test.y.shape == (360,)
  for part in splits:
    assert part.x.dtype == np.float32 and part.y.dtype == np.int32
    assert part.x.min() == 0.0 and part.x.max() == 16.0  # raw, unscaled
  assert sorted(set(splits.test.y.tolist())) == list(range(10))


def test_load_digits_is_stratified():
  splits = data.load_digits(test_fraction=0.25)
  test_counts = np.bincount(splits.test.y, minlength=10)
  all_counts = test_counts + np.bincount(splits.train.y, minlength=10)
  assert all_counts.sum() == 1797
  assert np.all(np.abs(test_counts - 0.25 * all_counts) <= 1), test_counts


def test_load_digits_is_deterministic_from_seed():
  assert_splits_equal(data.load_digits(seed=3), data.load_digits(seed=3))
  assert not np.array_equal(data.load_digits(seed=3).test.x, data.load_digits(seed=4).test.x)


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.5, 2.0])
def test_load_digits_rejects_bad_fractions(fraction):
  with pytest.raises(InputError, match="test_fraction"):
    data.load_digits(test_fraction=fraction)


# --- formats, told by content ------------------------------------------------------------------


def test_hdf5_and_esl_plain_and_gz_give_identical_arrays(tmp_path):
  from_h5 = data.load_usps(write_h5(tmp_path / "usps.h5"))
  assert_splits_equal(from_h5, Splits(TRAIN, TEST))
  for gz in (False, True):
    directory = tmp_path / ("gz" if gz else "plain")
    directory.mkdir()
    name = "zip.train.gz" if gz else "zip.train"
    assert_splits_equal(data.load_usps(write_esl(directory, gz=gz, name=name)), from_h5)


def test_esl_labels_and_values_are_mapped_to_the_hdf5_scale(tmp_path):
  splits = data.load_usps(write_esl(tmp_path))
  assert splits.train.x.min() == 0.0 and splits.train.x.max() == 1.0  # ESL -1 and 1
  np.testing.assert_array_equal(splits.test.y, TEST.y)


def test_hdf5_named_txt_loads(tmp_path):
  assert_splits_equal(data.load_usps(write_h5(tmp_path / "data.txt")), Splits(TRAIN, TEST))


def test_esl_named_h5_loads(tmp_path):
  assert_splits_equal(data.load_usps(write_esl(tmp_path, name="train.h5")), Splits(TRAIN, TEST))


def test_gzip_told_by_magic_not_by_suffix(tmp_path):
  gz_named_plain = write_esl(tmp_path, gz=True, name="zip.train")
  assert_splits_equal(data.load_usps(gz_named_plain), Splits(TRAIN, TEST))
  other = tmp_path / "other"
  other.mkdir()
  plain_named_gz = write_esl(other, gz=False, name="zip.train.gz")
  assert_splits_equal(data.load_usps(plain_named_gz), Splits(TRAIN, TEST))


def test_esl_test_file_found_with_or_without_gz(tmp_path):
  (tmp_path / "zip.train.gz").write_bytes(esl_bytes(esl_lines(TRAIN), gz=True))
  (tmp_path / "zip.test").write_bytes(esl_bytes(esl_lines(TEST)))
  assert_splits_equal(data.load_usps(tmp_path / "zip.train.gz"), Splits(TRAIN, TEST))


@pytest.mark.parametrize("layout", ["h5", "esl", "esl_gz"])
def test_directory_holding_the_files_loads(tmp_path, layout):
  if layout == "h5":
    write_h5(tmp_path / "usps.h5")
  else:
    write_esl(tmp_path, gz=layout == "esl_gz",
              name="zip.train.gz" if layout == "esl_gz" else "zip.train")
  assert_splits_equal(data.load_usps(tmp_path), Splits(TRAIN, TEST))


def test_esl_blank_lines_and_crlf_are_accepted(tmp_path):
  lines = esl_lines(TRAIN)
  (tmp_path / "zip.train").write_bytes(("\r\n\r\n".join(lines) + "\r\n").encode())
  (tmp_path / "zip.test").write_bytes(esl_bytes(esl_lines(TEST)))
  assert_splits_equal(data.load_usps(tmp_path / "zip.train"), Splits(TRAIN, TEST))


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
    data.load_usps(path)
  message = str(info.value)
  assert isinstance(info.value, ValueError)
  assert message.startswith(f"{path}: ") and problem in message, message
  assert "\n" not in message


def test_missing_esl_test_file_is_named(tmp_path):
  with pytest.raises(DataFileError) as info:
    data.load_usps(_no_test_beside(tmp_path))
  assert str(info.value).startswith(f"{tmp_path / 'zip.test'}: no such file"), info.value


def test_bad_esl_test_file_is_named(tmp_path):
  write_esl(tmp_path)
  (tmp_path / "zip.test").write_bytes(b"1 2 3\n")
  with pytest.raises(DataFileError, match="zip.test: line 1 has 3 values"):
    data.load_usps(tmp_path / "zip.train")


def test_truncation_at_a_line_end_is_still_valid(tmp_path):
  train_path = write_esl(tmp_path)
  raw = train_path.read_bytes()
  train_path.write_bytes(b"\n".join(raw.split(b"\n")[:5]) + b"\n")
  splits = data.load_usps(train_path)
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
    splits = data.load_usps(path)
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
@given(magic=st.sampled_from([data.HDF5_MAGIC, data.GZIP_MAGIC, b"1.0000 "]),
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


# --- synthetic data ----------------------------------------------------------------------------


def test_make_synthetic_shapes_dtypes_and_balance():
  ds = data.make_synthetic(1003, num_features=7, num_classes=5)
  assert ds.x.shape == (1003, 7) and ds.y.shape == (1003,)
  assert ds.x.dtype == np.float32 and ds.y.dtype == np.int32
  counts = np.bincount(ds.y)
  assert len(counts) == 5 and counts.max() - counts.min() <= 1


def test_make_synthetic_is_deterministic_from_seed():
  a, b = data.make_synthetic(500, seed=1), data.make_synthetic(500, seed=1)
  np.testing.assert_array_equal(a.x, b.x)
  np.testing.assert_array_equal(a.y, b.y)
  assert not np.array_equal(a.x, data.make_synthetic(500, seed=2).x)


def test_make_synthetic_clusters_are_separable_at_low_noise():
  ds = data.make_synthetic(2000, num_features=16, num_classes=4, noise=0.05)
  means = np.stack([ds.x[ds.y == k].mean(axis=0) for k in range(4)])
  nearest = np.argmin(((ds.x[:, None, :] - means[None]) ** 2).sum(-1), axis=1)
  assert (nearest == ds.y).all()


def test_make_synthetic_large_in_chunks():
  ds = data.make_synthetic(150_000, num_features=8, seed=5)  # more than one chunk of rows
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
    data.make_synthetic(**kwargs)


# --- train/validation split --------------------------------------------------------------------


def indexed(labels):
  """A Dataset whose rows are their own indices, so parts can be traced back."""
  labels = np.asarray(labels, np.int32)
  return Dataset(np.arange(len(labels), dtype=np.float32)[:, None], labels)


UNEVEN = np.repeat(np.arange(6), [2, 3, 50, 100, 1, 17])


def test_train_val_split_is_disjoint_covering_and_stratified():
  train, val = data.train_val_split(indexed(UNEVEN), val_fraction=0.2)
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
  train, val = data.train_val_split(indexed(labels), val_fraction=fraction, seed=seed)
  rows = np.concatenate([train.x[:, 0], val.x[:, 0]]).astype(int)
  assert sorted(rows) == list(range(len(labels)))  # disjoint and covering
  for k in np.flatnonzero(counts >= 2):
    assert (train.y == k).any() and (val.y == k).any()
  assert not np.isin(val.y, np.flatnonzero(counts == 1)).any()


def test_train_val_split_is_deterministic_from_seed():
  ds = data.make_synthetic(300, num_features=3)
  (a, b), (c, d) = data.train_val_split(ds, seed=7), data.train_val_split(ds, seed=7)
  for p, q in ((a, c), (b, d)):
    np.testing.assert_array_equal(p.x, q.x)
    np.testing.assert_array_equal(p.y, q.y)
  assert not np.array_equal(b.x, data.train_val_split(ds, seed=8)[1].x)


def test_train_val_split_rejects_bad_input():
  with pytest.raises(InputError, match="val_fraction"):
    data.train_val_split(indexed(UNEVEN), val_fraction=1.0)
  with pytest.raises(InputError, match="no class has 2 or more"):
    data.train_val_split(indexed([0, 1, 2]))
  with pytest.raises(InputError, match="expected x of shape"):
    data.train_val_split(Dataset(np.zeros((3, 2)), np.zeros(4, np.int32)))


# --- scaling -----------------------------------------------------------------------------------


def test_fit_scaler_uses_training_data_only():
  rng = np.random.default_rng(0)
  train_x = (3.0 + 2.0 * rng.standard_normal((500, 4))).astype(np.float32)
  train_x[:, 2] = 7.0  # a constant pixel
  test_x = train_x + 5.0
  scaler = data.fit_scaler(train_x)
  np.testing.assert_allclose(scaler.mean, train_x.mean(axis=0), rtol=1e-6)
  assert scaler.scale[2] == 1.0
  scaled = scaler.apply(train_x)
  assert scaled.dtype == np.float32
  np.testing.assert_allclose(scaled.mean(axis=0), 0.0, atol=1e-5)
  np.testing.assert_allclose(scaled.std(axis=0)[[0, 1, 3]], 1.0, rtol=1e-5)
  assert (scaled[:, 2] == 0.0).all()
  scaled_test = data.apply_scaler(scaler, test_x)  # shifted by 5 in train units, not re-centred
  np.testing.assert_allclose(scaled_test - scaled,
                             np.broadcast_to(5.0 / scaler.scale, scaled.shape), rtol=1e-4)


def test_scaler_rejects_bad_input():
  scaler = data.fit_scaler(np.ones((3, 4), np.float32))
  with pytest.raises(InputError, match="4 features"):
    scaler.apply(np.ones((2, 5), np.float32))
  with pytest.raises(InputError, match="finite"):
    data.fit_scaler(np.array([[1.0, np.nan]]))
  with pytest.raises(InputError, match="shape"):
    data.fit_scaler(np.zeros((0, 3)))


# --- shift augmentation ------------------------------------------------------------------------


def test_shift_augment_shifts_a_known_image_and_fills_with_the_minimum():
  image = np.array([[1, 2, 3], [4, 5, 6]], np.float32)
  ds = Dataset(np.stack([image.ravel(), np.full(6, -1.0, np.float32)]), np.array([3, 8], np.int32))
  out = data.shift_augment(ds, (2, 3))
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
  out = data.shift_augment(ds, (16, 16))
  assert out.x.shape == (35, 256) and out.y.shape == (35,)
  np.testing.assert_array_equal(out.x[:7], ds.x)


def test_shift_augment_eight_neighbours_adds_the_diagonals_after_the_four():
  image = np.array([[1, 2, 3], [4, 5, 6]], np.float32)
  ds = Dataset(image.ravel()[None], np.array([7], np.int32))
  out = data.shift_augment(ds, (2, 3), neighbours=8)
  f = 1.0  # the minimum
  four = data.shift_augment(ds, (2, 3))
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
  out = data.shift_augment(ds, (16, 16), neighbours)
  padded = np.pad(ds.x.reshape(-1, 16, 16), ((0, 0), (1, 1), (1, 1)), constant_values=ds.x.min())
  for k, (dy, dx) in enumerate(data.SHIFTS[:neighbours], start=1):
    want = padded[:, 1 - dy:17 - dy, 1 - dx:17 - dx].reshape(-1, 256)
    np.testing.assert_array_equal(out.x[4 * k:4 * (k + 1)], want)


def test_shift_augment_rejects_other_neighbour_counts():
  with pytest.raises(InputError, match="neighbours"):
    data.shift_augment(usps_like(0, 2), (16, 16), neighbours=6)


@pytest.mark.parametrize("shape", [(16, 16), (4,), (0, 6), "ab"])
def test_shift_augment_rejects_a_shape_that_does_not_fit(shape):
  ds = Dataset(np.zeros((2, 6), np.float32), np.zeros(2, np.int32))
  with pytest.raises(InputError, match="image_shape"):
    data.shift_augment(ds, shape)
