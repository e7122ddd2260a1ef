"""Every compiled program the library runs lowers for GPU (CUDA, ROCm) and TPU, checked on a
CPU-only machine: JAX lowers a jitted function for another platform without its device
(`fn.trace(*args).lower(lowering_platforms=(platform,))`).

For each program of `PROGRAMS` and each platform of `PLATFORMS` the lowered module must hold no
custom call outside the platform-neutral `NEUTRAL_TARGETS` (a LAPACK or other CPU-only kernel),
no host callback, no host transfer, and carry no `xla_cpu_*` compiler option; the bfloat16
programs must feed bfloat16 operands to every dot. The last tests hand the same checks programs
built to fail them.

The library lowered is the one a GPU or TPU host builds: `jax.default_backend()`, which the
epoch reads when it is built to choose its XLA options (`epoch.compiler_options`), is patched
to the platform's backend while the program is built, and each program is traced with JAX's
defaults (the suite's "highest" matmul precision and strict dtype promotion lifted).
"""

import contextlib
import functools
import re
from typing import Any, Callable, Dict, List, NamedTuple, Tuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import mlp_jax as mj
from mlp_jax.core import backprop, curvature, curvature_products, gradient_moments, model
from mlp_jax.core import per_example
from mlp_jax.core.network import make_network
from mlp_jax.training import epoch as training_epoch
from mlp_jax.training import evaluation, permutation
from conftest import TRAIN_SIZES as SIZES, train_batch

PLATFORMS = ("cuda", "rocm", "tpu")
BACKEND = {"cuda": "gpu", "rocm": "gpu", "tpu": "tpu"}  # what jax.default_backend() says there

# (program, platform) -> why it cannot lower there: an expected failure, strict (it must fail).
# Empty: every program lowers for every platform.
CANNOT_LOWER: Dict[Tuple[str, str], str] = {}

# Custom-call targets every platform's compiler knows (sharding annotations of the partitioner).
NEUTRAL_TARGETS = frozenset({"Sharding", "SPMDFullToShardShape", "SPMDShardToFullShape",
                             "annotate_device_placement"})

M = 8  # rows of every batch


# ------------------------------------------------------------------------------- the checks

_TARGET = re.compile(r'custom_call\s*@([\w.$-]+)|call_target_name\s*=\s*"([^"]+)"')
# xla_python_cpu_callback, xla_ffi_python_cpu_callback, their GPU twins, host_callback, ...
_HOST_CALLBACK = re.compile(r"\w*(?:python\w*_callback|host_callback)\w*")
_HOST_TRANSFER = re.compile(r"is_host_transfer\s*=\s*true|stablehlo\.(?:infeed|outfeed)\b")
_DOT = re.compile(r"stablehlo\.dot(?:_general)?\b")
_DOT_OPERANDS = re.compile(r":\s*\(tensor<([^>]*)>,\s*tensor<([^>]*)>\)\s*->")


def custom_call_targets(text: str) -> List[str]:
  """The target of every custom call in a lowered module's StableHLO text, in order."""
  return [a or b for a, b in _TARGET.findall(text)]


def platform_problems(text: str, platform: str) -> List[str]:
  """What in a lowered module's StableHLO text keeps it from `platform`: each custom call
  outside `NEUTRAL_TARGETS`, each host callback, a host transfer; [] when none."""
  problems = [f"{platform}: custom_call target {target!r} is not platform-neutral "
              f"(allowed: {sorted(NEUTRAL_TARGETS)})"
              for target in sorted(set(custom_call_targets(text)) - NEUTRAL_TARGETS)]
  problems += [f"{platform}: host callback {name!r}"
               for name in sorted(set(_HOST_CALLBACK.findall(text)))]
  problems += [f"{platform}: custom_call without a target read: {line.strip()[:120]}"
               for line in text.splitlines()
               if "custom_call" in line and not _TARGET.search(line)]
  if _HOST_TRANSFER.search(text):
    problems.append(f"{platform}: host transfer (infeed, outfeed or send/recv to the host)")
  return problems


