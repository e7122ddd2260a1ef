"""The run folder (`run_folder`), as `mlp-jax train` keeps it: a resume that continues exactly
or is refused with one line and nothing written, a folder never silently replaced (a new one by
default, `--resume` or `--overwrite` otherwise), OS faults as one line and exit 74 with the last
checkpoint kept, Ctrl-C and kill -9 survived. Driven through `cli.main` (in-process) and
`python -m mlp_jax.tools.cli` (subprocesses, for the signals)."""

import os
import pathlib
import random
import shutil
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest

import mlp_jax as mj
from mlp_jax.tools import cli
from conftest import EXIT_ERROR, EXIT_INTERRUPTED, EXIT_STORAGE, TINY_CONSTANT as TINY
from conftest import one_error_line as _one_error_line, run_cli as _run, wait_for_epochs
from conftest import with_options as _with

pytestmark = pytest.mark.usefixtures("standard_promotion")  # optax inside the CLI


def _snapshot(folder: pathlib.Path) -> dict:
  return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def finished_runs(tmp_path_factory):
  """Two finished 3-epoch runs to resume: plain, and DP."""
  import jax
  root = tmp_path_factory.mktemp("runs")
  with jax.numpy_dtype_promotion("standard"):
    assert cli.main(["train", *TINY, "--out", str(root / "plain")]) == 0
    assert cli.main(["train", *TINY, "--dp", "--out", str(root / "dp")]) == 0
  return root


# ------------------------------------------------------------------------- resume: refused


@pytest.mark.parametrize("run, change, message", [
    ("plain", dict(batch_size="16"), "--batch-size 32, this run asks for 16"),
    ("plain", dict(schedule="cosine"), "--schedule constant, this run asks for cosine"),
    ("plain", dict(dp=True), "--dp off, this run asks for on"),
    ("plain", dict(hidden=["8", "8"]), "--hidden 8, this run asks for 8 8"),
    ("plain", dict(dataset="digits", num_samples=None), "--dataset synthetic, this run asks "
                                                        "for digits"),
    ("plain", dict(num_samples="400"), "--num-samples 300, this run asks for 400"),
    ("plain", dict(scaling="feature"), "--scaling global, this run asks for feature"),
    ("plain", dict(augment=True), "--augment off, this run asks for on"),
    ("plain", dict(l2="0.5"), "--l2 0.1, this run asks for 0.5"),
    ("plain", dict(optimizer="sgd"), "--optimizer momentum, this run asks for sgd"),
    ("plain", dict(lr="0.01"), "--lr 0.1, this run asks for 0.01"),
    ("plain", dict(seed="1"), "--seed 0, this run asks for 1"),
    ("plain", dict(val_fraction="0.3"), "--val-fraction 0.2, this run asks for 0.3"),
    ("plain", dict(patience="2"), "--patience (none), this run asks for 2"),
    ("plain", dict(bf16=True), "--bf16 off, this run asks for on"),
    ("dp", dict(noise_multiplier="5"), "--noise-multiplier 1.1, this run asks for 5"),
    ("dp", dict(clip_norm="2"), "--clip-norm 1, this run asks for 2"),
    ("dp", dict(delta="1e-6"), "--delta 1e-05, this run asks for 1e-06"),
    ("dp", dict(dp=None), "--dp on, this run asks for off"),
], ids=lambda v: "-".join(v) if isinstance(v, dict) else None)
def test_resume_refuses_every_change_with_one_line(finished_runs, capsys, run, change, message):
  out = finished_runs / run
  before = _snapshot(out)
  base = TINY + (["--dp"] if run == "dp" else [])
  args = _with(base, epochs="5", out=str(out), resume=True, **change)
  code, _, err = _run(["train", *args], capsys)
  line = _one_error_line(err)
  assert code == EXIT_ERROR
  assert f"{out}/checkpoint.npz was trained with {message}; a resume must keep it" in line
  assert _snapshot(out) == before  # nothing written, nothing removed


def test_a_cosine_run_keeps_its_length(tmp_path, capsys):
  out = tmp_path / "cosine"
  assert _run(["train", *_with(TINY, schedule="cosine", out=str(out))], capsys)[0] == 0
  before = _snapshot(out)
  code, _, err = _run(["train", *_with(TINY, schedule="cosine", epochs="5", out=str(out),
                                       resume=True)], capsys)
  assert code == EXIT_ERROR and "its cosine schedule spans 3 epochs; a resume must keep " \
                                "--epochs 3" in _one_error_line(err)
  assert _snapshot(out) == before


def test_a_finished_run_says_so_and_trains_nothing(finished_runs, capsys):
  out = finished_runs / "plain"
  before = _snapshot(out)
  code, text, _ = _run(["train", *_with(TINY, out=str(out), resume=True)], capsys)
  assert code == 0 and f"{out}/checkpoint.npz finished: 3 of 3 epochs done; nothing to train" \
      in text
  code, _, err = _run(["train", *_with(TINY, epochs="2", out=str(out), resume=True)], capsys)
  assert code == EXIT_ERROR and "has already trained 3 epochs, more than the 2 asked" in err
  assert _snapshot(out) == before


