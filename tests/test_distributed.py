"""Data-parallel training over a device mesh: the sharded step, epoch and fit equal the
single-device ones, parameters stay replicated, bad input fails clearly, and two processes on
loopback train to the parameters of one.

This process already started JAX with one CPU device, so the multi-device checks run in
subprocesses that simulate 8 CPU devices (XLA_FLAGS=--xla_force_host_platform_device_count=8),
and the two-process checks in two subprocesses joined by `initialize_distributed` over
127.0.0.1 (cross-process collectives: gloo, JAX's CPU default).
"""

import json
import os
import pathlib
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import optax
import pytest

import mlp_jax as mj
from mlp_jax.tools import cli
from conftest import copy_tree, make_batch, tree_rel_errors

ROOT = pathlib.Path(__file__).resolve().parents[1]
SIZES = (12, 16, 5)
TIMEOUT_S = 120
pytestmark = pytest.mark.usefixtures("standard_promotion")  # optax's int32 step counters


def _env(num_devices: int):
  env = dict(os.environ)
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={num_devices}"
  env["JAX_PLATFORMS"] = "cpu"
  env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
  env["PYTHONUNBUFFERED"] = "1"
  return env


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


# ---------------------------------------------------------------- 8 simulated devices, one run

# Prints the 8-device results as one JSON line (see its docstring).
EIGHT_DEVICES = pathlib.Path(__file__).parent / "programs" / "eight_devices.py"


@pytest.fixture(scope="module")
def eight():
  """The results of the EIGHT_DEVICES program, run once in a subprocess with 8 simulated CPU
  devices."""
  proc = subprocess.run([sys.executable, str(EIGHT_DEVICES)], env=_env(8), cwd=ROOT,
                        capture_output=True, text=True, timeout=TIMEOUT_S)
  lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
  assert proc.returncode == 0 and lines, proc.stderr[-4000:]
  return json.loads(lines[-1][len("RESULT "):])


def test_eight_simulated_devices(eight):
  assert eight["device_count"] == 8 and eight["mesh_size"] == 8


def test_sharded_step_equals_the_single_device_step(eight):
  for n in (8, 4):
    got = eight[f"step{n}"]
    assert got["rel"] <= 1e-5 and got["loss_rel"] <= 1e-5, (n, got)
    assert got["replicated"], n
  # The gradient reduction is XLA's all-reduce; activations are never gathered.
  assert eight["step_collectives"] == ["all-reduce"]


def test_sharded_step_of_another_network_equals_its_single_device_step(eight):
  got = eight["step_network"]  # tanh hidden layer, squared-error output (E18), (E24)
  assert got["rel"] <= 1e-5 and got["loss_rel"] <= 1e-5 and got["replicated"], got


def test_sharded_epoch_equals_the_unsharded_epoch(eight):
  got = eight["epoch"]
  assert got["steps"] == 7  # ceil(100 / 16), the last one 4 rows plus masked padding
  assert got["rel"] <= 1e-5 and got["state_rel"] <= 1e-5 and got["loss_rel"] <= 1e-5, got
  assert got["replicated"]
  assert got["rows_per_device"] == [2]  # 16 rows over 8 devices: each step's batch is sharded


def test_dp_epoch_under_sharding_equals_the_unsharded_dp_epoch(eight):
  got = eight["dp_epoch"]
  assert got["rel"] <= 1e-5 and got["state_rel"] <= 1e-5 and got["loss_rel"] <= 1e-5, got
  assert got["replicated"]
  # Poisson batches of capacity 16 + 16 + 1 = 33 are padded with masked rows to 40 = 8 x 5.
  assert got["rows_per_device"] == [5]


def test_fit_with_a_mesh_equals_fit(eight):
  got = eight["fit"]
  assert got["rel"] <= 1e-5 and got["replicated"], got
  np.testing.assert_allclose(got["val_loss"], got["val_loss_ref"], rtol=1e-5)


def test_the_estimator_with_devices_fits_as_on_one_device(eight):
  got = eight["estimator"]
  assert got["rel"] <= 1e-5 and got["loss_rel"] <= 1e-5 and got["n_iter"] == [3, 3], got


def test_bad_input_on_a_mesh_raises_clearly(eight):
  errors = eight["errors"]
  assert errors["epoch_batch"].startswith("batch_size 10 does not divide across 4 devices")
  assert errors["fit_batch"].startswith("batch_size 12 does not divide across 8 devices")
  assert errors["step_batch"].startswith("batch_size 10 does not divide across 4 devices")
  assert errors["too_many"].startswith("asked for 16 devices, 8 available")


# ---------------------------------------------------------------- this process: one device

def test_one_device_mesh_is_the_plain_step_and_epoch():
  params = mj.init_params(jax.random.PRNGKey(1), SIZES)
  x, y = make_batch(0, SIZES, 40, np.float32)
  opt = optax.sgd(0.1, momentum=0.9)
  mesh = mj.make_mesh(1)
  assert mesh.axis_names == ("data",) and mesh.size == 1
  got = mj.make_data_parallel_step(opt, mesh, l2=0.1)(copy_tree(params), opt.init(params), x, y)
  want = mj.make_train_step(opt, l2=0.1)(copy_tree(params), opt.init(params), x, y)
  assert max(tree_rel_errors(got, want)) <= 1e-6
  key = jax.random.PRNGKey(2)
  got = mj.make_epoch(opt, 8, 0.1, mesh=mesh)(copy_tree(params), opt.init(params), x, y, key)
  want = mj.make_epoch(opt, 8, 0.1)(copy_tree(params), opt.init(params), x, y, key)
  assert max(tree_rel_errors(got[:2], want[:2])) <= 1e-6


