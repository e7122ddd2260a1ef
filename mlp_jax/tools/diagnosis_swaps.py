"""The pieces `diagnosis_draws.alternatives` swaps into the backward pass, and what each means.

Each alternative gradient is `core.backprop` with one piece written wrong: a ReLU mask or the
softmax output error (`SWAPS`, the details of "relu_mask" and softmax "output_error" findings),
another activation's derivative (`ACTIVATION_SWAPS`, "activation_derivative"), another output's
error (`OUTPUT_SWAPS`). `swap_text` says in the report what a matching alternative means.
"""

from typing import Callable, Dict, List, Tuple

import jax.numpy as jnp

from mlp_jax.core.activations import FORMULAS
from mlp_jax.core.network import SOURCE, Network

SWAPS = {  # the detail of a "relu_mask" finding or a softmax "output_error" one: what it means
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


def _missing(name: str, formula: str, eq: str) -> str:
  return (f"the {name} derivative {formula} is missing: the back-propagated error is not "
          f"multiplied by it ({eq})")


def _ones(h, a, slope):
  return jnp.ones_like(a)


# activation name -> detail of an "activation_derivative" finding -> (the wrong g'(h), from
# (h, a, slope), and what it means). "wrong_quantity": the derivative's formula fed the other
# one of h and a than the one it reads: a for (E17)-(E18), h for (E21).
ACTIVATION_SWAPS: Dict[str, Dict[str, Tuple[Callable, str]]] = {
    "logistic": {
        "function_not_derivative": (
            lambda h, a, s: a, "the logistic derivative sigma'(h) is written as sigma(h) = a, "
            "the function itself; it is a(1 - a) (E17)"),
        "wrong_quantity": (
            lambda h, a, s: h * (1 - h), "the logistic derivative sigma(1 - sigma) is "
            "evaluated on the pre-activation h, h(1 - h); it is a(1 - a), on the output "
            "a = sigma(h) (E17)"),
        "no_derivative": (_ones, _missing("logistic", "a(1 - a)", "E17")),
    },
    "tanh": {
        "function_not_derivative": (
            lambda h, a, s: a, "the tanh derivative is written as tanh h = a, the function "
            "itself; it is 1 - a^2 (E18)"),
        "one_minus_a": (
            lambda h, a, s: 1 - a, "the tanh derivative is written 1 - tanh h = 1 - a; it is "
            "1 - tanh^2 h = 1 - a^2 (E18)"),
        "wrong_quantity": (
            lambda h, a, s: 1 - jnp.square(h), "the tanh derivative 1 - tanh^2 is evaluated on "
            "the pre-activation h, 1 - h^2; it is 1 - a^2, on the output a = tanh h (E18)"),
        "no_derivative": (_ones, _missing("tanh", "1 - a^2", "E18")),
    },
    "leaky_relu": {
        "no_slope": (
            lambda h, a, s: a > 0, "the leaky ReLU derivative drops the slope: 1[a > 0], the "
            "ReLU's; it is 1 where a > 0, else alpha = {slope:g} (E20)"),
        "no_derivative": (_ones, _missing("leaky ReLU", "(1 where a > 0, else alpha)", "E20")),
    },
    **{name: {
        "function_not_derivative": (
            lambda h, a, s: a, f"the {text} derivative is written as the function itself, "
            f"a = g(h); it is {formula} (E21)"),
        "wrong_quantity": (
            lambda h, a, s, name=name: FORMULAS[name][1](a, a, s), f"the {text} derivative "
            f"{formula} is evaluated on the output a instead of on the pre-activation h (E21)"),
        "no_derivative": (_ones, _missing(text, formula, "E21")),
    } for name, text, formula in (
        ("gelu", "GELU", "Phi(h) + h phi(h)"),
        ("gelu_tanh", "GELU (tanh form)", "(1 + t)/2 + (h/2)(1 - t^2) u'"))},
}

# output name -> detail of an "output_error" finding -> (the wrong output error, from
# (yhat, z, y), and what it means), for the outputs other than softmax (whose are in SWAPS).
OUTPUT_SWAPS: Dict[str, Dict[str, Tuple[Callable, str]]] = {
    "sigmoid_binary_cross_entropy": {
        "factor_2": (lambda yhat, z, y: 2 * (yhat - y), "the output error of (E23) has a stray "
                     "factor 2: 2(yhat - y) instead of yhat - y, yhat = sigma(z)"),
        "linear_output": (lambda yhat, z, y: z - y, "the output error of (E23) is computed on "
                          "the linear output: z - y instead of sigma(z) - y"),
    },
    "identity_squared_error": {
        "no_over_K": (lambda yhat, z, y: yhat - y, "the output error of (E24) lacks the 1/K: "
                      "yhat - y instead of (yhat - y)/K (the loss is half the mean over the K "
                      "outputs)"),
        "factor_2": (lambda yhat, z, y: 2 * (yhat - y) / z.shape[1], "the output error of "
                     "(E24) has a stray factor 2: 2(yhat - y)/K instead of (yhat - y)/K (the 1/2 "
                     "of the loss dropped)"),
        "factor_2_no_over_K": (lambda yhat, z, y: 2 * (yhat - y), "the output error of (E24) is "
                               "2(yhat - y) instead of (yhat - y)/K: the 1/2 and the 1/K of the "
                               "loss both dropped"),
    },
    "poisson_log_link": {
        "linear_output": (lambda yhat, z, y: z - y, "the output error of (E25) is computed on "
                          "the linear output: z - y instead of exp(z) - y"),
        "factor_2": (lambda yhat, z, y: 2 * (yhat - y), "the output error of (E25) has a stray "
                     "factor 2: 2(exp(z) - y), the gradient of the whole deviance, twice the "
                     "loss"),
    },
}
# The output errors that are a multiple of the right one: as alternatives, tried before the
# linear fit (which would call them a "scale"), and only where the output layer's bias shows
# the same multiple (a mistake in the output error reaches every parameter).
PROPORTIONAL = ("factor_2", "no_over_K", "factor_2_no_over_K")


def swap_layers(detail: str, net: Network, num_hidden: int) -> List[int]:
  """The hidden layers (from 0) whose derivative the "activation_derivative" `detail` swaps."""
  base, _, layer = detail.partition("@")
  hidden = net.hidden(num_hidden)
  return [l for l in ([int(layer) - 1] if layer else range(num_hidden))
          if base in ACTIVATION_SWAPS.get(hidden[l].name, {})]


def swap_text(kind: str, detail: str, net: Network = SOURCE, num_hidden: int = 1) -> str:
  """What the alternative `(kind, detail)` of `alternatives` means, for the report."""
  base, _, layer = detail.partition("@")
  if kind == "activation_derivative":
    acts = [net.hidden(num_hidden)[l] for l in swap_layers(detail, net, num_hidden)]
    text = "; ".join(dict.fromkeys(ACTIVATION_SWAPS[a.name][base][1].format(slope=a.slope)
                                   for a in acts))
  elif kind == "output_error" and net.output in OUTPUT_SWAPS:
    text = OUTPUT_SWAPS[net.output][base][1]
  else:
    text = SWAPS[base]
  return text + (f" (hidden layer {layer})" if layer else "")
