"""A whole training epoch as one compiled `jax.lax.scan` over shuffled minibatches.

    epoch = make_epoch(optax.adam(1e-3), batch_size=128)   # one call per epoch
    params, opt_state, stats = epoch(params, opt_state, x, y, epoch_key(seed, e))

Each step is `step.step_body`: the gradient of `backprop.objective_and_grads`, (E7)-(E12) (with
DP, of `privacy.noisy_clipped_grads`, (E13)-(E15)), then the optimizer's update; jax.grad is
never called.

The permutation is drawn inside the compiled call from a PRNG key, with the data resident on the
device, so a step costs no Python dispatch and no host sync. When the batch size does not divide
the number of examples, the permutation is padded to whole batches and the padding rows are
masked out: the last minibatch is the r = N mod B remaining examples exactly (its loss and
gradient are those of (E6) with m = r), no data is dropped, and the same compiled step serves it.
"""

import functools
from typing import Any, Callable, NamedTuple, Optional, Tuple

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh
from jax.typing import ArrayLike, DTypeLike

from mlp_jax.core import eager
from mlp_jax.core.model import Params
from mlp_jax.core.network import DEFAULT_OUTPUT, Network
from mlp_jax.training import distributed, privacy
from mlp_jax.training.optimizers import OptimizerLike, as_optimizer, steps_per_epoch
from mlp_jax.training.permutation import permutation
from mlp_jax.training.settings import FitSettings, check_settings
from mlp_jax.training.step import step_body


def epoch_batches(key: jax.Array, num_examples: int, batch_size: int,
                  shuffle: bool = True) -> Tuple[jax.Array, jax.Array]:
  """The shuffled (or, with `shuffle=False`, in-order) minibatch indices and padding mask of one
  epoch.

  Returns:
    (indices, mask): int32 (num_batches, batch_size) and bool (num_batches, batch_size), with
    num_batches = ceil(num_examples / batch_size); the mask is False only on the padding that
    fills the last batch.
  """
  num_batches = steps_per_epoch(num_examples, batch_size)
  perm = (permutation(key, num_examples) if shuffle
          else jnp.arange(num_examples, dtype=jnp.int32))
  pad = num_batches * batch_size - num_examples
  indices = jnp.concatenate([perm, perm[:pad]]) if pad else perm
  mask = jnp.arange(num_batches * batch_size) < num_examples
  return indices.reshape(num_batches, batch_size), mask.reshape(num_batches, batch_size)


def epoch_plan(key: jax.Array, num_examples: int, batch_size: int,
               dp: Optional[privacy.DPConfig] = None,
               shuffle: bool = True) -> Tuple[jax.Array, jax.Array, jax.Array]:
  """(indices, mask, step_keys) of the epoch drawn from `key`: the shuffled minibatches of
  `epoch_batches`, or with `dp` the Poisson-sampled ones of `privacy.poisson_batches`, and one
  PRNG key per step for the DP noise."""
  batch_key, noise_key = jax.random.split(key)
  if dp is None:
    indices, mask = epoch_batches(batch_key, num_examples, batch_size, shuffle)
  else:
    indices, mask = privacy.poisson_batches(
        batch_key, num_examples, batch_size, steps_per_epoch(num_examples, batch_size))
  return indices, mask, jax.random.split(noise_key, indices.shape[0])


# XLA's CPU copy insertion, left to itself, copies the (256, 256) weight matrix on every step of
# the scanned epoch, because the loop body reads W before the update overwrites it. With
# region analysis it sees that no read follows the write and updates W in place
# (`benchmarks/epoch.py` times the epoch with and without it; docs/benchmarks.md).
# It moves buffers only, never values: results are bit-identical.
CPU_COMPILER_OPTIONS = {"xla_cpu_copy_insertion_use_region_analysis": True}


def compiler_options(mesh: Optional[Mesh] = None) -> Optional[dict]:
  """The XLA options the epoch is compiled with: `CPU_COMPILER_OPTIONS` on CPU where this
  jax/jaxlib knows them, else none."""
  platform = mesh.devices.flat[0].platform if mesh is not None else jax.default_backend()
  return dict(CPU_COMPILER_OPTIONS) if platform == "cpu" and _cpu_options_known() else None


@functools.lru_cache(maxsize=None)
def _cpu_options_known() -> bool:
  """Whether jax.jit takes `CPU_COMPILER_OPTIONS` (older releases lack the argument or the
  option): one tiny compile, once per process."""
  try:
    jax.jit(lambda v: v + 1, compiler_options=CPU_COMPILER_OPTIONS).lower(
        jnp.zeros(1)).compile()
  except Exception:  # TypeError (no such argument) or XLA's INVALID_ARGUMENT (no such option)
    return False
  return True


