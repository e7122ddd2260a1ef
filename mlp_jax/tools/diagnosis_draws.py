"""The problems a gradient function is diagnosed on, and what `diagnose` computes on each.

A draw is one problem (the given batch, or a `random_problem` of the same layer sizes) with, as
float64 leaves in tree order W1, b1, W2, ...: the parameters theta, the user's gradient, the
reference (`jax.grad` of (E6)), its data term (lambda = 0), and the data terms of the
alternatives, `core.backprop` with one piece swapped (`alternatives`). Each leaf is a `Leaf`,
which says whether it is a weight (penalised by (E6)) or a bias (not penalised).

Every draw is of one network (`network.Network`, the source's ReLU + softmax by default): its
targets are of the output's kind, the oracle is `jax.grad` of that network's objective, and the
pieces swapped are those its activations and output invite (`diagnosis_swaps`).
"""

import dataclasses
import math
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from mlp_jax.core import backprop, model
from mlp_jax.core.activations import Activation
from mlp_jax.core.model import Dense, Params
from mlp_jax.core.network import DEFAULT_OUTPUT, SOURCE, Network, make_network
from mlp_jax.core.objective import log_softmax
from mlp_jax.errors import InputError, InputTypeError
from mlp_jax.oracle.autodiff import grad_objective, to_float64
from mlp_jax.oracle.check import param_names
from mlp_jax.tools.diagnosis_swaps import ACTIVATION_SWAPS, OUTPUT_SWAPS


def random_problem(seed: int, layer_sizes: Sequence[int], m: int, *, ties: bool = False,
                   activation: Any = "relu", output: str = DEFAULT_OUTPUT,
                   ) -> Tuple[Params, jax.Array, jax.Array]:
  """A float64 problem (params, x (m, n), targets y) of JAX arrays, numpy seed `seed`.

  He-normal weights, N(0, 0.1^2) biases and N(0, 1) features; with `ties`, small dyadic values
  (exact in float64) and biases that put the even units of every hidden layer exactly at h = 0
  on the first example, so that the ReLU derivative at 0 matters. The targets are of the kind
  `output` takes (`random_targets`): int32 labels (m,) for softmax (the default), float64 (m, K)
  for the others. `activation` (as for `loss`) is used by the ties only, for the layers above
  the first.
  """
  rng = np.random.default_rng(seed)
  sizes = tuple(int(s) for s in layer_sizes)
  net = make_network(activation, output)
  if ties:
    layers, x = _dyadic_layers(rng, sizes, m, net.hidden(len(sizes) - 2))
  else:
    layers = [(rng.standard_normal((a, b)) * np.sqrt(2.0 / a), 0.1 * rng.standard_normal(b))
              for a, b in zip(sizes[:-1], sizes[1:])]
    x = rng.standard_normal((m, sizes[0]))
  y = random_targets(rng, net, m, sizes[-1])
  with jax.enable_x64(True):
    targets = jnp.asarray(y, None if net.out.labels else jnp.float64)
    return to_float64(tuple(Dense(w, b) for w, b in layers)), to_float64(x), targets


def random_targets(rng: np.random.Generator, net: Network, m: int, k: int) -> np.ndarray:
  """Targets of the kind the network's output takes (`outputs.Output`): int32 labels (m,) in
  0..K-1; 0/1 indicators (m, K) for targets in [0, 1]; Poisson(1) counts (m, K) for targets
  >= 0; N(0, 1) values (m, K) for real ones."""
  out = net.out
  if out.labels:
    return rng.integers(0, k, size=m).astype(np.int32)
  if (out.low, out.high) == (0.0, 1.0):
    return rng.integers(0, 2, size=(m, k)).astype(np.float64)
  if out.low == 0.0:
    return rng.poisson(1.0, size=(m, k)).astype(np.float64)
  return rng.standard_normal((m, k))


