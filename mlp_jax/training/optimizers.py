"""Optimizers by name, with a constant or cosine-decayed learning rate, and steps per epoch."""

import functools
from typing import Any, Optional, Union

import optax

from mlp_jax.core import validation
from mlp_jax.errors import InputError, InputTypeError

OPTIMIZERS = ("sgd", "momentum", "adam")
SCHEDULES = ("constant", "cosine")

# What `fit`, `make_epoch` and `make_train_step` take: an optax optimizer or one of OPTIMIZERS.
OptimizerLike = Union[optax.GradientTransformation, str]


def make_optimizer(name: str = "adam", lr: float = 1e-3, *, schedule: str = "constant",
                   total_steps: Optional[int] = None) -> optax.GradientTransformation:
  """An optax optimizer by name: "sgd", "momentum" (Nesterov, 0.9) or "adam".

  schedule: "constant" keeps `lr`; "cosine" decays it from `lr` to 0 over `total_steps` steps
  (epochs x `steps_per_epoch`), so the run ends on a settled iterate rather than one taken at
  full step size. The step count lives in the optimizer state, so a resumed run continues the
  same schedule.
  """
  if name not in OPTIMIZERS:
    raise InputError(f"optimizer: expected one of {', '.join(OPTIMIZERS)}, got {name!r}")
  if schedule not in SCHEDULES:
    raise InputError(f"schedule: expected one of {', '.join(SCHEDULES)}, got {schedule!r}")
  lr = float(validation.check_real(lr, "lr", open_low=True))
  if schedule == "cosine":
    if total_steps is None:
      raise InputError("total_steps: the cosine schedule needs a step count >= 1, got None")
    total_steps = validation.check_int(total_steps, "total_steps")
  return _optimizer(name, lr, schedule, total_steps if schedule == "cosine" else None)


@functools.lru_cache(maxsize=64)
def _optimizer(name: str, lr: float, schedule: str,
               total_steps: Optional[int]) -> optax.GradientTransformation:
  """The same (immutable) optax object for the same arguments, so that a compiled epoch built
  on it is reused by the next `fit` with the same settings (e.g. every fold of a grid search)."""
  if schedule == "cosine":
    lr = optax.cosine_decay_schedule(lr, total_steps)
  if name == "sgd":
    return optax.sgd(lr)
  if name == "momentum":
    return optax.sgd(lr, momentum=0.9, nesterov=True)
  return optax.adam(lr)


def as_optimizer(optimizer: Any) -> optax.GradientTransformation:
  """`optimizer` as an optax GradientTransformation: one given (anything with `init` and
  `update`) as it is, a name of OPTIMIZERS as `make_optimizer(name)` with its defaults (a
  constant learning rate of 1e-3), the same object for the same name."""
  expected = ("an optax GradientTransformation or one of "
              + ", ".join(repr(name) for name in OPTIMIZERS))
  if isinstance(optimizer, str):
    if optimizer not in OPTIMIZERS:
      raise InputError(f"optimizer: expected {expected}, got {optimizer!r}")
    return make_optimizer(optimizer)
  if not (callable(getattr(optimizer, "init", None))
          and callable(getattr(optimizer, "update", None))):
    raise InputTypeError(f"optimizer: expected {expected}, got {type(optimizer).__name__}")
  return optimizer


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
  """Optimizer steps in one epoch: ceil(N / B), the last batch short and masked (with DP: as
  many Poisson-sampled steps, one pass in expectation)."""
  return -(-int(num_examples) // int(batch_size))
