"""Diagnosis of a hand-derived gradient: which parameter is wrong, where, and the likely mistake.

`check_gradients` says *that* a parameter's gradient is wrong; `diagnose` says what is wrong with
it. It runs the user's `grad_fn` and the oracle (`jax.grad` of (E6)) in float64 on several draws:
the given batch, fresh random problems of the same layer sizes at batch sizes m other than the
widths, every other one at lambda + 0.5, and a "ties" problem whose pre-activations hit h = 0:

    from mlp_jax.tools.diagnosis import diagnose
    report = diagnose(my_grads, params, x, y, l2=0.1)   # my_grads(params, x, y, l2) -> Dense tuple
    print(report)                                       # a table, and a minimal reproduction

Per parameter: pass/fail at the float64 bar (1e-12), the worst relative error over the draws;
where the error sits (all entries, rows, columns or entries, an exact sign flip, scattered,
NaN/Inf); the likely mistake, `kind`: the first hypothesis below that reproduces the user's
gradient to `MATCH_RTOL` (1e-9) on *every* draw, else "unexplained"; a minimal reproduction. With
D the data term of the reference (jax.grad at lambda = 0) and P = (lambda/m) theta the penalty
term of a weight (E8), (E11) (a bias has none, (E9), (E12)), got = alpha D + beta theta is fitted
per draw:

- "sign_flip" (alpha = -1), "sum_not_mean" (alpha = m), "scale" (any other alpha that is one
  constant or one ratio of the sizes, m/n, 1/m, K, ..., on every draw), each for the whole
  gradient (beta scaled alike) or the data term alone;
- "missing_penalty" (beta = 0), "extra_penalty" (beta = 2 lambda/m, or a penalty on a bias),
  "penalty_scale" (beta = lambda, lambda/2m, ...), with alpha = 1;
- "transpose": got = ref^T, or its data term transposed (square weights only);
- "relu_mask", "output_error", "activation_derivative": got - P is the data term of
  `core.backprop` with one piece swapped:
  - "relu_mask": the ReLU masks (E10): input feature i masked by hidden unit i (S3), derivative
    1 or 1/2 at h = 0, no mask; in every hidden layer or in one;
  - "output_error": the output error dl/dz (E7): its two cases swapped (S1), yhat without the
    one-hot y subtracted, the logits z - y. For the other outputs (E23)-(E25): "factor_2", a
    stray 2 (2(yhat - y) for sigmoid and Poisson, 2(yhat - y)/K for squared error);
    "no_over_K", squared error's yhat - y without the 1/K; "factor_2_no_over_K", its
    2(yhat - y); "linear_output", z - y for sigma(z) - y or exp(z) - y;
  - "activation_derivative": another activation's g'(h), (E16)-(E21), written wrong:
    "function_not_derivative", the function for its derivative (sigma(h) = a for a(1 - a),
    tanh h = a for 1 - a^2, GELU's a); "wrong_quantity", the formula read on the other of h
    and a (h(1 - h) for a(1 - a), 1 - h^2 for 1 - a^2, GELU's Phi(h) + h phi(h) on a);
    "one_minus_a", 1 - a for tanh's 1 - a^2; "no_slope", the leaky ReLU's 1[a > 0] without its
    alpha; "no_derivative", no g' at all; in every hidden layer of that activation or in one,
    "name@l" (which a leaf names too when it sees only one such layer: W2 sees layers >= 2).
  An output error that is a multiple of the right one (factor_2, no_over_K, ...) is tried
  before the linear fit, and named only where the output layer's bias shows the same multiple
  (else "scale"); a 1/m missing is "sum_not_mean" whatever the output.

Another network: `diagnose(..., activation="tanh", output="poisson_log_link")` (as for `loss`)
compares with jax.grad of that network, on draws whose targets are of the output's kind.

This module runs the comparison and writes the report; the modules beneath it, whose names it
re-exports:

    diagnosis_draws       the problems compared on (`random_problem`, `DrawInfo`) and what is
                          computed on each: grad_fn, jax.grad, the alternatives
    diagnosis_swaps       the pieces the alternatives swap in, and what each means
    diagnosis_hypotheses  the likely mistake: the hypotheses above, tried on every draw
"""

