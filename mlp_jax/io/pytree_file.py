"""Any pytree of arrays plus JSON metadata in one `.npz` file, written atomically, read verified.

    save_pytree("ckpt.npz", {"params": params, "opt_state": opt_state}, {"note": "epoch 3"})
    tree, meta = load_pytree("ckpt.npz", template={"params": params, "opt_state": opt_state})

Format (version 2). An uncompressed numpy `.npz` (a zip of `.npy` arrays) holds each array leaf
under its key path (`jax.tree_util.keystr`, e.g. `['params'][0].w`), and `__meta__`: JSON as
uint8 bytes with `format` ("mlp_jax-checkpoint"), `version`, `leaves` (name, shape, dtype of
each, in tree order), the caller's `metadata`, and `sha256`, the digest of the leaves list, the
metadata and every leaf's name, dtype, shape and bytes. So every byte a load trusts, metadata
included, is covered: an edited epoch count is as much a "checksum mismatch" as a flipped bit.
Why npz + JSON: numpy alone reads it (`np.load(path)`), it round-trips every dtype bit for bit,
and it is read with `allow_pickle=False`, so opening a file never runs code from it. Dtypes
`.npy` cannot name (bfloat16, float8) are stored as same-width unsigned ints; typed PRNG keys as
their key data and implementation name.

The files built on it: `checkpoint` (parameters, optimizer state, PRNG key, epoch, config) and
`training.run` (a whole run, `save_run` / `load_run`). Writes go through
`atomic_file.atomic_write`: a crash or kill at any moment leaves the previous file or the new
one; a refused write (permission, disk full, name too long) is a `StorageError` and the
previous file is intact. Every problem reading a file is one `CheckpointError` naming the file.
"""

import hashlib
import json
import os
import pathlib
import stat
import struct
import zipfile
import zlib
from typing import Any, Callable, Dict, Optional, Sequence, Tuple, Union

import jax
import jax.numpy as jnp
import numpy as np

from mlp_jax.core import validation
from mlp_jax.errors import CheckpointError, InputTypeError, describe
from mlp_jax.io.atomic_file import atomic_write

FORMAT = "mlp_jax-checkpoint"
VERSION = 2
META_KEY = "__meta__"

# What a corrupt or truncated zip / .npy can raise from inside numpy and zipfile.
# (RuntimeError: a flipped flag bit makes zipfile think a member is encrypted.)
_READ_ERRORS = (OSError, ValueError, KeyError, EOFError, MemoryError, OverflowError,
                RuntimeError, NotImplementedError, zipfile.BadZipFile, zipfile.LargeZipFile,
                struct.error, zlib.error)


def save_pytree(path: Union[str, os.PathLike], tree: Any,
                metadata: Optional[dict] = None) -> pathlib.Path:
  """Writes the array leaves of `tree` and the JSON-serialisable dict `metadata` to `path`
  atomically (parent folders created; no suffix added). Returns `path` as a `pathlib.Path`."""
  path = pathlib.Path(path)
  arrays, entries = {}, []
  for key_path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    name = jax.tree_util.keystr(key_path)
    entry, arrays[name] = _stored(name, leaf)
    entries.append(entry)
  metadata = json_dict("metadata", metadata)
  meta = {"format": FORMAT, "version": VERSION, "leaves": entries, "metadata": metadata,
          "sha256": _digest(entries, metadata, arrays)}
  arrays[META_KEY] = np.frombuffer(json.dumps(meta, sort_keys=True).encode("utf-8"), np.uint8)
  with atomic_write(path) as f:
    np.savez(f, allow_pickle=False, **arrays)
  return path


def load_pytree(path: Union[str, os.PathLike], template: Any = None) -> Tuple[Any, dict]:
  """Reads and verifies a file of `save_pytree`: (tree, metadata).

  With `template` (a pytree of arrays or `jax.ShapeDtypeStruct`s) the leaves come back in its
  structure, after checking their number, shapes and dtypes; without, as a dict from leaf name
  (key path) to array, in the saved order.
  """
  path = pathlib.Path(path)
  leaves, metadata = _read(path)
  if template is None:
    return leaves, metadata
  return match_in_file(path, list(leaves.values()), template, "tree"), metadata


def _stored(name: str, leaf) -> Tuple[dict, np.ndarray]:
  """(metadata entry, array as `.npy` stores it) of one leaf."""
  entry: Dict[str, Any] = {"name": name}
  if hasattr(leaf, "dtype") and jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key):
    entry["key_impl"] = str(jax.random.key_impl(leaf))
    leaf = jax.random.key_data(leaf)
  try:
    a = np.asarray(leaf if hasattr(leaf, "dtype") else jnp.asarray(leaf))
  except TypeError:
    a = np.empty(0, object)
  if a.dtype.hasobject:
    raise InputTypeError(f"{name}: expected an array leaf, got {type(leaf).__name__}")
  entry.update(shape=list(a.shape), dtype=a.dtype.name)
  return entry, (a if _npy_native(a.dtype) else np.ascontiguousarray(a).view(_uint_like(a.dtype)))