def dot_dtype_problems(text: str, dtype: str = "bf16") -> List[str]:
  """Each dot whose operands are not both of element type `dtype` (StableHLO's name, e.g.
  "bf16"); a problem too when the module has no dot at all."""
  problems, dots = [], 0
  for line in text.splitlines():
    if not _DOT.search(line):
      continue
    dots += 1
    found = _DOT_OPERANDS.search(line)
    types = [t.split("x")[-1] for t in found.groups()] if found else None
    if types != [dtype, dtype]:
      problems.append(f"dot on {types or 'unread operands'}, not {dtype}: {line.strip()[:160]}")
  return problems if dots else [f"no dot in the module (expected {dtype} ones)"]


def _lowering_detail(lowered: Any, name: str) -> Any:
  """A detail of what `lowered` hands the compiler. JAX keeps it internal (`Lowered._lowering`:
  `_compiler_options_kvs`, `compile_args`): a JAX that moves it fails here, by name."""
  lowering = getattr(lowered, "_lowering", None)
  if name == "compiler_options":
    if not hasattr(lowering, "_compiler_options_kvs"):
      pytest.fail(f"jax {jax.__version__}: Lowered._lowering._compiler_options_kvs is gone")
    return dict(lowering._compiler_options_kvs or ())
  args = getattr(lowering, "compile_args", None)
  if not isinstance(args, dict) or name not in args:
    pytest.fail(f"jax {jax.__version__}: Lowered._lowering.compile_args[{name!r}] is gone")
  return args[name]


def cpu_options(lowered: Any) -> Dict[str, Any]:
  """The XLA options of the CPU compiler (`xla_cpu_*`) the lowered program is compiled with."""
  options = _lowering_detail(lowered, "compiler_options")
  return {k: v for k, v in options.items() if k.startswith("xla_cpu")}


@contextlib.contextmanager
def _jax_defaults():
  """JAX's own matmul precision and dtype promotion, as a user's program is traced (the suite
  runs with "highest" and "strict")."""
  with jax.default_matmul_precision(None), jax.numpy_dtype_promotion("standard"):
    yield


def lower(fn: Any, args: tuple, kwargs: dict, platform: str) -> Any:
  """`fn` (a jitted object) traced on the arguments and lowered for `platform`."""
  with _jax_defaults():
    return fn.trace(*args, **kwargs).lower(lowering_platforms=(platform,))


# ------------------------------------------------------------------------------- the programs


class Program(NamedTuple):
  """A compiled program of the library and arguments it runs on."""
  fn: Any                 # the library's jitted object itself
  args: tuple
  kwargs: dict = {}
  bf16: bool = False      # built with compute_dtype=bfloat16: every dot takes bf16 operands


@functools.lru_cache(maxsize=None)
def _batch():
  """Parameters of the (12, 16, 5) net, a batch of M rows and a PRNG key."""
  x, y = train_batch(M)
  return mj.init_params(jax.random.PRNGKey(0), SIZES), x, y, jax.random.PRNGKey(1)


def _opt() -> optax.GradientTransformation:
  """A fresh optimizer object: `make_epoch` builds anew for it rather than reuse its cache."""
  return optax.sgd(0.1, momentum=0.9)


def _core(fn: Callable, *args: Any, **kwargs: Any) -> Callable[[], Program]:
  """A program on (params, x, y, *args)."""
  def build() -> Program:
    params, x, y, _ = _batch()
    return Program(fn, (params, x, y) + args, kwargs, kwargs.get("compute_dtype") is not None)
  return build


def _eager(name: str, compiled: Any, *args: Any, **kwargs: Any) -> Dict[str, Callable]:
  """Both forms of an eager public call's `eager.Compiled`: plain and flagged."""
  return {name: _core(compiled.plain, *args, **kwargs),
          f"{name}/flagged": _core(compiled.flagged, *args, **kwargs)}


def _with_key(fn: Callable, **kwargs: Any) -> Callable[[], Program]:
  """A program on (params, x, y, l2, key)."""
  def build() -> Program:
    params, x, y, key = _batch()
    return Program(fn, (params, x, y, 0.1, key), kwargs)
  return build


def _direction(params):
  return jax.tree.map(lambda leaf: jnp.full_like(leaf, 0.5), params)


def _product(full: bool, activation: str) -> Callable[[], Program]:
  def build() -> Program:
    params, x, y, _ = _batch()
    return Program(curvature_products.PRODUCT.plain, (params, x, y, _direction(params), 0.1),
                   {"full": full, "net": make_network(activation)})
  return build


