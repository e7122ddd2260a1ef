"""The README's DP-SGD commands end to end against their time in epochs: what the privacy
accounting (and, with --target-epsilon, the calibration) adds to a run.

Each command runs as a user runs it (`mlp-jax train ...`, a new process, a new output folder):
"first run" with empty caches (compiled programs and the accountant's one-step distributions in
fresh folders), then REPEATS times "again" with the caches the first run filled (the median is
reported). From each run's summary: the seconds in epochs (training, the first epoch's
compilation included) and in the session (from the run's settings checked to its last epoch:
calibration, training, each epoch's validation and training-set accuracy, checkpoint and
epsilon; not the report after it); and the process's wall time (Python and JAX imports, the
report, plots). The ratio session / epochs is the issue's measure.

The A/B row runs the README command with the accountant replaced by a constant (epsilon 0, no
prefetch), in the same caches: the session / epochs a run has without any accounting at all,
the floor the accounting adds to.

    python benchmarks/dp_overhead.py [--quick]
"""

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from typing import Dict, List

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

# The README's commands (docs/usage.md, "Differentially private training").
COMMANDS = {
    "sigma 1.1 (README)": ["--dp", "--clip-norm", "1", "--noise-multiplier", "1.1", "--delta",
                           "1e-5", "--batch-size", "256", "--epochs", "30", "--optimizer",
                           "adam", "--lr", "2e-3", "--schedule", "constant", "--l2", "1e-4",
                           "--val-fraction", "0.1"],
    "target epsilon 3": ["--dp", "--clip-norm", "1", "--target-epsilon", "3", "--delta", "1e-5",
                         "--batch-size", "256", "--epochs", "30", "--optimizer", "adam",
                         "--lr", "2e-3", "--schedule", "constant", "--l2", "1e-4",
                         "--val-fraction", "0.1"],
}
REPEATS = 3
# The same command with the accountant replaced by a constant: the A/B row.
NO_ACCOUNTING = ("import sys; import mlp_jax.training.accounting as a; "
                 "a.ledger_epsilon = lambda ledger, delta: 0.0; "
                 "a.prefetch = lambda ledgers, delta: (lambda: None); "
                 "from mlp_jax.tools.cli import main; raise SystemExit(main(sys.argv[1:]))")
SUMMARY = re.compile(r"train time\s+([\d.]+) s in epochs, ([\d.]+) s this session")
PRIVACY = re.compile(r"privacy\s+(.*)")


def run_once(args: List[str], env: Dict[str, str], out: str, accounting: bool = True) -> Dict:
  """One `mlp-jax train` process: its summary's times, privacy line and wall time."""
  start = [sys.executable, "-m", "mlp_jax"] if accounting else [sys.executable, "-c",
                                                                NO_ACCOUNTING]
  command = [*start, "train", *args, "--out", out, "--no-progress"]
  start = time.perf_counter()
  done = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
  wall = time.perf_counter() - start
  epochs, session = map(float, SUMMARY.search(done.stdout).groups())
  return {"epochs_s": epochs, "session_s": session, "wall_s": wall,
          "ratio": session / epochs, "privacy": PRIVACY.search(done.stdout).group(1).strip()}


def _row(name: str, when: str, runs: List[Dict]) -> List[str]:
  """A table row of the median run (by session / epochs) of `runs`."""
  run = sorted(runs, key=lambda r: r["ratio"])[len(runs) // 2]
  return [name, when + (f" (median of {len(runs)})" if len(runs) > 1 else ""),
          f"{run['epochs_s']:.1f}", f"{run['session_s']:.1f}", f"{run['ratio']:.2f}",
          f"{run['wall_s']:.1f}", run["privacy"]]


def main() -> None:
  parser = common.add_args(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
  args = parser.parse_args()
  repeats = 1 if args.quick else REPEATS
  rows, results = [], []
  with tempfile.TemporaryDirectory() as tmp:
    for name, command in COMMANDS.items():
      if args.quick:
        command = [("2" if a == "30" else a) for a in command]  # --epochs 2
      env = dict(os.environ, MLP_JAX_COMPILATION_CACHE=os.path.join(tmp, name, "xla"),
                 MLP_JAX_CACHE=os.path.join(tmp, name, "cache"))
      variants = [("first run", 1, True), ("again", repeats, True)]
      if name == next(iter(COMMANDS)):
        variants.append(("again, accounting off (A/B)", repeats, False))
      for when, times, accounting in variants:
        runs = []
        for k in range(times):
          out = os.path.join(tmp, name, f"{when}-{k}".replace(" ", "_").replace(",", ""))
          runs.append(run_once(command, env, out, accounting))
          results.append({"command": name, "when": when, "args": command, **runs[-1]})
        rows.append(_row(name, when, runs))
  table = common.markdown_table(
      ["command", "caches", "s in epochs", "s in session", "session / epochs", "process wall s",
       "privacy (summary line)"], rows)
  payload = {"machine": common.machine(), "results": results, "quick": args.quick}
  common.write_results(common.result_name("dp_overhead", args.quick), payload,
                       f"DP-SGD commands end to end ({'quick' if args.quick else 'full'})\n\n"
                       + table, args.out)


if __name__ == "__main__":
  main()