def _npy_native(dtype: np.dtype) -> bool:
  fmt = np.lib.format
  return fmt.descr_to_dtype(fmt.dtype_to_descr(dtype)) == dtype


def _uint_like(dtype: np.dtype) -> np.dtype:
  if dtype.itemsize not in (1, 2, 4, 8):
    raise InputTypeError(f"cannot store dtype {dtype} in a checkpoint")
  return np.dtype(f"u{dtype.itemsize}")


def json_dict(what: str, value) -> dict:
  """`value`, a JSON-serialisable dict (None: empty), as it will come back: a copy through JSON.
  Else `InputTypeError` naming it as `what`."""
  if value is None:
    return {}
  if not isinstance(value, dict):
    raise InputTypeError(f"{what}: expected a dict, got {type(value).__name__}")
  try:
    return json.loads(json.dumps(value))
  except (TypeError, ValueError) as e:
    raise InputTypeError(f"{what}: expected a JSON-serialisable dict ({e})") from e


def _digest(entries: list, metadata: dict, arrays: Dict[str, np.ndarray]) -> str:
  """sha256 over the leaf list and metadata (canonical JSON), then each leaf's name, stored
  dtype, shape and raw bytes, in order."""
  h = hashlib.sha256(json.dumps([entries, metadata], sort_keys=True).encode("utf-8"))
  for entry in entries:
    a = arrays[entry["name"]]
    h.update(f"{entry['name']}\0{a.dtype.str}\0{list(a.shape)}\0".encode("utf-8"))
    h.update(np.ascontiguousarray(a).reshape(-1).view(np.uint8))
  return h.hexdigest()


def file_error(path: Union[str, os.PathLike], problem: str) -> CheckpointError:
  """The `CheckpointError` of a problem with the file at `path`: "checkpoint PATH: problem"."""
  return CheckpointError(f"checkpoint {path}: {problem}")


_NPY_MAGIC = b"\x93NUMPY"
_SINGLE_NPY = "truncated or not a mlp_jax checkpoint (a single .npy array, not an npz)"
_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")  # a zip's first member, or an empty zip


def _open_npz(path: pathlib.Path):
  """The opened npz of a regular file (a FIFO or device would hang or never end)."""
  try:
    mode = path.stat().st_mode
  except FileNotFoundError as e:
    raise file_error(path, "no such file") from e
  except OSError as e:
    raise file_error(path, f"cannot read ({describe(e)})") from e
  if stat.S_ISDIR(mode):
    raise file_error(path, "is a directory, not a checkpoint file")
  if not stat.S_ISREG(mode):
    raise file_error(path, "is not a regular file (a pipe, socket or device)")
  try:
    with open(path, "rb") as f:
      magic = f.read(len(_NPY_MAGIC))
  except OSError as e:
    raise file_error(path, f"cannot read ({describe(e)})") from e
  if magic == _NPY_MAGIC:
    raise file_error(path, _SINGLE_NPY)
  if magic[:4] not in _ZIP_MAGIC:  # numpy would try it as a pickle and hint at allow_pickle
    what = "an empty file" if not magic else "not an npz (zip) archive"
    raise file_error(path, f"truncated or not a mlp_jax checkpoint ({what})")
  try:
    npz = np.load(path, allow_pickle=False)
  except PermissionError as e:
    raise file_error(path, f"cannot read ({describe(e)})") from e
  except _READ_ERRORS as e:
    raise file_error(path, f"truncated or not a mlp_jax checkpoint ({describe(e)})") from e
  if not isinstance(npz, np.lib.npyio.NpzFile):
    raise file_error(path, _SINGLE_NPY)
  return npz


def _read(path: pathlib.Path) -> Tuple[Dict[str, jax.Array], dict]:
  """({name: leaf}, metadata) of a verified file."""
  with _open_npz(path) as npz:
    if META_KEY not in npz.files:
      raise file_error(path, f"not a mlp_jax checkpoint (no {META_KEY} metadata)")
    meta = _parse_meta(path, _member(path, npz, META_KEY))
    names = [entry["name"] for entry in meta["leaves"]]
    missing = [name for name in names if name not in npz.files]
    if missing:
      raise file_error(path, f"missing arrays {missing} listed in the metadata")
    unexpected = sorted(set(npz.files) - set(names) - {META_KEY})
    if unexpected:
      raise file_error(path, f"arrays {unexpected} not listed in the metadata")
    arrays = {name: _member(path, npz, name) for name in names}
  if _digest(meta["leaves"], meta["metadata"], arrays) != meta["sha256"]:
    raise file_error(path, "checksum mismatch: file corrupted or edited")
  return {e["name"]: _restore_leaf(path, e, arrays[e["name"]]) for e in meta["leaves"]}, \
      meta["metadata"]


def _member(path: pathlib.Path, npz, name: str) -> np.ndarray:
  """One array of the npz; a failed zip CRC-32 is a checksum mismatch, the rest a bad file."""
  try:
    return npz[name]
  except zipfile.BadZipFile as e:
    if "CRC" in str(e):
      raise file_error(path, "checksum mismatch: file corrupted or edited") from e
    raise file_error(path, f"truncated or not a mlp_jax checkpoint ({describe(e)})") from e
  except _READ_ERRORS as e:
    raise file_error(path, f"truncated or not a mlp_jax checkpoint ({describe(e)})") from e


