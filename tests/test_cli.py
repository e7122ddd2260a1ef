"""The `mlp-jax` command end to end, on tiny data in a temporary folder: the parser's frame
(`cli`: help, version, defaults) and what each command (train, evaluate, check) writes and prints,
and its one-line errors, as a user meets them.

One file for the three command modules (`cli`, `train_command`, `eval_commands`), not a
test_eval_commands.py beside it: it holds about as many train tests as evaluate and check tests,
and several run one command on what another wrote (evaluate on the run train just made, on the
rows each seed held out), which no one command module owns. The train command's argument checks
and the run folder's rules are in test_train_command.py and test_run_folder.py.
"""

import json
import os
import pathlib
import subprocess
import sys

import h5py
import numpy as np
import pytest

import mlp_jax as mj
from mlp_jax.training import run as run_file
from mlp_jax.tools import cli, run_folder
from conftest import EXIT_ERROR, TINY, one_error_line as _one_error_line, run_cli as _run

pytestmark = pytest.mark.usefixtures("standard_promotion")  # optax inside the CLI
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_train_writes_every_output(tmp_path, capsys):
  out = tmp_path / "run"
  code, text, _ = _run(["train", *TINY, "--out", str(out)], capsys)
  assert code == 0
  assert "test accuracy" in text
  assert sorted(os.listdir(out)) == ["checkpoint.npz", "config.json", "confusion.png",
                                     "curves.png", "metrics.csv", "metrics.json"]
  for png in ("curves.png", "confusion.png"):
    data = (out / png).read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 2000
    import matplotlib.image
    assert matplotlib.image.imread(out / png).ndim == 3  # decodes as an image
  metrics = json.loads((out / "metrics.json").read_text())
  assert [r["epoch"] for r in metrics["history"]] == [1, 2, 3]
  assert "val_loss and test_loss are the objective (E6) at the run's --l2" in \
      metrics["loss_definition"]
  confusion = np.asarray(metrics["confusion"])
  assert confusion.sum() == metrics["test_examples"]
  assert metrics["test_accuracy"] == np.trace(confusion) / metrics["test_examples"]
  rows = (out / "metrics.csv").read_text().splitlines()
  assert rows[0].startswith("epoch,") and len(rows) == 4
  run = run_file.load_run(out / "checkpoint.npz")
  assert run.config["layer_sizes"] == [256, 8, 10] and run.state.epochs_done == 3


def test_train_with_cosine_schedule_and_eight_shifts(tmp_path, capsys):
  out = tmp_path / "run"
  code, text, _ = _run(["train", *TINY, "--val-fraction", "0", "--augment", "--shifts", "8",
                        "--schedule", "cosine", "--out", str(out)], capsys)
  assert code == 0 and "cosine" in text
  metrics = json.loads((out / "metrics.json").read_text())
  assert metrics["train_examples"] == 9 * 240  # 80% of 300, and eight shifted copies of each
  assert metrics["config"]["schedule"] == "cosine" and metrics["config"]["shifts"] == 8


def test_shifts_without_augment_is_an_error(tmp_path, capsys):
  code, _, err = _run(["train", *TINY, "--shifts", "8", "--out", str(tmp_path / "run")], capsys)
  assert code == 2 and "--shifts 8: only used with --augment" in err
  assert not (tmp_path / "run").exists()


def test_evaluate_reads_the_checkpoint(tmp_path, capsys):
  out = tmp_path / "run"
  assert _run(["train", *TINY, "--out", str(out)], capsys)[0] == 0
  accuracy = json.loads((out / "metrics.json").read_text())["test_accuracy"]
  code, text, _ = _run(["evaluate", str(out / "checkpoint.npz")], capsys)
  assert code == 0
  assert f"accuracy {100 * accuracy:.2f}%" in text
  assert "confusion matrix" in text


def test_dp_training_reports_epsilon(tmp_path, capsys):
  code, text, _ = _run(["train", *TINY, "--out", str(tmp_path / "dp"), "--dp",
                        "--clip-norm", "1", "--noise-multiplier", "1.0"], capsys)
  assert code == 0 and "-DP" in text
  history = json.loads((tmp_path / "dp" / "metrics.json").read_text())["history"]
  assert all(r["epsilon"] > 0 for r in history)


