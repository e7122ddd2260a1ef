"""`mlp-jax train` (`train_command`) through `cli.main`: every argument checked before anything
is written (exit 2, one line, not even an empty folder), data the OS will not hand over refused
without hanging, and a diverging run that names its batch and keeps its last good epoch. The run
folder's own rules (claiming, overwrite, resume, faults, Ctrl-C and kill -9) are in
test_run_folder.py."""

import json
import os
import pathlib

import pytest

import mlp_jax as mj
from conftest import EXIT_ERROR, TINY_CONSTANT as TINY, one_error_line as _one_error_line
from conftest import run_cli as _run, with_options as _with

pytestmark = pytest.mark.usefixtures("standard_promotion")  # optax inside the CLI


# ----------------------------------------------------------------- arguments, before anything


@pytest.mark.parametrize("change, message", [
    (dict(epochs="0"), "--epochs: expected an int >= 1, got 0"),
    (dict(epochs="-1"), "--epochs: expected an int >= 1, got -1"),
    (dict(batch_size="0"), "--batch-size: expected an int >= 1, got 0"),
    (dict(batch_size="100000"), "--batch-size: expected an int in 1..192 (the training set has "
                                "192 examples), got 100000"),
    (dict(batch_size="100000", dp=True), "--batch-size: expected an int in 1..192"),
    (dict(seed="-1"), "--seed: expected an int in 0..4294967295, got -1"),
    (dict(seed=str(2**64)), "--seed: expected an int in 0..4294967295, got 18446744073709551616"),
    (dict(val_fraction="-0.1"), "--val-fraction: expected a fraction in [0, 1), got -0.1"),
    (dict(val_fraction="1"), "--val-fraction: expected a fraction in [0, 1), got 1"),
    (dict(patience="0"), "--patience: expected an int >= 1, got 0"),
    (dict(patience="-2"), "--patience: expected an int >= 1, got -2"),
    (dict(patience="2", val_fraction="0"), "--patience: early stopping needs validation data "
                                             "(--val-fraction > 0)"),
    (dict(data="usps.h5"), "--data usps.h5: only used with --dataset usps"),
    (dict(dataset="digits"), "--num-samples 300: only used with --dataset synthetic"),
    (dict(shifts="8"), "--shifts 8: only used with --augment"),
    (dict(noise_multiplier="2"), "--noise-multiplier 2.0: only used with --dp"),
    (dict(dp=True, delta="0"), "--delta: expected a finite value in (0, 1), got 0"),
    (dict(dp=True, clip_norm="0"), "--clip-norm: expected a finite value > 0, got 0"),
    (dict(dp=True, noise_multiplier="-1"), "--noise-multiplier: expected a finite value >= 0"),
    (dict(target_epsilon="3"), "--target-epsilon 3.0: only used with --dp"),
    (dict(dp=True, target_epsilon="0"), "--target-epsilon: expected a finite value > 0, got 0"),
    (dict(dp=True, target_epsilon="0.001"), "--target-epsilon=0.001 cannot be met: 18 steps of "
                                            "expected batch 32 out of 192 examples"),
    (dict(dp=True, target_epsilon="2", noise_multiplier="0.5"),
     "--target-epsilon=2: 3 epochs at noise multiplier 0.5 spend epsilon="),
    (dict(dp=True, target_quantile="1"), "--target-quantile: expected a finite value in (0, 1), "
                                         "got 1"),
    (dict(lr="0"), "--lr: expected a finite value > 0, got 0"),
    (dict(lr="nan"), "--lr: expected a finite value > 0, got nan"),
    (dict(l2="-1"), "--l2: expected a finite value >= 0, got -1"),
    (dict(hidden="0"), "--hidden: expected widths >= 1, got [0]"),
    (dict(resume=True, overwrite=True), "--resume and --overwrite: choose one"),
    (dict(out=""), "--out: expected a folder name, got ''"),
    (dict(activation="swish"), "--activation: expected one of gelu, gelu_tanh, identity, "
                               "leaky_relu, logistic, relu, tanh (or leaky_relu:SLOPE), got "
                               "'swish'"),
    (dict(activation="tanh,relu"), "--activation: expected one activation per hidden layer (1), "
                                   "got 2"),
    (dict(activation="leaky_relu:-1"), "--activation: expected a leaky_relu slope that is "
                                       "finite and >= 0, got -1"),
    (dict(activation="tanh:2"), "--activation: only leaky_relu takes a parameter"),
], ids=lambda v: "-".join(f"{k}={w}" for k, w in v.items()) if isinstance(v, dict) else None)
def test_bad_arguments_exit_2_with_one_line_and_create_nothing(tmp_path, capsys, monkeypatch,
                                                                 change, message):
  monkeypatch.chdir(tmp_path)
  args = _with(TINY, **({"out": str(tmp_path / "run")} | change))
  code, _, err = _run(["train", *args], capsys)
  assert code == EXIT_ERROR and message in _one_error_line(err)
  assert os.listdir(tmp_path) == []  # no output folder, not even an empty one