class EpochStats(NamedTuple):
  """What a compiled epoch returns beside the new state."""
  losses: jax.Array        # (num_batches,) loss of each step
  finite: jax.Array        # (num_batches,) bool: that step's loss is finite
  state_finite: jax.Array  # bool: every parameter and optimizer-state entry finite at the end


class EpochProgram(NamedTuple):
  """The compiled epoch and the pieces it is made of, for replaying an epoch step by step."""
  # jitted epoch(params, opt_state, x, y, key, sample_weight=None) -> (params, opt_state,
  # EpochStats); sample_weight (N,) >= 0 weighs each row in its batch's mean, (E26)
  epoch: Callable
  step: Callable   # step(params, opt_state, x, y, idx, keep, step_key, sample_weight=None)
  #                  -> (params, opt_state, loss, grads), plain (not jitted)
  plan: Callable   # plan(key, num_examples) -> (indices, mask, step_keys) of the epoch
  # jitted epochs(params, opt_state, x, y, keys (k, 2), sample_weight=None) -> (params,
  # opt_state, EpochStats), each stacked over the k epochs run in a row (the state after each):
  # several epochs of a small network for one dispatch. None with a mesh.
  epochs: Optional[Callable] = None


def build_epoch(optimizer: optax.GradientTransformation, settings: FitSettings,
                mesh: Optional[Mesh] = None) -> EpochProgram:
  """The compiled epoch of `make_epoch` with its step and batch plan, built anew; see
  `EpochProgram`. `settings` is checked first (`check_settings`)."""
  return _build(optimizer, check_settings(settings), mesh)


def _build(optimizer: optax.GradientTransformation, settings: FitSettings,
           mesh: Optional[Mesh]) -> EpochProgram:
  """`build_epoch` of settings already checked."""
  batch_size, dp, shuffle = settings.batch_size, settings.dp, settings.shuffle
  jit_kwargs = {}
  if mesh is not None:
    distributed.check_divisible(batch_size, mesh)
    jit_kwargs["out_shardings"] = distributed.replicated_sharding(mesh)
  body = step_body(optimizer, settings, mesh)

  def step(params: Params, opt_state: optax.OptState, x: jax.Array, y: jax.Array,
           idx: jax.Array, keep: jax.Array, step_key: jax.Array,
           sample_weight: Optional[jax.Array] = None,
           ) -> Tuple[Params, optax.OptState, jax.Array, Params]:
    with jax.named_scope("batch"):
      xb, yb, keep = x[idx], y[idx], keep.astype(params[0].w.dtype)
      if sample_weight is not None:  # (E26): the batch's rows weighted, padding still 0
        keep = keep * sample_weight[idx].astype(keep.dtype)
    return body(params, opt_state, xb, yb, keep, step_key)

  @jax.named_scope("plan")
  def plan(key: jax.Array, num_examples: int) -> Tuple[jax.Array, jax.Array, jax.Array]:
    indices, mask, step_keys = epoch_plan(key, num_examples, batch_size, dp, shuffle)
    if mesh is not None:
      indices, mask = distributed.pad_batches(indices, mask, mesh)
    return indices, mask, step_keys

  def epoch_body(params: Params, opt_state: optax.OptState, x: jax.Array, y: jax.Array,
                 key: jax.Array, sample_weight: Optional[jax.Array] = None,
                 ) -> Tuple[Params, optax.OptState, EpochStats]:
    def scan_body(carry: Tuple[Params, optax.OptState],
                  batch: Tuple[jax.Array, jax.Array, jax.Array],
                  ) -> Tuple[Tuple[Params, optax.OptState], jax.Array]:
      params, opt_state, loss, _ = step(*carry, x, y, *batch, sample_weight)
      return (params, opt_state), loss

    (params, opt_state), losses = jax.lax.scan(scan_body, (params, opt_state),
                                               plan(key, x.shape[0]))
    return params, opt_state, EpochStats(losses, jnp.isfinite(losses),
                                         eager.all_finite((params, opt_state)))

  epoch = jax.jit(epoch_body, donate_argnums=(0, 1), compiler_options=compiler_options(mesh),
                  **jit_kwargs)
  if mesh is not None:
    return EpochProgram(distributed.with_replicated_args(epoch, mesh), step, plan)

  def epochs(params: Params, opt_state: optax.OptState, x: jax.Array, y: jax.Array,
             keys: jax.Array, sample_weight: Optional[jax.Array] = None) -> Any:
    def scan_body(carry, key):
      params, opt_state, stats = epoch_body(*carry, x, y, key, sample_weight)
      return (params, opt_state), (params, opt_state, stats)

    return jax.lax.scan(scan_body, (params, opt_state), keys)[1]

  return EpochProgram(epoch, step, plan,
                      jax.jit(epochs, compiler_options=compiler_options(mesh)))


