"""Checkpoints: parameters, optimizer state, PRNG key, epoch and a config in one file.

    save_checkpoint("ckpt.npz", params, opt_state, epoch=3, config={"lr": 0.1})
    ckpt = load_checkpoint("ckpt.npz", opt_state_template=opt.init(params))

A file of `pytree_file.save_pytree` (its format, checksum and atomic write), with the metadata
of a checkpoint. Every problem reading one is a `CheckpointError` naming the file.
"""

import os
import pathlib
from typing import Any, Dict, NamedTuple, Optional, Sequence, Union

import jax
import optax

from mlp_jax.core import model, validation
from mlp_jax.core.model import Dense
from mlp_jax.core.network import SOURCE, Network, check_network, from_record
from mlp_jax.errors import CheckpointError, InputTypeError, describe
from mlp_jax.io.pytree_file import (file_error, json_dict, load_pytree, match_in_file,
                                    save_pytree, subtree)


def named_params(path: Union[str, os.PathLike], named: Dict[str, jax.Array],
                 template: Any = None) -> Any:
  """Parameters read from the file at `path`: in `template`'s structure; without one, a tuple
  of `Dense` when the names are those of one ([0].w, [0].b, [1].w, ...), else the {name: leaf}
  dict. `CheckpointError` naming the file when they do not fit."""
  path = pathlib.Path(path)
  if template is not None:
    return match_in_file(path, list(named.values()), template, "parameters")
  layers = len(named) // 2
  if not named or list(named) != [f"[{i}].{f}" for i in range(layers) for f in Dense._fields]:
    return named
  params = tuple(Dense(named[f"[{i}].w"], named[f"[{i}].b"]) for i in range(layers))
  try:
    return validation.check_params(params)
  except (ValueError, TypeError) as e:
    raise file_error(path, f"inconsistent parameters ({e})") from e


class Checkpoint(NamedTuple):
  """What `load_checkpoint` returns."""
  params: Any     # a tuple of `Dense`, or the template's structure, or a {name: leaf} dict
  opt_state: Any  # the template's structure; a list of leaves without one; None if none saved
  epoch: int
  config: dict
  rng_key: Optional[jax.Array]  # raw uint32 key, or a typed key if a typed key was saved
  step: int
  extra: dict
  network: Network = SOURCE  # the activations and output the parameters were trained for


def save_checkpoint(path: Union[str, os.PathLike], params: Any,
                    opt_state: Optional[optax.OptState] = None, *,
                    epoch: int, config: Optional[dict] = None,
                    rng_key: Optional[jax.Array] = None, step: int = 0,
                    extra: Optional[dict] = None,
                    network: Network = SOURCE) -> pathlib.Path:
  """Writes parameters, optimizer state and metadata to `path` atomically (see the module doc).

  Args:
    path: the file to write, used as given (no `.npz` suffix is added); folders are created.
    params: a tuple of `Dense`, or any pytree of arrays (a flax or equinox model's arrays).
    opt_state: any optax state pytree whose leaves are arrays, or None.
    epoch, step: epochs and optimizer steps completed, ints >= 0.
    config, extra: JSON-serialisable dicts (tuples come back as lists).
    rng_key: a raw PRNG key (`jax.random.PRNGKey`) or a typed one (`jax.random.key`), or None.
    network: the network the parameters belong to (`core.network`); saved (when it is not the
      source's ReLU and softmax) and returned by `load_checkpoint`, which `check_compatible`
      holds to the network a caller expects.

  Returns:
    `path` as a `pathlib.Path`. On any exception a previous file at `path` is left untouched.
  """
  if not isinstance(network, Network):
    raise InputTypeError(f"network: expected a mlp_jax.Network, got {type(network).__name__}")
  if isinstance(params, (tuple, list)) and params and isinstance(params[0], Dense):
    params = validation.check_params(params)
    check_network(network, len(params), "network.activation")
  elif not jax.tree.leaves(params):
    raise InputTypeError(f"params: expected a pytree of arrays, got {type(params).__name__}")
  meta = {
      "kind": "checkpoint",
      "epoch": validation.check_int(epoch, "epoch", 0),
      "step": validation.check_int(step, "step", 0),
      "config": json_dict("config", config),
      "extra": json_dict("extra", extra),
      "has_opt_state": opt_state is not None,
  }
  if network != SOURCE:  # files of the source's network keep the bytes they always had
    meta["network"] = network.record()
  return save_pytree(path, {"params": params, "opt_state": opt_state, "rng": rng_key}, meta)


