"""What every benchmark script (here and in reproduce/) shares: timing, machine description, JSON
and markdown output."""

import datetime
import json
import os
import platform
import statistics
import time
from typing import Callable, Dict, List, Optional, Sequence

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
USPS_DEFAULT = None  # the copy bundled with the package; --usps PATH reads a file instead
# Environment variables that change timings, recorded with every result.
ENV_VARS = ("XLA_FLAGS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
            "JAX_ENABLE_X64", "JAX_PLATFORMS", "TF_CPP_MIN_LOG_LEVEL")


def _cpu_model() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def machine(**extra) -> Dict:
  """Machine, device, library versions and date, for the JSON of every benchmark; `extra`
  (e.g. other libraries' versions, thread counts) is merged in."""
  import jax
  import numpy as np
  import optax
  device = jax.devices()[0]
  return {
      "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      "platform": platform.platform(), "processor": _cpu_model(),
      "cpu_count": os.cpu_count(), "python": platform.python_version(),
      "jax": jax.__version__, "numpy": np.__version__, "optax": optax.__version__,
      "backend": jax.default_backend(), "device": getattr(device, "device_kind", str(device)),
      "device_count": jax.device_count(),
      "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
      "env": {k: v for k, v in os.environ.items() if k in ENV_VARS or k.startswith("MALLOC_")},
      **extra,
  }


def time_call(fn: Callable[[], object], *, repeats: int, warmup: int = 2,
              min_seconds: float = 0.0, max_seconds: Optional[float] = None) -> Dict:
  """Median and spread of `repeats` timed calls of fn (each blocked until ready), after warmup.

  Calls go on until there are `repeats` of them and `min_seconds` have passed, but stop once
  `max_seconds` have passed with at least 3 calls (for slow calls).

  Returns seconds: median, p10, p90, min, and the number of calls.
  """
  import jax
  for _ in range(warmup):
    jax.block_until_ready(fn())
  times: List[float] = []
  start = time.perf_counter()
  while len(times) < repeats or time.perf_counter() - start < min_seconds:
    if (max_seconds is not None and len(times) >= 3
        and time.perf_counter() - start > max_seconds):
      break
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t0)
  return summarize(times)


def summarize(times: Sequence[float]) -> Dict:
  """median, p10, p90, min (seconds) and the count of a list of timings."""
  times = sorted(times)
  q = lambda f: times[min(len(times) - 1, int(f * len(times)))]
  return {"median": statistics.median(times), "p10": q(0.1), "p90": q(0.9), "min": times[0],
          "calls": len(times)}


def donating_runner(step: Callable, params, opt_state, *args) -> Callable[[], object]:
  """A no-argument callable for `time_call`: each call runs
  `params, opt_state, out = step(params, opt_state, *args)` on state of its own (fresh copies,
  since `step` donates them) and returns `out`."""
  import jax
  import jax.numpy as jnp
  state = [jax.tree.map(jnp.copy, params), jax.tree.map(jnp.copy, opt_state)]

  def run():
    state[0], state[1], out = step(state[0], state[1], *args)
    return out
  return run


