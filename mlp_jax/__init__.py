"""mlp_jax: multilayer perceptrons trained with hand-derived gradients, checked against jax.grad.

    import mlp_jax as mj
    params = mj.init_params(jax.random.PRNGKey(0))          # the 256-256-10 network
    loss, grads = mj.loss_and_grads(params, x, y, l2=1e-3)  # analytic, (E7)-(E12)
    print(mj.check_gradients(params, x, y, l2=1e-3))        # against jax.grad and FD

The package is layered (docs/architecture.md): `core` (model, objective, backprop, per-example),
`oracle` (jax.grad, finite differences, the check), `training`, `io` and `tools` (CLI, plots,
diagnosis); each imports only the ones before it. `import mlp_jax` itself imports nothing but
the standard library: each public name imports its module on first use.
"""

from typing import TYPE_CHECKING

# Where each public name lives: module -> the names taken from it. `import mlp_jax` loads none
# of them; the first use of a name imports its module (so `mlp-jax` can set up its signal
# handling before JAX loads, and `import mlp_jax` costs nothing until used).
_FROM = {
    "mlp_jax.core.activations": ("Activation", "ACTIVATIONS"),
    "mlp_jax.core.backprop": ("grads", "loss_and_grads"),
    "mlp_jax.core.curvature": ("KroneckerFactors", "ggn_diagonal", "hessian_diagonal",
                               "kronecker_factors", "per_sample_ggn_diagonals"),
    "mlp_jax.core.curvature_products": ("ggn_vector_product", "hessian_vector_product"),
    "mlp_jax.core.gradient_moments": ("GradientMoments", "grad_variance", "gradient_moments",
                                      "sum_grad_squared"),
    "mlp_jax.core.validation": ("value_checks",),
    "mlp_jax.core.inference": ("forward", "predict"),
    "mlp_jax.core.model": ("Dense", "Params", "init_params", "layer_sizes"),
    "mlp_jax.core.network": ("Network",),
    "mlp_jax.core.objective": ("loss",),
    "mlp_jax.core.outputs": ("OUTPUTS",),
    "mlp_jax.core.per_example": ("LayerNorms", "clipped_mean_grads", "per_sample_grad_norms",
                                 "per_sample_grads", "per_sample_layer_norms"),
    "mlp_jax.errors": ("CheckpointError", "DataFileError", "InputError", "InputTypeError",
                       "MissingDependencyError", "MLPJaxError", "NonFiniteError", "ResumeError",
                       "StorageError"),
    "mlp_jax.io.compilation_cache": ("enable_compilation_cache",),
    "mlp_jax.io.checkpoint": ("Checkpoint", "load_checkpoint", "save_checkpoint"),
    "mlp_jax.io.pytree_file": ("load_pytree", "save_pytree"),
    "mlp_jax.oracle.autodiff": ("autodiff_grads", "autodiff_per_sample_grads"),
    "mlp_jax.oracle.check": ("GradientReport", "check_gradients", "relative_error"),
    "mlp_jax.training.distributed": ("make_mesh", "replicate", "shard_batch"),
    "mlp_jax.training.evaluation": ("confusion_matrix", "evaluate"),
    "mlp_jax.training.epoch": ("make_epoch",),
    "mlp_jax.training.fit": ("FitResult", "fit"),
    "mlp_jax.training.multihost": ("DistributedError", "initialize_distributed", "is_primary",
                                   "process_shard"),
    "mlp_jax.training.optimizers": ("make_optimizer", "steps_per_epoch"),
    "mlp_jax.training.accounting": ("dp_epsilon", "ledger_epsilon"),
    "mlp_jax.training.calibration": ("calibrate_noise_multiplier",),
    "mlp_jax.training.privacy": ("DPConfig", "LedgerEntry"),
    "mlp_jax.training.run": ("RunState", "SavedRun", "load_run", "save_run"),
    "mlp_jax.training.settings": ("FitSettings",),
    "mlp_jax.training.step": ("make_data_parallel_step", "make_train_step"),
    "mlp_jax.tools.diagnosis": ("diagnose", "Diagnosis"),
    "mlp_jax.tools.estimator": ("MLPClassifier", "MLPRegressor"),
}
_MODULES = {"data": "mlp_jax.io.data", "distributed": "mlp_jax.training.distributed"}

