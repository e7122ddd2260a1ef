"""The likely mistake behind a parameter's wrong gradient: hypotheses tried against every draw.

`explain` returns the first hypothesis that reproduces the user's gradient to `MATCH_RTOL` on
every draw (`diagnosis_draws.Draw`), as a `Finding`. First an output error that is a multiple
of the right one (`diagnosis_swaps.PROPORTIONAL`: a stray 2, a missing 1/K), where the output
layer's bias shows it too. Then the linear ones: with D the data term of the reference and
P = (lambda/m) theta the penalty term of a weight, got = alpha D + beta theta is fitted per draw,
and alpha and beta / (lambda/m) must each be one constant or one ratio of the sizes (m, n, d, K)
on every draw. Then, for what differs from the reference by more than `INFORMATIVE` on some
draw: the transpose of a square weight, and the alternatives (backprop with one piece swapped,
`diagnosis_draws.alternatives`). Else "unexplained".
"""

import itertools
from typing import Callable, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np

from mlp_jax.oracle.check import relative_error
from mlp_jax.tools.diagnosis_draws import Draw, Leaf
from mlp_jax.tools.diagnosis_swaps import PROPORTIONAL, swap_layers, swap_text

MATCH_RTOL = 1e-9   # a hypothesis must reproduce got to this relative residual on every draw
INFORMATIVE = 1e-6  # ... and a structural one differ from ref by more than this on some draw
KINDS = ("scale", "sign_flip", "transpose", "missing_penalty", "extra_penalty", "penalty_scale",
         "relu_mask", "sum_not_mean", "output_error", "activation_derivative", "unexplained")


class Finding(NamedTuple):
  """The likely mistake in one parameter's gradient (the last four fields of `ParamDiagnosis`)."""
  kind: str               # one of KINDS
  detail: Optional[str]   # e.g. "whole", "data_term", "twice", "wrong_index", "nonfinite"
  factor: Optional[str]   # of a linear finding: alpha (or beta / (lambda/m)), e.g. "m/n", "-1"
  explanation: str        # one sentence for the report


def _residual(got, alt, ref) -> float:
  """||got - alt|| / max(||got||, ||ref||): how far a hypothesis is from what grad_fn gave."""
  return float(np.linalg.norm(got - alt) / max(np.linalg.norm(got), np.linalg.norm(ref), 1e-300))


def _close(a, b) -> bool:
  return bool(np.all(np.abs(a - b) <= 1e-9 * np.maximum(np.abs(b), 1.0)))


def _matching(values: Sequence[Optional[float]],
              draws: Sequence[Draw]) -> List[Tuple[str, np.ndarray]]:
  """The factors c m^p equal to values[k] on every draw k (None: no evidence), most specific
  first (n before d before K), or else one constant; each with its value on every draw."""
  sizes = draws[0].sizes
  hidden = sizes[1:-1]
  symbols = ([("n", sizes[0])] + [("d" if len(hidden) == 1 else f"d{i + 1}", d)
                                  for i, d in enumerate(hidden)] + [("K", sizes[-1])])
  table = ([("0", 0, 0), ("1", 1, 0), ("-1", -1, 0), ("m", 1, 1), ("1/m", 1, -1)]
           + [f for s, v in symbols for f in ((f"m/{s}", 1 / v, 1), (f"{s}/m", v, -1))]
           + [("m^2", 1, 2), ("1/m^2", 1, -2), ("2", 2, 0), ("1/2", 0.5, 0), ("2m", 2, 1)]
           + [f for s, v in symbols for f in ((s, v, 0), (f"1/{s}", 1 / v, 0))])
  known = [k for k, v in enumerate(values) if v is not None]
  v, ms = np.array([values[k] for k in known]), np.array([d.info.m for d in draws], np.float64)
  out = [(name, c * ms ** p) for name, c, p in table if known and _close(v, (c * ms ** p)[known])]
  if known and not out and _close(v, v[0]):
    out.append((f"{v[0]:.6g}", np.full(len(draws), v[0])))
  return out


