"""`FitSettings`: the settings of one training run as one value, checked once against its data.

    settings = FitSettings(batch_size=64, l2=1e-3, seed=0, patience=5)
    result = fit(params, train, optimizer="adam", epochs=20, val=val, settings=settings)

`fit`, the compiled epoch's cache, the run record a resume compares (`record`), the command line
and `MLPClassifier` all build and pass this value; `check_settings` is the one place it is
validated. Its messages name a setting the way the caller's user spells it: `batch_size` in
Python, `--batch-size` on the command line (the `spell` argument).
"""

import dataclasses
from typing import Any, Callable, Dict, Optional, Sequence, Tuple, Union

import jax.numpy as jnp
import numpy as np
from jax.typing import DTypeLike

from mlp_jax.core import validation
from mlp_jax.core.activations import Activation
from mlp_jax.core.network import DEFAULT_OUTPUT, SOURCE, Network, make_network
from mlp_jax.errors import InputError, InputTypeError
from mlp_jax.training import privacy

MAX_SEED = 2**32 - 1  # a PRNG key holds a 32-bit seed

Spelling = Callable[[str], str]


@dataclasses.dataclass(frozen=True)
class FitSettings:
  """What fixes a training run besides its data, optimizer and length (all but
  `track_train_accuracy` must be kept by a resume)."""
  batch_size: int = 128           # minibatch size in 1..N; the short last batch is masked
  l2: float = 0.0                 # the penalty lambda of (E6)
  seed: int = 0                   # shuffling (and DP noise) seed in 0..2**32-1
  patience: Optional[int] = None  # stop after this many epochs without a lower val loss
  compute_dtype: Optional[DTypeLike] = None  # GEMM dtype, e.g. "bfloat16"; None: the params'
  dp: Optional[privacy.DPConfig] = None      # train with DP-SGD (see `privacy`)
  shuffle: bool = True            # False: the rows in order every epoch (not with `dp`)
  track_train_accuracy: bool = False  # also record the training set's accuracy each epoch
  # The network trained (`core.network`): the hidden activation(s) and the output.
  activation: Union[str, Activation, Sequence[Union[str, Activation]]] = "relu"
  output: str = DEFAULT_OUTPUT

  @property
  def network(self) -> Network:
    """The `Network` of `activation` and `output` (checked)."""
    return make_network(self.activation, self.output)

  def record(self, train_examples: int, val_examples: Optional[int],
             devices: int = 1) -> Dict[str, Any]:
    """The run's settings as `RunState.settings` keeps them (JSON, with the data sizes): what a
    resume must keep. The network is written only when it is not the source's, so the records
    of runs of the source's network keep their bytes (and older runs still resume)."""
    network = self.network
    extra = {} if network == SOURCE else {"network": network.record()}
    return {
        "train_examples": int(train_examples),
        "val_examples": None if val_examples is None else int(val_examples),
        "batch_size": self.batch_size,
        "l2": self.l2,
        "seed": self.seed,
        "patience": self.patience,
        "compute_dtype": self.compute_dtype,
        "dp": None if self.dp is None else privacy.dp_record(self.dp),
        "devices": int(devices),
        "shuffle": self.shuffle,
        **extra,
    }


def python_name(name: str) -> str:
  """A setting as a Python caller spells it (`val` is `fit`'s argument of validation data)."""
  return "val=..." if name == "val" else name


def check_settings(settings: FitSettings, train_examples: Optional[int] = None,
                   val_examples: Optional[int] = None, *,
                   spell: Spelling = python_name) -> FitSettings:
  """`settings` checked, with plain Python values (ints, floats, a dtype name, a checked
  `DPConfig`); else `InputError` / `InputTypeError` naming the setting as `spell(name)` says.

  With `train_examples`, the checks against the data too: the batch size is at most the
  training set's size, and `patience` needs validation data (`val_examples` not None).
  """
  batch_size = validation.check_int(settings.batch_size, spell("batch_size"))
  if train_examples is not None and batch_size > train_examples:
    raise InputError(f"{spell('batch_size')}: expected an int in 1..{train_examples} (the "
                     f"training set has {train_examples} examples), got {batch_size}")
  patience = settings.patience
  if patience is not None:
    patience = validation.check_int(patience, spell("patience"))
    if train_examples is not None and val_examples is None:
      raise InputError(f"{spell('patience')}: early stopping needs validation data "
                       f"({spell('val')})")
  network = make_network(settings.activation, settings.output,
                         activation_name=spell("activation"), output_name=spell("output"))
  dp = None if settings.dp is None else privacy.check_dp_config(settings.dp, spell)
  if dp is not None and not settings.shuffle:
    raise InputError(f"{spell('shuffle')}=False: DP-SGD draws its batches by Poisson sampling")
  return FitSettings(
      batch_size=batch_size,
      l2=float(validation.check_real(settings.l2, spell("l2"))),
      seed=validation.check_int(settings.seed, spell("seed"), 0, MAX_SEED),
      patience=patience,
      compute_dtype=_dtype_name(settings.compute_dtype, spell("compute_dtype")),
      dp=dp,
      shuffle=bool(settings.shuffle),
      track_train_accuracy=bool(settings.track_train_accuracy),
      activation=_activation_spec(network), output=network.output)


def _activation_spec(network: Network) -> Union[str, Tuple[str, ...]]:
  """The network's activation as plain text, as its record writes it: "tanh", "leaky_relu:0.2",
  or a tuple of one per hidden layer."""
  spec = network.record()["activation"]
  return spec if isinstance(spec, str) else tuple(spec)


def _dtype_name(dtype: Optional[DTypeLike], name: str) -> Optional[str]:
  """The name of a floating dtype (e.g. "bfloat16"), or None."""
  if dtype is None:
    return None
  try:
    dtype = np.dtype(dtype)
  except TypeError as e:
    raise InputTypeError(f"{name}: expected a floating dtype, got {dtype!r}") from e
  if not jnp.issubdtype(dtype, jnp.floating):
    raise InputTypeError(f"{name}: expected a floating dtype, got {dtype.name}")
  return dtype.name