if TYPE_CHECKING:  # the same names, for type checkers and IDEs (tests/test_architecture.py
  # holds this block and `_FROM` to each other)
  from mlp_jax.core.activations import ACTIVATIONS, Activation
  from mlp_jax.core.backprop import grads, loss_and_grads
  from mlp_jax.core.curvature import (KroneckerFactors, ggn_diagonal, hessian_diagonal,
                                      kronecker_factors, per_sample_ggn_diagonals)
  from mlp_jax.core.curvature_products import ggn_vector_product, hessian_vector_product
  from mlp_jax.core.gradient_moments import (GradientMoments, grad_variance, gradient_moments,
                                             sum_grad_squared)
  from mlp_jax.core.validation import value_checks
  from mlp_jax.core.inference import forward, predict
  from mlp_jax.core.model import Dense, Params, init_params, layer_sizes
  from mlp_jax.core.network import Network
  from mlp_jax.core.objective import loss
  from mlp_jax.core.outputs import OUTPUTS
  from mlp_jax.core.per_example import (LayerNorms, clipped_mean_grads, per_sample_grad_norms,
                                        per_sample_grads, per_sample_layer_norms)
  from mlp_jax.errors import (CheckpointError, DataFileError, InputError, InputTypeError,
                              MissingDependencyError, MLPJaxError, NonFiniteError, ResumeError,
                              StorageError)
  from mlp_jax.io import data
  from mlp_jax.io.compilation_cache import enable_compilation_cache
  from mlp_jax.io.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
  from mlp_jax.io.pytree_file import load_pytree, save_pytree
  from mlp_jax.oracle.autodiff import autodiff_grads, autodiff_per_sample_grads
  from mlp_jax.oracle.check import GradientReport, check_gradients, relative_error
  from mlp_jax.training import distributed
  from mlp_jax.training.distributed import make_mesh, replicate, shard_batch
  from mlp_jax.training.evaluation import confusion_matrix, evaluate
  from mlp_jax.training.epoch import make_epoch
  from mlp_jax.training.fit import FitResult, fit
  from mlp_jax.training.multihost import (DistributedError, initialize_distributed, is_primary,
                                          process_shard)
  from mlp_jax.training.optimizers import make_optimizer, steps_per_epoch
  from mlp_jax.training.accounting import dp_epsilon, ledger_epsilon
  from mlp_jax.training.calibration import calibrate_noise_multiplier
  from mlp_jax.training.privacy import DPConfig, LedgerEntry
  from mlp_jax.training.run import RunState, SavedRun, load_run, save_run
  from mlp_jax.training.settings import FitSettings
  from mlp_jax.training.step import make_data_parallel_step, make_train_step
  from mlp_jax.tools.diagnosis import Diagnosis, diagnose
  from mlp_jax.tools.estimator import MLPClassifier, MLPRegressor


__all__ = [  # the public API; `diagnose` and `Diagnosis` load on first use
    "__version__", "Activation", "ACTIVATIONS", "autodiff_grads", "autodiff_per_sample_grads",
    "check_gradients", "Checkpoint", "calibrate_noise_multiplier", "CheckpointError",
    "clipped_mean_grads", "confusion_matrix", "data", "DataFileError", "Dense", "diagnose",
    "Diagnosis", "distributed", "DistributedError", "dp_epsilon", "DPConfig",
    "enable_compilation_cache", "evaluate", "fit", "FitResult", "FitSettings", "forward",
    "ggn_diagonal", "ggn_vector_product", "grad_variance", "GradientMoments", "gradient_moments",
    "GradientReport", "grads", "hessian_diagonal", "hessian_vector_product", "init_params",
    "initialize_distributed", "InputError", "InputTypeError", "is_primary", "KroneckerFactors",
    "kronecker_factors", "layer_sizes", "LayerNorms", "ledger_epsilon", "LedgerEntry",
    "load_checkpoint", "load_pytree", "load_run", "loss", "loss_and_grads",
    "make_data_parallel_step", "make_epoch", "make_mesh", "make_optimizer", "make_train_step",
    "MissingDependencyError", "MLPClassifier", "MLPJaxError", "MLPRegressor", "Network",
    "NonFiniteError", "OUTPUTS", "Params", "per_sample_ggn_diagonals", "per_sample_grad_norms",
    "per_sample_grads", "per_sample_layer_norms", "predict", "process_shard", "relative_error",
    "replicate", "ResumeError", "RunState", "save_checkpoint", "save_pytree", "save_run",
    "SavedRun", "shard_batch", "steps_per_epoch", "StorageError", "sum_grad_squared",
    "value_checks",
]

_LAZY = {name: module for module, names in _FROM.items() for name in names}


def _version() -> str:
  """pyproject.toml's version (the one source), as installed."""
  from importlib import metadata
  try:
    return metadata.version("mlp_jax")
  except metadata.PackageNotFoundError:  # run from a source tree that was never installed
    return "0+unknown"


def __getattr__(name):
  """Imports the module of a public name on its first use, and keeps the name here."""
  import importlib
  if name == "__version__":
    value = _version()
  elif name in _MODULES:
    value = importlib.import_module(_MODULES[name])
  elif name in _LAZY:
    value = getattr(importlib.import_module(_LAZY[name]), name)
  else:
    raise AttributeError(f"module 'mlp_jax' has no attribute {name!r}")
  globals()[name] = value
  return value


def __dir__():
  """The public API only (`__all__`), not the modules and helpers imported to build it."""
  return sorted(__all__)
