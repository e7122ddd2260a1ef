"""The public forward pass, checked: `mj.forward` and `mj.predict`, (E1)-(E3).

`model.forward` and `model.predict` are the bare math, for arguments already checked and for
compiled code; these check shapes and dtypes first, as every public entry does (parameter
leaves and x may be nested lists). Values are not checked: a NaN in x gives NaN logits.
"""

import jax
from jax.typing import ArrayLike

from mlp_jax.core import model, validation
from mlp_jax.core.model import Params


def forward(params: Params, x: ArrayLike) -> jax.Array:
  """Logits of shape (m, K) for inputs x of shape (m, n), floating (cast to the parameters'
  dtype), (E1)-(E3)."""
  return model.forward(*validation.check_features(params, x))


def predict(params: Params, x: ArrayLike) -> jax.Array:
  """Predicted class index of each row of x (m, n): int, shape (m,)."""
  return model.predict(*validation.check_features(params, x))