def test_dp_without_dp_accounting_is_refused_before_the_run(tmp_path, capsys, monkeypatch):
  monkeypatch.setitem(sys.modules, "dp_accounting", None)  # as if not installed
  code, _, err = _run(["train", *TINY, "--out", str(tmp_path / "dp"), "--dp"], capsys)
  assert code == EXIT_ERROR and "--dp needs dp_accounting, which is not installed: pip " \
      "install 'mlp_jax[dp]'" in err
  assert not (tmp_path / "dp").exists()


def test_a_target_epsilon_run_reports_its_chosen_noise_and_adaptive_clip(tmp_path, capsys):
  code, text, _ = _run(["train", *TINY, "--out", str(tmp_path / "dp"), "--dp",
                        "--target-epsilon", "2", "--target-quantile", "0.5"], capsys)
  assert code == 0 and "(chosen for epsilon <= 2)" in text
  assert "C=1 adaptive to the 0.5 quantile (last " in text
  history = json.loads((tmp_path / "dp" / "metrics.json").read_text())["history"]
  assert 2 * 0.99 <= history[-1]["epsilon"] <= 2 and all("clip_norm" in r for r in history)


def _write_h5(path, groups=("train", "test"), x=None):
  rng = np.random.default_rng(0)
  with h5py.File(path, "w") as f:
    for g in groups:
      f[f"{g}/data"] = rng.random((20, 256)).astype(np.float32) if x is None else x
      f[f"{g}/target"] = rng.integers(0, 10, 20).astype(np.int32)


@pytest.mark.parametrize("case, match", [
    ("missing", "no such file"),
    ("no_test_group", "missing group 'test'"),
    ("nan", "NaN or Inf"),
    ("ragged", "line 2"),
])
def test_bad_data_exits_2_with_one_line_and_writes_nothing(case, match, tmp_path, capsys):
  path = tmp_path / "usps.h5"
  if case == "no_test_group":
    _write_h5(path, groups=("train",))
  elif case == "nan":
    x = np.ones((20, 256), np.float32)
    x[3, 4] = np.nan
    _write_h5(path, x=x)
  elif case == "ragged":
    path = tmp_path / "zip.train"
    path.write_text("1 " + " ".join(["0.5"] * 256) + "\n2 0.1 0.2\n")
  out = tmp_path / "out"
  code, _, err = _run(["train", "--dataset", "usps", "--data", str(path), "--out", str(out),
                       "--no-progress"], capsys)
  assert code == 2
  lines = err.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("mlp-jax: error:") and match in lines[0]
  assert str(path.name) in lines[0]
  assert not out.exists()


def test_feature_count_mismatch_with_checkpoint_exits_2(tmp_path, capsys):
  out = tmp_path / "run"
  assert _run(["train", *TINY, "--out", str(out)], capsys)[0] == 0
  code, _, err = _run(["evaluate", str(out / "checkpoint.npz"), "--dataset", "digits"], capsys)
  assert code == 2 and "64" in err and "256" in err


def test_corrupt_checkpoint_exits_2(tmp_path, capsys):
  bad = tmp_path / "checkpoint.npz"
  bad.write_bytes(b"not a checkpoint")
  code, _, err = _run(["evaluate", str(bad)], capsys)
  assert code == 2 and "checkpoint.npz" in err


def test_check_passes_and_exits_0(capsys):
  code, text, _ = _run(["check", "--features", "12", "--hidden", "7", "5", "--classes", "4",
                        "--m", "9"], capsys)
  assert code == 0 and "PASSED" in text and "float64" in text


