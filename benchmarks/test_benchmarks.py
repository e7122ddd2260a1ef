"""The benchmark scripts (tests kept beside them, not in the library's suite's folder): their
NumPy reference, FLOP model and plots, and their --quick runs, at the top and in reproduce/.

The --quick runs of grads.py, train.py, estimator.py and lbfgs.py take 10-35 s each on the shared
2-core machine and are marked slow; per_sample.py's takes 11-16 s. Nothing here needs PyTorch: the scripts skip it,
with a note, when it is absent.
"""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import optax
import pytest

import mlp_jax as mj

import numpy_backprop as nb  # beside this file: pytest puts its folder on the path

BENCH = os.path.dirname(os.path.abspath(__file__))
REPRODUCE = os.path.join(BENCH, "reproduce")


@pytest.fixture
def standard_promotion():
  """optax mixes int32 step counts with floats: allow JAX's standard promotion."""
  with jax.numpy_dtype_promotion("standard"):
    yield


def _batch(sizes, m, seed=0):
  rng = np.random.default_rng(seed)
  x = rng.standard_normal((m, sizes[0])).astype(np.float32)
  y = rng.integers(0, sizes[-1], size=m).astype(np.int32)
  return x, y


def _leaves(pairs):
  return [leaf for pair in pairs for leaf in pair]


@pytest.mark.parametrize("sizes", [(10, 7, 3), (12, 16, 8, 5)])
@pytest.mark.parametrize("l2", [0.0, 0.5])
def test_numpy_backprop_matches_analytic(sizes, l2):
  params = mj.init_params(jax.random.PRNGKey(3), sizes)
  x, y = _batch(sizes, 29)
  loss, grads = mj.loss_and_grads(params, x, y, l2=l2)
  np_loss, np_grads = nb.loss_and_grads(nb.from_jax(params), x, y, l2)
  assert np_loss == pytest.approx(float(loss), rel=1e-5)
  for ours, ref in zip(_leaves(np_grads), jax.tree.leaves(grads)):
    assert ours.dtype == np.float32 and ours.shape == ref.shape
    assert mj.relative_error(np.asarray(ref), ours) <= 1e-4


