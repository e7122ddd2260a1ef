"""One compiled training step on the analytic gradients, on one device or sharded over a mesh.

    step = make_train_step(optax.adam(1e-3), l2=1e-4)     # jitted, donates params and opt_state
    params, opt_state, loss = step(params, opt_state, x, y)
"""

import functools
from typing import Callable, Optional, Tuple

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh
from jax.typing import ArrayLike, DTypeLike

from mlp_jax.core import checks
from mlp_jax.core.backprop import objective_and_grads
from mlp_jax.core.model import Params
from mlp_jax.training import distributed
from mlp_jax.training.optimizers import OptimizerLike, as_optimizer


def make_train_step(optimizer: OptimizerLike, l2: ArrayLike = 0.0, *,
                    compute_dtype: Optional[DTypeLike] = None,
                    mesh: Optional[Mesh] = None) -> Callable:
  """A jitted `step(params, opt_state, x, y) -> (params, opt_state, loss)`.

  The gradient is the analytic one, (E7)-(E12). The step compiles once per batch shape (lambda is
  closed over as a constant), and donates the buffers of `params` and `opt_state`: do not reuse
  the arrays passed in. Shapes and dtypes are checked when the step is traced.

  Args:
    optimizer: any optax GradientTransformation, or a name "sgd", "momentum" or "adam" meaning
      `make_optimizer(name)` (a constant learning rate of 1e-3), as in `fit`.
    l2: the penalty lambda of (E6).
    compute_dtype: optional GEMM dtype (e.g. jnp.bfloat16), see `loss_and_grads`.
    mesh: the batch's rows split over this device mesh and the results replicated on it; the
      compiled core of `make_data_parallel_step`, which places the inputs.
  """
  optimizer = as_optimizer(optimizer)
  checks.check_real(l2, "l2")
  jit_kwargs = {} if mesh is None else {"out_shardings": distributed.replicated_sharding(mesh)}

  @functools.partial(jax.jit, donate_argnums=(0, 1), **jit_kwargs)
  def step(params: Params, opt_state: optax.OptState, x: ArrayLike,
           y: ArrayLike) -> Tuple[Params, optax.OptState, jax.Array]:
    params, x, y, _ = checks.check_batch(params, x, y)
    if mesh is not None:
      x, y = distributed.constrain_rows((x, y), mesh)
    loss, grads = objective_and_grads(params, x, y, l2, compute_dtype)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  return step


def make_data_parallel_step(optimizer: OptimizerLike, mesh: Mesh,
                            l2: ArrayLike = 0.0, *,
                            compute_dtype: Optional[DTypeLike] = None) -> Callable:
  """A `step(params, opt_state, x, y) -> (params, opt_state, loss)` sharded over `mesh`.

  Like `make_train_step`, on the global batch (x, y): its rows are split along "data"
  (the batch size must divide across the devices), parameters and optimizer state are
  replicated, and XLA all-reduces the analytic gradient (E8)-(E12) once per step. Buffers of
  `params` and `opt_state` are donated. With several processes, pass global arrays built by
  `distributed.shard_batch` from each process's rows, or the same whole batch in every process.

  Raises:
    InputError: the batch does not divide across the devices, or bad shapes or values.
  """
  compiled = make_train_step(optimizer, l2, compute_dtype=compute_dtype, mesh=mesh)
  rows = distributed.rows_sharding(mesh)

  def step(params: Params, opt_state: optax.OptState, x: ArrayLike,
           y: ArrayLike) -> Tuple[Params, optax.OptState, jax.Array]:
    distributed.check_divisible(jnp.shape(x)[0], mesh)
    params, opt_state = distributed.replicate((params, opt_state), mesh)
    return compiled(params, opt_state, distributed.place(x, rows), distributed.place(y, rows))

  step.compiled = compiled
  return step
