"""Where the compiled epoch's time goes: a `jax.profiler` trace of XLA's CPU thunks, each thunk
classed by the HLO it runs (GEMMs, the minibatch gather, the rest of the gradient, the
optimizer, the shuffle, other), and the wall time spent in no thunk. Table 4 of `epoch.py`;
`reproduce/epoch_experiments.py timeline` reads the same trace.
"""

import collections
import gzip
import json
import os
import re
import tempfile
import time
from typing import Dict, List

import jax
import jax.numpy as jnp

import mlp_jax as mj
from mlp_jax.training import epoch as training

OUTSIDE = "outside thunks"
CATEGORIES = ("GEMMs", "gather", "elementwise", "optimizer", "shuffle", "other", OUTSIDE)


def _hlo_classes(hlo_text: str) -> Dict[str, str]:
  """{instruction name: category} for the compiled module, from each instruction's opcode (a
  dot, or a fusion whose computation holds one, is a GEMM) and the named scope in its metadata
  (`plan`, `batch`, `gradients`, `optimizer`: see training/epoch.py)."""
  computations, current = {}, None
  for line in hlo_text.splitlines():
    head = re.match(r"^(?:ENTRY )?%?([\w.\-]+) .*\{$", line)
    if head:
      current = computations.setdefault(head.group(1), [])
    elif current is not None:
      current.append(line)
  has_dot = {name for name, lines in computations.items() if any(" dot(" in l for l in lines)}
  classes = {}
  for lines in computations.values():
    for line in lines:
      m = re.match(r"^\s*(?:ROOT )?%([\w.\-]+) = .*? ([\w\-]+)\(", line)
      if not m:
        continue
      name, opcode = m.groups()
      calls = re.search(r"calls=%([\w.\-]+)", line)
      scope = re.search(r'op_name="([^"]*)"', line)
      scope = scope.group(1) if scope else ""
      if opcode in ("dot", "convolution") or (calls and calls.group(1) in has_dot):
        classes[name] = "GEMMs"
      elif "/plan/" in scope:
        classes[name] = "shuffle"
      elif "/batch/" in scope:
        classes[name] = "gather"
      elif "/optimizer/" in scope:
        classes[name] = "optimizer"
      elif "/gradients/" in scope:
        classes[name] = "elementwise"
      else:
        classes[name] = "other"
  return classes


def _self_times(events: List[Dict]) -> List[tuple]:
  """(name, exclusive microseconds) of complete events, per thread: an event's time minus that
  of the events nested in it (a while loop's thunk holds its body's thunks)."""
  out = []
  by_thread = collections.defaultdict(list)
  for e in events:
    by_thread[(e["pid"], e["tid"])].append(e)
  for evs in by_thread.values():
    evs.sort(key=lambda e: (e["ts"], -e["dur"]))
    stack: List[list] = []  # [end, name, own time]
    for e in evs:
      while stack and e["ts"] >= stack[-1][0]:
        _, name, own = stack.pop()
        out.append((name, own))
      if stack:
        stack[-1][2] -= e["dur"]
      stack.append([e["ts"] + e["dur"], e["name"], e["dur"]])
    out.extend((name, own) for _, name, own in stack)
  return out


def trace_epochs(x, y, batch: int, epochs: int, opt, l2: float) -> tuple:
  """Runs the library's epoch (`mj.make_epoch(opt, batch, l2)`) with XLA's per-thunk trace
  events: 2 warm-up epochs, `epochs` untimed-by-the-profiler ones, then `epochs` inside a
  `jax.profiler` trace.

  Returns:
    (classes, events, traced, untraced): `_hlo_classes` of the compiled epoch; the trace's
    complete events (Python frames left out); seconds per epoch with and without the trace.
  """
  epoch_fn = mj.make_epoch(opt, batch, l2)
  params = mj.init_params(jax.random.PRNGKey(0))
  state = opt.init(params)
  x, y, key = jnp.asarray(x), jnp.asarray(y), training.epoch_key(0, 0)
  options = dict(training.compiler_options() or {}, xla_cpu_enable_xprof_traceme=True)
  compiled = epoch_fn.lower(params, state, x, y, key).compile(options)

  def run(n):
    nonlocal params, state
    t0 = time.perf_counter()
    for _ in range(n):
      params, state, stats = compiled(params, state, x, y, key)
      jax.block_until_ready((params, stats))
    return (time.perf_counter() - t0) / n

  run(2)
  untraced = run(epochs)
  with tempfile.TemporaryDirectory() as folder:
    with jax.profiler.trace(folder, create_perfetto_trace=True):
      traced = run(epochs)
    path = next(os.path.join(d, f) for d, _, files in os.walk(folder) for f in files
                if f.endswith(".trace.json.gz"))
    with gzip.open(path) as f:
      events = [e for e in json.load(f)["traceEvents"]
                if e.get("ph") == "X" and not e["name"].startswith("$")]
  return _hlo_classes(compiled.as_text()), events, traced, untraced


def profile(x, y, batch: int, opt, l2: float, epochs: int = 5) -> Dict:
  """Per-step microseconds by category of `epochs` traced epochs of `mj.make_epoch(opt, batch,
  l2)`, and the traced and untraced wall time per epoch."""
  classes, events, traced, untraced = trace_epochs(x, y, batch, epochs, opt, l2)
  totals = collections.Counter()
  for name, own in _self_times(events):
    if name in classes:
      totals[classes[name]] += own
  steps = training.steps_per_epoch(x.shape[0], batch) * epochs
  totals[OUTSIDE] = max(0.0, traced * epochs * 1e6 - sum(totals.values()))
  return {"batch_size": batch, "steps_per_epoch": steps // epochs,
          "us_per_step": {c: totals[c] / steps for c in CATEGORIES},
          "traced_ms_per_epoch": 1e3 * traced, "untraced_ms_per_epoch": 1e3 * untraced}
