"""mlp_jax: multilayer perceptrons trained with hand-derived gradients, checked against jax.grad.

    import mlp_jax as mj
    params = mj.init_params(jax.random.PRNGKey(0))          # the 256-256-10 network
    loss, grads = mj.loss_and_grads(params, x, y, l2=1e-3)  # analytic, (E7)-(E12)
    print(mj.check_gradients(params, x, y, l2=1e-3))        # against jax.grad and FD

The package is layered (docs/architecture.md): `core` (model, objective, backprop, per-example),
`oracle` (jax.grad, finite differences, the check), `training`, `io` and `tools` (CLI, plots,
diagnosis); each imports only the ones before it. `import mlp_jax` loads the first four;
`mj.diagnose` loads the diagnosis on first use.
"""

from importlib import metadata as _metadata

from mlp_jax.core.backprop import grads, loss_and_grads
from mlp_jax.core.checks import value_checks
from mlp_jax.core.model import Dense, Params, forward, init_params, layer_sizes, predict
from mlp_jax.core.objective import loss
from mlp_jax.core.per_example import (LayerNorms, clipped_mean_grads, per_sample_grad_norms,
                                      per_sample_grads, per_sample_layer_norms)
from mlp_jax.errors import (CheckpointError, DataFileError, InputError, InputTypeError,
                            MissingDependencyError, MLPJaxError, NonFiniteError, ResumeError,
                            StorageError)
from mlp_jax.io import data
from mlp_jax.io.compilation_cache import enable_compilation_cache
from mlp_jax.io.checkpoint import (Checkpoint, SavedRun, load_checkpoint, load_pytree, load_run,
                                   save_checkpoint, save_pytree, save_run)
from mlp_jax.oracle.autodiff import autodiff_grads, autodiff_per_sample_grads
from mlp_jax.oracle.check import GradientReport, check_gradients, relative_error
from mlp_jax.training import distributed
from mlp_jax.training.distributed import (DistributedError, initialize_distributed, is_primary,
                                          make_mesh, process_shard, replicate, shard_batch)
from mlp_jax.training.evaluation import confusion_matrix, evaluate
from mlp_jax.training.epoch import make_epoch
from mlp_jax.training.fit import FitResult, fit
from mlp_jax.training.optimizers import make_optimizer, steps_per_epoch
from mlp_jax.training.privacy import DPConfig, LedgerEntry, dp_epsilon, ledger_epsilon
from mlp_jax.training.run import RunState
from mlp_jax.training.step import make_data_parallel_step, make_train_step

try:
  __version__ = _metadata.version("mlp_jax")  # pyproject.toml's version, the one source
except _metadata.PackageNotFoundError:  # run from a source tree that was never installed
  __version__ = "0+unknown"

__all__ = [  # the public API; `diagnose` and `Diagnosis` load on first use
    "__version__", "autodiff_grads", "autodiff_per_sample_grads", "check_gradients", "Checkpoint",
    "CheckpointError", "clipped_mean_grads", "confusion_matrix", "data", "DataFileError", "Dense",
    "diagnose", "Diagnosis", "distributed", "DistributedError", "dp_epsilon", "DPConfig",
    "enable_compilation_cache", "evaluate", "fit", "FitResult", "forward", "GradientReport",
    "grads", "init_params",
    "initialize_distributed", "InputError", "InputTypeError", "is_primary", "layer_sizes",
    "LayerNorms", "ledger_epsilon", "LedgerEntry", "load_checkpoint", "load_pytree", "load_run",
    "loss", "loss_and_grads", "make_data_parallel_step", "make_epoch", "make_mesh",
    "make_optimizer", "make_train_step", "MissingDependencyError", "MLPClassifier",
    "MLPJaxError", "NonFiniteError",
    "Params", "per_sample_grad_norms", "per_sample_grads", "per_sample_layer_norms", "predict",
    "process_shard", "relative_error", "replicate", "ResumeError", "RunState", "save_checkpoint",
    "save_pytree", "save_run", "SavedRun", "shard_batch", "steps_per_epoch", "StorageError",
    "value_checks",
]

_LAZY = {"diagnose": "mlp_jax.tools.diagnosis", "Diagnosis": "mlp_jax.tools.diagnosis",
         "MLPClassifier": "mlp_jax.tools.estimator"}


def __getattr__(name):
  """`mj.diagnose`, `mj.Diagnosis` and `mj.MLPClassifier`, imported on first use (the tools layer
  and scikit-learn stay unloaded until then)."""
  if name in _LAZY:
    import importlib
    return getattr(importlib.import_module(_LAZY[name]), name)
  raise AttributeError(f"module 'mlp_jax' has no attribute {name!r}")


def __dir__():
  return sorted(list(globals()) + list(_LAZY))
