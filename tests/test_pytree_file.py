"""The pytree file (`pytree_file`): npz plus JSON with a checksum, bit-exact for every dtype,
corrupt or foreign files refused with one line naming the file, leaves matched to a template.
Files are written with `save_checkpoint` and `save_pytree`; the checkpoint's own fields are
tested in test_checkpoint.py, the atomic write beneath in test_atomic_file.py."""

import hashlib
import json
import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import mlp_jax as mj
from mlp_jax.io import pytree_file
from mlp_jax.io.checkpoint import load_checkpoint, save_checkpoint
from conftest import CHECKPOINT_SIZES as SIZES, assert_bits_equal, refused, trained_state


def repack(src, dst, edit_meta=None, drop=(), add=None, replace=None):
  """Rewrites a checkpoint's npz with edited metadata or arrays (the zip stays valid)."""
  with np.load(src, allow_pickle=False) as npz:
    arrays = {name: npz[name] for name in npz.files}
  meta = json.loads(arrays["__meta__"].tobytes())
  if edit_meta:
    edit_meta(meta)
  arrays["__meta__"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
  for name in drop:
    del arrays[name]
  arrays.update(add or {})
  arrays.update(replace or {})
  with open(dst, "wb") as f:
    np.savez(f, **arrays)
  return dst


# ---------------------------------------------------------------------- format and dtypes


def test_bfloat16_params_round_trip(tmp_path):
  params = jax.tree.map(lambda a: a.astype(jnp.bfloat16),
                        mj.init_params(jax.random.PRNGKey(2), SIZES))
  ckpt = load_checkpoint(save_checkpoint(tmp_path / "bf16.npz", params, epoch=1))
  assert_bits_equal(ckpt.params, params)


def test_float64_file_needs_x64_to_load(tmp_path):
  with jax.enable_x64(True):
    params = mj.init_params(jax.random.PRNGKey(3), SIZES, jnp.float64)
    path = save_checkpoint(tmp_path / "f64.npz", params, epoch=1)
  refused(path, "float64", "jax.enable_x64(True)")


def _sha256(npz, meta) -> str:
  """The checksum as the format documents it: sha256 of the canonical JSON of [leaves,
  metadata], then each leaf's name, stored dtype, shape and bytes."""
  digest = hashlib.sha256(json.dumps([meta["leaves"], meta["metadata"]], sort_keys=True).encode())
  for entry in meta["leaves"]:
    a = npz[entry["name"]]
    digest.update(f"{entry['name']}\0{a.dtype.str}\0{list(a.shape)}\0".encode())
    digest.update(np.ascontiguousarray(a).tobytes())
  return digest.hexdigest()


def test_file_is_plain_numpy_and_json(tmp_path, standard_promotion):
  _, params, state = trained_state("adam")
  path = save_checkpoint(tmp_path / "c.npz", params, state, epoch=2, step=9,
                         rng_key=jax.random.PRNGKey(0), config={"k": 1})
  with np.load(path, allow_pickle=False) as npz:
    meta = json.loads(npz["__meta__"].tobytes().decode("utf-8"))
    np.testing.assert_array_equal(npz["['params'][1].w"], params[1].w)
    assert npz["['opt_state'][0].count"].dtype == np.int32  # adam's step count
    assert meta["sha256"] == _sha256(npz, meta)
  assert meta["format"] == "mlp_jax-checkpoint" and meta["version"] == 2
  assert meta["metadata"] == {"kind": "checkpoint", "epoch": 2, "step": 9, "config": {"k": 1},
                              "extra": {}, "has_opt_state": True}
  entries = {e["name"]: e for e in meta["leaves"]}  # in the tree's order: dict keys sorted
  assert [n for n in entries if n.startswith("['params']")] == [
      "['params'][0].w", "['params'][0].b", "['params'][1].w", "['params'][1].b"]
  assert entries["['params'][0].w"] == {"name": "['params'][0].w", "shape": [4, 8],
                                        "dtype": "float32"}
  assert len(entries) == 4 + len(jax.tree.leaves(state)) + 1
  assert entries["['rng']"] == {"name": "['rng']", "shape": [2], "dtype": "uint32"}


def test_any_pytree_round_trips_bit_exactly(tmp_path, standard_promotion):
  """What a flax or equinox user holds: nested dicts, a step counter, a typed key, bfloat16,
  and an optax state of their own, through save_pytree / load_pytree and save_checkpoint."""
  params = {"encoder": {"kernel": jnp.arange(6.0).reshape(2, 3), "bias": jnp.ones(3)},
            "head": [jnp.zeros((3, 2), jnp.bfloat16)]}
  opt = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-3))
  tree = {"params": params, "opt_state": opt.init(params), "step": jnp.int32(7),
          "key": jax.random.key(3)}
  path = mj.save_pytree(tmp_path / "tree.npz", tree, {"note": "any pytree"})
  back, meta = mj.load_pytree(path, template=tree)
  assert meta == {"note": "any pytree"}
  assert_bits_equal({k: v for k, v in back.items() if k != "key"},
                    {k: v for k, v in tree.items() if k != "key"})
  assert_bits_equal(jax.random.key_data(back["key"]), jax.random.key_data(tree["key"]))
  flat, _ = mj.load_pytree(path)  # without a template: leaves by key path
  np.testing.assert_array_equal(flat["['params']['encoder']['kernel']"],
                                params["encoder"]["kernel"])
  ckpt = load_checkpoint(save_checkpoint(tmp_path / "c.npz", params, opt.init(params), epoch=1),
                         opt.init(params), params_template=params)
  assert_bits_equal(ckpt.params, params)
  assert_bits_equal(ckpt.opt_state, opt.init(params))
  with pytest.raises(mj.CheckpointError, match="tree does not match: the file holds"):
    mj.load_pytree(path, template={"params": params})


