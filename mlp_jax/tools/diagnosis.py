"""Diagnosis of a hand-derived gradient: which parameter is wrong, where, and the likely mistake.

`check_gradients` says *that* a parameter's gradient is wrong; `diagnose` says what is wrong with
it. It runs the user's `grad_fn` and the oracle (`jax.grad` of (E6)) in float64 on several draws:
the given batch, fresh random problems of the same layer sizes at batch sizes m that differ from
the widths and with a second penalty lambda + 0.5, and a "ties" problem whose pre-activations hit
h = 0 exactly:

    from mlp_jax.tools.diagnosis import diagnose
    report = diagnose(my_grads, params, x, y, l2=0.1)   # my_grads(params, x, y, l2) -> Dense tuple
    print(report)                                       # a table, and a minimal reproduction

For each parameter it reports

- pass/fail at the float64 bar (1e-12) with the worst relative error over the draws;
- where the error sits: all entries, certain rows, columns or entries, an exact sign flip, or
  scattered entries;
- the likely mistake, `kind`, when a hypothesis reproduces the user's gradient to a relative
  residual of `MATCH_RTOL` (1e-9) on *every* draw; otherwise "unexplained";
- a minimal reproduction: the smallest layer sizes and m at which the error shows, as a snippet.

Hypotheses, in the order they are tried. With D the data term of the reference gradient (jax.grad
at lambda = 0), theta the parameter and P = (lambda/m) theta the penalty term of a weight (E8),
(E11) (none for a bias, (E9), (E12)), each draw's gradient is fitted as got = alpha D + beta theta:

- "sign_flip": alpha = -1;  "sum_not_mean": alpha = m (a sum over the batch, the 1/m missing);
  "scale": any other alpha that is one constant, or one ratio of the sizes (m/n, 1/m, K, ...),
  on every draw. Each covers the whole gradient (beta scaled alike) or the data term alone.
- "missing_penalty" (beta = 0), "extra_penalty" (beta = 2 lambda/m, or a penalty on a bias),
  "penalty_scale" (beta = lambda, lambda/2m, ...), with alpha = 1.
- "transpose": got = ref^T (square weights only; other shapes fail the shape check).
- "relu_mask": got equals the gradient recomputed with another ReLU mask: input feature i masked
  by hidden unit i (S3), derivative 1 or 1/2 at h = 0, or no mask at all.
- "output_error": got equals the gradient recomputed with another dl/dz (E7): the two cases
  swapped (S1), yhat without the one-hot y subtracted, or the logits in place of yhat.
"""

import dataclasses
import itertools
import math
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from mlp_jax.core import checks
from mlp_jax.core.model import Dense, Params
from mlp_jax.errors import InputError, InputTypeError
from mlp_jax.oracle.autodiff import autodiff_grads
from mlp_jax.oracle.check import RTOL, param_names, relative_error
from mlp_jax.tables import text_table

BAR = RTOL[jnp.dtype(jnp.float64)]  # pass/fail: relative error against jax.grad, float64
MATCH_RTOL = 1e-9   # a hypothesis must reproduce got to this relative residual on every draw
INFORMATIVE = 1e-6  # ... and differ from the reference by more than this on some draw
EXTRA_L2 = 0.5      # every other fresh draw uses lambda + EXTRA_L2: penalty and data term separate
BATCH_SIZES = (7, 13, 5, 11, 17, 19, 23, 29, 31, 37, 41, 43)  # fresh m, skipping layer widths

KINDS = ("scale", "sign_flip", "transpose", "missing_penalty", "extra_penalty", "penalty_scale",
         "relu_mask", "sum_not_mean", "output_error", "unexplained")
WHERE = ("none", "all", "sign", "rows", "columns", "entries", "scattered", "nonfinite")


# ---------------------------------------------------------------------------------------------
# Random problems

def random_problem(seed: int, layer_sizes: Sequence[int], m: int, *, ties: bool = False):
  """A float64 problem (params, x, y) for a diagnosis draw or a reproduction.

  Args:
    seed: numpy seed.
    layer_sizes: widths (n, d_1, ..., K).
    m: batch size.
    ties: if True, every value is dyadic (exact in float64) and each hidden layer's even units
      have h = 0 exactly on the first example, so the ReLU derivative at 0 matters.

  Returns:
    (params, x, y): a tuple of `Dense` (He-scaled weights, non-zero biases), x (m, n) and integer
    labels (m,), all float64 / int32 JAX arrays.
  """
  rng = np.random.default_rng(seed)
  sizes = tuple(int(s) for s in layer_sizes)
  layers, x = (_dyadic_layers(rng, sizes, m) if ties else _normal_layers(rng, sizes, m))
  y = rng.integers(0, sizes[-1], size=m).astype(np.int32)
  with jax.enable_x64(True):
    params = tuple(Dense(jnp.asarray(w), jnp.asarray(b)) for w, b in layers)
    return params, jnp.asarray(x), jnp.asarray(y)


