"""Shared test setup: strict JAX numerics, tolerances by dtype, dtype and jit-mode fixtures, the
Hypothesis profiles (repeatable by default, HYPOTHESIS_PROFILE=explore for random draws), and every
helper more than one test file uses (test files import from here, never from each other)."""

import contextlib
import os

# The CLI keeps compiled programs in the user's cache folder; tests (and the processes they
# start) do not, except test_compilation_cache.py, which gives it a folder of its own.
os.environ["MLP_JAX_COMPILATION_CACHE"] = "off"

import hypothesis  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
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


def trees_bit_equal(a, b) -> bool:
  """Every leaf pair equal bit for bit (same values; for floats, NaNs aside)."""
  return all(np.array_equal(u, v) for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def assert_bits_equal(actual, expected):
  """Same tree structure, and every leaf with the same shape, dtype and bytes."""
  assert jax.tree.structure(actual) == jax.tree.structure(expected)
  for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected)):
    a, e = np.asarray(a), np.asarray(e)
    assert a.shape == e.shape and a.dtype == e.dtype, (a.shape, a.dtype, e.shape, e.dtype)
    assert a.tobytes() == e.tobytes()


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


# ------------------------------------------- hidden activations (test_activations, test_outputs)


def forward_with_derivatives(params, x, act):
  """The forward pass with every hidden layer's activation `act` (core/activations.py): the
  layers' inputs [x, A_1, ..., A_{L-1}], the hidden layers' g'(H_l) (what the backward pass
  reads in place of the ReLU masks), and the top layer's Z (m, K)."""
  from mlp_jax.core import model
  activations, derivatives = [x], []
  for layer in params[:-1]:
    h = model.affine(layer, activations[-1])
    activations.append(act.forward(h))
    derivatives.append(act.derivative(h, activations[-1]))
  return activations, derivatives, model.affine(params[-1], activations[-1])


# ------------------------------- saved files (test_pytree_file, test_checkpoint, test_atomic_file)

CHECKPOINT_SIZES = (4, 8, 3)  # the small net these files hold
OPTIMIZERS = {
    "adam": lambda: optax.adam(1e-2),
    "sgd_momentum": lambda: optax.sgd(1e-2, momentum=0.9),
}


def trained_state(opt_name, sizes=CHECKPOINT_SIZES, dtype=jnp.float32, steps=2):
  """Params and optimizer state after a few updates, so no leaf is trivially zero."""
  import mlp_jax as mj
  opt = OPTIMIZERS[opt_name]()
  params = mj.init_params(jax.random.PRNGKey(0), sizes, dtype)
  state = opt.init(params)
  for _ in range(steps):
    updates, state = opt.update(params, state, params)  # params as stand-in gradients
    params = optax.apply_updates(params, updates)
  return opt, params, state


def refused(path, *needles, **load_kwargs) -> str:
  """Loads `path`, expecting one one-line CheckpointError naming the file and each needle."""
  import mlp_jax as mj
  from mlp_jax.io.checkpoint import load_checkpoint
  with pytest.raises(mj.CheckpointError) as info:
    load_checkpoint(path, **load_kwargs)
  message = str(info.value)
  assert isinstance(info.value, ValueError)
  assert str(path) in message and "\n" not in message, message
  for needle in needles:
    assert needle in message, message
  return message


def save_adam_checkpoint(folder):
  """A checkpoint with adam state for (64, 128, 10) in `folder`: its path, the optimizer state's
  template, and its bytes."""
  from mlp_jax.io.checkpoint import save_checkpoint
  opt, params, state = trained_state("adam", sizes=(64, 128, 10), steps=1)
  path = save_checkpoint(folder / "good.npz", params, state, epoch=3,
                         rng_key=jax.random.PRNGKey(5))
  return path, opt.init(params), path.read_bytes()


@pytest.fixture
def saved(tmp_path, standard_promotion):
  """`save_adam_checkpoint` in the test's folder: path, optimizer template, bytes."""
  return save_adam_checkpoint(tmp_path)


# ------------------------------------------------ USPS-like data (test_usps_files, test_transforms,
# test_sources)


def usps_like(seed, m):
  """m rows of 256 values k/16 (exact in binary and as ESL's "%.4f" of 2v - 1), labels 0..9."""
  from mlp_jax.io.data_checks import Dataset
  rng = np.random.default_rng(seed)
  x = (rng.integers(0, 17, size=(m, 256)) / 16).astype(np.float32)
  return Dataset(x, (np.arange(m) % 10).astype(np.int32))


def assert_splits_equal(got, want):
  """Each part of two splits: the same x and y, as float32 and int32."""
  for part_got, part_want in zip(got, want):
    np.testing.assert_array_equal(part_got.x, part_want.x)
    np.testing.assert_array_equal(part_got.y, part_want.y)
    assert part_got.x.dtype == np.float32 and part_got.y.dtype == np.int32


