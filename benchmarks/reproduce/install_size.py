"""What a plain `pip install mlp_jax` weighs on disk, and what each extra adds.

Walks the installed distributions from this environment: the closure of the core dependencies
(pyproject's `dependencies`), then of each extra's packages, counting the bytes of every file a
distribution's RECORD lists. Run it in an environment where everything is installed (the dev
extra).

    python benchmarks/reproduce/install_size.py
"""

import argparse
import importlib.metadata as md
import os
import re

from packaging.requirements import Requirement

CORE = ["jax", "jaxlib", "optax", "numpy", "tqdm"]
EXTRAS = {"plots": "matplotlib", "digits": "scikit-learn", "hdf5": "h5py", "dp": "dp-accounting"}


def _size(dist) -> int:
  total = 0
  for f in dist.files or []:
    try:
      total += os.path.getsize(f.locate())
    except OSError:
      pass
  return total


def closure(names):
  """{normalised name: bytes} of the distributions `names` need, without their extras."""
  seen, stack = {}, list(names)
  while stack:
    name = stack.pop()
    key = re.sub(r"[-_.]+", "-", name).lower()
    if key in seen:
      continue
    try:
      dist = md.distribution(name)
    except md.PackageNotFoundError:
      continue
    seen[key] = _size(dist)
    for r in dist.requires or []:
      req = Requirement(r)
      if req.marker is None or req.marker.evaluate({"extra": ""}):
        stack.append(req.name)
  return seen


def main():
  argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()  # --help
  base = closure(CORE)
  print(f"plain install: {sum(base.values()) / 1e6:.0f} MB, {len(base)} distributions")
  for name, size in sorted(base.items(), key=lambda kv: -kv[1]):
    print(f"  {name:22s} {size / 1e6:6.1f} MB")
  for extra, package in EXTRAS.items():
    added = {k: v for k, v in closure([package]).items() if k not in base}
    print(f"extra {extra:7s} adds {sum(added.values()) / 1e6:.0f} MB ({', '.join(sorted(added))})")


if __name__ == "__main__":
  main()
