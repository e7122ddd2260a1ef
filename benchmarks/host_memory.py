"""An opt-in tuning of the host allocator for large batches on the XLA CPU backend.

At large batches (m = 16384 on the 256-256-10 network) each compiled gradient call asks the
host for ~49 MiB of scratch memory. glibc serves a request that large with a fresh `mmap` and
returns it with `munmap` afterwards, so every call pays ~12,500 minor page faults: about a third
of its time on a 2-core VM (`benchmarks/reproduce/page_faults.py`). `retain_freed_memory()`
tells glibc to serve such requests from its heap and keep freed memory for the next call. It
changes the whole process (memory is not returned to the OS until exit), so it is never done
implicitly; call it once at the start of a training or benchmark process. The environment
variables `MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=4294967296 MALLOC_TOP_PAD_=268435456` do the
same before start-up.

It lives beside the benchmarks that use it (grads.py, reproduce/page_faults.py), not in the
library: a library should not change its host process's allocator, and the environment variables
above serve a user's own training process as well.
"""

import ctypes
import ctypes.util

_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_MAX = -4


def retain_freed_memory(top_pad_bytes: int = 256 << 20) -> bool:
  """Keep freed heap memory for reuse (glibc only). Returns False where glibc is absent."""
  name = ctypes.util.find_library("c")
  try:
    libc = ctypes.CDLL(name)
    mallopt = libc.mallopt
  except (OSError, AttributeError, TypeError):
    return False
  mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
  ok = mallopt(_M_MMAP_MAX, 0)                      # no mmap for large blocks: use the heap
  ok &= mallopt(_M_TRIM_THRESHOLD, (1 << 31) - 1)   # never give freed memory back
  ok &= mallopt(_M_TOP_PAD, int(top_pad_bytes))     # grow the heap in large steps
  return bool(ok)
