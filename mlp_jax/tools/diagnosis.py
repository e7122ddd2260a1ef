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
- "relu_mask", "output_error": got - P is the data term of `core.backprop` with one piece swapped:
  the ReLU masks (E10) (input feature i masked by hidden unit i (S3), derivative 1 or 1/2 at
  h = 0, no mask; in every hidden layer or in one), or the output error dl/dz (E7) (its two cases
  swapped (S1), yhat without the one-hot y subtracted, the logits z - y).
"""

import dataclasses
import itertools
import math
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from mlp_jax.core import backprop, checks, model
from mlp_jax.core.model import Dense, Params
from mlp_jax.core.objective import log_softmax
from mlp_jax.errors import InputError, InputTypeError
from mlp_jax.oracle.autodiff import autodiff_grads, to_float64
from mlp_jax.oracle.check import RTOL, param_names, relative_error
from mlp_jax.tables import text_table

BAR = RTOL[jnp.dtype(jnp.float64)]  # pass/fail: relative error against jax.grad, float64
MATCH_RTOL = 1e-9   # a hypothesis must reproduce got to this relative residual on every draw
INFORMATIVE = 1e-6  # ... and a structural one differ from ref by more than this on some draw
EXTRA_L2 = 0.5      # every other fresh draw uses lambda + EXTRA_L2: penalty and data term separate
BATCH_SIZES = (7, 13, 5, 11, 17, 19, 23, 29, 31, 37, 41, 43)  # fresh m, skipping layer widths
KINDS = ("scale", "sign_flip", "transpose", "missing_penalty", "extra_penalty", "penalty_scale",
         "relu_mask", "sum_not_mean", "output_error", "unexplained")
WHERE = ("none", "all", "sign", "rows", "columns", "entries", "scattered", "nonfinite")


def random_problem(seed: int, layer_sizes: Sequence[int], m: int, *, ties: bool = False):
  """A float64 problem (params, x (m, n), int32 labels y (m,)) of JAX arrays, numpy seed `seed`.

  He-normal weights, N(0, 0.1^2) biases and N(0, 1) features; with `ties`, small dyadic values
  (exact in float64) and biases that put the even units of every hidden layer exactly at h = 0
  on the first example, so that the ReLU derivative at 0 matters.
  """
  rng = np.random.default_rng(seed)
  sizes = tuple(int(s) for s in layer_sizes)
  if ties:
    layers, x = _dyadic_layers(rng, sizes, m)
  else:
    layers = [(rng.standard_normal((a, b)) * np.sqrt(2.0 / a), 0.1 * rng.standard_normal(b))
              for a, b in zip(sizes[:-1], sizes[1:])]
    x = rng.standard_normal((m, sizes[0]))
  y = rng.integers(0, sizes[-1], size=m).astype(np.int32)
  with jax.enable_x64(True):
    return to_float64(tuple(Dense(w, b) for w, b in layers)), to_float64(x), jnp.asarray(y)


def _dyadic_layers(rng, sizes, m):
  x = rng.integers(-1, 2, size=(m, sizes[0])).astype(np.float64)
  layers, a = [], x
  for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
    step = 2.0 ** -round(math.log2(math.sqrt(fan_in)))
    w = rng.choice([-2.0, -1.0, 1.0, 2.0], size=(fan_in, fan_out)) * step
    b = rng.integers(-2, 3, size=fan_out) * step
    if i < len(sizes) - 2:  # a hidden layer: ties on example 0, even units (sums are exact)
      b[::2] = -(a[0] @ w)[::2]
      a = np.maximum(a @ w + b, 0.0)
    layers.append((w, b.astype(np.float64)))
  return layers, x


def _leaves64(tree) -> List[np.ndarray]:
  return [np.asarray(leaf, np.float64) for leaf in jax.tree.leaves(tree)]


def _user_grads(grad_fn: Callable, params: Params, x, y, l2, names) -> List[np.ndarray]:
  """grad_fn(params, x, y, l2) as float64 leaves W1, b1, W2, ..., after checking what it gave."""
  try:
    result = grad_fn(params, x, y, l2)
  except TypeError as e:
    raise InputTypeError(
        "grad_fn must be callable as grad_fn(params, x, y, l2) and return the gradient like "
        f"mlp_jax.grads; calling it raised TypeError: {e}") from e
  if not (isinstance(result, (tuple, list)) and len(result) == len(params) and all(
      isinstance(layer, (tuple, list)) and len(layer) == 2 for layer in result)):
    what = type(result).__name__
    what += f" of {len(result)} items" if isinstance(result, (tuple, list)) else ""
    raise InputTypeError(
        f"grad_fn must return a tuple of {len(params)} mlp_jax.Dense(w, b), one per layer, "
        f"shaped like params (as mlp_jax.grads does); got a {what}")
  leaves = [leaf for layer in result for leaf in layer]
  for name, got, ref in zip(names, leaves, jax.tree.leaves(params)):
    if not (hasattr(got, "shape") and hasattr(got, "dtype")):
      raise InputTypeError(f"grad_fn returned {name} of type {type(got).__name__}, expected an "
                           f"array of shape {ref.shape}")
    if not (jnp.issubdtype(got.dtype, jnp.floating) or jnp.issubdtype(got.dtype, jnp.integer)):
      raise InputTypeError(f"grad_fn returned {name} of dtype {got.dtype}, expected a floating "
                           f"array of shape {ref.shape}")
    if tuple(got.shape) != ref.shape:
      hint = (" (its transpose: only a square weight's transpose can be diagnosed)"
              if tuple(got.shape) == ref.shape[::-1] else "")
      raise InputError(f"grad_fn returned {name} of shape {tuple(got.shape)}, expected "
                       f"{ref.shape}{hint}")
  return [np.asarray(leaf, np.float64) for leaf in leaves]


_SWAPS = {  # the detail of a "relu_mask" or "output_error" finding, and what it means
    "swapped_cases": "the output error dl/dz (E7) has its two cases swapped: yhat_t for the true "
                     "class and yhat_t - 1 for the others (the source's S1)",
    "no_minus_y": "the output error dl/dz (E7) is yhat: the one-hot y is not subtracted",
    "logits": "the output error dl/dz (E7) uses the logits, z - y, instead of yhat - y",
    "tie_one": "the ReLU derivative is taken as 1 at h = 0 (mask h >= 0); it is 0 there, "
               "1[h > 0] (E10)",
    "tie_half": "the ReLU derivative is taken as 1/2 at h = 0 (as jnp.maximum(h, 0) "
                "differentiates); it is 0 there, 1[h > 0] (E10)",
    "no_mask": "the ReLU mask is missing: the back-propagated error is not multiplied by "
               "1[h > 0] (E10)",
    "wrong_index": "the ReLU mask is on the wrong index: input feature i is masked by hidden "
                   "unit i (the source's S3); it belongs on the back-propagated error, per "
                   "hidden unit, (E10)-(E11)",
}


def _alternatives(params: Params, x, y) -> Dict[Tuple[str, str], List[np.ndarray]]:
  """Data terms (lambda = 0) of `core.backprop` with one piece swapped, keyed (kind, detail).

  The pieces: the output error at the top (E7); the ReLU masks, (m, d_l) per hidden layer (E10),
  in all layers or (detail "name@l") in hidden layer l alone; and for a square hidden layer l
  (S3) its weight's data term (A_{l-1} * M_l)^T (Delta_{l+1} W_{l+1}^T). Leaves in tree order.
  """
  logits, acts = model.forward_activations(params, x)                  # (E1)-(E3)
  log_probs, m = log_softmax(logits), x.shape[0]
  yhat, onehot = jnp.exp(log_probs), jax.nn.one_hot(y, logits.shape[1], dtype=logits.dtype)
  yhat_t = jnp.take_along_axis(yhat, y[:, None], axis=1)
  tops = {"swapped_cases": jnp.where(onehot > 0, yhat, yhat_t - 1), "no_minus_y": yhat,
          "logits": logits - onehot}
  hs = [model.affine(layer, a) for layer, a in zip(params[:-1], acts[:-1])]  # h_l, (m, d_l)
  correct = backprop.relu_masks(acts)
  masks = {"tie_one": [h >= 0 for h in hs],
           "tie_half": [jnp.where(h > 0, 1.0, jnp.where(h == 0, 0.5, 0.0)) for h in hs],
           "no_mask": [jnp.ones_like(h, dtype=bool) for h in hs]}
  swap = lambda l, mask: correct[:l] + (mask,) + correct[l + 1:]
  error = backprop.output_error(log_probs, y)                          # yhat - y, (E7)

  def data_term(top=error, relu=correct):
    deltas = backprop.backprop_errors(params, acts, top / m, masks=tuple(relu))
    return deltas, _leaves64(backprop.layer_grads(params, acts, deltas, 0.0, m))  # (E8)-(E12)

  alts = {("output_error", name): data_term(top)[1] for name, top in tops.items()}
  deep = len(hs) > 1
  for name, relu in masks.items():
    alts[("relu_mask", name)] = data_term(relu=relu)[1]
    for l in range(len(hs)) if deep else ():
      alts[("relu_mask", f"{name}@{l + 1}")] = data_term(relu=swap(l, relu[l]))[1]
  for l, layer in enumerate(params[:-1]):
    if layer.w.shape[0] == layer.w.shape[1]:
      back = data_term(relu=swap(l, masks["no_mask"][l]))[0][l]   # Delta W^T from above
      leaves = data_term()[1]
      leaves[2 * l] = np.asarray(jnp.where(correct[l], acts[l], 0.0).T @ back)
      alts[("relu_mask", f"wrong_index@{l + 1}" if deep else "wrong_index")] = leaves
  return alts


@dataclasses.dataclass(frozen=True)
class DrawInfo:
  """One problem the gradient was compared on."""
  label: str   # "given", "seed 0", ..., "ties"
  m: int
  l2: float
  seed: Optional[int]  # None for the given batch


class _Draw(NamedTuple):
  """One problem's leaves in tree order, float64: theta, grad_fn's, jax.grad's of (E6) and of its
  data term (lambda = 0), the alternatives."""
  info: DrawInfo
  theta: List[np.ndarray]
  got: List[np.ndarray]
  ref: List[np.ndarray]
  data: List[np.ndarray]
  alts: Dict[Tuple[str, str], List[np.ndarray]]

  def penalty(self, i: int, bias: bool = False) -> np.ndarray:
    """(lambda/m) theta_i for a weight (E8)/(E11); 0 for a bias (E9)/(E12) unless `bias`."""
    return self.info.l2 / self.info.m * self.theta[i] * (bias or i % 2 == 0)


def _run_draw(grad_fn, info: DrawInfo, params, x, y, names) -> _Draw:
  """grad_fn, the oracle and the alternatives on one problem (inside x64)."""
  got = _user_grads(grad_fn, params, x, y, info.l2, names)
  ref = _leaves64(autodiff_grads(params, x, y, info.l2))
  data = ref if info.l2 == 0 else _leaves64(autodiff_grads(params, x, y, 0.0))
  return _Draw(info, _leaves64(params), got, ref, data, _alternatives(params, x, y))


def _residual(got, alt, ref) -> float:
  """||got - alt|| / max(||got||, ||ref||): how far a hypothesis is from what grad_fn gave."""
  return float(np.linalg.norm(got - alt) / max(np.linalg.norm(got), np.linalg.norm(ref), 1e-300))


def _close(a, b) -> bool:
  return bool(np.all(np.abs(a - b) <= 1e-9 * np.maximum(np.abs(b), 1.0)))


def _matching(values: Sequence[Optional[float]], draws) -> List[Tuple[str, np.ndarray]]:
  """The factors c m^p equal to values[k] on every draw k (None: no evidence), most specific
  first (n before d before K), or else one constant; each with its value on every draw."""
  ws = draws[0].theta[::2]
  hidden = [w.shape[1] for w in ws[:-1]]
  symbols = ([("n", ws[0].shape[0])] + [("d" if len(hidden) == 1 else f"d{i + 1}", d)
                                        for i, d in enumerate(hidden)] + [("K", ws[-1].shape[1])])
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


_Finding = Tuple[str, Optional[str], Optional[str], str]  # kind, detail, factor, explanation


def _classify(name: str, alpha: str, r: str, others: Sequence[str]) -> Optional[_Finding]:
  """The finding for got = alpha D + r (lambda/m) theta (None for the reference's own factors);
  `others` are factors equal to alpha at these sizes."""
  weight = name.startswith("W")
  penalty = "missing" if r == "0" else {
      "1": "(lambda/m)*", "m": "lambda*", "1/2": "(lambda/2m)*", "1/m": "(lambda/m^2)*",
      "2": "2(lambda/m)*", "2m": "2 lambda*"}.get(r, f"({r})(lambda/m)*") + name
  if alpha == "1":
    if r == ("1" if weight else "0"):
      return None
    if not weight:
      return ("extra_penalty", "bias_penalty", r,
              f"a penalty {penalty} on the bias {name}: biases are not penalised (E6)")
    if r == "0":
      return ("missing_penalty", None, r, f"the penalty term (lambda/m)*{name} of (E8)/(E11) "
              f"is missing: got - ref = -(lambda/m)*{name}")
    if r == "2":
      return "extra_penalty", "twice", r, f"the penalty term (lambda/m)*{name} is added twice"
    return "penalty_scale", None, r, f"the penalty term is {penalty} instead of (lambda/m)*{name}"
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
  return kind, "whole" if whole else "data_term", alpha, text


def _linear(i: int, name: str, draws: Sequence[_Draw]):
  """got = alpha D + r (lambda/m) theta with alpha, r constants or size ratios on every draw.

  Returns:
    (finding or None, alphas): alphas per draw when every least-squares fit is exact but matches
    no factor (for more entries than the two regressors: with fewer, anything fits).
  """
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
    r_options = [("0", np.zeros(len(draws))) if i % 2 else ("1", np.ones(len(draws)))]
  elif all(r is None or a is None or _close(r, a) for r, a in zip(ratios, alphas)):
    r_options = [("alpha", None)]     # scaled alike: the whole gradient
  else:
    r_options = _matching(ratios, draws)
  for (a, fa), (r, fr) in itertools.product(a_options, r_options):
    r, fr = (a, fa) if r == "alpha" else (r, fr)
    if all(_residual(d.got[i], fa[k] * d.data[i] + fr[k] * d.penalty(i, bias=True),
                     d.ref[i]) <= MATCH_RTOL
           for k, d in enumerate(draws)):
      return _classify(name, a, r, [n for n, _ in a_options if n != a]), None
  return None, alphas if draws[0].got[i].size > 2 else None


def _explain(i: int, name: str, draws: Sequence[_Draw], worst: float) -> _Finding:
  """The first hypothesis that reproduces got on every draw: linear, then (for the rest, also
  differing from ref by INFORMATIVE on some draw) transposes and `_alternatives`."""
  if not all(np.all(np.isfinite(d.got[i])) for d in draws):
    return "unexplained", "nonfinite", None, f"grad_fn returned NaN or Inf in {name}"
  finding, alphas = _linear(i, name, draws)
  if finding:
    return finding
  shape = draws[0].ref[i].shape
  tried = [] if not (len(shape) == 2 and shape[0] == shape[1] > 1) else [
      ("transpose", "whole", f"{name} is transposed: got = ref^T", lambda d: d.ref[i].T),
      ("transpose", "data_term", f"the data term of {name} is transposed (the penalty term is "
       "right)", lambda d: d.data[i].T + d.penalty(i))]
  for kind, detail in draws[0].alts:
    base, _, layer = detail.partition("@")
    tried.append((kind, detail, _SWAPS[base] + (f" (hidden layer {layer})" if layer else ""),
                  lambda d, key=(kind, detail): d.alts[key][i] + d.penalty(i)))
  for kind, detail, text, alt_of in tried:
    alts = [alt_of(d) for d in draws]
    if (all(_residual(d.got[i], a, d.ref[i]) <= MATCH_RTOL for d, a in zip(draws, alts))
        and max(relative_error(a, d.ref[i]) for d, a in zip(draws, alts)) > INFORMATIVE):
      return kind, detail, None, text
  text = "no single mistake reproduces the error on every draw"
  if alphas is not None and all(a is not None for a in alphas):
    text += (f"; got is proportional to the data term on each draw, but the factor changes "
             f"between draws ({', '.join(f'{a:.4g}' for a in alphas)}) and matches no constant "
             "or ratio of the sizes")
  if 1e-10 < worst < 1e-4:
    text += "; an error this small suggests float32 rounding somewhere in the computation"
  return "unexplained", None, None, text


def _locate(got: np.ndarray, ref: np.ndarray, data: np.ndarray):
  """(where, indices, text): which entries of got are off, at 1e-9 of the largest entry.

  "all" means every entry that is off or where the data term is non-zero (the rows of a dead
  ReLU unit have no data term to get wrong).
  """
  if not np.all(np.isfinite(got)):
    bad = np.flatnonzero(~np.isfinite(got))
    return "nonfinite", tuple(int(b) for b in bad), f"{bad.size} non-finite entries"
  thr = 1e-9 * max(np.abs(ref).max(initial=0.0), np.abs(got).max(initial=0.0), 1e-300)
  wrong = np.abs(got - ref) > thr
  if not wrong.any():
    return "none", (), "no entry off by more than 1e-9 of the largest"
  active = wrong | (np.abs(data) > thr)
  flipped = bool(np.all(np.abs(got + ref)[wrong] <= thr))
  if np.array_equal(wrong, active):
    return ("sign", (), "every entry has exactly the opposite sign") if flipped else (
        "all", (), "all entries")
  sign = ", with exactly the opposite sign" if flipped else ""
  blocks = {"entries": (wrong, wrong)} if got.ndim == 1 else {}
  if got.ndim == 2:
    blocks = {"rows": (wrong.any(axis=1), active & wrong.any(axis=1)[:, None]),
              "columns": (wrong.any(axis=0), active & wrong.any(axis=0)[None, :])}
  for word, (hit, block) in blocks.items():
    if np.array_equal(wrong, block):
      idx = np.flatnonzero(hit)
      shown = ", ".join(str(int(j)) for j in idx[:8]) + (", ..." if idx.size > 8 else "")
      return word, tuple(int(j) for j in idx), (
          f"{word} {shown} only ({idx.size} of {hit.size}){sign}")
  return "scattered", (), f"scattered: {int(wrong.sum())} of {wrong.size} entries{sign}"


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
    lines = [f"gradient diagnosis: layers {self.layer_sizes}, float64, bar: rel. error <= "
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
params, x, y = random_problem(0, {sizes}, m={m}{ties})
got = {fn}(params, x, y, {l2!r})  # your gradient function
ref = mj.autodiff_grads(params, x, y, {l2!r})
print("{name} got:", got{leaf})
print("{name} ref:", ref{leaf})
print("rel. error:", mj.relative_error(got{leaf}, ref{leaf}))
"""


def _minimal_repros(grad_fn, depth: int, wanted: Dict[int, Tuple[float, bool]],
                    names: Sequence[str], max_tries: int) -> Dict[int, Repro]:
  """For each leaf index in `wanted` (with its lambda and whether it needs ties), the first small
  problem (widths 2-4, K 2-3, m 1-4, smallest first) on which its error exceeds the bar."""
  widths = itertools.product(*([(2, 3, 4)] * depth + [(2, 3)]))
  problems = sorted(((s, m) for s in widths for m in range(1, 5)),
                    key=lambda c: (sum(c[0]) + c[1], c))
  fn = getattr(grad_fn, "__name__", "")
  found, tries = {}, 0
  for (sizes, m), (l2, ties) in itertools.product(problems, sorted(set(wanted.values()))):
    pending = [i for i, v in wanted.items() if v == (l2, ties) and i not in found]
    if not pending or tries >= max_tries:
      continue
    tries += 1
    params, x, y = random_problem(0, sizes, m, ties=ties)
    try:
      got = _user_grads(grad_fn, params, x, y, l2, names)
    except Exception:  # a function that only runs at some sizes (S3 needs n = d): skip
      continue
    ref = _leaves64(autodiff_grads(params, x, y, l2))
    for i in pending:
      err = relative_error(got[i], ref[i])
      if not err <= BAR:
        found[i] = Repro(sizes, m, l2, 0, ties, err if math.isfinite(err) else math.inf,
                         _SNIPPET.format(sizes=sizes, m=m, ties=", ties=True" if ties else "",
                                         fn=fn if fn.isidentifier() else "grad_fn", l2=l2,
                                         name=names[i], leaf="[{}][{}]".format(*divmod(i, 2))))
  return found


def diagnose(grad_fn: Callable, params: Params, x, y, l2=0.0, *,
             seeds: Sequence[int] = (0, 1, 2), repro: bool = True,
             max_repro_tries: int = 48) -> Diagnosis:
  """Diagnoses a gradient function against jax.grad: which parameter, where, and why.

  Args:
    grad_fn: the gradient under test, `grad_fn(params, x, y, l2)` returning a tuple of `Dense`
      shaped like params, as `mlp_jax.grads` does.
    params, x, y, l2: the problem, as for `loss`; compared in float64 (upcast).
    seeds: one fresh random draw per seed, of the same layer sizes, at other batch sizes and
      alternately at lambda + 0.5 and lambda; a ties draw (h = 0 exactly) is added.
    repro: whether to search small problems for a minimal reproduction of each failure, at
      lambda (or lambda + 0.5 if the error shows only there), on a ties problem if it showed
      only on the ties draw.
    max_repro_tries: at most this many grad_fn calls in that search.

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
  params, x, y, l2 = checks.check_batch(params, x, y, l2)
  l2, m, sizes, names = float(l2), int(x.shape[0]), model.layer_sizes(params), param_names(params)
  count = max(len(seeds), 2)   # fresh batch sizes: m, then 7, 13, ..., none equal to a width
  ms = ([b for b in dict.fromkeys((m,) + BATCH_SIZES) if b not in sizes] or [m]) * count
  plan = [DrawInfo(f"seed {s}", b, l2 + EXTRA_L2 if k % 2 == 0 else l2, int(s))
          for k, (s, b) in enumerate(zip(seeds, ms))]
  plan.append(DrawInfo("ties", ms[1], l2 + EXTRA_L2, int(seeds[0]) if len(seeds) else 0))
  with jax.enable_x64(True):
    draws = [_run_draw(grad_fn, DrawInfo("given", m, l2, None), *to_float64((params, x)), y,
                       names)] + [
        _run_draw(grad_fn, info, *random_problem(info.seed, sizes, info.m,
                                                 ties=info.label == "ties"), names)
        for info in plan]
    entries = [_entry(i, name, draws) for i, name in enumerate(names)]
    wanted = {}  # (lambda, ties) of each failure's reproduction
    for i, e in enumerate(entries):
      failing = [d.info for d, err in zip(draws, e.rel_errs) if err > BAR]
      if repro and failing:
        wanted[i] = (l2 if any(f.l2 == l2 for f in failing) else l2 + EXTRA_L2,
                     all(f.label == "ties" for f in failing))
    found = _minimal_repros(grad_fn, len(params), wanted, names, max_repro_tries)
  entries = [dataclasses.replace(e, repro=found.get(i)) for i, e in enumerate(entries)]
  return Diagnosis(tuple(entries), tuple(d.info for d in draws), sizes, BAR, MATCH_RTOL)


def _entry(i: int, name: str, draws: Sequence[_Draw]) -> ParamDiagnosis:
  """Verdict, location (on the first draw that fails) and likely mistake of leaf i, no repro."""
  errs = tuple(e if math.isfinite(e) else math.inf
               for e in (relative_error(d.got[i], d.ref[i]) for d in draws))
  shape, worst = draws[0].ref[i].shape, max(errs)
  if worst <= BAR:
    return ParamDiagnosis(name, shape, True, worst, errs, "none", (), "", None, None, None, "",
                          None)
  k = next(k for k, e in enumerate(errs) if e > BAR)
  where, indices, text = _locate(draws[k].got[i], draws[k].ref[i], draws[k].data[i])
  text += f" (on draw '{draws[k].info.label}')" if k else ""
  return ParamDiagnosis(name, shape, False, worst, errs, where, indices, text,
                        *_explain(i, name, draws, worst), None)