def _classify(leaf: Leaf, alpha: str, r: str, others: Sequence[str]) -> Optional[Finding]:
  """The finding for got = alpha D + r (lambda/m) theta (None for the reference's own factors);
  `others` are factors equal to alpha at these sizes."""
  name, weight = leaf.name, leaf.is_weight
  penalty = "missing" if r == "0" else {
      "1": "(lambda/m)*", "m": "lambda*", "1/2": "(lambda/2m)*", "1/m": "(lambda/m^2)*",
      "2": "2(lambda/m)*", "2m": "2 lambda*"}.get(r, f"({r})(lambda/m)*") + name
  if alpha == "1":
    if r == ("1" if weight else "0"):
      return None
    if not weight:
      return Finding("extra_penalty", "bias_penalty", r,
                     f"a penalty {penalty} on the bias {name}: biases are not penalised (E6)")
    if r == "0":
      return Finding("missing_penalty", None, r, f"the penalty term (lambda/m)*{name} of "
                     f"(E8)/(E11) is missing: got - ref = -(lambda/m)*{name}")
    if r == "2":
      return Finding("extra_penalty", "twice", r,
                     f"the penalty term (lambda/m)*{name} is added twice")
    return Finding("penalty_scale", None, r,
                   f"the penalty term is {penalty} instead of (lambda/m)*{name}")
  kind = {"-1": "sign_flip", "m": "sum_not_mean"}.get(alpha, "scale")
  text = ("exactly the opposite sign (got = -ref)" if kind == "sign_flip" else
          f"off by the constant factor {alpha}")
  hint = {"0": "it is zero", "1/m": "divided by m twice",
          "m": "a sum over the batch where the derivation takes the mean: the 1/m is missing"}.get(
              alpha, f"divided by {alpha[2:]} instead of by m" if alpha[:2] == "m/" else "")
  text += f": {hint}" if hint else ""
  whole = r == (alpha if weight else "0")
  if weight and r == "1":
    text += f"; in the data term only, the penalty term (lambda/m)*{name} is right"
  elif not whole:
    text += f"; and the penalty term is {penalty}"
  if others and kind != "sign_flip":
    text += f" (equal to {', '.join(others)} at these sizes)"
  return Finding(kind, "whole" if whole else "data_term", alpha, text)


def _linear(leaf: Leaf, draws: Sequence[Draw]):
  """got = alpha D + r (lambda/m) theta with alpha, r constants or size ratios on every draw.

  Returns:
    (finding or None, alphas): alphas per draw when every least-squares fit is exact but matches
    no factor (for more entries than the two regressors: with fewer, anything fits).
  """
  i = leaf.index
  alphas, ratios = [], []
  for d in draws:  # least squares, on the columns that are not 0
    cols = [np.ravel(c) for c in (d.data[i], d.theta[i]) if np.any(c)]
    design = np.stack(cols, axis=1) if cols else np.zeros((d.got[i].size, 0))
    coef = list(np.linalg.lstsq(design, d.got[i].ravel(), rcond=None)[0])
    if _residual(d.got[i], (design @ coef).reshape(d.got[i].shape), d.got[i]) > MATCH_RTOL:
      return None, None
    alphas.append(coef.pop(0) if np.any(d.data[i]) else None)
    beta = coef.pop(0) if np.any(d.theta[i]) else None
    ratios.append(beta / (d.info.l2 / d.info.m) if beta is not None and d.info.l2 > 0 else None)
  a_options = _matching(alphas, draws)
  if all(r is None for r in ratios):  # no evidence on the penalty: the reference's own
    r_options = [("1", np.ones(len(draws))) if leaf.is_weight else ("0", np.zeros(len(draws)))]
  elif all(r is None or a is None or _close(r, a) for r, a in zip(ratios, alphas)):
    r_options = [("alpha", None)]     # scaled alike: the whole gradient
  else:
    r_options = _matching(ratios, draws)
  for (a, fa), (r, fr) in itertools.product(a_options, r_options):
    r, fr = (a, fa) if r == "alpha" else (r, fr)
    if all(_residual(d.got[i], fa[k] * d.data[i] + fr[k] * d.penalty(leaf, bias=True),
                     d.ref[i]) <= MATCH_RTOL
           for k, d in enumerate(draws)):
      return _classify(leaf, a, r, [n for n, _ in a_options if n != a]), None
  return None, alphas if draws[0].got[i].size > 2 else None


