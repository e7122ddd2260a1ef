"""The package as a user installs it: a wheel built from this tree, installed (offline) into a
fresh virtual environment, run from another folder, and type-checked as a dependency."""

import os
import pathlib
import subprocess
import sys
import sysconfig
import textwrap
import zipfile

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.skipif(os.name != "posix", reason="venv layout of POSIX")


def _run(cmd, cwd, env=None, timeout=600):
  result = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)
  assert result.returncode == 0, (cmd, result.stdout[-3000:], result.stderr[-3000:])
  return result


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
  """(venv python, venv bin, wheel, a work folder): the wheel installed with --no-deps into a
  fresh venv whose dependencies come from this environment's site-packages (a .pth line), so
  nothing is downloaded."""
  root = tmp_path_factory.mktemp("wheel")
  dist = root / "dist"
  _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
        "-w", dist, REPO], cwd=root)
  wheel, = dist.glob("mlp_jax-*.whl")
  venv = root / "venv"
  _run([sys.executable, "-m", "venv", "--without-pip", venv], cwd=root)
  python = venv / "bin" / "python"
  purelib = _run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                 cwd=root).stdout.strip()
  ours = sysconfig.get_paths()["purelib"]
  pathlib.Path(purelib, "deps_from_test_env.pth").write_text(ours + "\n")
  _run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index",
        "-q", wheel], cwd=root)
  work = root / "elsewhere"
  work.mkdir()
  return python, venv / "bin", wheel, work


def test_the_wheel_holds_the_data_license_and_type_marker(installed):
  _, _, wheel, _ = installed
  names = zipfile.ZipFile(wheel).namelist()
  assert "mlp_jax/py.typed" in names and "mlp_jax/io/usps.npz" in names
  assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
  metadata = zipfile.ZipFile(wheel).read(
      next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
  assert "License-Expression: Apache-2.0" in metadata
  assert "Classifier: Typing :: Typed" in metadata
  assert "Provides-Extra: plots" in metadata and "Provides-Extra: dp" in metadata


def test_the_installed_package_runs_from_another_folder(installed):
  python, bin_dir, _, work = installed
  env = {**os.environ, "PYTHONPATH": ""}
  where = _run([python, "-c", "import mlp_jax; print(mlp_jax.__file__, mlp_jax.__version__)"],
               cwd=work, env=env).stdout
  assert str(REPO) not in where and "site-packages" in where and "0.1.0" in where
  assert _run([bin_dir / "mlp-jax", "--version"], cwd=work, env=env).stdout.strip() == \
      "mlp-jax 0.1.0"
  help_text = _run([python, "-m", "mlp_jax", "train", "--help"], cwd=work, env=env).stdout
  assert "(default: 200)" in help_text and "(default: momentum)" in help_text
  result = _run([bin_dir / "mlp-jax", "train", "--epochs", "1", "--out", "run"], cwd=work,
                env=env)
  assert "usps (7291 train, 0 val, 2007 test)" in result.stdout
  assert "256-256-10" in result.stdout and "test accuracy" in result.stdout
  assert "\r" not in result.stderr  # no progress bar frames when stderr is not a terminal
  assert (work / "run" / "checkpoint.npz").is_file()


CLIENT = """
import jax
import mlp_jax as mj

params: mj.Params = mj.init_params(jax.random.PRNGKey(0), (256, 32, 10))
x = jax.numpy.zeros((4, 256))
y = jax.numpy.zeros((4,), jax.numpy.int32)
loss, grads = mj.loss_and_grads(params, x, y, 0.1)
report: mj.GradientReport = mj.check_gradients(params, x, y, 0.1)
norms: jax.Array = mj.per_sample_grad_norms(params, x, y)
splits: mj.data.Splits = mj.data.load_usps()
"""


def test_a_client_script_type_checks_against_the_installed_package(installed, tmp_path):
  python, _, _, _ = installed
  good = tmp_path / "client.py"
  good.write_text(textwrap.dedent(CLIENT))
  bad = tmp_path / "bad_client.py"
  bad.write_text(textwrap.dedent(CLIENT) + "wrong: str = mj.init_params(jax.random.PRNGKey(0))\n")
  mypy = [sys.executable, "-m", "mypy", "--python-executable", python, "--no-incremental",
          "--follow-imports", "silent", "--ignore-missing-imports"]
  _run(mypy + [good], cwd=tmp_path)
  result = subprocess.run([str(c) for c in mypy + [bad]], cwd=tmp_path, capture_output=True,
                          text=True, timeout=600)
  assert result.returncode == 1 and "bad_client.py:12: error: Incompatible types" in \
      result.stdout, result.stdout
