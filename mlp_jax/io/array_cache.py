"""A folder of arrays kept between processes, for results that are slow to compute and
determined by a few numbers (the privacy accountant's one-step distributions).

    cache = ArrayCache.from_environment("pld")     # None when off
    arrays = cache.get(key) if cache else None     # a dict of arrays, or None
    if arrays is None: ... compute ...; cache.put(key, arrays)

An entry is one `.npz` named by the SHA-256 of its key, holding the key itself and a checksum
of its arrays: a file of another key, a truncated or altered file reads as a miss and is
computed again. Writes go through `atomic_write`; a reading marks its entry used, and a writing
that takes a kind's folder past `MAX_BYTES` removes the entries used least recently. Like the
compilation cache, it is a speed-up, never a reason to fail: a folder that cannot be made or
written leaves entries uncached. `MLP_JAX_CACHE=off` turns it off; `MLP_JAX_CACHE=PATH` moves
its root.
"""

import hashlib
import os
import pathlib
from typing import Dict, NamedTuple, Optional

import numpy as np

from mlp_jax.io.atomic_file import atomic_write

ENV = "MLP_JAX_CACHE"
MAX_BYTES = 256 * 2**20  # per kind; a USPS-sized step distribution is about 5 MB


def default_root() -> str:
  """`$XDG_CACHE_HOME/mlp_jax` (by default `~/.cache/mlp_jax`)."""
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(base, "mlp_jax")


def _checksum(arrays: Dict[str, np.ndarray]) -> str:
  digest = hashlib.sha256()
  for name in sorted(arrays):
    value = np.ascontiguousarray(arrays[name])
    digest.update(f"{name}:{value.dtype.str}:{value.shape}".encode())
    digest.update(value.tobytes())
  return digest.hexdigest()


class ArrayCache(NamedTuple):
  """Entries of one kind in `folder`."""
  folder: pathlib.Path

  @classmethod
  def from_environment(cls, kind: str) -> Optional["ArrayCache"]:
    """The cache of `kind` under `$MLP_JAX_CACHE` or `default_root()`; None when turned off."""
    setting = os.environ.get(ENV, "")
    if setting.lower() in ("off", "0", "false", "no"):
      return None
    return cls(pathlib.Path(setting or default_root()) / kind)

  def _path(self, key: str) -> pathlib.Path:
    return self.folder / (hashlib.sha256(key.encode()).hexdigest()[:32] + ".npz")

  def get(self, key: str) -> Optional[Dict[str, np.ndarray]]:
    """The arrays kept under `key`, or None (no entry, or one that does not verify)."""
    try:
      with np.load(self._path(key), allow_pickle=False) as f:
        arrays = {name: f[name] for name in f.files}
    except Exception:  # missing, truncated, not a zip, not arrays: a miss, never an error
      return None
    stored_key, checksum = arrays.pop("__key__", None), arrays.pop("__checksum__", None)
    if stored_key is None or str(stored_key) != key or str(checksum) != _checksum(arrays):
      return None
    try:
      os.utime(self._path(key))  # used now: the last to be evicted
    except OSError:
      pass
    return arrays

  def put(self, key: str, arrays: Dict[str, np.ndarray]) -> bool:
    """Keeps `arrays` under `key`; False when the file system refused (nothing is raised)."""
    try:
      with atomic_write(self._path(key)) as f:
        np.savez(f, __key__=np.asarray(key), __checksum__=np.asarray(_checksum(arrays)),
                 **arrays)
    except Exception:  # a speed-up only: StorageError, or anything else writing raised
      return False
    self._evict()
    return True

  def _evict(self) -> None:
    """Removes the least recently used entries while the folder holds over `MAX_BYTES`."""
    try:
      entries = sorted((p.stat().st_mtime, p.stat().st_size, p)
                       for p in self.folder.glob("*.npz"))
      total = sum(size for _, size, _ in entries)
      for _, size, path in entries[:-1]:  # never the newest
        if total <= MAX_BYTES:
          break
        path.unlink()
        total -= size
    except OSError:  # another process evicting the same files, or no permission
      pass
