"""Multi-process start-up: joining a JAX run over several hosts, and each process's share.

    initialize_distributed("10.0.0.1:1234", num_processes=2, process_id=i)  # first, in each
    mesh = distributed.make_mesh("all")           # every process's devices
    xl, yl = process_shard((x, y))                # this process's contiguous rows
    gx, gy = distributed.shard_batch(mesh, xl, yl)
    if is_primary(): ...                          # only process 0 writes files

`initialize_distributed` wraps `jax.distributed.initialize`: its arguments may come from the
MLP_JAX_* environment variables, and a worker first waits for the coordinator to accept a TCP
connection, since JAX's runtime client aborts the process (rather than raising) when it cannot
reach one. Failures to start are `DistributedError`. The sharding itself is `distributed`.
"""

import math
import os
import socket
import time
from typing import Any, Dict, Optional, Sequence, Union

import jax
import numpy as np

from mlp_jax.errors import InputError, MLPJaxError

ENV_COORDINATOR = "MLP_JAX_COORDINATOR"
ENV_NUM_PROCESSES = "MLP_JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "MLP_JAX_PROCESS_ID"


class DistributedError(MLPJaxError, RuntimeError):
  """The distributed runtime could not start: no coordinator, a port in use, called too late."""


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
