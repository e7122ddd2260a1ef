"""The on-disk cache of arrays (the accountant's one-step distributions): a hit is the arrays
put, anything else is a miss, never an error; the folder stays under its size."""

import os

import numpy as np
import pytest

from mlp_jax.io import array_cache
from mlp_jax.io.array_cache import ArrayCache


@pytest.fixture
def cache(tmp_path, monkeypatch):
  monkeypatch.setenv(array_cache.ENV, str(tmp_path))
  return ArrayCache.from_environment("kind")


def _arrays(seed=0):
  rng = np.random.default_rng(seed)
  return {"probs": rng.random(1000), "lower": np.asarray(-7, np.int64)}


def test_a_put_entry_comes_back_bit_for_bit(cache):
  assert cache.get("k") is None and cache.put("k", _arrays())
  got = cache.get("k")
  assert set(got) == {"probs", "lower"}
  np.testing.assert_array_equal(got["probs"], _arrays()["probs"])
  assert got["lower"] == -7 and got["lower"].dtype == np.int64


@pytest.mark.parametrize("damage", ["truncate", "flip", "other_key"])
def test_a_damaged_or_foreign_entry_is_a_miss(cache, damage):
  cache.put("k", _arrays())
  path = cache._path("k")
  if damage == "truncate":
    path.write_bytes(path.read_bytes()[:100])
  elif damage == "flip":  # one byte of the arrays changed: the checksum no longer holds
    np.savez(path, __key__=np.asarray("k"), __checksum__=np.asarray("0" * 64), **_arrays(1))
  else:  # a file of another key under this name
    other = cache._path("other")
    cache.put("other", _arrays(1))
    os.replace(other, path)
  assert cache.get("k") is None


def test_off_and_unwritable_are_no_errors(tmp_path, monkeypatch):
  monkeypatch.setenv(array_cache.ENV, "off")
  assert ArrayCache.from_environment("kind") is None
  blocker = tmp_path / "file"
  blocker.write_text("not a folder")
  assert ArrayCache(blocker / "kind").put("k", _arrays()) is False


def test_the_folder_keeps_under_its_size_dropping_the_least_recently_used(cache, monkeypatch):
  monkeypatch.setattr(array_cache, "MAX_BYTES", 25_000)  # room for two 8 kB entries, not four
  for k in range(4):
    cache.put(f"k{k}", _arrays(k))
    os.utime(cache._path(f"k{k}"), (k, k))  # put in order, a second apart
    if k == 1:
      cache.get("k0")  # read: now the most recent of the two
  names = {p.name for p in cache.folder.glob("*.npz")}
  assert cache._path("k3").name in names and len(names) <= 3
  assert cache._path("k1").name not in names
