"""Data-parallel training over a 1-D device mesh, on one host or several.

    mesh = make_mesh("all")                                   # every device, axis "data"
    step = make_data_parallel_step(optax.adam(1e-3), mesh)    # training.step
    result = fit(params, train, optimizer=..., epochs=20, mesh=mesh)

The batch is sharded along the mesh axis "data"; parameters and optimizer state are replicated.
The step is the single-device step compiled by `jax.jit` with these shardings: XLA partitions the
global-batch computation, so the forward pass and the error signals (E7), (E10) stay on each
device's rows, and the batch contractions of (E8)-(E12), A^T Delta and 1^T Delta, become local
products followed by one all-reduce of the gradient per step. The gradient is the analytic one of
`backprop.objective_and_grads`, with the global m (the (lambda/m) W penalty included once), so a
sharded step computes the single-device step's math; only the summation order differs.

Several hosts: call `multihost.initialize_distributed` first in every process, then build the
mesh over all processes' devices. Each process feeds its own rows of a global batch
(`multihost.process_shard`, then `shard_batch`); only process 0 writes files
(`multihost.is_primary`).
"""

from typing import Any, Callable, Tuple, TypeVar, Union, overload

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec, Sharding
from jax.typing import ArrayLike

from mlp_jax.errors import InputError
# The multi-process start-up lives in `multihost`; `mj.distributed` names it too, as it always has.
from mlp_jax.training.multihost import (ENV_COORDINATOR, ENV_NUM_PROCESSES,  # noqa: F401
                                        ENV_PROCESS_ID, DistributedError, initialize_distributed,
                                        is_primary, process_shard, wait_for_coordinator)

AXIS = "data"

T = TypeVar("T")


def make_mesh(num_devices: Union[None, int, str] = None) -> Mesh:
  """A 1-D mesh with axis "data" over the first `num_devices` devices (None or "all": all).

  With several processes, `jax.devices()` lists every process's devices, so "all" spans them.
  """
  devices = jax.devices()
  if num_devices is None or num_devices == "all":
    n = len(devices)
  elif isinstance(num_devices, str) and num_devices.isdigit():
    n = int(num_devices)
  elif isinstance(num_devices, (int, np.integer)) and not isinstance(num_devices, bool):
    n = int(num_devices)
  else:
    raise InputError(f"num_devices: expected a positive int or 'all', got {num_devices!r}")
  if n < 1:
    raise InputError(f"num_devices: expected a positive int or 'all', got {num_devices!r}")
  if n > len(devices):
    hint = ""
    if devices[0].platform == "cpu":
      hint = (f" (on CPU, XLA_FLAGS=--xla_force_host_platform_device_count={n} set before JAX "
              f"starts simulates {n} devices)")
    raise InputError(f"asked for {n} devices, {len(devices)} available{hint}")
  return Mesh(np.asarray(devices[:n]), (AXIS,))


def replicated_sharding(mesh: Mesh) -> NamedSharding:
  """The sharding of parameters and optimizer state: a full copy on every device."""
  return NamedSharding(mesh, PartitionSpec())


def rows_sharding(mesh: Mesh) -> NamedSharding:
  """The sharding of a batch: rows split along the mesh axis, other dimensions whole."""
  return NamedSharding(mesh, PartitionSpec(AXIS))


def check_divisible(batch_size: int, mesh: Mesh) -> None:
  """Raises InputError unless `batch_size` rows split evenly across the mesh's devices."""
  if batch_size % mesh.size:
    raise InputError(f"batch_size {batch_size} does not divide across {mesh.size} devices; "
                     f"use a multiple of {mesh.size}")


def replicate(tree: T, mesh: Mesh) -> T:
  """`tree` with every leaf replicated over `mesh` (leaves already replicated there are kept).

  With several processes every process must pass the same values (e.g. the same initial
  parameters, drawn from the same seed).
  """
  target = replicated_sharding(mesh)
  return jax.tree.map(lambda leaf: place(leaf, target), tree)


def place(leaf: ArrayLike, sharding: Sharding) -> jax.Array:
  """`leaf` on `sharding`: kept when it is already laid out so, else put there (from the host
  when the sharding spans other processes, whose values must be the same)."""
  if isinstance(leaf, jax.Array):
    if leaf.sharding.is_equivalent_to(sharding, leaf.ndim):
      return leaf
    if not sharding.is_fully_addressable:
      leaf = np.asarray(leaf)
  return jax.device_put(leaf, sharding)


@overload
def shard_batch(mesh: Mesh, array: ArrayLike, /) -> jax.Array: ...


@overload
def shard_batch(mesh: Mesh, first: ArrayLike, second: ArrayLike, /,
                *arrays: ArrayLike) -> Tuple[jax.Array, ...]: ...


def shard_batch(mesh: Mesh, *arrays: ArrayLike) -> Union[jax.Array, Tuple[jax.Array, ...]]:
  """Global arrays sharded along "data" from each process's rows of a batch.

  Every process passes its own rows (e.g. `multihost.process_shard` of the global batch), all of
  the same count; the global array is their concatenation in process order. With one process,
  pass the whole batch. Returns one array per argument (a single array for a single argument).
  """
  sharding = rows_sharding(mesh)
  out = tuple(jax.make_array_from_process_local_data(sharding, np.asarray(a)) for a in arrays)
  return out[0] if len(out) == 1 else out


def constrain_rows(tree: T, mesh: Mesh) -> T:
  """Inside traced code: constrain every leaf of `tree` to be sharded by rows along "data"."""
  return jax.lax.with_sharding_constraint(tree, rows_sharding(mesh))


def constrain_replicated(tree: T, mesh: Mesh) -> T:
  """Inside traced code: constrain every leaf of `tree` to be replicated."""
  return jax.lax.with_sharding_constraint(tree, replicated_sharding(mesh))


def pad_batches(indices: jax.Array, mask: jax.Array, mesh: Mesh) -> Tuple[jax.Array, jax.Array]:
  """Pads (num_batches, capacity) batch indices and mask with masked-out columns so that the
  capacity divides across the devices (DP's Poisson batches have capacity B + 4 sqrt(B) + 1)."""
  pad = -indices.shape[1] % mesh.size
  if not pad:
    return indices, mask
  return (jnp.pad(indices, ((0, 0), (0, pad))),
          jnp.pad(mask, ((0, 0), (0, pad)), constant_values=False))


def with_replicated_args(fn: Callable, mesh: Mesh) -> Any:
  """`fn(*args)` with every argument first replicated over `mesh` (see `replicate`)."""
  def wrapped(*args: Any) -> Any:
    return fn(*replicate(args, mesh))
  wrapped.__wrapped__ = fn
  return wrapped