def _structural(leaf: Leaf, draws: Sequence[Draw]) -> List[Tuple[Finding, Callable]]:
  """The non-linear hypotheses for this leaf, each with its gradient on a draw: the transposes
  (of a square weight), then the alternatives in the order `alternatives` made them."""
  i, name = leaf.index, leaf.name
  shape = draws[0].ref[i].shape
  tried = [] if not (len(shape) == 2 and shape[0] == shape[1] > 1) else [
      (Finding("transpose", "whole", None, f"{name} is transposed: got = ref^T"),
       lambda d: d.ref[i].T),
      (Finding("transpose", "data_term", None, f"the data term of {name} is transposed (the "
               "penalty term is right)"), lambda d: d.data[i].T + d.penalty(leaf))]
  net, hidden = draws[0].net, len(draws[0].sizes) - 2
  for kind, detail in draws[0].alts:
    if kind == "activation_derivative" and hidden > 1 and "@" not in detail and len(
        [l for l in swap_layers(detail, net, hidden) if l >= leaf.layer]) == 1:
      continue  # this leaf sees one of the layers swapped: say which, by its "@l" variant
    tried.append((Finding(kind, detail, None, swap_text(kind, detail, net, hidden)),
                  lambda d, key=(kind, detail): d.alts[key][i] + d.penalty(leaf)))
  return tried


def _reproduces(leaf: Leaf, draws: Sequence[Draw], alt_of: Callable) -> bool:
  """Whether a structural hypothesis gives got on every draw and differs from ref on some."""
  i = leaf.index
  alts = [alt_of(d) for d in draws]
  return (all(_residual(d.got[i], a, d.ref[i]) <= MATCH_RTOL for d, a in zip(draws, alts))
          and max(relative_error(a, d.ref[i]) for d, a in zip(draws, alts)) > INFORMATIVE)


def _proportional(leaf: Leaf, draws: Sequence[Draw],
                  tried: Sequence[Tuple[Finding, Callable]]) -> Optional[Finding]:
  """An output error that is a multiple of the right one (a stray 2, a missing 1/K): the first
  that reproduces this leaf and also the output layer's bias (a one-leaf factor is a "scale"),
  naming any other that does the same at these sizes."""
  last = len(draws[0].got) - 1
  bias = Leaf(last, "b", last // 2, "b")
  found = [f for f, alt_of in tried if f.kind == "output_error" and f.detail in PROPORTIONAL
           and _reproduces(leaf, draws, alt_of)
           and (leaf.index == last or _reproduces(
               bias, draws, lambda d, key=(f.kind, f.detail): d.alts[key][last]))]
  if not found:
    return None
  same = "" if len(found) == 1 else f" (equal at these sizes to: {found[1].explanation})"
  return found[0]._replace(explanation=found[0].explanation + same)


def explain(leaf: Leaf, draws: Sequence[Draw], worst: float) -> Finding:
  """The first hypothesis that reproduces got on every draw: a proportional output error, then
  linear, then (for the rest, also differing from ref by INFORMATIVE on some draw) transposes
  and the alternatives; `worst` is the leaf's worst relative error, for the hint of an
  "unexplained" one."""
  i, name = leaf.index, leaf.name
  if not all(np.all(np.isfinite(d.got[i])) for d in draws):
    return Finding("unexplained", "nonfinite", None, f"grad_fn returned NaN or Inf in {name}")
  tried = _structural(leaf, draws)
  finding = _proportional(leaf, draws, tried)
  if finding is not None:
    return finding
  finding, alphas = _linear(leaf, draws)
  if finding is not None:
    return finding
  for finding, alt_of in tried:
    if _reproduces(leaf, draws, alt_of):
      return finding
  text = "no single mistake reproduces the error on every draw"
  if alphas is not None and all(a is not None for a in alphas):
    text += (f"; got is proportional to the data term on each draw, but the factor changes "
             f"between draws ({', '.join(f'{a:.4g}' for a in alphas)}) and matches no constant "
             "or ratio of the sizes")
  if 1e-10 < worst < 1e-4:
    text += "; an error this small suggests float32 rounding somewhere in the computation"
  return Finding("unexplained", None, None, text)