import dataclasses
import itertools
import math
from typing import Any, Callable, Dict, NamedTuple, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from mlp_jax.core import model, validation
from mlp_jax.core.model import Params
from mlp_jax.core.network import DEFAULT_OUTPUT, SOURCE, Network, make_network
from mlp_jax.errors import InputTypeError
from mlp_jax.oracle.autodiff import grad_objective, to_float64
from mlp_jax.oracle.check import RTOL, relative_error
from mlp_jax.tables import text_table
from mlp_jax.tools.diagnosis_draws import (Draw, DrawInfo, Leaf, leaves64, param_leaves,
                                           random_problem, run_draw, user_grads)
from mlp_jax.tools.diagnosis_hypotheses import MATCH_RTOL, explain

# The modules' constants, reachable here as they were
from mlp_jax.tools.diagnosis_hypotheses import INFORMATIVE, KINDS  # noqa: F401

BAR = RTOL[jnp.dtype(jnp.float64)]  # pass/fail: relative error against jax.grad, float64
EXTRA_L2 = 0.5      # every other fresh draw uses lambda + EXTRA_L2: penalty and data term separate
BATCH_SIZES = (7, 13, 5, 11, 17, 19, 23, 29, 31, 37, 41, 43)  # fresh m, skipping layer widths
WHERE = ("none", "all", "sign", "rows", "columns", "entries", "scattered", "nonfinite")

__all__ = [  # the public API; the rest are this module's helpers
    "BAR", "BATCH_SIZES", "diagnose", "Diagnosis", "DrawInfo", "EXTRA_L2", "INFORMATIVE",
    "KINDS", "MATCH_RTOL", "ParamDiagnosis", "random_problem", "Repro", "WHERE",
]


class Location(NamedTuple):
  """Which entries of a parameter's gradient are off (the `where` fields of `ParamDiagnosis`)."""
  where: str                 # one of WHERE
  indices: Tuple[int, ...]   # the rows, columns or entries named ((): none named)
  text: str                  # for the report, e.g. "rows 2 only (1 of 6)"


def _locate(got: np.ndarray, ref: np.ndarray, data: np.ndarray) -> Location:
  """Which entries of got are off, at 1e-9 of the largest entry.

  "all" means every entry that is off or where the data term is non-zero (the rows of a dead
  ReLU unit have no data term to get wrong).
  """
  if not np.all(np.isfinite(got)):
    bad = np.flatnonzero(~np.isfinite(got))
    return Location("nonfinite", tuple(int(b) for b in bad), f"{bad.size} non-finite entries")
  thr = 1e-9 * max(np.abs(ref).max(initial=0.0), np.abs(got).max(initial=0.0), 1e-300)
  wrong = np.abs(got - ref) > thr
  if not wrong.any():
    return Location("none", (), "no entry off by more than 1e-9 of the largest")
  active = wrong | (np.abs(data) > thr)
  flipped = bool(np.all(np.abs(got + ref)[wrong] <= thr))
  if np.array_equal(wrong, active):
    return (Location("sign", (), "every entry has exactly the opposite sign") if flipped else
            Location("all", (), "all entries"))
  sign = ", with exactly the opposite sign" if flipped else ""
  blocks = {"entries": (wrong, wrong)} if got.ndim == 1 else {}
  if got.ndim == 2:
    blocks = {"rows": (wrong.any(axis=1), active & wrong.any(axis=1)[:, None]),
              "columns": (wrong.any(axis=0), active & wrong.any(axis=0)[None, :])}
  for word, (hit, block) in blocks.items():
    if np.array_equal(wrong, block):
      idx = np.flatnonzero(hit)
      shown = ", ".join(str(int(j)) for j in idx[:8]) + (", ..." if idx.size > 8 else "")
      return Location(word, tuple(int(j) for j in idx),
                      f"{word} {shown} only ({idx.size} of {hit.size}){sign}")
  return Location("scattered", (), f"scattered: {int(wrong.sum())} of {wrong.size} entries{sign}")