def _normal_layers(rng, sizes, m):
  """He-normal weights, biases N(0, 0.1^2), x N(0, 1): a generic problem."""
  layers = [(rng.standard_normal((a, b)) * np.sqrt(2.0 / a), 0.1 * rng.standard_normal(b))
            for a, b in zip(sizes[:-1], sizes[1:])]
  return layers, rng.standard_normal((m, sizes[0]))


def _dyadic_layers(rng, sizes, m):
  """Small dyadic values, and biases that put half the units of example 0 exactly at h = 0."""
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


def _batch_sizes(m: int, sizes: Sequence[int], count: int) -> List[int]:
  """`count` batch sizes for fresh draws: the given m, then 7, 13, ..., none equal to a width."""
  out = []
  for b in (m,) + BATCH_SIZES:
    if b not in sizes and b not in out:
      out.append(b)
  return (out * count)[:count] if out else [m] * count


# ---------------------------------------------------------------------------------------------
# Calling the user's function

def _describe(value) -> str:
  if isinstance(value, (tuple, list)):
    return f"a {type(value).__name__} of {len(value)} items"
  return f"a {type(value).__name__}"


def _call(grad_fn: Callable, params, x, y, l2):
  """grad_fn(params, x, y, l2); a TypeError (a bad signature) becomes an InputTypeError."""
  try:
    return grad_fn(params, x, y, l2)
  except TypeError as e:
    raise InputTypeError(
        "grad_fn must be callable as grad_fn(params, x, y, l2) and return the gradient like "
        f"mlp_jax.grads; calling it raised TypeError: {e}") from e


def _grad_leaves(result, params: Params, names: Sequence[str]) -> List[np.ndarray]:
  """The leaves W1, b1, W2, ... of grad_fn's result as float64 arrays, after checking them."""
  depth = len(params)
  if not (isinstance(result, (tuple, list)) and len(result) == depth and all(
      isinstance(layer, (tuple, list)) and len(layer) == 2 for layer in result)):
    raise InputTypeError(
        f"grad_fn must return a tuple of {depth} mlp_jax.Dense(w, b), one per layer, shaped "
        f"like params (as mlp_jax.grads does); got {_describe(result)}")
  expected = [leaf for layer in params for leaf in layer]
  leaves = [leaf for layer in result for leaf in layer]
  out = []
  for name, got, ref in zip(names, leaves, expected):
    if not (hasattr(got, "shape") and hasattr(got, "dtype")):
      raise InputTypeError(
          f"grad_fn returned {name} of type {type(got).__name__}, expected an array of shape "
          f"{tuple(ref.shape)}")
    if not (jnp.issubdtype(got.dtype, jnp.floating) or jnp.issubdtype(got.dtype, jnp.integer)):
      raise InputTypeError(f"grad_fn returned {name} of dtype {got.dtype}, expected a floating "
                           f"array of shape {tuple(ref.shape)}")
    if tuple(got.shape) != tuple(ref.shape):
      hint = (" (its transpose: only a square weight's transpose can be diagnosed)"
              if tuple(got.shape) == tuple(ref.shape)[::-1] else "")
      raise InputError(f"grad_fn returned {name} of shape {tuple(got.shape)}, expected "
                       f"{tuple(ref.shape)}{hint}")
    out.append(np.asarray(got, np.float64))
  return out


# ---------------------------------------------------------------------------------------------
# Alternative gradients: the backward pass (E7)-(E12) with one step done another way

_OUTPUT_ERRORS = {
    "swapped_cases": "the output error dl/dz (E7) has its two cases swapped: yhat_t for the true "
                     "class and yhat_t - 1 for the others (the source's S1)",
    "no_minus_y": "the output error dl/dz (E7) is yhat: the one-hot y is not subtracted",
    "logits": "the output error dl/dz (E7) uses the logits, z - y, instead of yhat - y",
}
_MASKS = {
    "wrong_index": "the ReLU mask is on the wrong index: input feature i is masked by hidden "
                   "unit i (the source's S3); it belongs on the back-propagated error, per "
                   "hidden unit, (E10)-(E11)",
    "tie_one": "the ReLU derivative is taken as 1 at h = 0 (mask h >= 0); it is 0 there, "
               "1[h > 0] (E10)",
    "tie_half": "the ReLU derivative is taken as 1/2 at h = 0 (as jnp.maximum(h, 0) "
                "differentiates); it is 0 there, 1[h > 0] (E10)",
    "no_mask": "the ReLU mask is missing: the back-propagated error is not multiplied by "
               "1[h > 0] (E10)",
}


