"""Multi-process start-up: each process's rows, and `initialize_distributed` refusing bad
arguments and a coordinator that does not answer, quickly and without taking this process down.

The end-to-end runs on two processes (the start-up and the sharding together) are in
tests/test_distributed.py.
"""

import socket
import time

import jax
import numpy as np
import pytest

import mlp_jax as mj
from mlp_jax.io import data
from mlp_jax.training import multihost


def test_process_shard_splits_rows_into_contiguous_blocks():
  x, y = np.arange(20).reshape(10, 2), np.arange(10)
  blocks = [mj.process_shard((x, y), i, 3) for i in range(3)]
  assert [len(b[1]) for b in blocks] == [4, 3, 3]
  np.testing.assert_array_equal(np.concatenate([b[0] for b in blocks]), x)
  ds = mj.process_shard(data.Dataset(x, y), 1, 2)
  assert isinstance(ds, data.Dataset) and ds.y.tolist() == [5, 6, 7, 8, 9]
  assert mj.process_shard(y).tolist() == y.tolist() and mj.is_primary()  # one process
  with pytest.raises(mj.InputError, match="process_index"):
    mj.process_shard(y, 2, 2)
  with pytest.raises(mj.InputError, match="same number of rows"):
    mj.process_shard((x, y[:5]), 0, 2)


def test_initialize_distributed_rejects_bad_arguments(monkeypatch):
  for var in (multihost.ENV_COORDINATOR, multihost.ENV_NUM_PROCESSES, multihost.ENV_PROCESS_ID):
    monkeypatch.delenv(var, raising=False)
  with pytest.raises(mj.InputError, match=r"missing num_processes \(or MLP_JAX_NUM_PROCESSES\)"):
    mj.initialize_distributed("127.0.0.1:1234", process_id=0)
  with pytest.raises(mj.InputError, match=r"process_id: expected 0..1, got 2"):
    mj.initialize_distributed("127.0.0.1:1234", 2, 2)
  with pytest.raises(mj.InputError, match="expected host:port"):
    mj.initialize_distributed("localhost", 2, 0)
  monkeypatch.setenv(multihost.ENV_NUM_PROCESSES, "two")
  with pytest.raises(mj.InputError, match="MLP_JAX_NUM_PROCESSES: expected an integer"):
    mj.initialize_distributed("127.0.0.1:1234", process_id=0)
  monkeypatch.delenv(multihost.ENV_NUM_PROCESSES)
  jax.devices()  # JAX is running here: joining a multi-process run now is too late
  with pytest.raises(mj.DistributedError, match="must be called before"):
    mj.initialize_distributed("127.0.0.1:1234", 1, 0)


def test_a_coordinator_that_does_not_answer_fails_fast():
  with socket.socket() as s:  # bound, not listening: connections are refused
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    start = time.monotonic()
    with pytest.raises(mj.DistributedError,
                       match=rf"coordinator 127.0.0.1:{port} did not answer within 2 s"):
      mj.initialize_distributed(f"127.0.0.1:{port}", 2, 1, timeout_s=2)
  assert time.monotonic() - start < 10
  assert not jax.distributed.is_initialized()


def test_wait_for_coordinator_returns_once_a_port_listens():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    s.listen()
    left = multihost.wait_for_coordinator(f"127.0.0.1:{s.getsockname()[1]}", 5)
  assert 0 < left <= 5
  for bad in ("localhost", "127.0.0.1:", ":80", "127.0.0.1:70000"):
    with pytest.raises(mj.InputError, match="expected host:port"):
      multihost.wait_for_coordinator(bad, 1)
