"""The installed `mlp-jax` command under signals and a closed pipe, for real (subprocesses).

Ctrl-C or SIGTERM at any moment ends the command with one line and 130 / 143; during training
the first lets the epoch finish and keeps its checkpoint, a second ends the command within a
second; a reader that goes away ends it quietly (141, as for SIGPIPE).
"""

import os
import pathlib
import shlex
import signal
import subprocess
import sys
import time

import pytest

import mlp_jax as mj
from conftest import TINY, wait_for_epochs

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGTERM") or os.name != "posix",
                                reason="needs POSIX signals")


def command() -> list:
  """The console script pip installed beside this interpreter, else `python -m mlp_jax`."""
  script = pathlib.Path(sys.executable).with_name("mlp-jax")
  return [str(script)] if script.exists() else [sys.executable, "-m", "mlp_jax"]


def start(*args, stdout=subprocess.PIPE) -> subprocess.Popen:
  return subprocess.Popen(command() + [str(a) for a in args], stdout=stdout,
                          stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen, timeout: float = 120):
  out, err = proc.communicate(timeout=timeout)
  return proc.returncode, out or "", err


def one_line(err: str) -> str:
  lines = err.splitlines()
  assert len(lines) == 1 and "Traceback" not in err and "Exception ignored" not in err, err
  return lines[0]


# Epochs of several seconds on a 2-core CPU (more on a busy one): room for signals mid-epoch.
SLOW = ["--dataset", "synthetic", "--num-samples", "6000", "--hidden", "1024", "1024",
        "--batch-size", "8", "--epochs", "20", "--optimizer", "adam", "--lr", "1e-4",
        "--schedule", "constant", "--no-progress"]


@pytest.mark.parametrize("sig, status, word", [(signal.SIGINT, 130, "interrupted"),
                                               (signal.SIGTERM, 143, "terminated")])
@pytest.mark.parametrize("delay", [0.2, 0.6, 1.2, 2.0])
def test_a_signal_at_any_moment_ends_the_command_without_a_traceback(tmp_path, sig, status, word,
                                                                      delay):
  """While Python imports JAX, loads data or compiles: one line. If training has begun by then
  (on a fast machine), the epoch ends first and its checkpoint is named: two lines."""
  proc = start("train", *TINY, "--epochs", "300", "--out", tmp_path / "run")  # >> 2 s
  time.sleep(delay)
  proc.send_signal(sig)
  code, _, err = finish(proc)
  assert code == status and "Traceback" not in err and "Exception ignored" not in err, err
  lines = err.splitlines()
  if lines[0].startswith(f"mlp-jax: {word}: stopping after this epoch"):
    assert len(lines) == 2 and lines[1].startswith(f"mlp-jax: {word} after epoch"), err
  else:
    assert one_line(err) == f"mlp-jax: {word}; files written before are intact", err


def test_sigterm_stops_after_the_epoch_with_143_and_keeps_the_checkpoint(tmp_path):
  out = tmp_path / "run"
  proc = start("train", *SLOW, "--out", out)
  wait_for_epochs(out, proc, 1, timeout=300)
  proc.send_signal(signal.SIGTERM)
  code, _, err = finish(proc, timeout=600)
  done = mj.load_run(out / "checkpoint.npz").state.epochs_done
  lines = err.splitlines()
  assert code == 143 and "Traceback" not in err, err
  assert lines[0].startswith("mlp-jax: terminated: stopping after this epoch"), err
  assert lines[-1].startswith(f"mlp-jax: terminated after epoch {done} of 20") and \
      "--resume" in lines[-1], err


@pytest.mark.parametrize("second", [signal.SIGINT, signal.SIGTERM])
def test_a_second_signal_stops_within_a_second_and_the_checkpoint_stays(tmp_path, second):
  out = tmp_path / "run"
  proc = start("train", *SLOW, "--out", out)
  wait_for_epochs(out, proc, 1, timeout=300)
  time.sleep(0.3)  # inside epoch 2, which lasts seconds
  proc.send_signal(signal.SIGINT)
  time.sleep(0.3)
  sent = time.monotonic()
  proc.send_signal(second)
  code, _, err = finish(proc)
  latency = time.monotonic() - sent
  saved = mj.load_run(out / "checkpoint.npz").state  # whole and verified
  assert code == 128 + second and "Traceback" not in err, err
  assert latency < 3.0, f"took {latency:.2f} s after the second signal"  # an epoch takes longer
  last = err.splitlines()[-1]
  assert f"during epoch {saved.epochs_done + 1}" in last, err
  assert f"holds epoch {saved.epochs_done}" in last and "--resume" in last, err


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
  out = tmp_path_factory.mktemp("pipe") / "run"
  code, _, err = finish(start("train", *TINY, "--out", out))
  assert code == 0, err
  return out


def test_a_closed_pipe_ends_evaluate_quietly(finished_run):
  """`mlp-jax evaluate ... | head -1` with the reader gone before anything is written."""
  proc = subprocess.Popen(command() + ["evaluate", str(finished_run / "checkpoint.npz")],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)
  proc.stdout.close()  # the reader goes away: every write gets EPIPE
  err = proc.stderr.read().decode()
  proc.wait(timeout=120)
  assert proc.returncode == 141 and err == "", (proc.returncode, err)


def test_head_reads_one_line_of_evaluate(finished_run):
  shell = subprocess.run(
      shlex.join(command() + ["evaluate", str(finished_run / "checkpoint.npz")]) + " | head -1", shell=True, capture_output=True, text=True, timeout=120)
  assert shell.returncode == 0 and shell.stderr == "", shell.stderr
  assert shell.stdout.count("\n") == 1 and "test set" in shell.stdout