def test_an_early_stopped_run_says_so_and_trains_nothing(tmp_path, capsys):
  out = tmp_path / "stopped"
  args = _with(TINY, epochs="200", patience="1", lr="0.05", hidden="64", out=str(out))
  assert _run(["train", *args], capsys)[0] == 0
  saved = mj.load_run(out / "checkpoint.npz").state
  assert saved.stopped_early and saved.epochs_done < 200
  before = _snapshot(out)
  code, text, _ = _run(["train", *args, "--resume"], capsys)
  assert code == 0 and f"stopped early at epoch {saved.epochs_done}" in text
  assert "nothing to train" in text and _snapshot(out) == before


# ------------------------------------------------------------------ resume: exact continuation


def test_more_epochs_continue_exactly_and_history_is_not_repeated(finished_runs, tmp_path,
                                                                  capsys):
  part = tmp_path / "part"
  shutil.copytree(finished_runs / "plain", part)
  code, text, _ = _run(["train", *_with(TINY, epochs="5", out=str(part), resume=True)], capsys)
  assert code == 0 and "resuming" in text and "after epoch 3" in text
  whole = tmp_path / "whole"
  assert _run(["train", *_with(TINY, epochs="5", out=str(whole))], capsys)[0] == 0
  _assert_same_run(part, whole)


def _assert_same_run(a: pathlib.Path, b: pathlib.Path) -> None:
  """Two run folders hold the same run: parameters, optimizer state and history (timings aside)
  bit for bit."""
  ra, rb = (mj.load_run(p / "checkpoint.npz").state for p in (a, b))
  assert ra.epochs_done == rb.epochs_done
  for u, v in zip(_leaves(ra), _leaves(rb), strict=True):
    assert u.dtype == v.dtype and np.asarray(u).tobytes() == np.asarray(v).tobytes()
  strip = lambda h: [{k: v for k, v in r.items() if k != "epoch_seconds"} for r in h]
  assert strip(ra.history) == strip(rb.history)
  assert [r["epoch"] for r in ra.history] == list(range(1, ra.epochs_done + 1))
  assert ra.ledger == rb.ledger


def _leaves(state):
  import jax
  return jax.tree.leaves((state.params, state.opt_state, state.best.params))


def test_the_data_must_be_the_same_rows_wherever_the_file_lies(tmp_path, capsys):
  def write(path, seed):
    rng = np.random.default_rng(seed)
    with h5py.File(path, "w") as f:
      for part, n in (("train", 60), ("test", 20)):
        f[f"{part}/data"] = rng.random((n, 256)).astype(np.float32)
        f[f"{part}/target"] = rng.integers(0, 10, n).astype(np.int32)

  write(tmp_path / "a.h5", 0)
  write(tmp_path / "other.h5", 1)
  args = ["--dataset", "usps", "--hidden", "8", "--batch-size", "16", "--schedule", "constant",
          "--no-progress"]
  out = tmp_path / "run"
  assert _run(["train", *args, "--epochs", "1", "--data", tmp_path / "a.h5", "--out", out],
              capsys)[0] == 0
  moved = tmp_path / "moved" / "usps.h5"
  moved.parent.mkdir()
  shutil.copy(tmp_path / "a.h5", moved)
  code, text, _ = _run(["train", *args, "--epochs", "2", "--data", moved, "--out", out,
                        "--resume"], capsys)
  assert code == 0 and "resuming" in text  # the same rows, from another path
  code, _, err = _run(["train", *args, "--epochs", "3", "--data", tmp_path / "other.h5", "--out",
                       out, "--resume"], capsys)
  assert code == EXIT_ERROR and "was trained with training data (sha256) " in err


# ---------------------------------------------------------------------- the output folder


def test_every_run_gets_a_new_folder_by_default(tmp_path, capsys, monkeypatch):
  monkeypatch.chdir(tmp_path)
  assert _run(["train", *_with(TINY, epochs="1")], capsys)[0] == 0
  assert _run(["train", *_with(TINY, epochs="1")], capsys)[0] == 0
  runs = sorted(os.listdir(tmp_path / "runs"))
  assert len(runs) == 2 and all(r.startswith("synthetic-") for r in runs)


def test_a_folder_with_a_run_is_refused_unless_resume_or_overwrite(finished_runs, tmp_path,
                                                                    capsys):
  out = tmp_path / "run"
  shutil.copytree(finished_runs / "plain", out)
  (out / "nonfinite_batch.json").write_text("{}")  # left by an older run
  (out / "notes.txt").write_text("mine")
  before = _snapshot(out)
  code, _, err = _run(["train", *_with(TINY, seed="4", out=str(out))], capsys)
  assert code == EXIT_ERROR and f"--out {out} already holds checkpoint.npz" in err
  assert "continue that run with --resume, replace it with --overwrite" in err
  assert _snapshot(out) == before
  code, _, _ = _run(["train", *_with(TINY, seed="4", out=str(out), overwrite=True)], capsys)
  assert code == 0
  assert not (out / "nonfinite_batch.json").exists()  # the old run's outputs are gone
  assert (out / "notes.txt").read_text() == "mine"    # the user's own file is not
  assert mj.load_run(out / "checkpoint.npz").config["seed"] == 4