def _training(make: Callable[[optax.GradientTransformation], Callable],
              last: str = "key", bf16: bool = False) -> Callable[[], Program]:
  """A step or epoch of `make(optimizer)` on (params, opt_state, x, y[, key or keys])."""
  def build() -> Program:
    params, x, y, key = _batch()
    opt = _opt()
    tail = {"key": (key,), "keys": (jax.random.split(key, 2),), "none": ()}[last]
    return Program(make(opt), (params, opt.init(params), x, y) + tail, {}, bf16)
  return build


def _two_device_mesh():
  """A 1-D "data" mesh of 2 devices: the devices where this process has two, else an
  AbstractMesh (lowering needs the mesh's shape, not its devices)."""
  if jax.device_count() >= 2:
    return mj.make_mesh(2)
  try:
    return jax.sharding.AbstractMesh((2,), ("data",))
  except TypeError as error:  # older JAX spells AbstractMesh otherwise
    pytest.skip(f"no 2-device mesh: this process has {jax.device_count()} device(s) and "
                f"jax {jax.__version__} builds no AbstractMesh((2,), ('data',)): {error}")


def _data_parallel_step() -> Program:
  params, x, y, _ = _batch()
  opt = _opt()
  step = mj.make_data_parallel_step(opt, _two_device_mesh(), 0.1)
  return Program(step.compiled, (params, opt.init(params), x, y))  # its jitted core


_DP = mj.DPConfig(clip_norm=1.0, noise_multiplier=1.0)
_TANH = make_network("tanh")  # a curved activation: the Hessian's own-curvature terms

PROGRAMS: Dict[str, Callable[[], Program]] = {
    "objective_and_grads": _core(backprop.objective_and_grads_jit, 0.1),
    "objective_and_grads/bf16": _core(backprop.objective_and_grads_jit, 0.1,
                                      compute_dtype=jnp.bfloat16),
    "objective_and_grads/flagged": _core(backprop._loss_and_grads_flagged, 0.1),
    **_eager("per_sample_grads", per_example._PER_SAMPLE_GRADS),
    **_eager("global_norms", per_example.GLOBAL_NORMS),
    **_eager("clipped_mean", per_example.CLIPPED_MEAN, 1.0, 0.1),
    **_eager("layer_norms", per_example._LAYER_NORMS),
    **_eager("moments", gradient_moments.MOMENTS),
    **_eager("ggn_diagonal/exact", curvature.GGN_DIAGONAL, 0.1, None),
    "ggn_diagonal/sampled": _with_key(curvature.GGN_DIAGONAL.plain, samples=2),
    **_eager("hessian_diagonal", curvature.HESSIAN_DIAGONAL, 0.1),
    "hessian_diagonal/tanh": _core(curvature.HESSIAN_DIAGONAL.plain, 0.1, net=_TANH),
    **_eager("kronecker", curvature.KRONECKER, None),
    **_eager("per_sample_ggn", curvature.PER_SAMPLE_GGN),
    "ggn_product": _product(False, "relu"),
    "hessian_product": _product(True, "relu"),
    "hessian_product/tanh": _product(True, "tanh"),
    "epoch": _training(lambda opt: mj.make_epoch(opt, 3, 0.1)),
    "epoch/dp": _training(lambda opt: mj.make_epoch(opt, 3, 0.1, dp=_DP)),
    "epochs": _training(lambda opt: training_epoch.build_epoch(
        opt, mj.FitSettings(batch_size=3, l2=0.1)).epochs, last="keys"),
    "train_step": _training(lambda opt: mj.make_train_step(opt, 0.1), last="none"),
    "train_step/bf16": _training(lambda opt: mj.make_train_step(
        opt, 0.1, compute_dtype=jnp.bfloat16), last="none", bf16=True),
    "data_parallel_step": _data_parallel_step,
    "evaluate": lambda: Program(evaluation._sums, _batch()[:3], {"chunk": M}),
    "predict": lambda: Program(evaluation._predict_jit, _batch()[:2]),
    "init_params": lambda: Program(model._init_params,
                                   (_batch()[3], SIZES, jnp.dtype("float32"))),
    # The permutation has no jitted object of its own (the epoch draws it inside its program):
    # jitted here at the USPS training size, two radix passes.
    "permutation": lambda: Program(jax.jit(permutation.permutation, static_argnums=1),
                                   (_batch()[3], 7291)),
    "epoch_keys": lambda: Program(training_epoch._fold_in_range,
                                  (_batch()[3], np.uint32(4), 3)),
}


