"""Checkpoints: parameters, optimizer state, PRNG key and metadata in one `.npz` file, atomically.

Format. A checkpoint is a single uncompressed numpy `.npz` (a zip of `.npy` arrays) holding every
array leaf under a stable name (`params.0.w`, `params.0.b`, ..., `opt_state.0`, ..., `rng`) plus
a JSON metadata string stored as a uint8 byte array under `__meta__`. Why npz + JSON: it needs no
dependency beyond numpy, it opens with plain numpy (`np.load(path)`) and any JSON reader, it
round-trips float32, float64 and integer arrays bit for bit, and it is read with
`allow_pickle=False`, so opening a file never runs code from it. Dtypes `.npy` cannot name
(bfloat16, float8) are stored as unsigned integers of the same width and viewed back on load.

Metadata: `format` ("mlp_jax-checkpoint"), `version` (1), `layer_sizes`, `param_dtype`, `epoch`,
`step`, `config`, `extra`, `leaves` (name, shape and dtype of every leaf of params, opt_state and
rng), `opt_state_is_none`, `rng_typed` / `rng_impl`, and `sha256`: the digest of every leaf's
name, stored dtype, shape and raw bytes in a fixed order, so any flipped byte is detected (most are
caught even earlier by the zip's own CRC-32, reported the same way).

Writes are atomic: the file is written to a temporary file in the target's directory, flushed and
fsync'ed, moved onto the target with `os.replace`, and the directory is fsync'ed. A crash or kill
at any moment leaves either the previous checkpoint or the new one at the path, never a mix; a
process killed mid-write may leave a stale `.NAME.*.tmp` file beside it.

Loading verifies, in order: the file exists, is a readable npz, has JSON metadata of this format
and version, holds exactly the leaves the metadata lists, matches its checksum, and every leaf has
the listed shape and dtype. Each failure is one `CheckpointError` naming the file and the problem.
"""

import hashlib
import json
import pathlib
import struct
import zipfile
import zlib
from typing import Any, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mlp_jax.core import checks, model
from mlp_jax.core.model import Dense, Params
from mlp_jax.errors import CheckpointError, InputError, InputTypeError, describe
from mlp_jax.io.atomic_file import atomic_write

FORMAT = "mlp_jax-checkpoint"
VERSION = 1
META_KEY = "__meta__"
GROUPS = ("params", "opt_state", "rng")

# What a corrupt or truncated zip / .npy can raise from inside numpy and zipfile.
# (RuntimeError: a flipped flag bit makes zipfile think a member is encrypted.)
_READ_ERRORS = (OSError, ValueError, KeyError, EOFError, MemoryError, OverflowError,
                RuntimeError, NotImplementedError, zipfile.BadZipFile, zipfile.LargeZipFile,
                struct.error, zlib.error)


class Checkpoint(NamedTuple):
  """What `load_checkpoint` returns."""
  params: Params
  opt_state: Any  # the template's structure; a list of leaves without template; None if none saved
  epoch: int
  config: dict
  rng_key: Optional[jax.Array]  # raw uint32 key, or a typed key if a typed key was saved
  step: int
  extra: dict


# ------------------------------------------------------------------------------------- saving