# ------------------------------------------------------------------------------- corruption


def test_missing_file_and_directory(tmp_path):
  refused(tmp_path / "nope.npz", "no such file")
  refused(tmp_path, "is a directory")


@pytest.mark.parametrize("content", [b"", b"hello, not a zip\n" * 10, b"PK\x03\x04garbage",
                                     b'{"config": {"seed": 0}}\n', bytes(range(256)) * 4],
                         ids=["empty", "text", "zip-magic", "json", "binary"])
def test_not_a_zip(tmp_path, content):
  """Anything but a zip is named as not a checkpoint, without numpy's hint to unpickle it."""
  path = tmp_path / "bad.npz"
  path.write_bytes(content)
  message = refused(path, "not a mlp_jax checkpoint")
  assert "allow_pickle" not in message, message


def test_npy_and_pickle_files_refused_without_running_code(tmp_path):
  np.save(tmp_path / "array.npy", np.ones(3))
  refused(tmp_path / "array.npy", "not a mlp_jax checkpoint", "single .npy")
  marker = tmp_path / "pwned"

  class Payload:
    def __reduce__(self):
      return open, (str(marker), "w")

  import pickle
  (tmp_path / "evil.npz").write_bytes(pickle.dumps(Payload()))
  assert "allow_pickle" not in refused(tmp_path / "evil.npz", "not a mlp_jax checkpoint")
  assert not marker.exists()


