"""The problems a gradient function is diagnosed on, and what `diagnose` computes on each.

A draw is one problem (the given batch, or a `random_problem` of the same layer sizes) with, as
float64 leaves in tree order W1, b1, W2, ...: the parameters theta, the user's gradient, the
reference (`jax.grad` of (E6)), its data term (lambda = 0), and the data terms of the
alternatives, `core.backprop` with one piece swapped (`alternatives`). Each leaf is a `Leaf`,
which says whether it is a weight (penalised by (E6)) or a bias (not penalised).
"""

import dataclasses
import math
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from mlp_jax.core import backprop, model
from mlp_jax.core.model import Dense, Params
from mlp_jax.core.objective import log_softmax
from mlp_jax.errors import InputError, InputTypeError
from mlp_jax.oracle.autodiff import autodiff_grads, to_float64
from mlp_jax.oracle.check import param_names


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
  """Weights in {+-1, +-2} step, biases in {-2..2} step (step ~ 1/sqrt(fan_in), a power of 2),
  features in {-1, 0, 1}, (m, n); even hidden units tied at h = 0 on example 0."""
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


class Leaf(NamedTuple):
  """One parameter leaf: its place in tree order and in `params`, and what it is."""
  index: int    # position in tree order W1, b1, W2, b2, ...: the index into a draw's leaf lists
  name: str     # "W1", "b1", ... (layers counted from 1)
  layer: int    # params[layer] holds it (counted from 0)
  field: str    # "w" (a weight: (E6) penalises it) or "b" (a bias: not penalised)

  @property
  def is_weight(self) -> bool:
    return self.field == "w"

  @property
  def subscript(self) -> str:
    """How to reach it in a gradient tuple: "[layer][0]" for the weight, "[layer][1]" the bias."""
    return f"[{self.layer}][{Dense._fields.index(self.field)}]"


def param_leaves(params: Params) -> List[Leaf]:
  """The leaves of `params` in tree order (W1, b1, W2, b2, ...), as `Leaf`s."""
  places = [(layer, field) for layer in range(len(params)) for field in Dense._fields]
  return [Leaf(index, name, layer, field)
          for index, (name, (layer, field)) in enumerate(zip(param_names(params), places))]


def leaves64(tree) -> List[np.ndarray]:
  """The leaves of a pytree in tree order, as float64 numpy arrays."""
  return [np.asarray(leaf, np.float64) for leaf in jax.tree.leaves(tree)]


def user_grads(grad_fn: Callable, params: Params, x, y, l2,
               leaves: Sequence[Leaf]) -> List[np.ndarray]:
  """grad_fn(params, x, y, l2) as float64 leaves W1, b1, W2, ..., after checking what it gave.

  Raises:
    InputTypeError: grad_fn raised TypeError, or returned another structure or non-arrays.
    InputError: it returned a leaf of another shape.
  """
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
  got_leaves = [leaf for layer in result for leaf in layer]
  for leaf, got, ref in zip(leaves, got_leaves, jax.tree.leaves(params)):
    if not (hasattr(got, "shape") and hasattr(got, "dtype")):
      raise InputTypeError(f"grad_fn returned {leaf.name} of type {type(got).__name__}, expected "
                           f"an array of shape {ref.shape}")
    if not (jnp.issubdtype(got.dtype, jnp.floating) or jnp.issubdtype(got.dtype, jnp.integer)):
      raise InputTypeError(f"grad_fn returned {leaf.name} of dtype {got.dtype}, expected a "
                           f"floating array of shape {ref.shape}")
    if tuple(got.shape) != ref.shape:
      hint = (" (its transpose: only a square weight's transpose can be diagnosed)"
              if tuple(got.shape) == ref.shape[::-1] else "")
      raise InputError(f"grad_fn returned {leaf.name} of shape {tuple(got.shape)}, expected "
                       f"{ref.shape}{hint}")
  return [np.asarray(leaf, np.float64) for leaf in got_leaves]


