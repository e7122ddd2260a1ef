"""A persistent cache of compiled XLA programs, so that a second process compiles nothing.

    mj.enable_compilation_cache()      # before training; `mlp-jax` does this itself

A fresh process pays for compiling every program it runs: on a 2-core CPU, 0.9-1.2 s for
`init_params` (the PRNG's sampler) and 0.3-0.4 s for the first gradient, about as much as
`import jax` itself (docs/benchmarks.md, "Cold start"). JAX can keep compiled programs on disk
and load them in the next process; it is off unless configured, and by default keeps only
programs that took over a second to compile, which none of these does. This turns it on for
every program, in a folder of the user's cache directory.

The folder is per JAX version and per CPU (its model and instruction-set flags), so an
executable compiled for one CPU is never offered to another that shares the home directory.
A cache JAX was already given (`JAX_COMPILATION_CACHE_DIR` or `jax_compilation_cache_dir`) is
left as it is. `MLP_JAX_COMPILATION_CACHE=off` turns this off; `MLP_JAX_COMPILATION_CACHE=PATH`
moves it. A folder that cannot be created leaves the cache off: it is a speed-up, never a
reason to fail. Cached programs are the same compiled code: results are bit-identical.
"""

import hashlib
import importlib.util
import os
import platform
from typing import Optional

import jax

ENV = "MLP_JAX_COMPILATION_CACHE"
MAX_BYTES = 512 * 2**20  # with `filelock` installed, JAX evicts least recently used beyond this


def default_cache_dir() -> str:
  """`$XDG_CACHE_HOME/mlp_jax/xla` (by default `~/.cache/mlp_jax/xla`)."""
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(base, "mlp_jax", "xla")


def machine_tag() -> str:
  """JAX's version, the architecture and a digest of the CPU's model and feature flags."""
  cpu = platform.processor()
  try:
    with open("/proc/cpuinfo") as f:
      cpu = "".join(sorted({line for line in f if line.startswith(("model name", "flags"))}))
  except OSError:
    pass
  digest = hashlib.sha256(cpu.encode()).hexdigest()[:12]
  return f"jax-{jax.__version__}-{platform.machine()}-{digest}"


def enable_compilation_cache(path: Optional[str] = None) -> Optional[str]:
  """Keeps every compiled program on disk for later processes; returns the folder, or None.

  Args:
    path: the cache's root folder; by default `$MLP_JAX_COMPILATION_CACHE`, else
      `default_cache_dir()`. Programs go to a subfolder named by `machine_tag()`.

  Returns:
    The folder in use: JAX's own if one was configured, else the one set here; None when
    `MLP_JAX_COMPILATION_CACHE` is `off` (or `0`) or the folder could not be created.
  """
  if jax.config.jax_compilation_cache_dir:
    return jax.config.jax_compilation_cache_dir
  setting = os.environ.get(ENV, "")
  if path is None and setting.lower() in ("off", "0", "false", "no"):
    return None
  folder = os.path.join(path or setting or default_cache_dir(), machine_tag())
  try:
    os.makedirs(folder, exist_ok=True)
  except OSError:
    return None
  from jax.experimental.compilation_cache import compilation_cache
  jax.config.update("jax_compilation_cache_dir", folder)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  if importlib.util.find_spec("filelock"):  # JAX's eviction needs it; without, no size cap
    jax.config.update("jax_compilation_cache_max_size", MAX_BYTES)
  compilation_cache.reset_cache()  # takes effect even after this process compiled something
  return folder