def load_checkpoint(path: Union[str, os.PathLike], opt_state_template: Any = None, *,
                    params_template: Any = None) -> Checkpoint:
  """Reads and verifies a checkpoint written by `save_checkpoint`.

  Args:
    path: the checkpoint file.
    opt_state_template: a pytree of the optimizer state's structure (e.g. `opt.init(params)` or
      its `jax.eval_shape`), or None: opt_state then comes back as a list of leaves.
    params_template: the parameters' structure, needed for parameters other than `Dense` layers
      to come back in it (else a {name: leaf} dict).

  Raises:
    CheckpointError: the file is missing, not a regular file, truncated, not a checkpoint, of
      another format version, corrupted or edited, or does not match a template.
  """
  path = pathlib.Path(path)
  leaves, meta = load_pytree(path)
  if meta.get("kind", "checkpoint") != "checkpoint":
    raise file_error(path, f"holds a {meta['kind']}, not a checkpoint of save_checkpoint (use "
                 f"load_{meta['kind']})")
  try:
    _, epoch, step = meta["kind"], int(meta["epoch"]), int(meta["step"])
    config, extra, has_opt_state = dict(meta["config"]), dict(meta["extra"]), meta["has_opt_state"]
    network = from_record(meta.get("network"))
  except (KeyError, TypeError, ValueError) as e:
    raise file_error(path, f"bad metadata ({describe(e)})") from e
  opt_leaves = list(subtree(leaves, "opt_state").values())
  if opt_state_template is not None:
    opt_state = match_in_file(path, opt_leaves, opt_state_template, "optimizer state")
  else:
    opt_state = opt_leaves if has_opt_state else None
  rng = list(subtree(leaves, "rng").values())
  params = named_params(path, subtree(leaves, "params"), params_template)
  if isinstance(params, tuple) and params and isinstance(params[0], Dense):
    try:
      check_network(network, len(params), "network.activation")
    except ValueError as e:
      raise file_error(path, f"inconsistent network ({e})") from e
  return Checkpoint(params, opt_state, epoch, config, rng[0] if rng else None, step, extra,
                    network)


def check_compatible(ckpt: Checkpoint, layer_sizes: Sequence[int], *,
                     path: Optional[Union[str, os.PathLike]] = None,
                     network: Optional[Network] = None) -> None:
  """Raises `CheckpointError` unless the checkpoint's layer sizes are `layer_sizes` (and its
  network is `network`, when given).

  Args:
    ckpt: a loaded checkpoint (or anything with `.params`, a tuple of `Dense`).
    layer_sizes: the widths (n, d_1, ..., K) the data and configuration call for.
    path: the checkpoint's file, named in the message when given.
    network: the activations and output the caller expects the parameters to be trained for.
  """
  have = model.layer_sizes(ckpt.params)
  want = tuple(int(s) for s in layer_sizes)
  where = "checkpoint" if path is None else f"checkpoint {path}"
  saved = getattr(ckpt, "network", SOURCE)
  if network is not None and saved != network:
    raise CheckpointError(f"{where} holds a network of {saved.describe()}, not "
                          f"{network.describe()}")
  if have == want:
    return
  if have[0] != want[0]:
    raise CheckpointError(f"{where} has {have[0]} input features, the data has {want[0]}")
  if have[-1] != want[-1]:
    raise CheckpointError(f"{where} has {have[-1]} classes, the data has {want[-1]}")
  raise CheckpointError(f"{where} has layer sizes {have}, {want} expected")