SWAPS = {  # the detail of a "relu_mask" or "output_error" finding, and what it means
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


def alternatives(params: Params, x, y) -> Dict[Tuple[str, str], List[np.ndarray]]:
  """Data terms (lambda = 0) of `core.backprop` with one piece swapped, keyed (kind, detail).

  The pieces: the output error at the top (E7); the ReLU masks, (m, d_l) per hidden layer (E10),
  in all layers or (detail "name@l") in hidden layer l alone; and for a square hidden layer l
  (S3) its weight's data term (A_{l-1} * M_l)^T (Delta_{l+1} W_{l+1}^T). Leaves in tree order;
  the details are the keys of `SWAPS` (with "@l" where the swap is in one layer).
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
    """(deltas, the gradient as `Params`) of backprop with this top error and these masks."""
    deltas = backprop.backprop_errors(params, acts, top / m, masks=tuple(relu))
    return deltas, backprop.layer_grads(params, acts, deltas, 0.0, m)  # (E8)-(E12)

  alts = {("output_error", name): leaves64(data_term(top)[1]) for name, top in tops.items()}
  deep = len(hs) > 1
  for name, relu in masks.items():
    alts[("relu_mask", name)] = leaves64(data_term(relu=relu)[1])
    for l in range(len(hs)) if deep else ():
      alts[("relu_mask", f"{name}@{l + 1}")] = leaves64(data_term(relu=swap(l, relu[l]))[1])
  for l, layer in enumerate(params[:-1]):
    if layer.w.shape[0] == layer.w.shape[1]:
      back = data_term(relu=swap(l, masks["no_mask"][l]))[0][l]   # Delta W^T from above
      grads = data_term()[1]
      wrong = grads[l]._replace(w=jnp.where(correct[l], acts[l], 0.0).T @ back)
      alts[("relu_mask", f"wrong_index@{l + 1}" if deep else "wrong_index")] = leaves64(
          grads[:l] + (wrong,) + grads[l + 1:])
  return alts


@dataclasses.dataclass(frozen=True)
class DrawInfo:
  """One problem the gradient was compared on."""
  label: str   # "given", "seed 0", ..., "ties"
  m: int
  l2: float
  seed: Optional[int]  # None for the given batch


class Draw(NamedTuple):
  """One problem's leaves in tree order, float64 (index them with `Leaf.index`)."""
  info: DrawInfo
  sizes: Tuple[int, ...]   # the layer sizes (n, d_1, ..., K)
  theta: List[np.ndarray]  # the parameters
  got: List[np.ndarray]    # grad_fn's gradient
  ref: List[np.ndarray]    # jax.grad of (E6)
  data: List[np.ndarray]   # its data term: jax.grad at lambda = 0
  alts: Dict[Tuple[str, str], List[np.ndarray]]  # `alternatives`: data terms, one piece swapped

  def penalty(self, leaf: Leaf, bias: bool = False) -> np.ndarray:
    """(lambda/m) theta for a weight (E8)/(E11); 0 for a bias (E9)/(E12) unless `bias`."""
    return self.info.l2 / self.info.m * self.theta[leaf.index] * (bias or leaf.is_weight)


def run_draw(grad_fn: Callable, info: DrawInfo, params: Params, x, y,
             leaves: Sequence[Leaf]) -> Draw:
  """grad_fn, the oracle and the alternatives on one problem (call inside x64)."""
  got = user_grads(grad_fn, params, x, y, info.l2, leaves)
  ref = leaves64(autodiff_grads(params, x, y, info.l2))
  data = ref if info.l2 == 0 else leaves64(autodiff_grads(params, x, y, 0.0))
  return Draw(info=info, sizes=model.layer_sizes(params), theta=leaves64(params), got=got,
              ref=ref, data=data, alts=alternatives(params, x, y))