@dataclasses.dataclass(frozen=True)
class Repro:
  """The smallest problem found on which a parameter's error shows."""
  layer_sizes: Tuple[int, ...]
  m: int
  l2: float
  seed: int
  ties: bool
  rel_err: float
  snippet: str   # Python to run, with the user's function in scope as `grad_fn`


@dataclasses.dataclass(frozen=True)
class ParamDiagnosis:
  """One parameter's line of a `Diagnosis`."""
  name: str
  shape: Tuple[int, ...]
  passed: bool
  rel_err: float                 # worst over the draws (inf if grad_fn gave NaN/Inf)
  rel_errs: Tuple[float, ...]    # one per draw, in the order of Diagnosis.draws
  where: str                     # one of WHERE, on the first draw that fails
  where_indices: Tuple[int, ...]
  where_text: str
  kind: Optional[str]            # None when passed, else one of KINDS
  detail: Optional[str]          # e.g. "data_term", "whole", "wrong_index", "swapped_cases"
  factor: Optional[str]          # e.g. "m/n", "m", "-1", "0"
  explanation: str
  repro: Optional[Repro]


def _jsonable(value):
  if isinstance(value, float):
    return value if math.isfinite(value) else None
  if isinstance(value, dict):
    return {k: _jsonable(v) for k, v in value.items()}
  return [_jsonable(v) for v in value] if isinstance(value, (list, tuple)) else value


@dataclasses.dataclass(frozen=True)
class Diagnosis:
  """Per-parameter verdicts, locations and likely mistakes of a gradient function."""
  entries: Tuple[ParamDiagnosis, ...]
  draws: Tuple[DrawInfo, ...]
  layer_sizes: Tuple[int, ...]
  rtol: float
  match_rtol: float
  network: str = SOURCE.describe()  # the activations and output diagnosed

  @property
  def passed(self) -> bool:
    return all(e.passed for e in self.entries)

  @property
  def failed(self) -> Tuple[str, ...]:
    return tuple(e.name for e in self.entries if not e.passed)

  def __getitem__(self, name: str) -> ParamDiagnosis:
    return {e.name: e for e in self.entries}[name]

  def to_dict(self) -> Dict:
    """A JSON-serialisable dict (non-finite numbers become None)."""
    return _jsonable({**dataclasses.asdict(self), "passed": self.passed})

  def __str__(self) -> str:
    draws = "; ".join(f"{d.label} (m={d.m}, lambda={d.l2:g})" for d in self.draws)
    net = "" if self.network == SOURCE.describe() else f"{self.network}, "
    lines = [f"gradient diagnosis: layers {self.layer_sizes}, {net}float64, bar: rel. error <= "
             f"{self.rtol:.0e}; a mistake must reproduce the gradient to {self.match_rtol:.0e} "
             "on every draw", f"draws: {draws}"] + text_table(
        [("param", "shape", "result", "rel. error (worst)", "(given)", "where", "likely mistake")]
        + [(e.name, "x".join(map(str, e.shape)), "ok" if e.passed else "FAIL", f"{e.rel_err:.2e}",
            f"{e.rel_errs[0]:.2e}", "-" if e.passed else e.where_text,
            "-" if e.passed else f"{e.kind}: {e.explanation}") for e in self.entries])
    repros = [(e.name, e.repro) for e in self.entries if e.repro is not None]
    lines += ["minimal reproduction:"] if repros else []
    shown = set()  # each problem's snippet once
    for name, r in repros:
      lines.append(f"  {name}: layers {r.layer_sizes}, m={r.m}, lambda={r.l2:g}"
                   f"{', ties' if r.ties else ''}: rel. error {r.rel_err:.2e}")
      key = (r.layer_sizes, r.m, r.l2, r.ties)
      lines += [] if key in shown else ["    " + s for s in r.snippet.rstrip().splitlines()]
      shown.add(key)
    return "\n".join(lines + ["PASSED" if self.passed else f"FAILED: {', '.join(self.failed)}"])


