"""Atomic writes (`atomic_file.atomic_write`), as every saved file gets them: a new file's mode
follows the umask; a write that fails or is interrupted, or a writer killed with SIGKILL, leaves
the previous file whole and no temporary file behind. Shown through `save_checkpoint`."""

import os
import pathlib
import random
import select
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

import mlp_jax as mj
from mlp_jax.io import pytree_file
from mlp_jax.io.checkpoint import load_checkpoint, save_checkpoint
from conftest import CHECKPOINT_SIZES as SIZES, assert_bits_equal

REPO = pathlib.Path(__file__).resolve().parent.parent


@pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")
@pytest.mark.parametrize("umask, mode", [(0o027, 0o640), (0o002, 0o664), (0o077, 0o600)],
                         ids=["027", "002", "077"])
def test_new_file_mode_follows_umask(tmp_path, umask, mode):
  """0o666 less the umask, as `open` gives: three umasks, three answers, none the 0o644 a fixed
  mode would give (027 and 002 not the temp file's 0o600 either). The umask belongs to the
  process (pytest-xdist workers are processes) and is restored whatever happens."""
  params = mj.init_params(jax.random.PRNGKey(0), SIZES)
  before = os.umask(umask)
  try:
    path = save_checkpoint(tmp_path / "c.npz", params, epoch=0)
  finally:
    os.umask(before)
  assert oct(os.stat(path).st_mode & 0o777) == oct(mode)


@pytest.mark.parametrize("where", ["write", "fsync", "replace", "interrupt"])
def test_failed_save_keeps_previous_checkpoint(tmp_path, monkeypatch, where):
  params = mj.init_params(jax.random.PRNGKey(0), SIZES)
  path = save_checkpoint(tmp_path / "c.npz", params, epoch=1)
  before = path.read_bytes()

  def write_half_then_fail(file, **arrays):
    file.write(before[:len(before) // 2])
    raise KeyboardInterrupt if where == "interrupt" else OSError(28, "No space left on device")

  def fail(*args):
    raise OSError(5, "Input/output error")

  if where in ("write", "interrupt"):
    monkeypatch.setattr(pytree_file.np, "savez", write_half_then_fail)
  else:
    monkeypatch.setattr(os, where, fail)
  newer = jax.tree.map(lambda a: a + 1, params)
  with pytest.raises(KeyboardInterrupt if where == "interrupt" else mj.StorageError) as info:
    save_checkpoint(path, newer, epoch=2)
  monkeypatch.undo()
  if where != "interrupt":  # one line naming the file and the reason
    assert str(info.value).startswith(f"cannot write {path}: ")
    assert isinstance(info.value, OSError) and "\n" not in str(info.value)

  assert os.listdir(tmp_path) == ["c.npz"]  # the temp file is gone
  assert path.read_bytes() == before
  ckpt = load_checkpoint(path)
  assert ckpt.epoch == 1
  assert_bits_equal(ckpt.params, params)


# Saves checkpoint after checkpoint until killed (see its docstring).
WRITER = pathlib.Path(__file__).parent / "programs" / "checkpoint_writer.py"


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX signals")
def test_sigkill_mid_save_leaves_a_valid_checkpoint(tmp_path):
  """A writer killed at random moments never leaves a torn or unverifiable file."""
  path = tmp_path / "ckpt.npz"
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
  delays = random.Random(0)
  for trial in range(3):
    proc = subprocess.Popen([sys.executable, str(WRITER), str(path)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env, cwd=tmp_path)
    try:
      ready, _, _ = select.select([proc.stdout], [], [], 90)
      assert ready, "the writer did not save within 90 s"
      line = proc.stdout.readline()
      assert line == b"saved\n", (line, proc.stderr.read() if proc.poll() is not None else b"")
      time.sleep(delays.uniform(0.3, 1.5))
      assert proc.poll() is None, proc.stderr.read()
      os.kill(proc.pid, signal.SIGKILL)
      assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
      if proc.poll() is None:
        proc.kill()
        proc.wait(timeout=30)
      proc.stdout.close()
      proc.stderr.close()

    ckpt = load_checkpoint(path)  # verifies format, checksum, shapes and dtypes
    i = ckpt.epoch
    assert i >= 1 and ckpt.step == 10 * i and ckpt.config == {"i": i}
    for leaf in jax.tree.leaves(ckpt.params):
      assert np.all(np.asarray(leaf) == i)  # every leaf from the same save
    assert np.all(np.asarray(ckpt.opt_state[0]) == -i) and int(ckpt.opt_state[1]) == i
  # A stale temp file from a kill does not get in the way of the next save.
  params = mj.init_params(jax.random.PRNGKey(0), SIZES)
  assert load_checkpoint(save_checkpoint(path, params, epoch=99)).epoch == 99
