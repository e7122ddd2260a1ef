#!/usr/bin/env bash
# The accelerator run, from the source tree, installing nothing:
#   bash benchmarks/accelerator.sh OUT_DIR [--quick] [--skip-tests] [--usps PATH]
# (PYTHON=/path/to/python picks the interpreter; python3 by default)
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:?usage: benchmarks/accelerator.sh OUT_DIR [options]}"; shift
mkdir -p "$out"
PYTHONPATH=. PYTHONUNBUFFERED=1 "${PYTHON:-python3}" benchmarks/accelerator.py --out "$out" "$@" 2>&1 | tee "$out/accelerator.log"
exit "${PIPESTATUS[0]}"