def _forward(layers, x):
  """Hidden pre-activations H_l, every layer's input (X, A_1, ...) and the logits, (E1)-(E3)."""
  pre, acts = [], [x]
  for w, b in layers[:-1]:
    pre.append(acts[-1] @ w + b)                  # (m, d_l)
    acts.append(np.maximum(pre[-1], 0.0))
  w, b = layers[-1]
  return pre, acts, acts[-1] @ w + b              # logits (m, K)


def _output_errors(z, y) -> Dict[str, np.ndarray]:
  """dl/dz for every row, (m, K): the correct yhat - y (E7) and the alternatives above."""
  shifted = z - z.max(axis=1, keepdims=True)
  yhat = np.exp(shifted) / np.exp(shifted).sum(axis=1, keepdims=True)
  onehot = np.eye(z.shape[1])[y]
  yhat_t = np.take_along_axis(yhat, y[:, None], axis=1)
  return {"correct": yhat - onehot, "swapped_cases": np.where(onehot > 0, yhat, yhat_t - 1),
          "no_minus_y": yhat, "logits": z - onehot}


def _mask(h, name: str):
  """The ReLU derivative 1[h > 0] (E10), or an alternative convention."""
  if name == "tie_one":
    return (h >= 0).astype(h.dtype)
  if name == "tie_half":
    return (h > 0) + 0.5 * (h == 0)
  if name == "no_mask":
    return np.ones_like(h)
  return (h > 0).astype(h.dtype)


def _backward(layers, acts, masks, top, wrong_index: Optional[int] = None) -> List[np.ndarray]:
  """The data term's gradient, leaves in tree order, from the top error (E8)-(E12).

  Args:
    layers: [(w, b)] float64.
    acts: the input of every layer.
    masks: one ReLU mask per hidden layer, (m, d_l).
    top: the error at the logits, already divided by m.
    wrong_index: a layer whose weight gradient masks its *input* i by its hidden unit i, (S3).
  """
  depth = len(layers)
  deltas, backs = [None] * depth, [None] * depth
  deltas[-1] = top
  for l in range(depth - 2, -1, -1):
    backs[l] = deltas[l + 1] @ layers[l + 1][0].T  # (m, d_l), before the mask
    deltas[l] = backs[l] * masks[l]                # (E10)
  leaves = []
  for l in range(depth):
    if l == wrong_index:
      leaves.append((acts[l] * masks[l]).T @ backs[l])
    else:
      leaves.append(acts[l].T @ deltas[l])         # (E8), (E11)
    leaves.append(deltas[l].sum(axis=0))           # (E9), (E12)
  return leaves


def _alternatives(layers, x, y) -> Dict[Tuple[str, str], List[np.ndarray]]:
  """Data-term gradients with one step done another way, keyed by (kind, detail)."""
  pre, acts, z = _forward(layers, x)
  m = x.shape[0]
  errors = _output_errors(z, y)
  correct = [_mask(h, "correct") for h in pre]
  alts = {("output_error", name): _backward(layers, acts, correct, errors[name] / m)
          for name in _OUTPUT_ERRORS}
  top = errors["correct"] / m
  deep = len(pre) > 1
  for name in ("tie_one", "tie_half", "no_mask"):
    alts[("relu_mask", name)] = _backward(layers, acts, [_mask(h, name) for h in pre], top)
    for l in range(len(pre)) if deep else ():
      masks = [_mask(h, name if i == l else "correct") for i, h in enumerate(pre)]
      alts[("relu_mask", f"{name}@{l + 1}")] = _backward(layers, acts, masks, top)
  for l, (w, _) in enumerate(layers[:-1]):
    if w.shape[0] == w.shape[1]:
      detail = f"wrong_index@{l + 1}" if deep else "wrong_index"
      alts[("relu_mask", detail)] = _backward(layers, acts, correct, top, wrong_index=l)
  return alts


# ---------------------------------------------------------------------------------------------
# Draws

@dataclasses.dataclass(frozen=True)
class DrawInfo:
  """One problem the gradient was compared on."""
  label: str   # "given", "seed 0", ..., "ties"
  m: int
  l2: float
  seed: Optional[int]  # None for the given batch