def save_checkpoint(
    path,
    params: Params,
    opt_state=None,
    *,
    epoch: int,
    config: Optional[dict] = None,
    rng_key: Optional[jax.Array] = None,
    step: int = 0,
    extra: Optional[dict] = None,
) -> pathlib.Path:
  """Writes a checkpoint to `path` atomically, creating parent directories.

  Args:
    path: the file to write, used as given (no `.npz` suffix is added).
    params: a tuple of `Dense` layers.
    opt_state: any optax state pytree whose leaves are arrays, or None.
    epoch: epochs completed, an int >= 0.
    config: a JSON-serialisable dict (tuples come back as lists).
    rng_key: a raw PRNG key (`jax.random.PRNGKey`) or a typed one (`jax.random.key`), or None.
    step: optimizer steps completed, an int >= 0.
    extra: a JSON-serialisable dict of anything else.

  Returns:
    `path` as a `pathlib.Path`. On any exception the temporary file is removed and a previous
    checkpoint at `path` is left untouched.
  """
  path = pathlib.Path(path)
  params = checks.check_params(params)
  entries = {
      "params": [(f"params.{i}.{field}", _to_numpy(f"params[{i}].{field}", leaf))
                 for i, layer in enumerate(params) for field, leaf in zip(Dense._fields, layer)],
      "opt_state": [(f"opt_state.{i}", _to_numpy(f"opt_state leaf {i}", leaf))
                    for i, leaf in enumerate(jax.tree.leaves(opt_state))],
  }
  rng_typed, rng_impl = False, None
  if rng_key is None:
    entries["rng"] = []
  else:
    rng_typed = _is_typed_key(rng_key)
    if rng_typed:
      rng_impl = str(jax.random.key_impl(rng_key))
      rng_key = jax.random.key_data(rng_key)
    data = _to_numpy("rng_key", rng_key)
    if not np.issubdtype(data.dtype, np.integer):
      raise InputTypeError(f"rng_key: expected a PRNG key (unsigned integers), got {data.dtype}")
    entries["rng"] = [("rng", data)]

  arrays, leaves_meta = {}, {}
  for group in GROUPS:
    leaves_meta[group] = []
    for name, a in entries[group]:
      arrays[name] = _stored_form(a)
      leaves_meta[group].append({"name": name, "shape": list(a.shape), "dtype": a.dtype.name})
  meta = {
      "format": FORMAT,
      "version": VERSION,
      "layer_sizes": list(model.layer_sizes(params)),
      "param_dtype": np.dtype(params[0].w.dtype).name,
      "epoch": checks.check_int(epoch, "epoch", 0),
      "step": checks.check_int(step, "step", 0),
      "config": _check_json("config", config),
      "extra": _check_json("extra", extra),
      "leaves": leaves_meta,
      "opt_state_is_none": opt_state is None,
      "rng_typed": rng_typed,
      "rng_impl": rng_impl,
      "sha256": _digest((name, arrays[name]) for name in _names(leaves_meta)),
  }
  arrays[META_KEY] = np.frombuffer(json.dumps(meta, sort_keys=True).encode("utf-8"), np.uint8)
  _write_atomically(path, arrays)
  return path


def _write_atomically(path: pathlib.Path, arrays: dict) -> None:
  """Temp file in the same directory, fsync, `os.replace`, fsync of the directory."""
  with atomic_write(path) as f:
    _write_npz(f, arrays)


def _write_npz(file, arrays: dict) -> None:
  """The arrays as an uncompressed npz into an open binary file."""
  np.savez(file, allow_pickle=False, **arrays)


def _to_numpy(what: str, leaf) -> np.ndarray:
  """A host copy of an array leaf; Python scalars take JAX's default dtype."""
  if _is_typed_key(leaf):
    raise InputTypeError(f"{what}: typed PRNG keys are only supported as rng_key")
  if not hasattr(leaf, "dtype"):
    leaf = jnp.asarray(leaf)
  a = np.asarray(leaf)
  if a.dtype.hasobject:
    raise InputTypeError(f"{what}: expected an array, got {type(leaf).__name__}")
  return a


def _is_typed_key(x) -> bool:
  return hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jax.dtypes.prng_key)


def _stored_form(a: np.ndarray) -> np.ndarray:
  """The array as `.npy` stores it: dtypes `.npy` cannot name become same-width uints."""
  if _npy_native(a.dtype):
    return a
  return np.ascontiguousarray(a).view(_uint_like(a.dtype))


def _npy_native(dtype: np.dtype) -> bool:
  fmt = np.lib.format
  return fmt.descr_to_dtype(fmt.dtype_to_descr(dtype)) == dtype


def _uint_like(dtype: np.dtype) -> np.dtype:
  if dtype.itemsize not in (1, 2, 4, 8):
    raise InputTypeError(f"cannot store dtype {dtype} in a checkpoint")
  return np.dtype(f"u{dtype.itemsize}")


