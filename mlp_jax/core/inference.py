"""The public forward pass, checked: `mj.forward` and `mj.predict`, (E1)-(E3).

`model.forward` and `model.predict` are the bare math, for arguments already checked and for
compiled code; these check shapes and dtypes first, as every public entry does (parameter
leaves and x may be nested lists). Values are not checked: a NaN in x gives NaN logits.
"""

from typing import Any

import jax
from jax.typing import ArrayLike

from mlp_jax.core import model, validation
from mlp_jax.core.model import Params
from mlp_jax.core.network import DEFAULT_OUTPUT, check_network, make_network


def _checked(params: Params, x: ArrayLike, activation: Any, output: str):
  net = make_network(activation, output)
  params, x = validation.check_features(params, x)
  return params, x, check_network(net, len(params))


def forward(params: Params, x: ArrayLike, *, activation: Any = "relu",
            output: str = DEFAULT_OUTPUT) -> jax.Array:
  """The last layer's output z (m, K), the logits, for inputs x of shape (m, n), floating (cast
  to the parameters' dtype), (E1)-(E3); `activation` as for `loss_and_grads` (`output` only
  names the network: z does not depend on it)."""
  params, x, net = _checked(params, x, activation, output)
  return model.forward(params, x, net)


def predict(params: Params, x: ArrayLike, *, activation: Any = "relu",
            output: str = DEFAULT_OUTPUT) -> jax.Array:
  """What the network predicts for each row of x (m, n): the class index, int (m,), for softmax
  (the default); 0/1 indicators, int (m, K), for sigmoid outputs; the values (m, K) for
  regression outputs."""
  params, x, net = _checked(params, x, activation, output)
  return model.predict(params, x, net)