class _Draw(NamedTuple):
  info: DrawInfo
  theta: List[np.ndarray]    # the parameters, leaves in tree order
  got: List[np.ndarray]      # grad_fn's gradient
  ref: List[np.ndarray]      # jax.grad of (E6)
  data: List[np.ndarray]     # jax.grad of the data term alone (lambda = 0)
  alts: Dict[Tuple[str, str], List[np.ndarray]]

  def penalty(self, i: int) -> np.ndarray:
    """(lambda/m) W for a weight, (E8)/(E11); 0 for a bias."""
    if i % 2:
      return np.zeros_like(self.theta[i])
    return self.info.l2 / self.info.m * self.theta[i]


def _leaves64(tree) -> List[np.ndarray]:
  return [np.asarray(leaf, np.float64) for leaf in jax.tree.leaves(tree)]


def _run_draw(grad_fn, info: DrawInfo, params, x, y, names) -> _Draw:
  """Call grad_fn and the oracle on one problem (inside x64)."""
  got = _grad_leaves(_call(grad_fn, params, x, y, info.l2), params, names)
  ref = _leaves64(autodiff_grads(params, x, y, info.l2))
  data = ref if info.l2 == 0 else _leaves64(autodiff_grads(params, x, y, 0.0))  # data term
  layers = [(np.asarray(w, np.float64), np.asarray(b, np.float64)) for w, b in params]
  alts = _alternatives(layers, np.asarray(x, np.float64), np.asarray(y))
  return _Draw(info, [leaf for layer in layers for leaf in layer], got, ref, data, alts)


# ---------------------------------------------------------------------------------------------
# Factors: constants and ratios of the problem's sizes

Factor = Tuple[str, Callable[[int], float]]


def _factor_table(sizes: Sequence[int]) -> List[Factor]:
  """Candidate factors as functions of m, most specific first: n before d before K."""
  hidden = sizes[1:-1]
  symbols = ([("n", sizes[0])] + ([("d", hidden[0])] if len(hidden) == 1 else
                                  [(f"d{i + 1}", h) for i, h in enumerate(hidden)])
             + [("K", sizes[-1])])
  table = [("0", lambda m: 0.0), ("1", lambda m: 1.0), ("-1", lambda m: -1.0),
           ("m", lambda m: float(m)), ("1/m", lambda m: 1.0 / m)]
  for name, v in symbols:
    table += [(f"m/{name}", lambda m, v=v: m / v), (f"{name}/m", lambda m, v=v: v / m)]
  table += [("m^2", lambda m: float(m * m)), ("1/m^2", lambda m: 1.0 / (m * m)),
            ("2", lambda m: 2.0), ("1/2", lambda m: 0.5), ("2m", lambda m: 2.0 * m)]
  for name, v in symbols:
    table += [(name, lambda m, v=v: float(v)), (f"1/{name}", lambda m, v=v: 1.0 / v)]
  return table


def _close(a: float, b: float) -> bool:
  return abs(a - b) <= 1e-9 * max(abs(b), 1.0)


def _matching(values: Sequence[Optional[float]], ms: Sequence[int],
              table: Sequence[Factor]) -> List[Factor]:
  """The factors equal to values[k] at m = ms[k] on every draw (None: no evidence), then a
  constant if the values agree but match no entry."""
  known = [(v, m) for v, m in zip(values, ms) if v is not None]
  if not known:
    return []
  out = [(name, f) for name, f in table if all(_close(v, f(m)) for v, m in known)]
  if not out and all(_close(v, known[0][0]) for v, _ in known):
    c = known[0][0]
    out.append((f"{c:.6g}", lambda m, c=c: c))
  return out


# ---------------------------------------------------------------------------------------------
# Hypotheses

class _Finding(NamedTuple):
  kind: str
  detail: Optional[str]
  factor: Optional[str]
  text: str


def _residual(got, alt, ref) -> float:
  """||got - alt|| / max(||got||, ||ref||): how far a hypothesis is from what grad_fn gave."""
  scale = max(np.linalg.norm(got), np.linalg.norm(ref), 1e-300)
  return float(np.linalg.norm(got - alt) / scale)


def _confirmed(i: int, draws: Sequence[_Draw], alt_of: Callable[[_Draw], np.ndarray]) -> bool:
  """True when alt_of(draw) reproduces got on every draw and differs from ref on some draw."""
  alts = [alt_of(d) for d in draws]
  if any(a is None for a in alts):
    return False
  return (all(_residual(d.got[i], a, d.ref[i]) <= MATCH_RTOL for d, a in zip(draws, alts))
          and max(relative_error(a, d.ref[i]) for d, a in zip(draws, alts)) > INFORMATIVE)


