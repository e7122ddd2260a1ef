"""The package's layout is its architecture: layers that import only downward (import-linter
contracts in pyproject.toml), no cycles, no module hidden behind a function of the same name,
and an `import mlp_jax` that loads neither the tools layer nor their heavy dependencies."""

import importlib
import os
import pathlib
import pkgutil
import re
import shutil
import subprocess
import sys

import pytest

import mlp_jax

ROOT = pathlib.Path(__file__).resolve().parents[1]
LINT = ("import sys; from importlinter.cli import lint_imports; "
        "sys.exit(lint_imports(config_filename='pyproject.toml', no_cache=True, no_logo=True))")


def _lint(where: pathlib.Path, pythonpath=None):
  env = dict(os.environ)
  if pythonpath is not None:
    env["PYTHONPATH"] = str(pythonpath)
  return subprocess.run([sys.executable, "-c", LINT], cwd=where, env=env, capture_output=True,
                        text=True, timeout=120)


def test_import_linter_contracts_are_kept():
  proc = _lint(ROOT)
  assert proc.returncode == 0, proc.stdout + proc.stderr
  assert "0 broken" in proc.stdout and "layers:" in proc.stdout


# Each edit breaks one contract: an upward import, a cycle between siblings, I/O in the core.
MUTATIONS = {
    "upward": ("core/model.py", "from mlp_jax.tools import plots  # noqa\n"),
    "oracle_imports_training": ("oracle/check.py", "from mlp_jax.training import fit  # noqa\n"),
    "cycle": ("training/distributed.py", "from mlp_jax.training import fit  # noqa\n"),
    "core_reads_files": ("core/objective.py", "import h5py  # noqa\n"),
}


@pytest.mark.parametrize("mutation", sorted(MUTATIONS))
def test_contracts_fail_on_a_forbidden_import(tmp_path, mutation):
  """The contracts can fail: a copy of the package with one forbidden import is refused."""
  shutil.copytree(ROOT / "mlp_jax", tmp_path / "mlp_jax")
  shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
  path, line = MUTATIONS[mutation]
  target = tmp_path / "mlp_jax" / path
  target.write_text(line + target.read_text())
  proc = _lint(tmp_path, pythonpath=tmp_path)
  assert proc.returncode == 1, proc.stdout + proc.stderr
  assert "BROKEN" in proc.stdout


def _submodules():
  return sorted(info.name for info in pkgutil.walk_packages(mlp_jax.__path__, "mlp_jax."))


def test_every_module_is_reachable_under_its_own_name():
  """No function or alias of the same name hides a module: `parent.child` is that module."""
  for name in _submodules():
    module = importlib.import_module(name)
    parent, _, child = name.rpartition(".")
    assert getattr(sys.modules[parent], child) is module, name


def test_import_mlp_jax_loads_no_tools_and_no_optional_dependencies():
  code = ("import sys, mlp_jax; print(sorted(m for m in sys.modules if m.split('.')[0] in "
          "('matplotlib', 'tqdm', 'sklearn', 'h5py', 'dp_accounting') or "
          "m.startswith('mlp_jax.tools')))")
  proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                        check=True)
  assert proc.stdout.strip() == "[]", proc.stdout


def test_lazy_diagnose_is_the_tools_function():
  from mlp_jax.tools import diagnosis
  assert mlp_jax.diagnose is diagnosis.diagnose and mlp_jax.Diagnosis is diagnosis.Diagnosis
  assert "diagnose" in dir(mlp_jax)
  with pytest.raises(AttributeError, match="no_such_name"):
    mlp_jax.no_such_name  # noqa: B018


def test_dir_of_the_package_is_its_public_api():
  """`dir(mj)` lists `__all__` (lazy names included), not the modules and helpers imported to
  build it; every name in `__all__` resolves."""
  assert dir(mlp_jax) == sorted(mlp_jax.__all__)
  assert len(set(mlp_jax.__all__)) == len(mlp_jax.__all__)
  for name in mlp_jax.__all__:
    getattr(mlp_jax, name)
  assert not {"_metadata", "_LAZY", "core", "training"} & set(dir(mlp_jax))


def test_every_public_name_is_in_the_readme_api_table():
  readme = (ROOT / "README.md").read_text(encoding="utf-8")
  section = readme[readme.index("\n## API\n"):]
  section = section[:section.index("\n## ", 1)]
  named = set(re.findall(r"\bmj\.(\w+)", section))
  assert sorted(set(mlp_jax.__all__) - named) == []


def test_import_mlp_jax_imports_nothing_heavy():
  """`import mlp_jax` and the command's module import only the standard library: the `mlp-jax`
  command sets up its signal handling before JAX loads (tests/test_signals.py)."""
  code = ("import sys; import mlp_jax, mlp_jax.tools.cli; print(sorted(m for m in sys.modules if "
          "m.split('.')[0] in ('jax', 'jaxlib', 'numpy', 'optax', 'scipy')))")
  proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                        check=True)
  assert proc.stdout.strip() == "[]", proc.stdout


def test_the_lazy_table_and_the_type_checkers_imports_agree():
  """`_FROM` (what `mj.NAME` imports on first use) and the `if TYPE_CHECKING:` imports (what
  type checkers see) name the same things from the same modules, and cover `__all__`."""
  import ast
  tree = ast.parse((ROOT / "mlp_jax" / "__init__.py").read_text(encoding="utf-8"))
  block = next(node for node in tree.body if isinstance(node, ast.If)
               and getattr(node.test, "id", None) == "TYPE_CHECKING")
  typed = {(alias.name, node.module) for node in block.body if isinstance(node, ast.ImportFrom)
           for alias in node.names}
  lazy = {(name, module) for module, names in mlp_jax._FROM.items() for name in names}
  lazy |= {(module.rpartition(".")[2], module.rpartition(".")[0])  # `from mlp_jax.io import data`
           for module in mlp_jax._MODULES.values()}
  assert typed == lazy
  assert {name for name, _ in lazy} | {"__version__"} == set(mlp_jax.__all__)
