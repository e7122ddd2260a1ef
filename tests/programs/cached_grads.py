"""One gradient computed after `enable_compilation_cache`: a fresh process for
test_compilation_cache (JAX's cache settings are per process).

    python cached_grads.py [FOLDER]

Prints the cache folder `enable_compilation_cache(FOLDER)` returns (None when off), then the
SHA-256 of the gradient's bytes, for 32 fixed inputs on the default 256-256-10 network.
"""

import hashlib
import sys

import jax
import numpy as np

import mlp_jax as mj


def main(args) -> None:
  print(mj.enable_compilation_cache(*args))
  params = mj.init_params(jax.random.PRNGKey(0))
  x = np.linspace(-1, 1, 32 * 256, dtype=np.float32).reshape(32, 256)
  g = mj.grads(params, x, np.arange(32) % 10, l2=0.1)
  print(hashlib.sha256(b"".join(np.asarray(l).tobytes() for l in jax.tree.leaves(g))).hexdigest())


if __name__ == "__main__":
  main(sys.argv[1:])