def _fit(got, data, theta) -> Tuple[Optional[float], Optional[float], float]:
  """Least squares got = alpha data + beta theta; a coefficient is None if its column is 0."""
  cols = [c.ravel() for c in (data, theta) if np.any(c)]
  if not cols:
    return None, None, _residual(got, np.zeros_like(got), data)
  coef, *_ = np.linalg.lstsq(np.stack(cols, axis=1), got.ravel(), rcond=None)
  fitted = (np.stack(cols, axis=1) @ coef).reshape(got.shape)
  coef = list(coef)
  alpha = coef.pop(0) if np.any(data) else None
  beta = coef.pop(0) if np.any(theta) else None
  return alpha, beta, _residual(got, fitted, got)


def _penalty_text(name: str, r: str) -> str:
  """The penalty term r (lambda/m) theta of parameter `name`, in words."""
  if r == "0":
    return "missing"
  forms = {"1": "(lambda/m)*", "m": "lambda*", "1/2": "(lambda/2m)*", "1/m": "(lambda/m^2)*",
           "2": "2(lambda/m)*", "2m": "2 lambda*"}
  return forms.get(r, f"({r})(lambda/m)*") + name


def _scale_hint(factor: str) -> str:
  """What a data factor usually means, or ''."""
  if factor == "0":
    return "it is zero"
  if factor == "m":
    return "a sum over the batch where the derivation takes the mean: the 1/m is missing"
  if factor == "1/m":
    return "divided by m twice"
  if factor.startswith("m/"):
    return f"divided by {factor[2:]} instead of by m"
  return ""


def _classify(name: str, alpha: str, r: str) -> Optional[_Finding]:
  """A linear finding from the matched data factor alpha and penalty factor r (or 'alpha')."""
  weight = name.startswith("W")
  r = alpha if r == "alpha" else r
  if alpha == "1":
    if r == ("1" if weight else "0"):
      return None  # no pattern beyond rounding
    if not weight:
      return _Finding("extra_penalty", "bias_penalty", r,
                      f"a penalty {_penalty_text(name, r)} on the bias {name}: biases are not "
                      "penalised (E6)")
    if r == "0":
      return _Finding("missing_penalty", None, r, f"the penalty term (lambda/m)*{name} of "
                      f"(E8)/(E11) is missing: got - ref = -(lambda/m)*{name}")
    if r == "2":
      return _Finding("extra_penalty", "twice", r,
                      f"the penalty term (lambda/m)*{name} is added twice")
    return _Finding("penalty_scale", None, r,
                    f"the penalty term is {_penalty_text(name, r)} instead of (lambda/m)*{name}")
  kind = "sign_flip" if alpha == "-1" else "sum_not_mean" if alpha == "m" else "scale"
  whole = r == alpha if weight else r == "0"
  text = ("exactly the opposite sign (got = -ref)" if kind == "sign_flip" else
          f"off by the constant factor {alpha}")
  hint = _scale_hint(alpha)
  if hint and kind != "sign_flip":
    text += f": {hint}"
  if weight and r == "1":
    text += f"; in the data term only, the penalty term (lambda/m)*{name} is right"
  elif not whole:
    text += f"; and the penalty term is {_penalty_text(name, r)}"
  return _Finding(kind, "whole" if whole else "data_term", alpha, text)


def _linear(i: int, name: str, draws: Sequence[_Draw]):
  """Try got = alpha D + beta theta with alpha, beta/(lambda/m) constants or size ratios.

  Returns:
    (finding or None, alphas): alphas per draw when the fit is exact but matches no factor.
  """
  fits = [_fit(d.got[i], d.data[i], d.theta[i]) for d in draws]
  if any(res > MATCH_RTOL for _, _, res in fits):
    return None, None
  ms = [d.info.m for d in draws]
  table = _factor_table(_sizes(draws[0]))
  alphas = [a for a, _, _ in fits]
  ratios = [b / (d.info.l2 / d.info.m) if b is not None and d.info.l2 > 0 else None
            for (_, b, _), d in zip(fits, draws)]
  r_ref = "1" if i % 2 == 0 else "0"
  r_options = _matching(ratios, ms, table)
  if all(r is None or a is None or _close(r, a) for r, a in zip(ratios, alphas)):
    r_options = [("alpha", None)] + r_options
  if all(r is None for r in ratios):
    r_options = [(r_ref, (lambda m: 1.0) if r_ref == "1" else (lambda m: 0.0))]
  a_options = _matching(alphas, ms, table)
  for a_name, fa in a_options:
    for r_name, fr in r_options:
      fr = fa if r_name == "alpha" else fr
      alt = lambda d, fa=fa, fr=fr: (fa(d.info.m) * d.data[i]
                                     + fr(d.info.m) * d.info.l2 / d.info.m * d.theta[i])
      if all(_residual(d.got[i], alt(d), d.ref[i]) <= MATCH_RTOL for d in draws):
        finding = _classify(name, a_name, r_name)
        if finding is None:
          return None, None
        others = [n for n, _ in a_options if n != a_name]
        if others and finding.kind in ("scale", "sum_not_mean"):
          finding = finding._replace(
              text=finding.text + f" (equal to {', '.join(others)} at these sizes)")
        return finding, None
  # With no more entries than regressors every draw fits exactly: no evidence of proportionality.
  return None, alphas if draws[0].got[i].size > 2 else None


