"""Shared test setup: strict JAX numerics, tolerances by dtype, dtype and jit-mode fixtures, the
Hypothesis profiles (repeatable by default, HYPOTHESIS_PROFILE=explore for random draws)."""

import contextlib
import os

# The CLI keeps compiled programs in the user's cache folder; tests (and the processes they
# start) do not, except test_compilation_cache.py, which gives it a folder of its own.
os.environ["MLP_JAX_COMPILATION_CACHE"] = "off"

import hypothesis  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

# Hypothesis profiles. "default" (CI, the README's `pytest -n 2`): the same examples on every run
# (derandomize) and no example database, so no `.hypothesis/` state can make one clone fail where
# another passes. HYPOTHESIS_PROFILE=explore draws fresh random examples, still without a
# database: for hunting new failures when asked, never for CI. Every test file's `settings(...)`
# inherits these; pytest's --hypothesis-profile overrides the variable.
hypothesis.settings.register_profile("default", derandomize=True, database=None, print_blob=True)
hypothesis.settings.register_profile("explore", derandomize=False, database=None, print_blob=True)
HYPOTHESIS_PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "default")
hypothesis.settings.load_profile(HYPOTHESIS_PROFILE)
if HYPOTHESIS_PROFILE == "default":
  # Hypothesis (>= 6.131) also draws now and then from the constants in the project's modules
  # that happen to be imported (under xdist, whatever a worker ran before), cached in
  # `.hypothesis/constants/`: derandomized draws would follow the schedule, and every run would
  # write that folder. A private hook, so guarded: without it Hypothesis keeps its own behaviour.
  from hypothesis.internal.conjecture import providers as _providers
  if hasattr(_providers, "_get_local_constants") and hasattr(_providers, "_local_constants"):
    _providers._get_local_constants = lambda: _providers._local_constants  # the empty pool

# Catch accidental broadcasts (a bias gradient of the wrong rank) and silent dtype promotion.
jax.config.update("jax_numpy_rank_promotion", "raise")
jax.config.update("jax_numpy_dtype_promotion", "strict")
# float32 oracle comparisons must hold on GPU/TPU too, where the default matmul is lower precision.
jax.config.update("jax_default_matmul_precision", "highest")

# Relative-error bars against the oracle: the library's, named once (test_oracle holds them to
# the spec's 1e-5 and 1e-12).
from mlp_jax.oracle.check import RTOL as _LIBRARY_RTOL  # noqa: E402

RTOL = {dtype.name: bar for dtype, bar in _LIBRARY_RTOL.items()}

DTYPES = ["float32", "float64"]


@pytest.fixture(params=DTYPES)
def dtype(request):
  """Each dtype in turn; float64 runs inside `jax.enable_x64`, which ends with the test."""
  with (jax.enable_x64(True) if request.param == "float64" else contextlib.nullcontext()):
    yield jnp.dtype(request.param)


@pytest.fixture
def rtol(dtype):
  return RTOL[dtype.name]


def call(fn, jit_mode, *args, **kwargs):
  """Call fn compiled (`jax.jit`) or op by op (`jax.disable_jit`)."""
  if jit_mode == "jit":
    return jax.jit(fn)(*args, **kwargs)
  with jax.disable_jit():
    return fn(*args, **kwargs)


@contextlib.contextmanager
def count_compiles():
  """Counts XLA compilations in the block through JAX's public monitoring events.

      with count_compiles() as compiles:
        step(...)
      assert compiles() == 1
  """
  events = []

  def listener(event, duration, **kwargs):
    if event == "/jax/core/compile/backend_compile_duration":
      events.append(duration)

  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    yield lambda: len(events)
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)


def make_batch(seed, layer_sizes, m, dtype, scale=1.0):
  """Random inputs (m, n) of the dtype and labels (m,) covering 0..K-1 where m allows."""
  rng = np.random.default_rng(seed)
  x = (scale * rng.standard_normal((m, layer_sizes[0]))).astype(dtype)
  y = rng.integers(0, layer_sizes[-1], size=m).astype(np.int32)
  return jnp.asarray(x), jnp.asarray(y)


# The small net of the training tests (test_step, test_epoch, test_fit, test_optimizers, test_run,
# test_evaluation): 12 features, 16 hidden units, 5 classes.
TRAIN_SIZES = (12, 16, 5)


def train_batch(n=50, seed=0, dtype=jnp.float32):
  """A batch for `TRAIN_SIZES`: inputs (n, 12) of the dtype and labels (n,) in 0..4."""
  return make_batch(seed, TRAIN_SIZES, n, dtype)


def shape_id(shape):
  """A parametrize id for a ((layer sizes), m) case, e.g. "256x256x10-m37"."""
  return "x".join(map(str, shape[0])) + f"-m{shape[1]}"


def copy_tree(tree):
  """Fresh device buffers for every leaf: for calls that donate their inputs."""
  return jax.tree.map(jnp.array, tree)


def wait_for_epochs(out, proc, epochs: int, timeout: float = 120.0) -> None:
  """Until the run in folder `out` has a checkpoint of at least `epochs` epochs (`proc`, the
  process training it, must still be running)."""
  import time

  from mlp_jax import CheckpointError, load_run
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    assert proc.poll() is None, proc.communicate()
    try:
      if load_run(out / "checkpoint.npz").state.epochs_done >= epochs:
        return
    except CheckpointError:
      pass
    time.sleep(0.05)
  raise AssertionError("the run did not reach its epochs in time")


def trees_bit_equal(a, b) -> bool:
  """Every leaf pair equal bit for bit (same values; for floats, NaNs aside)."""
  return all(np.array_equal(u, v) for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def tree_rel_errors(actual, reference, scale=None):
  """Relative error of each leaf pair, as a list; with `scale` (a tree like `reference`, e.g.
  `gradient_scale`) each denominator is floored at that leaf's norm."""
  from mlp_jax import relative_error
  scales = [None] * len(jax.tree.leaves(reference)) if scale is None else jax.tree.leaves(scale)
  return [relative_error(a, r, s)
          for a, r, s in zip(jax.tree.leaves(actual), jax.tree.leaves(reference), scales)]


def assert_tree_close(actual, reference, rtol, scale=None):
  """Same structure, shapes and dtypes, and every leaf within rtol (`tree_rel_errors`)."""
  assert jax.tree.structure(actual) == jax.tree.structure(reference)
  for a, r in zip(jax.tree.leaves(actual), jax.tree.leaves(reference)):
    assert a.shape == r.shape and a.dtype == r.dtype, (a.shape, a.dtype, r.shape, r.dtype)
  if scale is not None:
    assert jax.tree.structure(scale) == jax.tree.structure(reference)
  errors = tree_rel_errors(actual, reference, scale)
  assert max(errors) <= rtol, errors


@pytest.fixture
def standard_promotion():
  """optax mixes int32 step counts with floats: allow JAX's standard promotion for its tests."""
  with jax.numpy_dtype_promotion("standard"):
    yield
