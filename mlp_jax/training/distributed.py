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

Several hosts: call `initialize_distributed` first in every process, then build the mesh over
all processes' devices. Each process feeds its own rows of a global batch (`process_shard`,
`shard_batch`); only process 0 writes files (`is_primary`).
"""

import math
import os
import socket
import time
from typing import Any, Callable, Dict, Optional, Sequence, Tuple, TypeVar, Union, overload

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec, Sharding
from jax.typing import ArrayLike

from mlp_jax.errors import InputError, MLPJaxError

AXIS = "data"
ENV_COORDINATOR = "MLP_JAX_COORDINATOR"
ENV_NUM_PROCESSES = "MLP_JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "MLP_JAX_PROCESS_ID"

T = TypeVar("T")


class DistributedError(MLPJaxError, RuntimeError):
  """The distributed runtime could not start: no coordinator, a port in use, called too late."""


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

  Every process passes its own rows (e.g. `process_shard` of the global batch), all of the same
  count; the global array is their concatenation in process order. With one process, pass the
  whole batch. Returns one array per argument (a single array for a single argument).
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


def process_shard(data: Any, process_index: Optional[int] = None,
                  process_count: Optional[int] = None) -> Any:
  """This process's contiguous block of rows of `data`: an array, or a tuple/NamedTuple of
  arrays with the same number of rows (e.g. `(x, y)` or a `data.Dataset`).

  Blocks follow `np.array_split` (sizes differ by at most one; equal when the row count divides),
  in process order, so concatenating every process's block gives `data` back.
  """
  index = jax.process_index() if process_index is None else process_index
  count = jax.process_count() if process_count is None else process_count
  if not 0 <= index < count:
    raise InputError(f"process_index: expected 0..{count - 1}, got {index}")
  parts = data if isinstance(data, tuple) else (data,)
  n = len(parts[0])
  if any(len(p) != n for p in parts):
    raise InputError(f"data: expected arrays with the same number of rows, got "
                     f"{[len(p) for p in parts]}")
  bounds = _blocks(n, count)
  lo, hi = bounds[index], bounds[index + 1]
  out = tuple(p[lo:hi] for p in parts)
  if not isinstance(data, tuple):
    return out[0]
  return type(data)(*out) if hasattr(data, "_fields") else out


def _blocks(n: int, count: int):
  """Start of each of `count` contiguous blocks of n rows, as np.array_split, plus n."""
  size, extra = divmod(n, count)
  return [i * size + min(i, extra) for i in range(count)] + [n]


def is_primary() -> bool:
  """True in process 0 (or with a single process): the one that writes files."""
  return jax.process_index() == 0


def _env_int(value, name: str, env: str, minimum: int):
  if value is None:
    text = os.environ.get(env)
    if text is None or text == "":
      return None
    try:
      value = int(text)
    except ValueError:
      raise InputError(f"{env}: expected an integer, got {text!r}") from None
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
    raise InputError(f"{name}: expected an int >= {minimum}, got {value!r}")
  return int(value)


def _split_address(address: str):
  host, sep, port = str(address).rpartition(":")
  if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
    raise InputError(f"coordinator_address: expected host:port, got {address!r}")
  return host.strip("[]"), int(port)


def wait_for_coordinator(address: str, timeout_s: float) -> float:
  """Polls `address` (host:port) with TCP connects until it accepts one or `timeout_s` passes.

  Returns the seconds left. JAX's runtime client aborts the whole process (it does not raise)
  when its coordinator stays unreachable, hence this check before it.

  Raises:
    DistributedError: nothing accepted a connection in time.
  """
  host, port = _split_address(address)
  deadline = time.monotonic() + timeout_s
  last = None
  while True:
    left = deadline - time.monotonic()
    if left <= 0:
      raise DistributedError(
          f"coordinator {address} did not answer within {timeout_s:g} s ({last}); start process "
          f"0 first, or check the address, the port and the firewall")
    try:
      with socket.create_connection((host, port), timeout=min(left, 1.0)):
        return deadline - time.monotonic()
    except OSError as err:
      last = err.strerror or type(err).__name__
      time.sleep(min(0.2, max(left, 0)))


def initialize_distributed(coordinator_address: Optional[str] = None,
                           num_processes: Optional[int] = None,
                           process_id: Optional[int] = None, *,
                           local_device_ids: Optional[Union[int, Sequence[int]]] = None,
                           timeout_s: float = 300) -> None:
  """Joins this process to a multi-process JAX run (`jax.distributed.initialize`).

  Call it in every process before any other JAX call. Arguments left None are read from
  MLP_JAX_COORDINATOR (host:port of process 0), MLP_JAX_NUM_PROCESSES and MLP_JAX_PROCESS_ID;
  if all three are unset, JAX detects the cluster itself (Cloud TPU, SLURM, Open MPI, ...).
  Process 0 starts the coordinator service at the address; the others connect to it.

  Args:
    coordinator_address: "host:port" of process 0, reachable from every process.
    num_processes: how many processes take part.
    process_id: this process's index, 0..num_processes-1.
    local_device_ids: optional, which local devices this process uses (e.g. one GPU each).
    timeout_s: how long to wait for the coordinator and for every process to join.

  Raises:
    InputError: missing or inconsistent arguments.
    DistributedError: the coordinator did not answer within `timeout_s`, its port was taken,
      JAX was already running, or the runtime failed to start.
  """
  coordinator_address = coordinator_address or os.environ.get(ENV_COORDINATOR) or None
  num_processes = _env_int(num_processes, "num_processes", ENV_NUM_PROCESSES, 1)
  process_id = _env_int(process_id, "process_id", ENV_PROCESS_ID, 0)
  if not (isinstance(timeout_s, (int, float)) and 0 < timeout_s < float("inf")):
    raise InputError(f"timeout_s: expected a positive number of seconds, got {timeout_s!r}")
  if jax.distributed.is_initialized():
    raise DistributedError("initialize_distributed: the distributed runtime is already running")
  given = {"coordinator_address": coordinator_address, "num_processes": num_processes,
           "process_id": process_id}
  kwargs: Dict[str, Any] = {}
  if any(v is not None for v in given.values()):
    env = {"coordinator_address": ENV_COORDINATOR, "num_processes": ENV_NUM_PROCESSES,
           "process_id": ENV_PROCESS_ID}
    missing = [f"{k} (or {env[k]})" for k, v in given.items() if v is None]
    if missing:
      raise InputError(f"initialize_distributed: missing {', '.join(missing)}")
    _split_address(coordinator_address)
    if process_id >= num_processes:
      raise InputError(f"process_id: expected 0..{num_processes - 1}, got {process_id}")
    kwargs = dict(given)
  left = timeout_s
  if process_id:
    left = wait_for_coordinator(coordinator_address, timeout_s)
  try:
    jax.distributed.initialize(**kwargs, local_device_ids=local_device_ids,
                               initialization_timeout=max(1, math.ceil(left)))
  except (RuntimeError, ValueError, TypeError) as err:
    where = f" at {coordinator_address}" if coordinator_address else ""
    hint = "" if kwargs else (
        f" (no cluster detected: pass coordinator_address, num_processes and process_id, or "
        f"set {ENV_COORDINATOR}, {ENV_NUM_PROCESSES} and {ENV_PROCESS_ID})")
    raise DistributedError(f"jax.distributed.initialize{where} failed: {err}{hint}") from err