_SNIPPET = """import jax
import mlp_jax as mj
from mlp_jax.tools.diagnosis import random_problem
jax.config.update("jax_enable_x64", True)
params, x, y = random_problem(0, {sizes}, m={m}{ties}{net})
got = {fn}(params, x, y, {l2!r})  # your gradient function
ref = mj.autodiff_grads(params, x, y, {l2!r}{net})
print("{name} got:", got{leaf})
print("{name} ref:", ref{leaf})
print("rel. error:", mj.relative_error(got{leaf}, ref{leaf}))
"""


def _network_args(net: Network) -> str:
  """The keyword arguments that name a network other than the source's, for a snippet."""
  spec = net.record()["activation"]
  return ((f", activation={spec!r}" if spec != "relu" else "")
          + (f", output={net.output!r}" if net.output != DEFAULT_OUTPUT else ""))


def _minimal_repros(grad_fn, depth: int, wanted: Dict[Leaf, Tuple[float, bool]],
                    leaves: Sequence[Leaf], max_tries: int,
                    net: Network = SOURCE) -> Dict[Leaf, Repro]:
  """For each leaf in `wanted` (with its lambda and whether it needs ties), the first small
  problem (widths 2-4, K 2-3, m 1-4, smallest first) on which its error exceeds the bar."""
  widths = itertools.product(*([(2, 3, 4)] * depth + [(2, 3)]))
  problems = sorted(((s, m) for s in widths for m in range(1, 5)),
                    key=lambda c: (sum(c[0]) + c[1], c))
  fn = getattr(grad_fn, "__name__", "")
  found, tries = {}, 0
  for (sizes, m), (l2, ties) in itertools.product(problems, sorted(set(wanted.values()))):
    pending = [leaf for leaf, v in wanted.items() if v == (l2, ties) and leaf not in found]
    if not pending or tries >= max_tries:
      continue
    tries += 1
    params, x, y = random_problem(0, sizes, m, ties=ties, activation=net.activation,
                                  output=net.output)
    try:
      got = user_grads(grad_fn, params, x, y, l2, leaves)
    except Exception:  # a function that only runs at some sizes (S3 needs n = d): skip
      continue
    ref = leaves64(grad_objective(params, x, y, l2, net=net))
    for leaf in pending:
      err = relative_error(got[leaf.index], ref[leaf.index])
      if not err <= BAR:
        snippet = _SNIPPET.format(sizes=sizes, m=m, ties=", ties=True" if ties else "",
                                  fn=fn if fn.isidentifier() else "grad_fn", l2=l2,
                                  net=_network_args(net),
                                  name=leaf.name, leaf=leaf.subscript)
        found[leaf] = Repro(layer_sizes=sizes, m=m, l2=l2, seed=0, ties=ties,
                            rel_err=err if math.isfinite(err) else math.inf, snippet=snippet)
  return found