def _sizes(draw: _Draw) -> Tuple[int, ...]:
  ws = draw.theta[::2]
  return (ws[0].shape[0],) + tuple(w.shape[1] for w in ws)


def _structural(i: int, name: str, draws: Sequence[_Draw]) -> Optional[_Finding]:
  """Transposes, ReLU masks and output errors: alternatives that are not a rescaling."""
  shape = draws[0].ref[i].shape
  if len(shape) == 2 and shape[0] == shape[1] and shape[0] > 1:
    if _confirmed(i, draws, lambda d: d.ref[i].T):
      return _Finding("transpose", "whole", None, f"{name} is transposed: got = ref^T")
    if _confirmed(i, draws, lambda d: d.data[i].T + d.penalty(i)):
      return _Finding("transpose", "data_term", None,
                      f"the data term of {name} is transposed (the penalty term is right)")
  for (kind, detail) in draws[0].alts:
    if _confirmed(i, draws, lambda d: d.alts[(kind, detail)][i] + d.penalty(i)):
      base, _, layer = detail.partition("@")
      text = (_OUTPUT_ERRORS if kind == "output_error" else _MASKS)[base]
      if layer:
        text += f" (hidden layer {layer})"
      return _Finding(kind, detail, None, text)
  return None


def _unexplained(worst: float, alphas) -> _Finding:
  text = "no single mistake reproduces the error on every draw"
  if alphas is not None and all(a is not None for a in alphas):
    values = ", ".join(f"{a:.4g}" for a in alphas)
    text += (f"; got is proportional to the data term on each draw, but the factor changes "
             f"between draws ({values}) and matches no constant or ratio of the sizes")
  if 1e-10 < worst < 1e-4:
    text += "; an error this small suggests float32 rounding somewhere in the computation"
  return _Finding("unexplained", None, None, text)


def _explain(i: int, name: str, draws: Sequence[_Draw], worst: float) -> _Finding:
  if not all(np.all(np.isfinite(d.got[i])) for d in draws):
    return _Finding("unexplained", "nonfinite", None, f"grad_fn returned NaN or Inf in {name}")
  finding, alphas = _linear(i, name, draws)
  return finding or _structural(i, name, draws) or _unexplained(worst, alphas)


# ---------------------------------------------------------------------------------------------
# Where the error sits

def _indices_text(idx: Sequence[int], limit: int = 8) -> str:
  shown = ", ".join(str(int(i)) for i in idx[:limit])
  return shown + (", ..." if len(idx) > limit else "")


def _locate(got: np.ndarray, ref: np.ndarray,
            data: np.ndarray) -> Tuple[str, Tuple[int, ...], str]:
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
  sign = ", with exactly the opposite sign" if flipped else ""
  if np.array_equal(wrong, active):
    if flipped:
      return "sign", (), "every entry has exactly the opposite sign"
    return "all", (), "all entries"
  if got.ndim == 1:
    idx = np.flatnonzero(wrong)
    return "entries", tuple(int(i) for i in idx), (
        f"entries {_indices_text(idx)} only ({idx.size} of {got.size}){sign}")
  if got.ndim == 2:
    for axis, word in ((1, "rows"), (0, "columns")):
      hit = wrong.any(axis=axis)
      block = active & (hit[:, None] if axis == 1 else hit[None, :])
      if np.array_equal(wrong, block):
        idx = np.flatnonzero(hit)
        return word, tuple(int(i) for i in idx), (
            f"{word} {_indices_text(idx)} only ({idx.size} of {hit.size}){sign}")
  return "scattered", (), f"scattered: {int(wrong.sum())} of {wrong.size} entries{sign}"