def _dyadic_layers(rng, sizes, m, hidden: Sequence[Activation] = ()):
  """Weights in {+-1, +-2} step, biases in {-2..2} step (step ~ 1/sqrt(fan_in), a power of 2),
  features in {-1, 0, 1}, (m, n); even hidden units tied at h = 0 on example 0 (exactly in
  every layer for ReLU; above a smooth activation's layer, to its rounding)."""
  x = rng.integers(-1, 2, size=(m, sizes[0])).astype(np.float64)
  layers, a = [], x
  hidden = tuple(hidden) or (Activation("relu"),) * (len(sizes) - 2)
  for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
    step = 2.0 ** -round(math.log2(math.sqrt(fan_in)))
    w = rng.choice([-2.0, -1.0, 1.0, 2.0], size=(fan_in, fan_out)) * step
    b = rng.integers(-2, 3, size=fan_out) * step
    if i < len(sizes) - 2:  # a hidden layer: ties on example 0, even units (sums are exact)
      b[::2] = -(a[0] @ w)[::2]
      a = _activate(hidden[i], a @ w + b)
    layers.append((w, b.astype(np.float64)))
  return layers, x


def _activate(act: Activation, h: np.ndarray) -> np.ndarray:
  """g(h) in float64 numpy: ReLU as np.maximum (exact), the others by their `forward`."""
  if act.name == "relu":
    return np.maximum(h, 0.0)
  with jax.enable_x64(True):
    return np.asarray(act.forward(jnp.asarray(h, jnp.float64)), np.float64)


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


def _output_swaps(net: Network, logits, y) -> Dict[str, jax.Array]:
  """The wrong output errors (m, K) the network's output invites, by detail."""
  if net.output != DEFAULT_OUTPUT:
    yhat = net.out.predict(logits)
    return {name: fn(yhat, logits, y) for name, (fn, _) in OUTPUT_SWAPS.get(net.output,
                                                                            {}).items()}
  log_probs = log_softmax(logits)
  yhat, onehot = jnp.exp(log_probs), jax.nn.one_hot(y, logits.shape[1], dtype=logits.dtype)
  yhat_t = jnp.take_along_axis(yhat, y[:, None], axis=1)
  return {"swapped_cases": jnp.where(onehot > 0, yhat, yhat_t - 1), "no_minus_y": yhat,
          "logits": logits - onehot}


def _derivative_swaps(hidden: Sequence[Activation], hs, outs) -> Dict[Tuple[str, str], List]:
  """The wrong g_l'(H_l) each hidden layer's activation invites, keyed (kind, detail): one
  entry per hidden layer, None where that layer's activation has no such mistake."""
  relu = {"tie_one": lambda h: h >= 0,
          "tie_half": lambda h: jnp.where(h > 0, 1.0, jnp.where(h == 0, 0.5, 0.0)),
          "no_mask": lambda h: jnp.ones_like(h, dtype=bool)}
  swaps = {("relu_mask", name): [mask(h) if act.name == "relu" else None
                                 for act, h in zip(hidden, hs)] for name, mask in relu.items()}
  details = dict.fromkeys(d for act in hidden for d in ACTIVATION_SWAPS.get(act.name, {}))
  for detail in details:
    swaps[("activation_derivative", detail)] = [
        ACTIVATION_SWAPS[act.name][detail][0](h, a, act.slope)
        if detail in ACTIVATION_SWAPS.get(act.name, {}) else None
        for act, h, a in zip(hidden, hs, outs)]
  return {key: per_layer for key, per_layer in swaps.items()
          if any(f is not None for f in per_layer)}


def _variants(name: str, swapped: Sequence, correct: Tuple,
              deep: bool) -> List[Tuple[str, Tuple]]:
  """(detail, every hidden layer's g') of one swap: in every layer it applies to (`name`) and,
  in a deeper net, in each such layer alone ("name@l"; only these where it applies to one)."""
  layers = [l for l, f in enumerate(swapped) if f is not None]
  every = tuple(c if f is None else f for c, f in zip(correct, swapped))
  out = [] if deep and len(layers) == 1 else [(name, every)]
  return out + [(f"{name}@{l + 1}", correct[:l] + (swapped[l],) + correct[l + 1:])
                for l in (layers if deep else ())]


