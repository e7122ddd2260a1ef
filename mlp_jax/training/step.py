"""The training step on the analytic gradients: one body, for the scanned epoch and on its own.

    step = make_train_step(optax.adam(1e-3), l2=1e-4)     # jitted, donates params and opt_state
    params, opt_state, loss = step(params, opt_state, x, y)

`step_body` is the one step there is: the batch's gradient, (E7)-(E12) (with DP, the clipped and
noised one of `privacy.noisy_clipped_grads`, (E13)-(E15)), then the optimizer's update. The
compiled epoch (`epoch.build_epoch`) scans it over an epoch's minibatches; `make_train_step`
compiles it for one batch given by the caller.
"""

import functools
from typing import Any, Callable, Optional, Tuple

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh
from jax.typing import ArrayLike, DTypeLike

from mlp_jax.core import validation
from mlp_jax.core.backprop import objective_and_grads
from mlp_jax.core.model import Params
from mlp_jax.core.network import DEFAULT_OUTPUT
from mlp_jax.errors import InputError
from mlp_jax.training import distributed, privacy
from mlp_jax.training.optimizers import OptimizerLike, as_optimizer
from mlp_jax.training.settings import FitSettings, check_settings

# step(params, opt_state, x, y, keep, step_key) -> (params, opt_state, loss, grads)
StepBody = Callable[..., Tuple[Params, optax.OptState, jax.Array, Params]]


def step_body(optimizer: optax.GradientTransformation, settings: FitSettings,
              mesh: Optional[Mesh] = None) -> StepBody:
  """The plain (not jitted) step `step(params, opt_state, x, y, keep=None, step_key=None)`.

  Args of the step:
    x, y: the batch, (m, n) features and (m,) labels (or the targets of the settings' output).
    keep: optional (m,) 0/1 in the parameters' dtype; rows with 0 are padding, left out of the
      loss and gradient (a short last batch, or a Poisson batch's empty places). Needed with DP.
    step_key: the PRNG key of this step's DP noise (used only with `settings.dp`).

  With adaptive clipping (`settings.dp.adaptive`), `optimizer` is wrapped by
  `privacy.dp_optimizer` (a wrapper stays as it is) and `opt_state` is its `AdaptiveClipState`:
  the step clips at its C and leaves the next C (`privacy.next_clip_norm`) in the new state.

  Returns:
    (params, opt_state, loss, grads): the updated state, the batch's loss (E6) at
    `settings.l2` and the gradient the update used.

  With `mesh`, the batch's rows are sharded along "data" and the new state is replicated.
  """
  l2, compute_dtype, dp, net = settings.l2, settings.compute_dtype, settings.dp, settings.network
  if dp is not None and dp.noise_multiplier is None:
    raise InputError("dp: no noise_multiplier; a target epsilon's is chosen by fit for its "
                     "epochs (calibration.planned_dp), or give one "
                     "(calibration.calibrate_noise_multiplier finds it)")
  adaptive = dp is not None and dp.adaptive
  if adaptive:  # refuses a count that leaves no noise for the gradient, before any training
    privacy.gradient_noise_multiplier(dp, settings.batch_size)
    optimizer = privacy.dp_optimizer(optimizer, dp)

  def step(params: Params, opt_state: optax.OptState, x: jax.Array, y: jax.Array,
           keep: Optional[jax.Array] = None, step_key: Optional[jax.Array] = None,
           ) -> Tuple[Params, optax.OptState, jax.Array, Params]:
    if mesh is not None:
      x, y, keep = distributed.constrain_rows((x, y, keep), mesh)
    with jax.named_scope("gradients"):
      if dp is None:
        loss, grads = objective_and_grads(params, x, y, l2, compute_dtype, keep, net)
      elif not adaptive:
        loss, grads = privacy.noisy_clipped_grads(params, x, y, keep, step_key, l2, dp,
                                                  settings.batch_size, compute_dtype, net)
      else:  # clipped at this step's C, from which the next one is drawn
        grad_key, count_key = jax.random.split(step_key)
        loss, grads, count = privacy.noisy_clipped_grads_and_count(
            params, x, y, keep, grad_key, l2, dp, settings.batch_size, compute_dtype, net,
            opt_state.clip_norm)
        clip_norm = privacy.next_clip_norm(opt_state.clip_norm, count, settings.batch_size, dp,
                                           count_key)
    with jax.named_scope("optimizer"):
      updates, opt_state = optimizer.update(grads, opt_state, params)
      params = optax.apply_updates(params, updates)
      if adaptive:
        opt_state = opt_state._replace(clip_norm=clip_norm)
    if mesh is not None:
      params, opt_state = distributed.constrain_replicated((params, opt_state), mesh)
    return params, opt_state, loss, grads

  return step


def make_train_step(optimizer: OptimizerLike, l2: ArrayLike = 0.0, *,
                    compute_dtype: Optional[DTypeLike] = None,
                    mesh: Optional[Mesh] = None, activation: Any = "relu",
                    output: str = DEFAULT_OUTPUT) -> Callable:
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
    activation, output: the network trained, as for `loss_and_grads`.
  """
  optimizer = as_optimizer(optimizer)
  settings = check_settings(FitSettings(l2=l2, compute_dtype=compute_dtype,
                                        activation=activation, output=output))
  body = step_body(optimizer, settings, mesh)
  net = settings.network
  jit_kwargs = {} if mesh is None else {"out_shardings": distributed.replicated_sharding(mesh)}

  @functools.partial(jax.jit, donate_argnums=(0, 1), **jit_kwargs)
  def step(params: Params, opt_state: optax.OptState, x: ArrayLike,
           y: ArrayLike) -> Tuple[Params, optax.OptState, jax.Array]:
    params, x, y, _ = validation.check_batch(params, x, y, net=net)
    params, opt_state, loss, _ = body(params, opt_state, x, y)
    return params, opt_state, loss

  return step


def make_data_parallel_step(optimizer: OptimizerLike, mesh: Mesh,
                            l2: ArrayLike = 0.0, *,
                            compute_dtype: Optional[DTypeLike] = None, activation: Any = "relu",
                            output: str = DEFAULT_OUTPUT) -> Callable:
  """A `step(params, opt_state, x, y) -> (params, opt_state, loss)` sharded over `mesh`.

  Like `make_train_step`, on the global batch (x, y): its rows are split along "data"
  (the batch size must divide across the devices), parameters and optimizer state are
  replicated, and XLA all-reduces the analytic gradient (E8)-(E12) once per step. Buffers of
  `params` and `opt_state` are donated. With several processes, pass global arrays built by
  `distributed.shard_batch` from each process's rows, or the same whole batch in every process.

  Raises:
    InputError: the batch does not divide across the devices, or bad shapes or values.
  """
  compiled = make_train_step(optimizer, l2, compute_dtype=compute_dtype, mesh=mesh,
                             activation=activation, output=output)
  rows = distributed.rows_sharding(mesh)

  def step(params: Params, opt_state: optax.OptState, x: ArrayLike,
           y: ArrayLike) -> Tuple[Params, optax.OptState, jax.Array]:
    distributed.check_divisible(jnp.shape(x)[0], mesh)
    params, opt_state = distributed.replicate((params, opt_state), mesh)
    return compiled(params, opt_state, distributed.place(x, rows), distributed.place(y, rows))

  step.compiled = compiled
  return step