def test_help_has_examples():
  for sub in ("train", "evaluate", "check"):
    result = subprocess.run([sys.executable, "-m", "mlp_jax.tools.cli", sub, "--help"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "examples:" in result.stdout


def test_check_diagnoses_a_user_gradient_file(tmp_path, capsys):
  user = tmp_path / "my_backprop.py"
  user.write_text(
      "import mlp_jax as mj\n"
      "def grads(params, x, y, l2):\n"
      "  g = mj.grads(params, x, y, l2)\n"
      "  return (mj.Dense(g[0].w, g[0].b * x.shape[0] / x.shape[1]), g[1])\n")
  code, text, _ = _run(["check", "--features", "6", "--hidden", "5", "--classes", "3", "--m", "7",
                        "--grads", f"{user}:grads"], capsys)
  assert code == 1
  assert "b1" in text and "m/n" in text
  code, _, err = _run(["check", "--grads", f"{user}:nothing"], capsys)
  assert code == 2 and "no function 'nothing'" in err


def test_config_replays_a_recorded_run_and_options_override_it(tmp_path, capsys):
  first = tmp_path / "first"
  assert _run(["train", *TINY, "--l2", "0.3", "--out", str(first)], capsys)[0] == 0
  recorded = json.loads((first / "config.json").read_text())
  for source in ("config.json", "metrics.json"):
    again = tmp_path / f"again-{source}"
    code, _, _ = _run(["train", "--config", str(first / source), "--seed", "3", "--out",
                       str(again)], capsys)
    assert code == 0
    replayed = json.loads((again / "config.json").read_text())
    differ = {k for k in recorded if recorded[k] != replayed.get(k)}
    # --seed draws the initialisation and the shuffle only: the rows stay (--split-seed)
    assert differ == {"seed", "out", "config"}, differ
    assert replayed["seed"] == 3 and replayed["l2"] == 0.3
  bad = tmp_path / "bad.json"
  bad.write_text('{"l2": 0.1, "learning_rate": 3}')
  code, _, err = _run(["train", "--config", str(bad), "--out", str(tmp_path / "x")], capsys)
  assert code == 2 and "--config" in err and "unknown settings learning_rate" in err
  bad.write_text("not json")
  code, _, err = _run(["train", "--config", str(bad), "--out", str(tmp_path / "x")], capsys)
  assert code == 2 and "cannot read a JSON file" in err
  assert not (tmp_path / "x").exists()


def test_a_missing_optional_dependency_names_its_extra(tmp_path, capsys, monkeypatch):
  import importlib
  real = importlib.import_module

  def without_sklearn(name, *args):
    if name.startswith("sklearn"):
      raise ImportError("No module named 'sklearn'")
    return real(name, *args)

  monkeypatch.setattr(importlib, "import_module", without_sklearn)
  code, _, err = _run(["train", "--dataset", "digits", "--out", str(tmp_path / "run")], capsys)
  assert code == 2
  assert "the 8x8 digits needs sklearn, which is not installed: pip install 'mlp_jax[digits]'" \
      in err
  assert not (tmp_path / "run").exists()


def test_version_and_help_defaults(capsys):
  import mlp_jax
  with pytest.raises(SystemExit) as info:
    cli.main(["--version"])
  assert info.value.code == 0 and capsys.readouterr().out.strip() == \
      f"mlp-jax {mlp_jax.__version__}"
  with pytest.raises(SystemExit):
    cli.main(["train", "--help"])
  text = " ".join(capsys.readouterr().out.split())
  for default in ("(default: usps)", "(default: 200)", "(default: 128)", "(default: momentum)",
                  "(default: 0.1)", "(default: cosine)", "(default: 256)", "(default: 0)"):
    assert default in text, default


USER_RAISES = """import mlp_jax as mj

def _delta(x):
  return x / undefined_name

def grads(params, x, y, l2):
  return _delta(x)
"""


def test_a_user_gradient_that_raises_is_one_report_naming_their_lines(tmp_path, capsys,
                                                                     monkeypatch):
  monkeypatch.chdir(tmp_path)
  pathlib.Path("my_backprop.py").write_text(USER_RAISES)
  code, out, err = _run(["check", "--features", "6", "--hidden", "5", "--classes", "3",
                         "--grads", "my_backprop.py:grads"], capsys)
  line = _one_error_line(err)
  assert code == 2 and out == ""
  assert ("--grads: your function my_backprop.py:grads raised NameError: name 'undefined_name' "
          "is not defined, at my_backprop.py:4 in _delta (return x / undefined_name), called "
          "from my_backprop.py:7 in grads (return _delta(x))") in line, line
  assert "mlp_jax/" not in line and "site-packages" not in line  # their frames only


def test_a_user_module_that_raises_on_import_is_one_report(tmp_path, capsys, monkeypatch):
  monkeypatch.chdir(tmp_path)
  pathlib.Path("broken.py").write_text("x = 1\nraise RuntimeError('not ready')\n")
  code, _, err = _run(["check", "--grads", "broken.py:grads"], capsys)
  line = _one_error_line(err)
  assert code == 2 and ("importing broken.py raised RuntimeError: not ready, at broken.py:2 in "
                        "<module>") in line, line


def test_check_dtype_float32_with_grads_is_refused_not_ignored(tmp_path, capsys):
  user = tmp_path / "ok.py"
  user.write_text("import mlp_jax as mj\ngrads = mj.grads\n")
  code, out, err = _run(["check", "--dtype", "float32", "--grads", f"{user}:grads"], capsys)
  assert code == 2 and out == "" and "--dtype float32: --grads is always diagnosed in float64" \
      in _one_error_line(err)
  code, out, _ = _run(["check", "--dtype", "float32", "--features", "6", "--hidden", "5",
                       "--classes", "3"], capsys)
  assert code == 0 and "float32" in out  # without --grads, float32 is honoured


@pytest.mark.parametrize("name", ["a\nb", "tab\there", "esc\x1b[31m"])
def test_a_path_with_control_characters_keeps_the_error_on_one_line(tmp_path, capsys, name):
  path = tmp_path / name
  code, _, err = _run(["evaluate", str(path / "checkpoint.npz")], capsys)
  line = _one_error_line(err)
  assert code == 2 and "no such file" in line
  assert repr(name)[1:-1] in line  # shown escaped, as Python writes it


@pytest.mark.parametrize("content", [b'{"config": {"seed": 0}}', b"\x00\x01garbage" * 40],
                         ids=["json", "garbage"])
def test_evaluate_on_a_file_that_is_no_checkpoint_says_so(tmp_path, capsys, content):
  path = tmp_path / "run.npz"
  path.write_bytes(content)
  code, _, err = _run(["evaluate", str(path)], capsys)
  line = _one_error_line(err)
  assert code == 2 and "not a mlp_jax checkpoint" in line and "allow_pickle" not in line, line


def test_evaluate_refuses_a_library_checkpoint_with_one_line(tmp_path, capsys):
  import jax
  path = mj.save_checkpoint(tmp_path / "lib.npz", mj.init_params(jax.random.PRNGKey(0),
                                                                 (256, 8, 10)), epoch=1)
  code, _, err = _run(["evaluate", path], capsys)
  assert code == EXIT_ERROR and "holds no training run" in _one_error_line(err)


def test_seed_keeps_the_held_out_rows_and_split_seed_moves_them(tmp_path, capsys):
  """The digits test set is 20 % held out by --split-seed (0 by default), not by --seed, so that
  runs of several seeds are scored on the same rows."""
  digits = ["--dataset", "digits", "--hidden", "8", "--epochs", "1", "--no-progress"]
  runs = {}
  for name, extra in {"s0": [], "s1": ["--seed", "1"], "split1": ["--split-seed", "1"]}.items():
    assert _run(["train", *digits, *extra, "--out", str(tmp_path / name)], capsys)[0] == 0
    runs[name] = json.loads((tmp_path / name / "config.json").read_text())
  assert runs["s0"]["train_sha256"] == runs["s1"]["train_sha256"]
  assert runs["s0"]["train_sha256"] != runs["split1"]["train_sha256"]
  # evaluate scores each run on its own held-out rows: the run's accuracy, to the example
  for name in runs:
    metrics = json.loads((tmp_path / name / "metrics.json").read_text())
    _, text, _ = _run(["evaluate", str(tmp_path / name / "checkpoint.npz")], capsys)
    assert f"accuracy {100 * metrics['test_accuracy']:.2f}%" in text, (name, text)


def test_a_run_recorded_before_split_seed_keeps_its_rows(tmp_path, capsys):
  """Before --split-seed, --seed drew the split: a recorded config without it replays
  on the rows it was trained on."""
  old = tmp_path / "old"
  assert _run(["train", *TINY, "--seed", "3", "--split-seed", "3", "--out", str(old)],
              capsys)[0] == 0
  config = json.loads((old / "config.json").read_text())
  del config["split_seed"]
  (old / "config.json").write_text(json.dumps(config))
  assert run_folder.split_seed(config) == 3
  again = tmp_path / "again"
  assert _run(["train", "--config", str(old / "config.json"), "--out", str(again)], capsys)[0] == 0
  assert json.loads((again / "config.json").read_text())["train_sha256"] == config["train_sha256"]