def test_truncated_files(saved, tmp_path):
  path, template, data = saved
  n = len(data)
  for length in sorted({1, 4, 30, 100, n // 4, n // 2, 3 * n // 4, n - 100, n - 22, n - 1}):
    cut = tmp_path / f"cut{length}.npz"
    cut.write_bytes(data[:length])
    refused(cut, "truncated or not a mlp_jax checkpoint", opt_state_template=template)


def test_flipped_byte_in_the_middle(saved, tmp_path):
  path, template, data = saved
  bad = bytearray(data)
  bad[len(bad) // 2] ^= 0x01
  (tmp_path / "flip.npz").write_bytes(bytes(bad))
  refused(tmp_path / "flip.npz", "checksum mismatch: file corrupted", opt_state_template=template)


def test_any_flipped_byte_is_refused_or_harmless(tmp_path):
  """Flipped bytes in a small checkpoint: each loads identically or raises CheckpointError.

  Every byte of the zip's central directory (the last 600 bytes, where flag, method, size and
  offset fields live) is flipped, and every 7th byte before it.
  """
  params = mj.init_params(jax.random.PRNGKey(0), (3, 2, 2))
  data = save_checkpoint(tmp_path / "small.npz", params, epoch=4).read_bytes()
  path = tmp_path / "flip.npz"
  refusals = 0
  offsets = sorted(set(range(0, len(data), 7)) | set(range(max(0, len(data) - 600), len(data))))
  for offset in offsets:
    bad = bytearray(data)
    bad[offset] ^= 0xFF
    path.write_bytes(bytes(bad))
    try:
      ckpt = load_checkpoint(path)
    except mj.CheckpointError as e:
      assert str(path) in str(e) and "\n" not in str(e)
      refusals += 1
      continue
    assert ckpt.epoch == 4, offset  # a flip in a field zip ignores: same checkpoint
    assert_bits_equal(ckpt.params, params)
  assert refusals > len(offsets) // 2


def test_checksum_catches_edited_data_with_valid_zip(saved, tmp_path):
  path, template, _ = saved
  with np.load(path) as npz:
    w = npz["['params'][0].w"].copy()
  w.reshape(-1).view(np.uint8)[1000] ^= 0x10  # one flipped bit; the re-packed zip's CRCs are all correct
  repack(path, tmp_path / "edited.npz", replace={"['params'][0].w": w})
  refused(tmp_path / "edited.npz", "checksum mismatch: file corrupted")


def test_other_format_version(saved, tmp_path):
  path, _, _ = saved
  repack(path, tmp_path / "v7.npz", edit_meta=lambda m: m.update(version=7))
  refused(tmp_path / "v7.npz", "format version 7, this mlp_jax reads version 2")


@pytest.mark.parametrize("edit", ["epoch", "config", "leaf_shape"])
def test_edited_metadata_is_a_checksum_mismatch(saved, tmp_path, edit):
  """The checksum covers the metadata: an epoch edited to 1000 (the zip itself valid) is
  refused like a flipped bit."""
  path, _, _ = saved

  def change(meta):
    if edit == "epoch":
      meta["metadata"]["epoch"] = 1000
    elif edit == "config":
      meta["metadata"]["config"] = {"batch_size": 1}
    else:
      meta["leaves"][1]["shape"] = [11]

  refused(repack(path, tmp_path / "edited.npz", edit_meta=change),
          "checksum mismatch: file corrupted or edited")


def forge(src, dst, edit_meta=None, drop=(), add=None):
  """`repack`, then the checksum recomputed: a file whose damage the checksum cannot see."""
  repack(src, dst, edit_meta=edit_meta, drop=drop, add=add)

  def fix(meta):
    with np.load(dst) as npz:
      meta["sha256"] = _sha256(npz, meta)
  return repack(dst, dst, edit_meta=fix)


@pytest.mark.parametrize("case, needle", [
    ("format", "not a mlp_jax checkpoint (format 'something-else')"),
    ("no_meta", "no __meta__ metadata"),
    ("bad_json", "bad metadata: not valid JSON"),
    ("no_leaves", "bad metadata: expected a leaves list, a metadata object and a sha256"),
    ("missing_leaf", "missing arrays [\"['opt_state'][0].count\"] listed in the metadata"),
    ("extra_leaf", "arrays ['stowaway'] not listed"),
    ("shape", "leaf \"['params'][1].b\" is float32[10] in the data, float32[11] in the metadata"),
    ("dtype", "leaf \"['params'][1].b\" is float32[10] in the data, int32[10] in the metadata"),
    ("no_kind", "bad metadata (KeyError: 'kind')"),
])
def test_inconsistent_files(saved, tmp_path, case, needle):
  path, _, _ = saved
  bad = tmp_path / "bad.npz"

  def leaf(meta, name):
    return next(e for e in meta["leaves"] if e["name"] == name)

  if case == "format":
    repack(path, bad, edit_meta=lambda m: m.update(format="something-else"))
  elif case == "no_meta":
    repack(path, bad, drop=["__meta__"])
  elif case == "bad_json":
    repack(path, bad, replace={"__meta__": np.frombuffer(b"{not json", np.uint8)})
  elif case == "no_leaves":
    repack(path, bad, edit_meta=lambda m: m.pop("leaves"))
  elif case == "missing_leaf":
    repack(path, bad, drop=["['opt_state'][0].count"])
  elif case == "extra_leaf":
    forge(path, bad, add={"stowaway": np.zeros(2)})
  elif case == "shape":
    forge(path, bad, edit_meta=lambda m: leaf(m, "['params'][1].b").update(shape=[11]))
  elif case == "dtype":
    forge(path, bad, edit_meta=lambda m: leaf(m, "['params'][1].b").update(dtype="int32"))
  elif case == "no_kind":
    forge(path, bad, edit_meta=lambda m: m["metadata"].pop("kind"))
  refused(bad, needle)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_a_fifo_or_device_is_refused_without_blocking(tmp_path):
  fifo = tmp_path / "pipe.npz"
  os.mkfifo(fifo)
  refused(fifo, "is not a regular file")  # opening it for reading would block forever
  if os.path.exists("/dev/zero"):
    refused(pathlib.Path("/dev/zero"), "is not a regular file")


# -------------------------------------------------------------------------------- templates


def test_optimizer_state_matched_after_a_load_without_template(tmp_path, standard_promotion):
  opt, params, state = trained_state("adam", sizes=(64, 128, 10), steps=1)
  path = save_checkpoint(tmp_path / "ckpt.npz", params, state, epoch=1)
  plain = load_checkpoint(path)
  assert isinstance(plain.opt_state, list)  # leaves only, before the template is known
  assert_bits_equal(pytree_file.match_in_file(path, plain.opt_state, opt.init(params),
                                              "optimizer state"), state)
  sgd = optax.sgd(1e-2, momentum=0.9).init(mj.init_params(jax.random.PRNGKey(0), (64, 128, 10)))
  with pytest.raises(mj.CheckpointError, match=f"{path}.*the file holds 9 leaves, 4 expected"):
    pytree_file.match_in_file(path, plain.opt_state, sgd, "optimizer state")
  with pytest.raises(mj.ResumeError, match="^optimizer state does not match: the file holds 9"):
    pytree_file.match_template(plain.opt_state, sgd, "optimizer state", mj.ResumeError)