@functools.lru_cache(maxsize=32)
def _cached_program(optimizer: optax.GradientTransformation, batch_size: int, l2: float,
                    compute_dtype: Optional[str], dp: Optional[privacy.DPConfig], shuffle: bool,
                    mesh: Optional[Mesh], net: Network) -> EpochProgram:
  """One program per optimizer object and the settings the epoch depends on (not the seed,
  patience or what is recorded)."""
  settings = FitSettings(batch_size=batch_size, l2=l2, compute_dtype=compute_dtype, dp=dp,
                         shuffle=shuffle, activation=net.activation, output=net.output)
  return _build(optimizer, settings, mesh)


def epoch_program(optimizer: optax.GradientTransformation, settings: FitSettings,
                  mesh: Optional[Mesh] = None) -> EpochProgram:
  """`build_epoch(optimizer, settings, mesh)`, the same program for the same optimizer object,
  epoch settings and mesh, so that a later `make_epoch`, `fit` or `partial_fit` with them and
  data of the same shapes runs without compiling again. `settings` as `check_settings`
  returns them (`fit` and `make_epoch` check them once, before)."""
  return _cached_program(optimizer, settings.batch_size, settings.l2, settings.compute_dtype,
                         settings.dp, settings.shuffle, mesh, settings.network)


def make_epoch(optimizer: OptimizerLike, batch_size: int, l2: ArrayLike = 0.0, *,
               compute_dtype: Optional[DTypeLike] = None, dp: Optional[privacy.DPConfig] = None,
               mesh: Optional[Mesh] = None, shuffle: bool = True, activation: Any = "relu",
               output: str = DEFAULT_OUTPUT) -> Callable:
  """A jitted `epoch(params, opt_state, x, y, key) -> (params, opt_state, EpochStats)`; the
  same settings (the same optimizer object) give the same, already compiled function back.

  One `lax.scan` of `step.step_body` over the minibatches of a permutation drawn from `key`
  (with `shuffle=False`, of the rows in order). The short last batch
  is masked (see the module docstring), so one compilation serves any epoch of the same data
  shape. The scan checks nothing per step beyond its loss (a per-step guard over the parameters
  cost 10-25% at small batches); `EpochStats` says whether each loss and the final state are
  finite, and `fit` replays a failed epoch step by step to find the first bad step.

  With `dp`, the epoch is DP-SGD instead: ceil(N / B) steps on truncated Poisson-sampled batches
  of expected size B, each with the clipped, noised gradient of `privacy.noisy_clipped_grads`;
  with adaptive clipping (`dp.target_quantile`), init `opt_state` with
  `privacy.dp_optimizer(optimizer, dp).init(params)` (it carries the clip norm).

  With `mesh` (a 1-D `jax.sharding.Mesh` from `distributed.make_mesh`), data-parallel: the data,
  parameters and optimizer state are replicated on every device, each step's batch is sharded
  along "data" (`batch_size` must divide across the devices; DP batches are padded with masked
  rows to do so), and XLA all-reduces the gradient; the same batches and math as without it.

  `optimizer` is an optax GradientTransformation, or a name "sgd", "momentum" or "adam" meaning
  `make_optimizer(name)` (a constant learning rate of 1e-3), as in `fit`. `activation` and
  `output` name the network trained, as for `loss_and_grads`; y then holds its output's targets.
  """
  settings = check_settings(FitSettings(batch_size=batch_size, l2=l2, compute_dtype=compute_dtype,
                                       dp=dp, shuffle=shuffle, activation=activation,
                                       output=output))
  return epoch_program(as_optimizer(optimizer), settings, mesh).epoch


def epoch_key(seed: int, epoch: int) -> jax.Array:
  """The shuffling key of an epoch (0-based): a pure function of (seed, epoch), so a resumed run
  draws the same permutations as an uninterrupted one. `fold_in(PRNGKey(seed), epoch)`, with the
  seed's key made once and the fold one compiled call (done eagerly, they were a handful of
  op-by-op dispatches every epoch)."""
  return _fold_in(_seed_key(seed), epoch)


@functools.lru_cache(maxsize=64)
def _seed_key(seed: int) -> jax.Array:
  return jax.random.PRNGKey(seed)


_fold_in = jax.jit(jax.random.fold_in)


@functools.partial(jax.jit, static_argnums=2)
def _fold_in_range(key: jax.Array, start: jax.Array, count: int) -> jax.Array:
  return jax.vmap(jax.random.fold_in, in_axes=(None, 0))(
      key, start + jnp.arange(count, dtype=jnp.uint32))


def epoch_keys(seed: int, start: int, count: int) -> jax.Array:
  """The keys of epochs start .. start + count - 1 (0-based), (count, 2): `epoch_key` of each."""
  return _fold_in_range(_seed_key(seed), jnp.uint32(start), count)