def test_out_naming_a_file_is_refused(tmp_path, capsys):
  (tmp_path / "file").write_text("keep me")
  code, _, err = _run(["train", *_with(TINY, out=str(tmp_path / "file"))], capsys)
  assert code == EXIT_ERROR and "exists and is not a folder" in _one_error_line(err)
  assert (tmp_path / "file").read_text() == "keep me"


@pytest.mark.parametrize("case", ["name_too_long", "under_a_file", "read_only"])
def test_a_folder_the_os_refuses_is_one_line_and_exit_74(tmp_path, capsys, monkeypatch, case):
  if case == "name_too_long":
    out, reason = tmp_path / ("x" * 300), "File name too long [ENAMETOOLONG]"
  elif case == "under_a_file":
    (tmp_path / "file").write_text("")
    out, reason = tmp_path / "file" / "run", "[E"  # ENOTDIR or EEXIST, by platform
  else:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    out, reason = locked / "run", "Permission denied [EACCES]"
    if os.geteuid() == 0:  # root writes anywhere: the refusal is simulated at mkdir
      def refuse(self, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(self))
      monkeypatch.setattr(pathlib.Path, "mkdir", refuse)
  code, _, err = _run(["train", *_with(TINY, out=str(out))], capsys)
  line = _one_error_line(err)
  assert code == EXIT_STORAGE and "cannot write" in line and reason in line, line


def test_a_full_disk_keeps_the_last_checkpoint(tmp_path, capsys, monkeypatch):
  """ENOSPC while saving epoch 2: exit 74, one line, epoch 1's checkpoint intact and resumable."""
  from mlp_jax.io import pytree_file
  out = tmp_path / "run"
  real_savez, calls = np.savez, []

  def savez(file, **arrays):
    calls.append(1)
    if len(calls) == 2:
      file.write(b"half a file")
      raise OSError(28, "No space left on device")
    return real_savez(file, **arrays)

  monkeypatch.setattr(pytree_file.np, "savez", savez)
  code, _, err = _run(["train", *_with(TINY, out=str(out))], capsys)
  monkeypatch.undo()
  line = _one_error_line(err)
  assert code == EXIT_STORAGE and "No space left on device [ENOSPC]" in line
  assert sorted(os.listdir(out)) == ["checkpoint.npz", "config.json"]  # no temporary file
  assert mj.load_run(out / "checkpoint.npz").state.epochs_done == 1
  assert _run(["train", *_with(TINY, out=str(out), resume=True)], capsys)[0] == 0


# ------------------------------------------------------------- Ctrl-C and kill -9, for real

LONG = ["--dataset", "synthetic", "--num-samples", "2000", "--hidden", "64", "--epochs", "40",
        "--batch-size", "4", "--val-fraction", "0.1", "--patience", "30", "--optimizer", "adam",
        "--lr", "0.001", "--l2", "0.0001", "--no-progress"]


def _start(out: pathlib.Path, *extra) -> subprocess.Popen:
  return subprocess.Popen([sys.executable, "-m", "mlp_jax.tools.cli", "train", *LONG, "--out",
                           str(out), *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
  out = tmp_path_factory.mktemp("long") / "whole"
  proc = _start(out)
  assert proc.wait(timeout=600) == 0, proc.communicate()
  return out


@pytest.mark.skipif(not hasattr(signal, "SIGINT"), reason="needs POSIX signals")
def test_ctrl_c_stops_after_the_epoch_exits_130_and_resumes_exactly(tmp_path, uninterrupted):
  out = tmp_path / "run"
  proc = _start(out)
  wait_for_epochs(out, proc, 2)
  proc.send_signal(signal.SIGINT)
  _, err = proc.communicate(timeout=120)
  assert proc.returncode == EXIT_INTERRUPTED, err
  assert "Traceback" not in err and "KeyboardInterrupt" not in err
  done = mj.load_run(out / "checkpoint.npz").state.epochs_done
  assert f"interrupted after epoch {done} of 40" in err and "--resume" in err
  resumed = _start(out, "--resume")
  assert resumed.wait(timeout=600) == 0, resumed.communicate()
  _assert_same_run(out, uninterrupted)


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX signals")
def test_kill_9_at_random_moments_then_resume_gives_the_uninterrupted_run(tmp_path,
                                                                          uninterrupted):
  out = tmp_path / "run"
  rng = random.Random(0)
  for attempt in range(3):
    proc = _start(out, *(["--resume"] if attempt else []))
    wait_for_epochs(out, proc, 1 + 8 * attempt)
    time.sleep(rng.uniform(0, 0.5))  # anywhere in an epoch, or in a save
    proc.kill()
    proc.wait()
    mj.load_run(out / "checkpoint.npz")  # always a whole, verified run
  proc = _start(out, "--resume")
  assert proc.wait(timeout=600) == 0, proc.communicate()
  _assert_same_run(out, uninterrupted)
