"""Data's public face: `mj.data` lists its API only, and every name it re-exports from the modules
beneath it (data_checks, usps_files, sources, transforms) is that module's own object.

The loaders, formats, splits, scaling and augmentation are tested beside their modules:
tests/test_usps_files.py, test_sources.py and test_transforms.py."""

import mlp_jax as mj
from mlp_jax.io import data, data_checks, sources, transforms, usps_files

MODULES = (data_checks, usps_files, sources, transforms)


def test_dir_lists_the_public_api_only():
  """`dir(mj.data)` is its `__all__` (the README's loaders, the types and choices), not its
  imports; every public function and class it holds from the io modules is in `__all__`, and
  each name exists."""
  assert dir(data) == sorted(data.__all__)
  assert not {"gzip", "np", "os", "checks", "Optional", "describe"} & set(dir(data))
  assert all(hasattr(data, name) for name in data.__all__)
  defined = {name for name, value in vars(data).items() if not name.startswith("_")
             and getattr(value, "__module__", "").startswith("mlp_jax.io.")}
  assert defined <= set(data.__all__)
  assert {"load_usps", "load_digits", "make_synthetic", "load_splits", "shift_augment",
          "prepare"} <= set(data.__all__)


def test_the_names_data_exposes_are_the_modules_own():
  """`mj.data.X` and `mlp_jax.io.data.X` are the very objects of the module that defines X, for
  the public API and for the constants the package's users read (`data.HDF5_MAGIC`, ...)."""
  assert mj.data is data
  constants = {"BUNDLED_USPS", "BUNDLED_USPS_SHA256", "GZIP_MAGIC", "HDF5_MAGIC", "HUGE",
               "MAX_FILE_BYTES", "MAX_TEXT_BYTES", "MIN_STD"}
  for name in set(data.__all__) | constants:
    homes = [module for module in MODULES if name in vars(module)]
    if not homes:  # the pipeline's own names
      assert name in {"DATASETS", "fingerprint", "load_splits", "prepare", "Prepared"}, name
      continue
    assert all(getattr(data, name) is getattr(module, name) for module in homes), name