def _check_json(what: str, value) -> dict:
  """A JSON-serialisable dict, as it will come back (a copy through JSON)."""
  if value is None:
    return {}
  if not isinstance(value, dict):
    raise InputTypeError(f"{what}: expected a dict, got {type(value).__name__}")
  try:
    return json.loads(json.dumps(value))
  except (TypeError, ValueError) as e:
    raise InputTypeError(f"{what}: expected a JSON-serialisable dict ({e})") from e


def _names(leaves_meta: dict):
  return [entry["name"] for group in GROUPS for entry in leaves_meta[group]]


def _digest(named_arrays) -> str:
  """sha256 over (name, stored dtype, shape, raw bytes) of each array, in the given order."""
  h = hashlib.sha256()
  for name, a in named_arrays:
    h.update(f"{name}\0{a.dtype.str}\0{list(a.shape)}\0".encode("utf-8"))
    h.update(np.ascontiguousarray(a).reshape(-1).view(np.uint8))
  return h.hexdigest()


# ------------------------------------------------------------------------------------ loading


def load_checkpoint(path, opt_state_template=None) -> Checkpoint:
  """Reads and verifies a checkpoint written by `save_checkpoint`.

  Args:
    path: the checkpoint file.
    opt_state_template: a pytree of the optimizer state's structure (e.g. `opt.init(params)`),
      or None. With it, opt_state comes back in its structure after each leaf's shape and dtype
      are checked against it; without it, as a list of leaves.

  Returns:
    A `Checkpoint` whose arrays are JAX arrays.

  Raises:
    CheckpointError: the file is missing, truncated, not a checkpoint, of another format
      version, corrupted, inconsistent, or does not match the template; the message names it.
  """
  path = pathlib.Path(path)
  if not path.exists():
    raise _error(path, "no such file")
  if path.is_dir():
    raise _error(path, "is a directory, not a checkpoint file")
  try:
    npz = np.load(path, allow_pickle=False)
  except _READ_ERRORS as e:
    raise _error(path, f"truncated or not a mlp_jax checkpoint ({describe(e)})") from e
  if not isinstance(npz, np.lib.npyio.NpzFile):
    raise _error(path, "truncated or not a mlp_jax checkpoint (a single .npy array, not an npz)")
  with npz:
    if META_KEY not in npz.files:
      raise _error(path, f"not a mlp_jax checkpoint (no {META_KEY} metadata)")
    meta = _parse_meta(path, _read_member(path, npz, META_KEY))
    leaves_meta = meta["leaves"]
    names = _names(leaves_meta)
    missing = [name for name in names if name not in npz.files]
    if missing:
      raise _error(path, f"missing arrays {missing} listed in the metadata")
    unexpected = sorted(set(npz.files) - set(names) - {META_KEY})
    if unexpected:
      raise _error(path, f"arrays {unexpected} not listed in the metadata")
    arrays = {name: _read_member(path, npz, name) for name in names}
  if _digest((name, arrays[name]) for name in names) != meta["sha256"]:
    raise _error(path, "checksum mismatch: file corrupted")
  leaves = {group: [_restore_leaf(path, entry, arrays[entry["name"]])
                    for entry in leaves_meta[group]] for group in GROUPS}
  return Checkpoint(
      params=_restore_params(path, meta, leaves["params"]),
      opt_state=_restore_opt_state(path, meta["opt_state_is_none"], leaves["opt_state"],
                                   opt_state_template),
      epoch=meta["epoch"],
      config=meta["config"],
      rng_key=_restore_rng(path, meta, leaves["rng"]),
      step=meta["step"],
      extra=meta["extra"],
  )