def diagnose(grad_fn: Callable, params: Params, x, y, l2=0.0, *,
             seeds: Sequence[int] = (0, 1, 2), repro: bool = True,
             max_repro_tries: int = 48, activation: Any = "relu",
             output: str = DEFAULT_OUTPUT) -> Diagnosis:
  """Diagnoses a gradient function against jax.grad: which parameter, where, and why.

  Args:
    grad_fn: the gradient under test, `grad_fn(params, x, y, l2)` returning a tuple of `Dense`
      shaped like params, as `mlp_jax.grads` does.
    params, x, y, l2: the problem, as for `loss`; compared in float64 (upcast). y holds the
      targets `output` takes: int labels (m,) for softmax, real values (m, K) for the others.
    seeds: one fresh random draw per seed, of the same layer sizes, at other batch sizes and
      alternately at lambda + 0.5 and lambda; a ties draw (h = 0 exactly) is added.
    repro: whether to search small problems for a minimal reproduction of each failure, at
      lambda (or lambda + 0.5 if the error shows only there), on a ties problem if it showed
      only on the ties draw.
    max_repro_tries: at most this many grad_fn calls in that search.
    activation, output: the network grad_fn is the gradient of (as for `loss_and_grads`): the
      oracle is jax.grad of its objective, the fresh draws' targets are of its output's kind,
      and its activations and output bring their own likely mistakes.

  Returns:
    A `Diagnosis`; `print` it for a table, `.passed` for the verdict, `.to_dict()` for JSON.

  Raises:
    InputTypeError: grad_fn is not callable with (params, x, y, l2) (it raised TypeError), or
      returned another structure or non-array leaves.
    InputError: grad_fn returned a leaf of another shape (a square weight's transpose is
      diagnosed instead), or the problem itself is invalid.
  """
  if not callable(grad_fn):
    raise InputTypeError(f"grad_fn must be callable, got {type(grad_fn).__name__}")
  if isinstance(seeds, (str, bytes)) or not all(isinstance(s, (int, np.integer)) for s in seeds):
    raise InputTypeError(f"seeds must be a sequence of ints, got {seeds!r}")
  net = make_network(activation, output)
  params, x, y, l2 = validation.check_batch(params, x, y, l2, net=net)
  l2, m, sizes, leaves = float(l2), int(x.shape[0]), model.layer_sizes(params), param_leaves(params)
  count = max(len(seeds), 2)   # fresh batch sizes: m, then 7, 13, ..., none equal to a width
  ms = ([b for b in dict.fromkeys((m,) + BATCH_SIZES) if b not in sizes] or [m]) * count
  plan = [DrawInfo(f"seed {s}", b, l2 + EXTRA_L2 if k % 2 == 0 else l2, int(s))
          for k, (s, b) in enumerate(zip(seeds, ms))]
  plan.append(DrawInfo("ties", ms[1], l2 + EXTRA_L2, int(seeds[0]) if len(seeds) else 0))
  with jax.enable_x64(True):
    params64, x64 = to_float64((params, x))
    y64 = y if net.out.labels else to_float64(y)
    draws = [run_draw(grad_fn, DrawInfo("given", m, l2, None), params64, x64, y64, leaves,
                      net)] + [
        run_draw(grad_fn, info, *random_problem(info.seed, sizes, info.m,
                                                ties=info.label == "ties",
                                                activation=net.activation, output=net.output),
                 leaves, net)
        for info in plan]
    entries = [_entry(leaf, draws) for leaf in leaves]
    wanted = {}  # (lambda, ties) of each failure's reproduction
    for leaf, e in zip(leaves, entries):
      failing = [d.info for d, err in zip(draws, e.rel_errs) if err > BAR]
      if repro and failing:
        wanted[leaf] = (l2 if any(f.l2 == l2 for f in failing) else l2 + EXTRA_L2,
                        all(f.label == "ties" for f in failing))
    found = _minimal_repros(grad_fn, len(params), wanted, leaves, max_repro_tries, net)
  entries = [dataclasses.replace(e, repro=found.get(leaf)) for leaf, e in zip(leaves, entries)]
  return Diagnosis(tuple(entries), tuple(d.info for d in draws), sizes, BAR, MATCH_RTOL,
                   net.describe())


def _entry(leaf: Leaf, draws: Sequence[Draw]) -> ParamDiagnosis:
  """Verdict, location (on the first draw that fails) and likely mistake of a leaf, no repro."""
  i = leaf.index
  errs = tuple(e if math.isfinite(e) else math.inf
               for e in (relative_error(d.got[i], d.ref[i]) for d in draws))
  worst = max(errs)
  verdict = dict(name=leaf.name, shape=draws[0].ref[i].shape, rel_err=worst, rel_errs=errs,
                 repro=None)
  if worst <= BAR:
    return ParamDiagnosis(**verdict, passed=True, where="none", where_indices=(), where_text="",
                          kind=None, detail=None, factor=None, explanation="")
  k = next(k for k, e in enumerate(errs) if e > BAR)
  where = _locate(draws[k].got[i], draws[k].ref[i], draws[k].data[i])
  on_draw = f" (on draw '{draws[k].info.label}')" if k else ""
  finding = explain(leaf, draws, worst)
  return ParamDiagnosis(**verdict, passed=False, where=where.where, where_indices=where.indices,
                        where_text=where.text + on_draw, kind=finding.kind,
                        detail=finding.detail, factor=finding.factor,
                        explanation=finding.explanation)
