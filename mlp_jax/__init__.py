"""mlp_jax: multilayer perceptrons trained with hand-derived gradients, checked against jax.grad.

    import mlp_jax as mj
    params = mj.init_params(jax.random.PRNGKey(0))          # the 256-256-10 network
    loss, grads = mj.loss_and_grads(params, x, y, l2=1e-3)  # analytic, (E7)-(E12)
    print(mj.check_gradients(params, x, y, l2=1e-3))        # against jax.grad and FD
"""

from mlp_jax import data, distributed, host_memory
from mlp_jax.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from mlp_jax.diagnose import Diagnosis, diagnose
from mlp_jax.distributed import (DistributedError, initialize_distributed, is_primary,
                                 make_data_parallel_step, make_mesh, process_shard, replicate,
                                 shard_batch)
from mlp_jax.errors import (CheckpointError, DataFileError, InputError, InputTypeError,
                            MLPJaxError, NonFiniteError)
from mlp_jax.gradients import grads, loss_and_grads
from mlp_jax.loss import loss
from mlp_jax.model import Dense, Params, forward, init_params, layer_sizes, predict
from mlp_jax.oracle import (GradientReport, autodiff_grads, autodiff_per_sample_grads,
                            check_gradients, relative_error)
from mlp_jax.per_example import (clipped_mean_grads, per_sample_grad_norms, per_sample_grads,
                                 per_sample_layer_norms)
from mlp_jax.privacy import DPConfig, dp_epsilon
from mlp_jax.training import (FitResult, confusion_matrix, evaluate, fit, make_epoch,
                              make_optimizer, make_train_step, steps_per_epoch)

__version__ = "0.1.0"