def check_compatible(ckpt: Checkpoint, layer_sizes: Sequence[int], *, path=None) -> None:
  """Raises `CheckpointError` unless the checkpoint's layer sizes are `layer_sizes`.

  Args:
    ckpt: a loaded checkpoint.
    layer_sizes: the widths (n, d_1, ..., K) the data and configuration call for.
    path: the checkpoint's file, named in the message when given.
  """
  have = model.layer_sizes(ckpt.params)
  want = tuple(int(s) for s in layer_sizes)
  if have == want:
    return
  where = "checkpoint" if path is None else f"checkpoint {path}"
  if have[0] != want[0]:
    raise CheckpointError(f"{where} has {have[0]} input features, the data has {want[0]}")
  if have[-1] != want[-1]:
    raise CheckpointError(f"{where} has {have[-1]} classes, the data has {want[-1]}")
  raise CheckpointError(f"{where} has layer sizes {have}, {want} expected")


def _error(path: pathlib.Path, problem: str) -> CheckpointError:
  return CheckpointError(f"checkpoint {path}: {problem}")


def _read_member(path: pathlib.Path, npz, name: str) -> np.ndarray:
  """One array of the npz; a failed zip CRC-32 is a checksum mismatch, the rest a bad file."""
  try:
    return npz[name]
  except zipfile.BadZipFile as e:
    if "CRC" in str(e):
      raise _error(path, "checksum mismatch: file corrupted") from e
    raise _error(path, f"truncated or not a mlp_jax checkpoint ({describe(e)})") from e
  except _READ_ERRORS as e:
    raise _error(path, f"truncated or not a mlp_jax checkpoint ({describe(e)})") from e


def _parse_meta(path: pathlib.Path, raw: np.ndarray) -> dict:
  """The metadata dict, checked for format, version and the type of every field."""
  if raw.dtype != np.uint8 or raw.ndim != 1:
    raise _error(path, f"bad metadata: {META_KEY} is not a byte string")
  try:
    meta = json.loads(raw.tobytes().decode("utf-8"))
  except ValueError as e:
    raise _error(path, f"bad metadata: not valid JSON ({describe(e)})") from e
  if not isinstance(meta, dict):
    raise _error(path, "bad metadata: not a JSON object")
  if meta.get("format") != FORMAT:
    raise _error(path, f"not a mlp_jax checkpoint (format {meta.get('format')!r})")
  version = meta.get("version")
  if version != VERSION or isinstance(version, bool):
    raise _error(path, f"format version {version}, this mlp_jax reads version {VERSION}")

  def need(ok, what):
    if not ok:
      raise _error(path, f"bad metadata: {what}")

  is_int = lambda v: isinstance(v, int) and not isinstance(v, bool)
  for key, kind, what in (("epoch", int, "an int"), ("step", int, "an int"),
                          ("config", dict, "an object"), ("extra", dict, "an object"),
                          ("layer_sizes", list, "a list"), ("param_dtype", str, "a string"),
                          ("leaves", dict, "an object"), ("opt_state_is_none", bool, "a bool"),
                          ("rng_typed", bool, "a bool"), ("sha256", str, "a string")):
    value = meta.get(key)
    need(is_int(value) if kind is int else isinstance(value, kind),
         f"{key!r} should be {what}, got {value!r:.80}")
  need(all(is_int(s) for s in meta["layer_sizes"]), "'layer_sizes' should hold ints")
  need(meta["rng_impl"] is None or isinstance(meta["rng_impl"], str), "bad 'rng_impl'")
  for group in GROUPS:
    entries = meta["leaves"].get(group)
    need(isinstance(entries, list), f"'leaves' has no {group!r} list")
    for entry in entries:
      need(isinstance(entry, dict) and isinstance(entry.get("name"), str)
           and isinstance(entry.get("dtype"), str) and isinstance(entry.get("shape"), list)
           and all(is_int(s) and s >= 0 for s in entry["shape"]),
           f"bad {group} leaf entry {entry!r:.80}")
  names = _names(meta["leaves"])
  need(len(set(names)) == len(names) and META_KEY not in names, "repeated leaf names")
  return meta


