"""What a network computes besides its weights: its hidden activations and its output, as one
value.

    net = make_network(activation="tanh", output="identity_squared_error")
    net.hidden(2)     # (Activation("tanh"), Activation("tanh")): one per hidden layer
    net.out           # outputs.OUTPUTS["identity_squared_error"]

A `Network` is compared and hashed by value, so it is the static argument of every compiled
program (the same network reuses the program), and `record` / `from_record` write and read it
as JSON beside a checkpoint or a run. `SOURCE` is the source's network: ReLU hidden layers and
softmax with cross-entropy, the default everywhere.

The public calls take `activation=` and `output=`: an activation is a name of
`activations.ACTIVATIONS`, "leaky_relu:SLOPE", or an `Activation` (`activations.leaky_relu(0.2)`);
one for every hidden layer, or a sequence with one per hidden layer. An output is a name of
`outputs.OUTPUTS`.
"""

import math
from typing import Any, Dict, NamedTuple, Sequence, Tuple, Union

from mlp_jax.core.activations import FORMULAS, LEAKY_SLOPE, Activation
from mlp_jax.core.outputs import OUTPUTS, Output
from mlp_jax.errors import InputError, InputTypeError

ActivationLike = Union[str, Activation]
DEFAULT_OUTPUT = "softmax_cross_entropy"


class Network(NamedTuple):
  """The hidden activations (one for all hidden layers, or a tuple of one per hidden layer) and
  the output (a name of `outputs.OUTPUTS`)."""
  activation: Union[Activation, Tuple[Activation, ...]] = Activation("relu")
  output: str = DEFAULT_OUTPUT

  @property
  def out(self) -> Output:
    """The output layer and its loss."""
    return OUTPUTS[self.output]

  def hidden(self, num_hidden: int) -> Tuple[Activation, ...]:
    """The activation of each of `num_hidden` hidden layers (a per-layer tuple as given: its
    length is checked against the parameters by `check_network`)."""
    if isinstance(self.activation, Activation):
      return (self.activation,) * num_hidden
    return self.activation

  def record(self) -> Dict[str, Any]:
    """JSON: {"activation": "tanh" or ["tanh", "relu"], "output": name}."""
    spec = (self.activation.spec if isinstance(self.activation, Activation)
            else [a.spec for a in self.activation])
    return {"activation": spec, "output": self.output}

  def describe(self) -> str:
    """One line for people: "activation tanh, output identity_squared_error"."""
    spec = self.record()["activation"]
    spec = spec if isinstance(spec, str) else ",".join(spec)
    return f"activation {spec}, output {self.output}"


SOURCE = Network()


def parse_activation(spec: Any, name: str = "activation") -> Activation:
  """An `Activation` from a name, "leaky_relu:SLOPE", or an `Activation` (checked)."""
  if isinstance(spec, Activation):
    act = spec
  elif isinstance(spec, str):
    head, sep, tail = spec.strip().partition(":")
    if sep and head != "leaky_relu":
      raise InputError(f"{name}: only leaky_relu takes a parameter (leaky_relu:SLOPE), got "
                       f"{spec!r}")
    try:
      slope = float(tail) if sep else LEAKY_SLOPE
    except ValueError:
      raise InputError(f"{name}: expected leaky_relu:SLOPE with a number SLOPE, got "
                       f"{spec!r}") from None
    act = Activation(head, slope if head == "leaky_relu" else 0.0)
  else:
    raise InputTypeError(f"{name}: expected an activation name or an Activation, got "
                         f"{type(spec).__name__}")
  if act.name not in FORMULAS:
    raise InputError(f"{name}: expected one of {', '.join(sorted(FORMULAS))} (or "
                     f"leaky_relu:SLOPE), got {act.name!r}")
  if not (math.isfinite(act.slope) and act.slope >= 0):
    raise InputError(f"{name}: expected a leaky_relu slope that is finite and >= 0, got "
                     f"{act.slope:g}")
  return act


def make_network(activation: Union[ActivationLike, Sequence[ActivationLike], Network] = "relu",
                 output: str = DEFAULT_OUTPUT, *, activation_name: str = "activation",
                 output_name: str = "output") -> Network:
  """The checked `Network` of an `activation` (one, or one per hidden layer) and an `output`
  name; messages name them as `activation_name` and `output_name`. A `Network` passes as is
  (checked), for callers that hold one already."""
  if isinstance(activation, Network):
    activation, output = activation.activation, activation.output
  if isinstance(activation, (str, Activation)):
    act: Union[Activation, Tuple[Activation, ...]] = parse_activation(activation,
                                                                      activation_name)
  elif isinstance(activation, (tuple, list)) and activation:
    act = tuple(parse_activation(a, f"{activation_name}[{i}]") for i, a in enumerate(activation))
  else:
    raise InputTypeError(f"{activation_name}: expected an activation name, an Activation or a "
                         f"non-empty sequence of them, got {activation!r}")
  if not isinstance(output, str) or output not in OUTPUTS:
    raise InputError(f"{output_name}: expected one of {', '.join(sorted(OUTPUTS))}, got "
                     f"{output!r}")
  return Network(act, output)


def check_network(net: Network, num_layers: int, name: str = "activation") -> Network:
  """`net` for parameters of `num_layers` layers: a per-layer activation has one entry per
  hidden layer."""
  if not isinstance(net.activation, Activation) and len(net.activation) != num_layers - 1:
    raise InputError(f"{name}: expected one activation per hidden layer ({num_layers - 1}), "
                     f"got {len(net.activation)}")
  return net


def from_record(record: Any) -> Network:
  """The `Network` of `Network.record()`; `SOURCE` for None (files written before networks
  were saved hold the source's)."""
  if record is None:
    return SOURCE
  if not isinstance(record, dict):
    raise InputError(f"network: expected a dict with activation and output, got {record!r}")
  return make_network(record.get("activation", "relu"), record.get("output", DEFAULT_OUTPUT))