def square_matmul_gflops(size: int, timing: Dict, dtype="float32", numpy: bool = True) -> Dict:
  """GFLOP/s of a size x size matmul: jitted JAX and, with `numpy`, NumPy into a preallocated
  output; {name: timing dict plus size, flops, gflops}."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  rng = np.random.default_rng(0)
  a, b = (rng.standard_normal((size, size)).astype(dtype) for _ in range(2))
  stats = {}
  if numpy:
    out = np.empty_like(a)
    stats["numpy"] = time_call(lambda: np.matmul(a, b, out=out), **timing)
  ja, jb = jnp.asarray(a), jnp.asarray(b)
  matmul = jax.jit(jnp.matmul)
  stats["jax"] = time_call(lambda: matmul(ja, jb), **timing)
  flops = 2 * size ** 3
  return {name: dict(s, size=size, flops=flops, gflops=flops / s["median"] / 1e9)
          for name, s in stats.items()}


def planned_bytes(jitted, *args):
  """temp + output bytes XLA plans for jitted(*args), and the parts."""
  analysis = jitted.lower(*args).compile().memory_analysis()
  if analysis is None:
    return None
  parts = {k: int(getattr(analysis, f"{k}_size_in_bytes", 0))
           for k in ("temp", "output", "argument", "alias", "generated_code")}
  return dict(parts, peak_extra=parts["temp"] + parts["output"])


def markdown_table(header: Sequence[str], rows: Sequence[Sequence]) -> str:
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
  return "\n".join(lines)


def write_json(path: str, payload: Dict) -> None:
  """Writes payload to the JSON file `path` (one-space indents), creating its folder."""
  folder = os.path.dirname(path)
  if folder:
    os.makedirs(folder, exist_ok=True)
  with open(path, "w") as f:
    json.dump(payload, f, indent=1)


def write_results(name: str, payload: Dict, markdown: str, out_dir: str = RESULTS) -> None:
  """Writes out_dir/name.json and out_dir/name.md and prints the markdown."""
  write_json(os.path.join(out_dir, f"{name}.json"), payload)
  with open(os.path.join(out_dir, f"{name}.md"), "w") as f:
    f.write(markdown + "\n")
  print(markdown)
  print(f"\nwrote {os.path.join(out_dir, name)}.json and .md")


def add_args(parser):
  """The options every benchmark script takes: --quick and --out."""
  parser.add_argument("--quick", action="store_true",
                      help="a short run (under a minute) to check the script works")
  parser.add_argument("--out", default=RESULTS, help="folder for the JSON and markdown")
  return parser


def result_name(name: str, quick: bool) -> str:
  """The file stem of a result: quick runs get their own, so they never overwrite a full one."""
  return name + ("_quick" if quick else "")


def ms(seconds: float, digits: int = 3) -> str:
  """Seconds as milliseconds with `digits` significant digits."""
  return f"{1e3 * seconds:.{digits}g}"


def ms_spread(stats: Dict) -> str:
  """'median [p10-p90]' in ms, from a `time_call`/`summarize` dict."""
  return f"{ms(stats['median'])} [{ms(stats['p10'], 2)}-{ms(stats['p90'], 2)}]"


def try_import_torch():
  """(torch, None) if PyTorch imports, else (None, why): it is an optional benchmark peer."""
  try:
    import torch
  except Exception as e:  # ImportError, or a broken install
    return None, f"PyTorch not importable ({type(e).__name__}: {e})"
  return torch, None


def torch_mlp(torch, params, dtype=None):
  """A torch.nn.Sequential of Linear/ReLU holding copies of NumPy (w, b) pairs (w transposed to
  torch's (out, in)), so a PyTorch peer starts from exactly the same weights; in the pairs'
  dtype unless `dtype` is given."""
  layers = []
  for i, (w, b) in enumerate(params):
    linear = torch.nn.Linear(w.shape[0], w.shape[1])
    with torch.no_grad():
      linear.weight.copy_(torch.from_numpy(w.T.copy()))
      linear.bias.copy_(torch.from_numpy(b.copy()))
    layers.append(linear)
    if i < len(params) - 1:
      layers.append(torch.nn.ReLU())
  model = torch.nn.Sequential(*layers)
  return model.to(torch.from_numpy(params[0][0][:0]).dtype if dtype is None else dtype)


def torch_loss(torch, model, x, y, l2: float):
  """(E6) in PyTorch: mean cross-entropy plus l2/(2m) times the squared weights (no biases)."""
  logits = model(x)
  loss = torch.nn.functional.cross_entropy(logits, y)
  if l2:
    weights = [layer.weight for layer in model if isinstance(layer, torch.nn.Linear)]
    loss = loss + l2 / (2 * x.shape[0]) * sum((w * w).sum() for w in weights)
  return loss


def torch_params_numpy(torch, model):
  """The (w, b) pairs of a `torch_mlp`, as NumPy in mlp_jax's (fan_in, fan_out) layout."""
  return [(layer.weight.detach().numpy().T.copy(), layer.bias.detach().numpy().copy())
          for layer in model if isinstance(layer, torch.nn.Linear)]


def busy_note(threshold: float = 0.5):
  """A note when the 1-minute load average exceeds `threshold` per core, else None: BLAS and
  OpenMP thread pools (NumPy, PyTorch) slow down by orders of magnitude on shared cores."""
  if not hasattr(os, "getloadavg"):
    return None
  load, cores = os.getloadavg()[0], os.cpu_count() or 1
  if load <= threshold * cores:
    return None
  return (f"machine busy at start: load average {load:.1f} on {cores} cores; timings, NumPy's "
          "and PyTorch's above all, are not representative")