# -------------- the `mlp-jax` command (test_cli, test_train_command, test_run_folder, test_signals)

EXIT_ERROR, EXIT_STORAGE, EXIT_INTERRUPTED = 2, 74, 130  # bad input, an OS fault, Ctrl-C
# A 3-epoch run on 300 synthetic rows: seconds.
TINY = ["--dataset", "synthetic", "--num-samples", "300", "--hidden", "8", "--epochs", "3",
        "--batch-size", "32", "--no-progress"]
# The same at a constant rate and a stated validation fraction (test_train_command,
# test_run_folder): a run a resume may lengthen, whose settings the refusals quote.
TINY_CONSTANT = ["--dataset", "synthetic", "--num-samples", "300", "--hidden", "8", "--epochs",
                 "3", "--batch-size", "32", "--val-fraction", "0.2", "--schedule", "constant",
                 "--no-progress"]


def run_cli(args, capsys):
  """`cli.main` on `args` (each made a str) in this process: (exit code, stdout, stderr)."""
  from mlp_jax.tools import cli
  code = cli.main([str(a) for a in args])
  out, err = capsys.readouterr()
  return code, out, err


def one_error_line(err: str) -> str:
  """The command's error output, checked to be the one line "mlp-jax: error: ...": that line."""
  lines = err.splitlines()
  assert len(lines) == 1 and lines[0].startswith("mlp-jax: error: "), err
  return lines[0]


def with_options(args, **changes):
  """TINY-like arguments with options replaced (value None: the option removed)."""
  out, i = [], 0
  while i < len(args):
    key = args[i][2:].replace("-", "_")
    takes_value = i + 1 < len(args) and not args[i + 1].startswith("--")
    if key in changes:
      i += 2 if takes_value else 1
      continue
    out.append(args[i])
    if takes_value:
      out.append(args[i + 1])
    i += 2 if takes_value else 1
  for key, value in changes.items():
    if value is None:
      continue
    out.append("--" + key.replace("_", "-"))
    if value is not True:
      out.extend(value if isinstance(value, list) else [value])
  return out


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


# ------------------------------------- networks: targets by output, weighted scales (test_networks)


def make_targets(seed, output, m, k, dtype):
  """Targets of the kind `output` (a name of `mj.OUTPUTS`) takes, for m rows and K outputs: int
  labels (m,) in 0..K-1 (softmax), 0/1 indicators (m, K) (sigmoid), normal values of sd 2
  (m, K) (squared error), Poisson(2) counts (m, K), zeros included (log link); real ones in
  `dtype`."""
  rng = np.random.default_rng(seed)
  if output == "softmax_cross_entropy":
    return jnp.asarray(rng.integers(0, k, m).astype(np.int32))
  draw = {"sigmoid_binary_cross_entropy": lambda: rng.integers(0, 2, (m, k)),
          "identity_squared_error": lambda: rng.normal(0.0, 2.0, (m, k)),
          "poisson_log_link": lambda: rng.poisson(2.0, (m, k))}[output]
  return jnp.asarray(draw().astype(np.dtype(dtype)))


def network_batch(seed, layer_sizes, m, dtype, output, scale=1.0):
  """`make_batch`'s inputs (m, n) with the targets of `output` (`make_targets`)."""
  x, _ = make_batch(seed, layer_sizes, m, dtype, scale)
  return x, make_targets(seed + 1, output, m, layer_sizes[-1], dtype)


def weighted_gradient_scale(params, x, y, coef, penalty, **network):
  """The magnitude of the terms of sum_i coef_i dl_i/dtheta + penalty W (biases unpenalised):
  sum_i |coef_i| S_i + |penalty| |W|, S_i each example's `per_example_gradient_scale` (the
  backward pass on magnitudes is linear in its rows). coef = s / sum(s), penalty = lambda /
  sum(s) for the weighted objective (E26); coef = c / m, penalty = lambda / m for a clipped mean
  (E15); coef = 1 / m, penalty = lambda / m give `gradient_scale`. `network`: activation=,
  output=."""
  from mlp_jax.core.model import Dense
  from mlp_jax.oracle.check import per_example_gradient_scale
  per = per_example_gradient_scale(params, x, y, **network)
  coef = jnp.abs(jnp.asarray(coef, params[0].w.dtype))
  return tuple(Dense(w=jnp.einsum("m,mij->ij", coef, s.w) + abs(penalty) * jnp.abs(p.w),
                     b=jnp.einsum("m,mj->j", coef, s.b))
               for s, p in zip(per, params))



def release_compiled_programs():
  """Drops every compiled program JAX holds (`jax.clear_caches`) and collects the garbage."""
  import gc
  jax.clear_caches()
  gc.collect()


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs_per_file():
  """Each test file's compiled programs are dropped when it ends: a worker that runs the whole
  suite would otherwise keep every executable it ever built, several GB over the suite, which
  with two workers has exhausted this 24 GB machine (XLA's compiler then crashes)."""
  yield
  release_compiled_programs()