def test_resume_needs_out(tmp_path, capsys, monkeypatch):
  monkeypatch.chdir(tmp_path)
  code, _, err = _run(["train", *TINY, "--resume"], capsys)
  assert code == EXIT_ERROR and "--resume: give the run's folder with --out" in err
  assert os.listdir(tmp_path) == []


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_a_fifo_or_device_as_data_is_refused_without_hanging(tmp_path, capsys, kind):
  if kind == "fifo":
    path = tmp_path / "usps.h5"
    os.mkfifo(path)
  else:
    path = pathlib.Path("/dev/zero")
    if not path.exists():
      pytest.skip("no /dev/zero")
  code, _, err = _run(["train", "--dataset", "usps", "--data", path, "--out",
                       tmp_path / "run", "--no-progress"], capsys)
  assert code == EXIT_ERROR and "is not a regular file" in _one_error_line(err)
  assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("given, says", [
    ("locked/usps.h5", "cannot read"),                       # a file in a folder without x
    ("locked", "cannot look inside the folder"),            # the folder itself, as --data
], ids=["file_in_folder", "folder"])
def test_data_the_os_refuses_to_reach_is_one_line_and_exit_2(tmp_path, capsys, monkeypatch,
                                                             given, says):
  locked = tmp_path / "locked"
  locked.mkdir()
  (locked / "usps.h5").write_bytes(b"")
  locked.chmod(0o600)  # readable, not searchable: nothing inside can be reached
  if os.geteuid() == 0:  # root reaches anything: the refusal is simulated at stat
    real_stat = pathlib.Path.stat

    def stat(self, *args, **kwargs):
      if locked in self.parents:
        raise PermissionError(13, "Permission denied", str(self))
      return real_stat(self, *args, **kwargs)
    monkeypatch.setattr(pathlib.Path, "stat", stat)
  try:
    code, _, err = _run(["train", "--dataset", "usps", "--data", tmp_path / given, "--out",
                         tmp_path / "run", "--no-progress"], capsys)
  finally:
    locked.chmod(0o700)
  line = _one_error_line(err)
  assert code == EXIT_ERROR and str(tmp_path / given) in line and says in line \
      and "Permission denied" in line, line
  assert not (tmp_path / "run").exists()


def test_a_diverging_run_names_the_batch_and_keeps_the_last_good_epoch(tmp_path, capsys):
  out = tmp_path / "run"
  code, _, err = _run(["train", *_with(TINY, optimizer="sgd", lr="1e25", epochs="5",
                                       out=str(out))], capsys)
  line = _one_error_line(err)
  assert code == EXIT_ERROR and "non-finite loss or gradient at epoch" in line
  assert f"offending batch in {out}/nonfinite_batch.json" in line
  record = json.loads((out / "nonfinite_batch.json").read_text())
  assert record["epoch"] >= 1 and len(record["batch_indices"]) >= 1
  if record["epoch"] > 1:  # the epochs before it are saved, and finite
    state = mj.load_run(out / "checkpoint.npz").state
    assert state.epochs_done == record["epoch"] - 1
  else:
    assert "no epoch had finished" in line and not (out / "checkpoint.npz").exists()


# ------------------------------------------------------------------------ --activation


def test_another_activation_is_trained_recorded_evaluated_and_kept_on_resume(tmp_path, capsys):
  out = tmp_path / "run"
  args = _with(TINY, out=str(out), activation="tanh,leaky_relu:0.2", hidden=["8", "6"])
  code, text, _ = _run(["train", *args], capsys)
  assert code == 0 and "-8-6-10 tanh,leaky_relu:0.2, momentum" in text, text
  metrics = json.loads((out / "metrics.json").read_text())
  assert metrics["config"]["activation"] == "tanh,leaky_relu:0.2"
  saved = mj.load_run(out / "checkpoint.npz")
  assert saved.state.settings["network"]["activation"] == ["tanh", "leaky_relu:0.2"]
  code, text, _ = _run(["evaluate", str(out / "checkpoint.npz")], capsys)
  assert code == 0 and "activation tanh,leaky_relu:0.2, output softmax_cross_entropy" in text
  accuracy = f"accuracy {100 * metrics['test_accuracy']:.2f}%"
  assert accuracy in text  # evaluate scores the network the run trained, not a ReLU one
  code, _, err = _run(["evaluate", str(out / "checkpoint.npz"), "--activation", "relu"], capsys)
  assert code == EXIT_ERROR and "holds a network of activation tanh,leaky_relu:0.2" in (
      _one_error_line(err))
  more = _with(args, epochs="4", resume=True)
  for refused in (_with(more, activation=None), _with(more, activation="tanh,leaky_relu")):
    code, _, err = _run(["train", *refused], capsys)
    assert code == EXIT_ERROR and "was trained with --activation tanh,leaky_relu:0.2" in (
        _one_error_line(err))
  code, text, _ = _run(["train", *more], capsys)
  assert code == 0 and mj.load_run(out / "checkpoint.npz").state.epochs_done == 4


def test_a_run_recorded_without_activation_resumes_as_relu(tmp_path, capsys):
  """Runs written before --activation existed hold no such key: they are ReLU runs."""
  out = tmp_path / "run"
  args = _with(TINY, out=str(out))
  assert _run(["train", *args], capsys)[0] == 0
  config = json.loads((out / "config.json").read_text())
  assert config["activation"] == "relu"
  saved = mj.load_run(out / "checkpoint.npz")
  del saved.config["activation"]
  mj.save_run(out / "checkpoint.npz", saved.state, config=saved.config, arrays=saved.arrays)
  code, _, err = _run(["train", *_with(args, epochs="4", resume=True)], capsys)
  assert code == 0, err


def test_one_activation_serves_every_hidden_layer(tmp_path, capsys):
  out = tmp_path / "run"
  code, _, err = _run(["train", *_with(TINY, out=str(out), activation="tanh",
                                       hidden=["8", "6"])], capsys)
  assert code == 0, err
  saved = mj.load_run(out / "checkpoint.npz")
  assert saved.state.settings["network"]["activation"] == "tanh"
  code, text, _ = _run(["evaluate", str(out / "checkpoint.npz"), "--activation", "tanh"], capsys)
  assert code == 0 and "; activation tanh, output softmax_cross_entropy" in text