def _restore_leaf(path: pathlib.Path, entry: dict, stored: np.ndarray) -> jax.Array:
  """A stored array checked against its metadata entry, as a JAX array of its true dtype."""
  name = entry["name"]
  try:
    dtype = np.dtype(entry["dtype"])
    stored_dtype = dtype if _npy_native(dtype) else _uint_like(dtype)
  except TypeError as e:
    raise _error(path, f"bad metadata: leaf {name!r} has unknown dtype {entry['dtype']!r}") from e
  if tuple(stored.shape) != tuple(entry["shape"]):
    raise _error(path, f"leaf {name!r} has shape {tuple(stored.shape)} in the data, "
                 f"{tuple(entry['shape'])} in the metadata")
  if stored.dtype.name != stored_dtype.name:
    raise _error(path, f"leaf {name!r} is stored as {stored.dtype.name}, the metadata says "
                 f"{dtype.name}")
  if jax.dtypes.canonicalize_dtype(dtype) != dtype:
    raise _error(path, f"leaf {name!r} is {dtype.name} but JAX's 64-bit types are disabled; "
                 "load it inside `jax.enable_x64(True)`")
  return jnp.asarray(np.asarray(stored, stored_dtype).view(dtype))


def _restore_params(path: pathlib.Path, meta: dict, leaves: list) -> Params:
  names = [entry["name"] for entry in meta["leaves"]["params"]]
  expected = [f"params.{i}.{field}" for i in range(len(names) // 2) for field in Dense._fields]
  if not names or names != expected:
    raise _error(path, f"bad metadata: params leaves {names[:4]}... are not {expected[:4]}...")
  params = tuple(Dense(*leaves[i:i + 2]) for i in range(0, len(leaves), 2))
  try:
    checks.check_params(params)
  except (InputError, InputTypeError) as e:
    raise _error(path, f"inconsistent parameters ({e})") from e
  sizes = model.layer_sizes(params)
  if list(sizes) != meta["layer_sizes"]:
    raise _error(path, f"parameters have layer sizes {sizes}, the metadata says "
                 f"{tuple(meta['layer_sizes'])}")
  if params[0].w.dtype.name != meta["param_dtype"]:
    raise _error(path, f"parameters are {params[0].w.dtype.name}, the metadata says "
                 f"{meta['param_dtype']}")
  return params


def restore_opt_state(ckpt: Checkpoint, template, path) -> Any:
  """The optimizer state of `ckpt`, loaded without a template, in `template`'s structure.

  The same leaf-by-leaf checks as `load_checkpoint(path, template)`, for a caller that reads the
  checkpoint's config before it can build the template. Raises `CheckpointError` naming `path`.
  """
  leaves = [] if ckpt.opt_state is None else list(ckpt.opt_state)
  return _restore_opt_state(pathlib.Path(path), ckpt.opt_state is None, leaves, template)


def _restore_opt_state(path: pathlib.Path, is_none: bool, leaves: list, template):
  """The optimizer state in the template's structure, or as a list of leaves without one."""
  if template is None:
    return None if is_none else leaves
  expected = jax.tree.leaves(template)
  if is_none and expected:
    raise _error(path, f"optimizer state does not match: the file holds none, {len(expected)} "
                 "leaves expected")
  if len(leaves) != len(expected):
    raise _error(path, f"optimizer state does not match: the file holds {len(leaves)} leaves, "
                 f"{len(expected)} expected")
  for i, (leaf, want) in enumerate(zip(leaves, expected)):
    want_shape, want_dtype = np.shape(want), checks.dtype_of(want)
    if leaf.shape != want_shape:
      raise _error(path, f"optimizer state does not match: leaf {i} has shape {leaf.shape} in "
                   f"the file, {want_shape} expected")
    if leaf.dtype != want_dtype:
      raise _error(path, f"optimizer state does not match: leaf {i} has dtype {leaf.dtype} in "
                   f"the file, {want_dtype} expected")
  return jax.tree.unflatten(jax.tree.structure(template), leaves)


def _restore_rng(path: pathlib.Path, meta: dict, leaves: list) -> Optional[jax.Array]:
  if not leaves:
    return None
  if not meta["rng_typed"]:
    return leaves[0]
  try:
    return jax.random.wrap_key_data(leaves[0], impl=meta["rng_impl"])
  except (TypeError, ValueError, KeyError) as e:
    raise _error(path, f"cannot rebuild the PRNG key ({describe(e)})") from e
