"""`enable_compilation_cache`: a second process loads what the first compiled, bit-identically.

Each case runs in a fresh Python process: JAX's cache settings are per process.
"""

import os
import pathlib
import subprocess
import sys

import pytest

# Prints the cache folder and a digest of one gradient (see its docstring).
PROGRAM = pathlib.Path(__file__).parent / "programs" / "cached_grads.py"


def _run(env_changes, *args):
  env = {k: v for k, v in os.environ.items()
         if k not in ("MLP_JAX_COMPILATION_CACHE", "JAX_COMPILATION_CACHE_DIR")}
  env.update(env_changes)
  done = subprocess.run([sys.executable, str(PROGRAM), *args], env=env, capture_output=True,
                        text=True, timeout=300)
  assert done.returncode == 0, done.stderr
  folder, digest = done.stdout.split()
  return folder, digest


def _files(root):
  return sorted(os.path.join(d, f) for d, _, files in os.walk(root) for f in files)


def test_a_second_process_compiles_nothing_and_gets_the_same_bits(tmp_path):
  root = tmp_path / "cache"
  folder, first = _run({"MLP_JAX_COMPILATION_CACHE": str(root)})
  assert folder.startswith(str(root)) and os.path.basename(folder).startswith("jax-")
  stored = _files(root)
  assert len(stored) >= 2  # init_params and the gradient, at least
  again, second = _run({"MLP_JAX_COMPILATION_CACHE": str(root)})
  assert again == folder and second == first
  assert _files(root) == stored  # every program came from the cache


def test_off_leaves_the_cache_off(tmp_path):
  folder, _ = _run({"MLP_JAX_COMPILATION_CACHE": "off", "XDG_CACHE_HOME": str(tmp_path)})
  assert folder == "None" and _files(tmp_path) == []


def test_a_cache_jax_was_given_is_kept(tmp_path):
  folder, _ = _run({"JAX_COMPILATION_CACHE_DIR": str(tmp_path / "jax")}, str(tmp_path / "ours"))
  assert folder == str(tmp_path / "jax") and not (tmp_path / "ours").exists()


def test_a_folder_that_cannot_be_made_leaves_the_cache_off(tmp_path):
  (tmp_path / "file").write_text("not a folder")
  folder, _ = _run({}, str(tmp_path / "file" / "cache"))
  assert folder == "None"


@pytest.mark.parametrize("setting", ["", None])
def test_the_default_folder_is_in_the_user_cache(tmp_path, setting):
  env = {"XDG_CACHE_HOME": str(tmp_path)}
  if setting is not None:
    env["MLP_JAX_COMPILATION_CACHE"] = setting
  folder, _ = _run(env)
  assert folder.startswith(str(tmp_path / "mlp_jax" / "xla")) and _files(folder)