# ---------------------------------------------------------------------------------------------
# The report

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
  if isinstance(value, float) and not math.isfinite(value):
    return None
  if isinstance(value, dict):
    return {k: _jsonable(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_jsonable(v) for v in value]
  return value


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
    for e in self.entries:
      if e.name == name:
        return e
    raise KeyError(name)

  def to_dict(self) -> Dict:
    """A JSON-serialisable dict (non-finite numbers become None)."""
    return _jsonable({**dataclasses.asdict(self), "passed": self.passed})

  def __str__(self) -> str:
    draws = "; ".join(f"{d.label} (m={d.m}, lambda={d.l2:g})" for d in self.draws)
    head = [f"gradient diagnosis: layers {self.layer_sizes}, float64, bar: rel. error <= "
            f"{self.rtol:.0e}; a mistake must reproduce the gradient to {self.match_rtol:.0e} "
            "on every draw", f"draws: {draws}"]
    rows = [("param", "shape", "result", "rel. error (worst)", "(given)", "where",
             "likely mistake")]
    for e in self.entries:
      mistake = "-" if e.passed else f"{e.kind}: {e.explanation}"
      rows.append((e.name, "x".join(map(str, e.shape)), "ok" if e.passed else "FAIL",
                   f"{e.rel_err:.2e}", f"{e.rel_errs[0]:.2e}", "-" if e.passed else e.where_text,
                   mistake))
    lines = head + text_table(rows)
    repros = [e for e in self.entries if e.repro is not None]
    if repros:
      lines.append("minimal reproduction:")
    shown = set()
    for e in repros:
      r = e.repro
      lines.append(f"  {e.name}: layers {r.layer_sizes}, m={r.m}, lambda={r.l2:g}"
                   f"{', ties' if r.ties else ''}: rel. error {r.rel_err:.2e}")
      key = (r.layer_sizes, r.m, r.l2, r.ties)
      if key not in shown:
        shown.add(key)
        lines += ["    " + line for line in r.snippet.rstrip().splitlines()]
    lines.append("PASSED" if self.passed else f"FAILED: {', '.join(self.failed)}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Minimal reproduction

def _repro_candidates(depth: int) -> List[Tuple[Tuple[int, ...], int]]:
  """Small (layer sizes, m) of the given depth, smallest first: widths 2-4, K 2-3, m 1-4."""
  widths = itertools.product(*([(2, 3, 4)] * depth + [(2, 3)]))
  out = [(sizes, m) for sizes in widths for m in range(1, 5)]
  return sorted(out, key=lambda c: (sum(c[0]) + c[1], c[0], c[1]))


def _snippet(fn_name: str, name: str, index: int, sizes, m: int, l2: float, ties: bool) -> str:
  layer, leaf = divmod(index, 2)
  ties_arg = ", ties=True" if ties else ""
  return (
      "import jax\n"
      "import mlp_jax as mj\n"
      "from mlp_jax.tools.diagnosis import random_problem\n"
      'jax.config.update("jax_enable_x64", True)\n'
      f"params, x, y = random_problem(0, {tuple(sizes)}, m={m}{ties_arg})\n"
      f"got = {fn_name}(params, x, y, {l2!r})  # your gradient function\n"
      f"ref = mj.autodiff_grads(params, x, y, {l2!r})\n"
      f'print("{name} got:", got[{layer}][{leaf}])\n'
      f'print("{name} ref:", ref[{layer}][{leaf}])\n'
      f'print("rel. error:", mj.relative_error(got[{layer}][{leaf}], ref[{layer}][{leaf}]))\n')


def _fn_name(grad_fn) -> str:
  name = getattr(grad_fn, "__name__", "")
  return name if name.isidentifier() else "grad_fn"


def _minimal_repros(grad_fn, depth: int, wanted: Dict[int, Tuple[float, bool]],
                    names: Sequence[str], max_tries: int) -> Dict[int, Repro]:
  """For each parameter index in `wanted` (with its lambda and whether it needs ties), the first
  small problem on which its relative error exceeds the bar."""
  found: Dict[int, Repro] = {}
  tries = 0
  for sizes, m in _repro_candidates(depth):
    for l2, ties in sorted({v for i, v in wanted.items() if i not in found}):
      if tries >= max_tries:
        return found
      tries += 1
      params, x, y = random_problem(0, sizes, m, ties=ties)
      try:
        got = _grad_leaves(grad_fn(params, x, y, l2), params, names)
      except Exception:  # a function that only runs at some sizes (S3 needs n = d): skip
        continue
      ref = _leaves64(autodiff_grads(params, x, y, l2))
      for i, (want_l2, want_ties) in wanted.items():
        if i in found or (want_l2, want_ties) != (l2, ties):
          continue
        err = relative_error(got[i], ref[i])
        if not err <= BAR:
          err = err if math.isfinite(err) else math.inf
          found[i] = Repro(tuple(sizes), m, l2, 0, ties, err,
                           _snippet(_fn_name(grad_fn), names[i], i, sizes, m, l2, ties))
    if len(found) == len(wanted):
      break
  return found


# ---------------------------------------------------------------------------------------------
# Entry point

def _as_float64(params, x):
  """params and x upcast to float64 (call inside x64)."""
  to64 = lambda a: jnp.asarray(np.asarray(a, np.float64))
  return tuple(Dense(to64(w), to64(b)) for w, b in params), to64(x)


def _draw_plan(m: int, sizes, l2: float, seeds: Sequence[int]) -> List[DrawInfo]:
  """Fresh draws: seed k at batch size ms[k], lambda + EXTRA_L2 on even k; then a ties draw."""
  ms = _batch_sizes(m, sizes, max(len(seeds), 2))
  plan = [DrawInfo(f"seed {s}", b, l2 + EXTRA_L2 if k % 2 == 0 else l2, int(s))
          for k, (s, b) in enumerate(zip(seeds, ms))]
  seed = int(seeds[0]) if len(seeds) else 0
  return plan + [DrawInfo("ties", ms[1], l2 + EXTRA_L2, seed)]


def diagnose(grad_fn: Callable, params: Params, x, y, l2=0.0, *,
             seeds: Sequence[int] = (0, 1, 2), repro: bool = True,
             max_repro_tries: int = 48) -> Diagnosis:
  """Diagnoses a gradient function against jax.grad: which parameter, where, and why.

  Args:
    grad_fn: the gradient under test, `grad_fn(params, x, y, l2)` returning a tuple of `Dense`
      shaped like params, as `mlp_jax.grads` does.
    params, x, y, l2: the problem, as for `loss`; compared in float64 (upcast).
    seeds: one fresh random draw per seed, of the same layer sizes, at other batch sizes and
      alternately at lambda and lambda + 0.5; a ties draw (h = 0 exactly) is added.
    repro: whether to search small problems for a minimal reproduction of each failure.
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
  l2 = float(l2)
  names = param_names(params)
  sizes = tuple([params[0].w.shape[0]] + [layer.w.shape[1] for layer in params])
  m = int(x.shape[0])
  with jax.enable_x64(True):
    params, x = _as_float64(params, x)
    draws = [_run_draw(grad_fn, DrawInfo("given", m, l2, None), params, x, y, names)]
    for info in _draw_plan(m, sizes, l2, seeds):
      problem = random_problem(info.seed, sizes, info.m, ties=info.label == "ties")
      draws.append(_run_draw(grad_fn, info, *problem, names))
    entries = [_entry(i, name, draws) for i, name in enumerate(names)]
    if repro:
      entries = _with_repros(entries, draws, grad_fn, len(params), names, l2, max_repro_tries)
  return Diagnosis(tuple(entries), tuple(d.info for d in draws), sizes, BAR, MATCH_RTOL)


def _entry(i: int, name: str, draws: Sequence[_Draw]) -> ParamDiagnosis:
  """Verdict, location and likely mistake of parameter i (repro filled in later)."""
  errs = tuple(relative_error(d.got[i], d.ref[i]) for d in draws)
  errs = tuple(e if math.isfinite(e) else math.inf for e in errs)
  worst = max(errs)
  shape = tuple(draws[0].ref[i].shape)
  if worst <= BAR:
    return ParamDiagnosis(name, shape, True, worst, errs, "none", (), "", None, None, None, "",
                          None)
  k = next(k for k, e in enumerate(errs) if e > BAR)
  where, indices, where_text = _locate(draws[k].got[i], draws[k].ref[i], draws[k].data[i])
  if k:
    where_text += f" (on draw '{draws[k].info.label}')"
  finding = _explain(i, name, draws, worst)
  return ParamDiagnosis(name, shape, False, worst, errs, where, indices, where_text,
                        finding.kind, finding.detail, finding.factor, finding.text, None)


def _with_repros(entries, draws, grad_fn, depth, names, l2, max_tries) -> List[ParamDiagnosis]:
  """The entries with a minimal reproduction for each failure, at lambda (if the error shows
  there, else lambda + 0.5) and on a ties problem if it showed only on the ties draw."""
  wanted = {}
  for i, e in enumerate(entries):
    if e.passed:
      continue
    failing = [d.info for d, err in zip(draws, e.rel_errs) if err > BAR]
    at_l2 = any(info.l2 == l2 for info in failing)
    ties = all(info.label == "ties" for info in failing)
    wanted[i] = (l2 if at_l2 else l2 + EXTRA_L2, ties)
  found = _minimal_repros(grad_fn, depth, wanted, names, max_tries) if wanted else {}
  return [dataclasses.replace(e, repro=found.get(i)) for i, e in enumerate(entries)]