def test_make_mesh_rejects_bad_counts():
  n = jax.device_count()
  assert mj.make_mesh().size == n and mj.make_mesh("all").size == n
  with pytest.raises(mj.InputError, match=rf"^asked for {n + 1} devices, {n} available"):
    mj.make_mesh(n + 1)
  for bad in (0, -2, "some", True, 1.5):
    with pytest.raises(mj.InputError, match="num_devices"):
      mj.make_mesh(bad)


def test_cli_devices_above_what_exists_exits_2_before_writing(tmp_path, capsys):
  out = tmp_path / "run"
  n = jax.device_count() + 1
  code = cli.main(["train", "--dataset", "synthetic", "--num-samples", "100", "--epochs", "1",
                   "--no-progress", "--devices", str(n), "--out", str(out)])
  assert code == 2
  assert f"asked for {n} devices, {n - 1} available" in capsys.readouterr().err
  assert not out.exists()


# ---------------------------------------------------------------- two processes on loopback

# One of the two processes: joins the other, trains, reports (see its docstring).
WORKER = pathlib.Path(__file__).parent / "programs" / "loopback_worker.py"


def _run_processes(commands, env, timeout=TIMEOUT_S):
  """Runs the commands at once; (returncode, stdout, stderr) of each; kills all on any exit."""
  procs = [subprocess.Popen(c, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True) for c in commands]
  try:
    deadline = time.monotonic() + timeout
    results = []
    for p in procs:
      out, err = p.communicate(timeout=max(1, deadline - time.monotonic()))
      results.append((p.returncode, out, err))
    return results
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()


def _skip_if_no_cross_process_collectives(results):
  """Skips, quoting the error, where the CPU backend cannot run collectives across processes;
  fails on any other error."""
  for code, _, err in results:
    if code != 0:
      errors = [l for l in err.splitlines() if "rror" in l] or err.strip().splitlines()[-1:]
      last = errors[-1] if errors else f"exit status {code}"
      if "collective" in last.lower() or "gloo" in last.lower():
        pytest.skip(f"CPU cross-process collectives unavailable: {last}")
      pytest.fail(f"process exited {code}:\n{err[-4000:]}")


def test_two_processes_train_to_the_parameters_of_one(tmp_path):
  port = _free_port()
  outs = [tmp_path / f"result{i}.npz" for i in range(2)]
  results = _run_processes(
      [[sys.executable, str(WORKER), str(i), str(port), str(outs[i])] for i in range(2)], _env(2))
  _skip_if_no_cross_process_collectives(results)
  reports = [json.loads(next(l for l in out.splitlines() if l.startswith("RESULT "))[7:])
             for _, out, _ in results]
  assert [r["primary"] for r in reports] == [True, False]
  assert all(r["devices"] == 4 and r["local_devices"] == 2 and r["replicated"] for r in reports)
  assert all(r["local_rows"] == 8 for r in reports)  # 32 rows over 4 devices
  assert outs[0].exists() and not outs[1].exists()  # only process 0 writes

  # The same training in this process, on one device.
  rng = np.random.default_rng(0)
  x = rng.standard_normal((60, 12)).astype(np.float32)
  y = rng.integers(0, 5, 60).astype(np.int32)
  params = mj.init_params(jax.random.PRNGKey(0), SIZES)
  opt = optax.adam(1e-2)
  fitted = mj.fit(params, (x, y), optimizer=opt, epochs=2, batch_size=16, l2=1e-3, seed=1,
                  val=(x[:20], y[:20]))
  step = mj.make_train_step(opt, l2=1e-3)
  p, s = copy_tree(params), opt.init(params)
  for _ in range(3):
    p, s, _ = step(p, s, x[:32], y[:32])
  with np.load(outs[0]) as got:
    got = [got[f"arr_{i}"] for i in range(len(got.files))]
  assert max(tree_rel_errors(got, jax.tree.leaves((fitted.params, p)))) <= 1e-5


def test_cli_on_two_processes_writes_once(tmp_path):
  port, out = _free_port(), tmp_path / "run"
  args = [sys.executable, "-m", "mlp_jax.tools.cli", "train", "--dataset", "synthetic",
          "--num-samples", "200", "--hidden", "8", "--epochs", "2", "--batch-size", "32",
          "--no-progress", "--out", str(out), "--coordinator", f"127.0.0.1:{port}",
          "--num-processes", "2", "--init-timeout", "60"]
  results = _run_processes([args + ["--process-id", str(i)] for i in range(2)], _env(2))
  _skip_if_no_cross_process_collectives(results)
  assert "test accuracy" in results[0][1] and "test accuracy" not in results[1][1]
  metrics = json.loads((out / "metrics.json").read_text())
  assert metrics["num_devices"] == 4 and metrics["num_processes"] == 2
  assert sorted(os.listdir(out)) == ["checkpoint.npz", "config.json", "confusion.png",
                                     "curves.png", "metrics.csv", "metrics.json"]