def _cases():
  for name in PROGRAMS:
    for platform in PLATFORMS:
      reason = CANNOT_LOWER.get((name, platform))
      marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
      yield pytest.param(name, platform, marks=marks, id=f"{name}-{platform}")


def test_every_cannot_lower_entry_names_a_case():
  assert set(CANNOT_LOWER) <= {(n, p) for n in PROGRAMS for p in PLATFORMS}


@pytest.mark.parametrize("name, platform", list(_cases()))
def test_program_lowers_for_the_platform(monkeypatch, name, platform):
  """It lowers; no CPU-only custom call, host callback or host transfer; no xla_cpu_* option;
  bf16 dots where built for bf16."""
  monkeypatch.setattr(jax, "default_backend", lambda: BACKEND[platform])
  with _jax_defaults():
    program = PROGRAMS[name]()
  lowered = lower(program.fn, program.args, program.kwargs, platform)
  text = lowered.as_text()
  assert platform_problems(text, platform) == []
  assert _lowering_detail(lowered, "host_callbacks") == []
  assert cpu_options(lowered) == {}
  if program.bf16:
    assert dot_dtype_problems(text, "bf16") == []


# ------------------------------------------------------------------- the checks can fail


def _cpu_only_kernel(v):
  """A custom call only the CPU has (LAPACK's LU): it lowers for any platform, compiles on CPU
  alone."""
  return jax.ffi.ffi_call("lapack_sgetrf_ffi", jax.ShapeDtypeStruct(v.shape, v.dtype))(v)


@pytest.mark.parametrize("platform", PLATFORMS)
def test_a_cpu_only_custom_call_is_reported(platform):
  x = jnp.zeros((4, 4), jnp.float32)
  text = lower(jax.jit(_cpu_only_kernel), (x,), {}, platform).as_text()
  problems = platform_problems(text, platform)
  assert len(problems) == 1 and "'lapack_sgetrf_ffi' is not platform-neutral" in problems[0]


@pytest.mark.parametrize("callback", ["pure_callback", "debug_callback"])
def test_a_host_callback_is_reported(callback):
  """A host callback does not lower for a device this machine lacks; its CPU module, checked
  as if for CUDA, names the callback; and the lowered program lists it."""
  def fn(v):
    if callback == "pure_callback":
      return jax.pure_callback(np.sin, jax.ShapeDtypeStruct(v.shape, v.dtype), v)
    jax.debug.callback(print, v)
    return v + 1
  x = jnp.zeros((3,), jnp.float32)
  with pytest.raises(ValueError, match="different from the lowering platform cuda"):
    lower(jax.jit(fn), (x,), {}, "cuda")
  lowered = lower(jax.jit(fn), (x,), {}, "cpu")
  problems = platform_problems(lowered.as_text(), "cuda")
  assert any("host callback 'xla_ffi_python_cpu_callback'" in p for p in problems), problems
  assert any("'xla_ffi_python_cpu_callback' is not platform-neutral" in p for p in problems)
  assert _lowering_detail(lowered, "host_callbacks") != []


def test_a_float32_dot_fails_the_bf16_check():
  text = lower(*PROGRAMS["objective_and_grads"]()[:3], "cuda").as_text()
  problems = dot_dtype_problems(text, "bf16")
  assert problems and all(p.startswith("dot on ['f32', 'f32'], not bf16") for p in problems)
  assert dot_dtype_problems("module {}", "bf16") == ["no dot in the module (expected bf16 ones)"]


def test_an_epoch_built_on_cpu_carries_the_cpu_options(monkeypatch):
  """The option check reads what the compiler gets: the epoch built for CPU, lowered anywhere,
  carries `CPU_COMPILER_OPTIONS` (so it is built for its platform, as the main test does)."""
  monkeypatch.setattr(jax, "default_backend", lambda: "cpu")
  if training_epoch.compiler_options() is None:
    pytest.skip(f"jax {jax.__version__} takes no CPU_COMPILER_OPTIONS: nothing to see")
  with _jax_defaults():
    program = PROGRAMS["epoch"]()
  for platform in ("cpu", "cuda"):
    lowered = lower(program.fn, program.args, program.kwargs, platform)
    assert cpu_options(lowered) == training_epoch.CPU_COMPILER_OPTIONS
