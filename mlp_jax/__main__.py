"""`python -m mlp_jax ...`: the `mlp-jax` command."""

import sys

from mlp_jax.tools.cli import main

if __name__ == "__main__":
  sys.exit(main())