def test_numpy_adam_matches_optax(standard_promotion):
  params = mj.init_params(jax.random.PRNGKey(0), (6, 5, 3))
  x, y = _batch((6, 5, 3), 16)
  ours = nb.from_jax(params)
  adam = nb.Adam(ours, 1e-2)
  opt = optax.adam(1e-2)
  state = opt.init(params)
  for _ in range(3):  # the same gradients into both, so only the updates are compared
    grads = mj.grads(params, x, y, l2=0.1)
    adam.update(ours, nb.from_jax(grads))
    updates, state = opt.update(grads, state, params)
    params = optax.apply_updates(params, updates)
  for a, b in zip(_leaves(ours), jax.tree.leaves(params)):
    np.testing.assert_allclose(a, np.asarray(b), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("n, d, k, m", [(256, 256, 10, 1), (256, 256, 10, 1024), (64, 32, 7, 3)])
def test_gemm_flops_of_two_layers(n, d, k, m):
  assert nb.gemm_flops((n, d, k), m) == 2 * m * (2 * n * d + 3 * d * k)


def test_gemm_flops_of_deeper_net():
  sizes, m = (256, 512, 128, 10), 32
  pairs = [(256, 512), (512, 128), (128, 10)]
  expected = 2 * m * (2 * sum(a * b for a, b in pairs) + sum(a * b for a, b in pairs[1:]))
  assert nb.gemm_flops(sizes, m) == expected
  assert len(nb.gemm_shapes(sizes, m)) == 3 * len(pairs) - 1
  assert nb.gemms_alone(sizes, m)().shape == (256, 512)  # the last GEMM: X^T Delta_1


def test_plot_draws_every_figure(tmp_path):
  grads = {"quick": True, "machine": {}, "results": [
      {"impl": impl, "dtype": "float32", "layers": [4, 3, 2], "m": m, "median": t * m,
       "p10": t * m, "p90": 1.1 * t * m} for impl, t in (("analytic", 1e-4), ("numpy", 2e-4))
      for m in (1, 8)]}
  epochs = [{"epoch": e, "cumulative_seconds": 0.1 * e, "test_acc": 0.5 + 0.1 * e}
            for e in (1, 2)]
  train = {"machine": {}, "results": [{"dataset": "digits", "impl": "numpy", "batch_size": 4,
                                       "epochs_run": 2, "epochs": epochs}]}
  per_sample = {"machine": {}, "layers": [4, 3, 2], "results": [
      {"impl": impl, "m": m, "median": 1e-3 * m, "memory": {"peak_extra": 100 * m}}
      for impl in ("norms", "vmap", "norms_api") for m in (2, 4)]}
  for name, payload in (("grads_quick", grads), ("train", train), ("per_sample", per_sample)):
    (tmp_path / f"{name}.json").write_text(json.dumps(payload))
  subprocess.run([sys.executable, os.path.join(BENCH, "plot.py"), "--dir", str(tmp_path)],
                 check=True, capture_output=True, timeout=120)
  for name in ("grads_quick", "train", "per_sample"):
    assert (tmp_path / f"{name}.png").stat().st_size > 1000


@pytest.mark.parametrize("folder, script", [
    pytest.param(BENCH, "grads", marks=pytest.mark.slow),  # 25-30 s: three cold-start processes
    pytest.param(BENCH, "train", marks=pytest.mark.slow),  # 15-35 s, with the machine's load
    (BENCH, "per_sample"),                                  # 11-16 s
    pytest.param(BENCH, "curvature", marks=pytest.mark.slow),  # 20-30 s: 14 programs, 2 sizes
    pytest.param(BENCH, "networks", marks=pytest.mark.slow),  # 12 networks at m = 64
    pytest.param(BENCH, "regression", marks=pytest.mark.slow),  # two fits on diabetes
    pytest.param(BENCH, "usps_activations", marks=pytest.mark.slow),  # two 2-epoch CLI runs
    pytest.param(BENCH, "estimator", marks=pytest.mark.slow),  # 15-20 s: 6 configs, 2 libraries
    pytest.param(BENCH, "lbfgs", marks=pytest.mark.slow),  # 11-15 s: 3 methods compiled and run
    (REPRODUCE, "page_faults"),                             # two small processes, ~10 s
])
def test_quick_run_writes_results(folder, script, tmp_path):
  proc = subprocess.run([sys.executable, os.path.join(folder, f"{script}.py"), "--quick",
                         "--out", str(tmp_path)], capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  payload = json.loads((tmp_path / f"{script}_quick.json").read_text())
  assert payload["quick"] is True and payload["machine"]["jax"] == jax.__version__
  assert payload["results"]
  assert (tmp_path / f"{script}_quick.md").read_text().startswith("###")


@pytest.mark.slow
def test_dp_curve_quick_run_checks_every_epsilon(tmp_path):  # 1-2 min: 8 compiles, 4 calibrations
  proc = subprocess.run([sys.executable, os.path.join(BENCH, "dp_curve.py"), "--quick",
                         "--out", str(tmp_path)], capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  payload = json.loads((tmp_path / "dp_curve_quick.json").read_text())
  assert payload["quick"] is True and payload["machine"]["jax"] == jax.__version__
  results = payload["results"]
  assert [p["epsilon_target"] for p in results["curve"]] == [3.0, 8.0]
  assert len(results["grid"]) == 4  # two configurations at each epsilon
  for p in results["curve"]:
    # the run spends at most its budget, by the library and by dp-accounting, within 1 %
    for spent in (p["epsilon_library"], p["epsilon_dp_accounting"]):
      assert 0.99 * p["epsilon_target"] <= spent <= p["epsilon_target"]
    assert p["epsilon_dp_accounting"] == pytest.approx(p["epsilon_library"], rel=1e-6)
    assert 0.1 < p["test_acc"]["mean"] <= 1.0
  # epsilon 3 stays below 93 % after 2 epochs: the gap runs are there, noise-free and non-private
  assert set(results["gap"]) == {"clipping, no noise", "no DP"}
  assert (tmp_path / "dp_curve_quick.md").read_text().startswith("###")
  assert (tmp_path / "dp_curve_quick.png").stat().st_size > 1000


@pytest.mark.slow
def test_accelerator_script_quick_cpu_run(tmp_path):
  """The accelerator run's quick form on the CPU (the suite itself is not re-run inside it)."""
  proc = subprocess.run(["bash", os.path.join(BENCH, "accelerator.sh"), str(tmp_path), "--quick",
                         "--skip-tests"], capture_output=True, text=True, timeout=400,
                        env={**os.environ, "PYTHON": sys.executable})
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  report = json.loads((tmp_path / "accelerator.json").read_text())
  assert report["quick"] is True
  # every step ran: a benchmark script the run cannot find is skipped, not failed
  assert {k: v["exit"] for k, v in report["steps"].items()} == {
      "throughput": 0, "grads-0": 0, "per_sample-1": 0, "curvature-2": 0}
  for name in ("grads-0/grads_quick.json", "per_sample-1/per_sample_quick.json",
               "curvature-2/curvature_quick.json"):
    assert json.loads((tmp_path / name).read_text())["results"]
  rows = report["throughput"]["rows"]
  assert [r["batch"] for r in rows] == [256, 1024]
  table = (tmp_path / "accelerator.md").read_text()
  assert "\n| 256 | " in table and "\n| 1024 | " in table  # a row per batch size
  assert (tmp_path / "accelerator.log").stat().st_size > 0


def test_epoch_profile_counts_each_thunks_own_time():
  import epoch_profile
  events = [  # a loop thunk holding two thunks on one thread, one thunk on another
      {"pid": 1, "tid": 1, "ts": 0, "dur": 100, "name": "while.1"},
      {"pid": 1, "tid": 1, "ts": 10, "dur": 30, "name": "dot.2"},
      {"pid": 1, "tid": 1, "ts": 50, "dur": 20, "name": "fusion.3"},
      {"pid": 1, "tid": 2, "ts": 20, "dur": 15, "name": "fusion.4"},
  ]
  assert sorted(epoch_profile._self_times(events)) == [
      ("dot.2", 30), ("fusion.3", 20), ("fusion.4", 15), ("while.1", 50)]


def test_epoch_profile_classes_thunks_by_dot_and_named_scope():
  import epoch_profile
  hlo = """
%fused_computation.1 (p0: f32[2,2], p1: f32[2,2]) -> f32[2,2] {
  ROOT %dot.9 = f32[2,2]{1,0} dot(%p0, %p1), lhs_contracting_dims={1}, rhs_contracting_dims={0}
}

ENTRY %main (a: f32[2,2]) -> f32[2,2] {
  %ynn_fusion = f32[2,2]{1,0} fusion(%a, %a), kind=kCustom, calls=%fused_computation.1, metadata={op_name="jit(epoch)/while/body/gradients/dot_general"}
  %gather_fusion = f32[2,2]{1,0} fusion(%a), kind=kLoop, calls=%x, metadata={op_name="jit(epoch)/while/body/batch/gather"}
  %add_fusion = f32[2,2]{1,0} fusion(%a), kind=kLoop, calls=%y, metadata={op_name="jit(epoch)/while/body/optimizer/add"}
  %exp_fusion = f32[2,2]{1,0} fusion(%a), kind=kLoop, calls=%z, metadata={op_name="jit(epoch)/while/body/gradients/exp"}
  %sort.0 = u32[2]{0} sort(%a), dimensions={0}, metadata={op_name="jit(epoch)/plan/sort"}
  ROOT %while.1 = f32[2,2]{1,0} while(%a), condition=%c, body=%b
}
"""
  classes = epoch_profile._hlo_classes(hlo)
  assert {k: classes[k] for k in ("ynn_fusion", "gather_fusion", "add_fusion", "exp_fusion",
                                  "sort.0", "while.1")} == {
      "ynn_fusion": "GEMMs", "gather_fusion": "gather", "add_fusion": "optimizer",
      "exp_fusion": "elementwise", "sort.0": "shuffle", "while.1": "other"}


@pytest.mark.slow
def test_epoch_quick_run_writes_every_table(tmp_path):  # 20-30 s
  proc = subprocess.run([sys.executable, os.path.join(BENCH, "epoch.py"), "--quick",
                         "--out", str(tmp_path)], capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  payload = json.loads((tmp_path / "epoch_quick.json").read_text())
  assert [r["batch"] for r in payload["batches"]] == [32, 128, 512]
  # every column timed in every round: 2 rounds of 4 epochs by batch, of 2 epochs by width
  for rows, calls in ((payload["batches"], 8), (payload["widths"], 4)):
    for r in rows:
      assert {c: t["calls"] for c, t in r["timings"].items()} == {
          "mlp_jax": calls, "numpy": calls, "sklearn": calls, "floor": calls}
  assert [a["batch"] for a in payload["ablation"]] == [32, 128, 512]
  assert [p["batch_size"] for p in payload["profile"]] == [32, 128, 512]
  for p in payload["profile"]:
    assert p["us_per_step"]["GEMMs"] > 0 and p["us_per_step"]["shuffle"] > 0
  text = (tmp_path / "epoch_quick.md").read_text()
  assert "mlp_jax / floor" in text and "outside thunks" in text and "What each change" in text
  assert (tmp_path / "epoch_quick.png").stat().st_size > 1000


@pytest.mark.slow
def test_cold_start_quick_run_times_every_variant(tmp_path):  # ~30 s: 9 fresh processes
  proc = subprocess.run([sys.executable, os.path.join(REPRODUCE, "cold_start.py"), "--quick",
                         "--out", str(tmp_path)], capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  results = json.loads((tmp_path / "cold_start_quick.json").read_text())["results"]
  assert set(results) == {"bare", "mlp_jax", "eager", "cache"}
  for r in results.values():
    assert len(r["walls"]) == 2  # --quick: two rounds, every variant once in each
    # the child's own clocks run inside its process: their parts fit within the process's wall
    assert sum(r["inside"].values()) < max(r["walls"])
  for v in ("mlp_jax", "eager", "cache"):
    assert set(results[v]["inside"]) == {"import jax", "import mlp_jax", "init_params",
                                         "first gradient"}
  # without a cache, the process imports what bare imports and compiles a gradient besides
  assert results["mlp_jax"]["ratio_to_bare"] > 1.0
  # a warm cache loads instead of compiling: the first gradient is far cheaper than a compile
  assert results["cache"]["inside"]["first gradient"] < results["mlp_jax"]["inside"][
      "first gradient"]


@pytest.mark.parametrize("what", ["shuffle", "hlo"])
def test_epoch_experiments_run(what, tmp_path):  # ~5 s and ~20 s
  args = [str(tmp_path / "hlo.txt")] if what == "hlo" else []
  proc = subprocess.run([sys.executable, os.path.join(REPRODUCE, "epoch_experiments.py"), what,
                         *args], capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  if what == "shuffle":
    assert "jax.random.permutation" in proc.stdout and "mlp_jax permutation" in proc.stdout
  else:
    assert (tmp_path / "hlo.txt").read_text().count("HloModule") == 24