def _parse_meta(path: pathlib.Path, raw: np.ndarray) -> dict:
  """The metadata: format, version, and the fields the checksum is computed from."""
  try:
    meta = json.loads(raw.tobytes().decode("utf-8")) if raw.dtype == np.uint8 else None
  except ValueError as e:
    raise file_error(path, f"bad metadata: not valid JSON ({describe(e)})") from e
  if not isinstance(meta, dict):
    raise file_error(path, f"bad metadata: {META_KEY} is not a JSON object")
  if meta.get("format") != FORMAT:
    raise file_error(path, f"not a mlp_jax checkpoint (format {meta.get('format')!r})")
  if meta.get("version") != VERSION or isinstance(meta.get("version"), bool):
    raise file_error(path, f"format version {meta.get('version')}, this mlp_jax reads version "
                 f"{VERSION}")
  leaves = meta.get("leaves")
  if not (isinstance(leaves, list) and all(isinstance(e, dict) and isinstance(e.get("name"), str)
                                           for e in leaves)
          and isinstance(meta.get("metadata"), dict) and isinstance(meta.get("sha256"), str)):
    raise file_error(path, "bad metadata: expected a leaves list, a metadata object and a sha256")
  names = [e["name"] for e in leaves]
  if len(set(names)) != len(names) or META_KEY in names:
    raise file_error(path, "bad metadata: repeated leaf names")
  return meta


def _restore_leaf(path: pathlib.Path, entry: dict, stored: np.ndarray) -> jax.Array:
  """A stored array checked against its metadata entry, as a JAX array of its true dtype."""
  name = entry["name"]
  try:
    dtype = np.dtype(entry["dtype"])
    stored_dtype = dtype if _npy_native(dtype) else _uint_like(dtype)
    shape = tuple(int(s) for s in entry["shape"])
  except (KeyError, TypeError, ValueError) as e:
    raise file_error(path, f"bad metadata for leaf {name!r} ({describe(e)})") from e
  if tuple(stored.shape) != shape or stored.dtype != stored_dtype:
    raise file_error(path, f"leaf {name!r} is {stored.dtype.name}{list(stored.shape)} in the data, "
                 f"{dtype.name}{list(shape)} in the metadata")
  if jax.dtypes.canonicalize_dtype(dtype) != dtype:
    raise file_error(path, f"leaf {name!r} is {dtype.name} but JAX's 64-bit types are disabled; "
                 "load it inside `jax.enable_x64(True)`")
  leaf = jnp.asarray(np.asarray(stored).view(dtype))
  if "key_impl" in entry:
    try:
      return jax.random.wrap_key_data(leaf, impl=entry["key_impl"])
    except (TypeError, ValueError, KeyError) as e:
      raise file_error(path, f"cannot rebuild the PRNG key {name!r} ({describe(e)})") from e
  return leaf


def match_template(leaves: Sequence[Any], template: Any, what: str,
                   error: Callable[[str], Exception] = CheckpointError) -> Any:
  """`leaves` (a flat list) in `template`'s structure, after checking their number, shapes and
  dtypes against its leaves (arrays or `jax.ShapeDtypeStruct`s); else `error` saying how
  `what` differs."""
  expected = jax.tree.leaves(template)
  if len(leaves) != len(expected):
    raise error(f"{what} does not match: the file holds {len(leaves)} leaves, "
                f"{len(expected)} expected")
  for i, (leaf, want) in enumerate(zip(leaves, expected)):
    if np.shape(leaf) != np.shape(want):
      raise error(f"{what} does not match: leaf {i} has shape {np.shape(leaf)} in the file, "
                  f"{np.shape(want)} expected")
    have, need = _dtype(leaf), _dtype(want)
    if have != need:
      raise error(f"{what} does not match: leaf {i} has dtype {have} in the file, {need} "
                  "expected")
  return jax.tree.unflatten(jax.tree.structure(template), list(leaves))


def _dtype(leaf):
  """A leaf's dtype; typed PRNG keys keep theirs (NumPy cannot name it)."""
  return leaf.dtype if hasattr(leaf, "dtype") else validation.dtype_of(leaf)


def match_in_file(path: Union[str, os.PathLike], leaves: list, template: Any, what: str) -> Any:
  """`match_template` for leaves read from the file at `path`: a mismatch is a `CheckpointError`
  naming the file."""
  return match_template(leaves, template, what, lambda problem: file_error(path, problem))


def subtree(leaves: Dict[str, jax.Array], key: str) -> Dict[str, jax.Array]:
  """Of the {name: leaf} a `load_pytree` without template returns, the leaves under the
  top-level dict key `key`, named by the rest of their key path."""
  prefix = f"[{key!r}]"
  return {name[len(prefix):]: a for name, a in leaves.items() if name.startswith(prefix)}