def alternatives(params: Params, x, y,
                 net: Network = SOURCE) -> Dict[Tuple[str, str], List[np.ndarray]]:
  """Data terms (lambda = 0) of `core.backprop` with one piece swapped, keyed (kind, detail).

  The pieces: the output error at the top, (E7) or (E22)-(E25) (`_output_swaps`); each hidden
  layer's activation derivative, (E10) or (E16)-(E21) (`_derivative_swaps`: ReLU masks of
  another convention, the other activations' derivatives written wrong), in all the layers it
  applies to or (detail "name@l") in hidden layer l alone; and for a square ReLU layer l (S3)
  its weight's data term (A_{l-1} * M_l)^T (Delta_{l+1} W_{l+1}^T). Leaves in tree order; the
  details are the keys of `diagnosis_swaps.SWAPS`, `ACTIVATION_SWAPS` and `OUTPUT_SWAPS` (with
  "@l" where the swap is in one layer).
  """
  logits, acts, correct = model.forward_pass(params, x, net=net)    # (E1)-(E3), g_l'(H_l)
  m, hidden = x.shape[0], net.hidden(len(params) - 1)
  hs = [model.affine(layer, jnp.asarray(a))                          # h_l, (m, d_l)
        for layer, a in zip(params[:-1], acts[:-1])]
  error = backprop.losses_and_errors(net, logits, y)[1]               # (E7), (E22)-(E25)
  swap = lambda l, mask: correct[:l] + (mask,) + correct[l + 1:]

  def data_term(top=error, factors=correct):
    """(deltas, the gradient as `Params`) of backprop with this top error and these g'."""
    deltas = backprop.backprop_errors(params, acts, top / m, masks=tuple(factors))
    return deltas, backprop.layer_grads(params, acts, deltas, 0.0, m)  # (E8)-(E12)

  alts = {("output_error", name): leaves64(data_term(top)[1])
          for name, top in _output_swaps(net, logits, y).items()}
  deep = len(hs) > 1
  for (kind, name), swapped in _derivative_swaps(hidden, hs, acts[1:]).items():
    for detail, factors in _variants(name, swapped, correct, deep):
      alts[(kind, detail)] = leaves64(data_term(factors=factors)[1])
  for l, (layer, act) in enumerate(zip(params[:-1], hidden)):
    if act.name == "relu" and layer.w.shape[0] == layer.w.shape[1]:
      back = data_term(factors=swap(l, jnp.ones_like(hs[l], dtype=bool)))[0][l]  # Delta W^T
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
  net: Network = SOURCE    # the network compared

  def penalty(self, leaf: Leaf, bias: bool = False) -> np.ndarray:
    """(lambda/m) theta for a weight (E8)/(E11); 0 for a bias (E9)/(E12) unless `bias`."""
    return self.info.l2 / self.info.m * self.theta[leaf.index] * (bias or leaf.is_weight)


def run_draw(grad_fn: Callable, info: DrawInfo, params: Params, x, y,
             leaves: Sequence[Leaf], net: Network = SOURCE) -> Draw:
  """grad_fn, the oracle (jax.grad of the network's objective) and the alternatives on one
  problem (call inside x64; y of the kind the output takes, real targets in float64)."""
  got = user_grads(grad_fn, params, x, y, info.l2, leaves)
  ref = leaves64(grad_objective(params, x, y, info.l2, net=net))
  data = ref if info.l2 == 0 else leaves64(grad_objective(params, x, y, 0.0, net=net))
  return Draw(info=info, sizes=model.layer_sizes(params), theta=leaves64(params), got=got,
              ref=ref, data=data, alts=alternatives(params, x, y, net), net=net)
