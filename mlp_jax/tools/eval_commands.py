"""`mlp-jax evaluate` (a saved run on its test set) and `mlp-jax check` (the analytic gradients
against jax.grad and finite differences, or a user's own gradient function diagnosed).

As in `train_command`, heavy modules are imported inside the functions.
"""

from __future__ import annotations

import os

from mlp_jax.errors import InputError, describe, printable
from mlp_jax.tables import text_block

EXAMPLES_EVALUATE = """examples:
  mlp-jax evaluate runs/deep/checkpoint.npz
  mlp-jax evaluate runs/esl/checkpoint.npz --data zip.train.gz
"""
EXAMPLES_CHECK = """examples:
  mlp-jax check                                  # the 256-256-10 network, float64
  mlp-jax check --hidden 512 128 --m 13 --l2 0.5 --dtype float32
  mlp-jax check --grads my_backprop.py:grads     # diagnose a hand-written gradient
  mlp-jax check --hidden 64 32 --activation tanh,relu --output identity_squared_error
  mlp-jax check --activation leaky_relu:0.2 --output poisson_log_link --grads mine.py:grads
"""


def add_evaluate_parser(sub, fmt) -> None:
  """The `evaluate` subcommand's parser, added to `sub` (argparse subparsers)."""
  from mlp_jax.io import data
  e = sub.add_parser("evaluate", help="accuracy, per-class accuracy and confusion matrix",
                     epilog=EXAMPLES_EVALUATE, formatter_class=fmt)
  e.add_argument("checkpoint")
  e.add_argument("--dataset", choices=data.DATASETS,
                 help="defaults to the dataset the checkpoint was trained on")
  e.add_argument("--data", help="USPS file, as for train")
  e.add_argument("--activation", metavar="NAME[,NAME...]",
                 help="the hidden activation(s) the run must have been trained with (as for "
                      "train); by default the run's own, which its checkpoint records")
  e.set_defaults(func=cmd_evaluate)


def add_check_parser(sub, fmt) -> None:
  """The `check` subcommand's parser, added to `sub` (argparse subparsers)."""
  c = sub.add_parser("check", help="analytic gradients vs jax.grad vs finite differences; "
                                   "exit status 1 if a bar is missed",
                     epilog=EXAMPLES_CHECK, formatter_class=fmt)
  c.add_argument("--features", type=int, default=256, help="input width n")
  c.add_argument("--hidden", type=int, nargs="+", default=[256], help="hidden widths")
  c.add_argument("--classes", type=int, default=10,
                 help="classes K (the output width, for any output)")
  c.add_argument("--m", type=int, default=37, help="batch size (differs from the widths)")
  c.add_argument("--l2", type=float, default=0.1, help="penalty lambda of (E6)")
  c.add_argument("--dtype", choices=["float32", "float64"],
                 help="dtype of the check (default: float64; --grads is always float64)")
  c.add_argument("--seed", type=int, default=0, help="of the parameters and data")
  c.add_argument("--activation", default="relu", metavar="NAME[,NAME...]",
                 help="the hidden layers' activation: identity, logistic, tanh, relu, "
                      "leaky_relu, gelu or gelu_tanh; leaky_relu:SLOPE for another slope; or "
                      "one per hidden layer, comma-separated (tanh,relu)")
  c.add_argument("--output", default="softmax_cross_entropy", metavar="NAME",
                 help="the output layer and its loss: softmax_cross_entropy (class labels), "
                      "sigmoid_binary_cross_entropy (0/1 indicators), identity_squared_error "
                      "(real values) or poisson_log_link (counts); the data drawn are targets "
                      "of its kind")
  c.add_argument("--grads", metavar="MODULE:FUNCTION",
                 help="diagnose your own gradient function grad_fn(params, x, y, l2) -> tuple "
                      "of Dense (float64, several draws) of the network --activation and "
                      "--output name: which parameter is wrong, where, and the likely mistake")
  c.set_defaults(func=cmd_check)


def cmd_evaluate(args, signals) -> int:
  import numpy as np
  import mlp_jax as mj
  from mlp_jax.core.network import SOURCE, from_record
  from mlp_jax.io import checkpoint, data
  from mlp_jax.tools.train_options import DEFAULTS, network_option
  from mlp_jax.tools import run_folder
  from mlp_jax.training.run import load_run, result_params

  saved = load_run(args.checkpoint)
  cfg, params = saved.config, result_params(saved.state)
  if "scaler_mean" not in saved.arrays or "dataset" not in cfg:
    raise mj.CheckpointError(f"checkpoint {args.checkpoint}: holds no mlp-jax train run "
                             "(no dataset or scaler); evaluate it in Python with mj.evaluate")
  dataset = args.dataset or cfg["dataset"]
  path = args.data or cfg.get("data")
  splits, _ = data.load_splits(dataset, path, seed=run_folder.split_seed(cfg),
                               num_samples=cfg.get("num_samples") or DEFAULTS["num_samples"])
  scaler = data.Scaler(np.asarray(saved.arrays["scaler_mean"]),
                       np.asarray(saved.arrays["scaler_scale"]))
  x = data.apply_scaler(scaler, splits.test.x)  # the training run's scaler, nothing refitted
  checkpoint.check_compatible(saved.state, (x.shape[1],) + tuple(mj.layer_sizes(params)[1:]))
  network = from_record(saved.state.settings.get("network"))
  if args.activation is not None:
    asked = network_option(args.activation, len(params) - 1)
    if asked.hidden(len(params) - 1) != network.hidden(len(params) - 1):
      raise mj.CheckpointError(f"checkpoint {args.checkpoint}: holds a network of "
                               f"{network.describe()}, not --activation {args.activation}")
  y = splits.test.y
  counts = mj.confusion_matrix(params, x, y, activation=network.activation)
  acc = np.trace(counts) / counts.sum()
  per_class = np.diag(counts) / np.maximum(counts.sum(1), 1)
  print(f"{printable(args.checkpoint)}: {dataset} test set, {counts.sum()} examples"
        + ("" if network == SOURCE else f"; {network.describe()}"))
  print(f"accuracy {100 * acc:.2f}%")
  print(text_block([["class"] + [str(i) for i in range(len(per_class))],
                ["accuracy %"] + [f"{100 * a:.1f}" for a in per_class]]))
  print("confusion matrix (rows: true, columns: predicted)")
  print(text_block([[""] + [str(i) for i in range(len(counts))]] +
               [[str(i)] + [str(c) for c in row] for i, row in enumerate(counts)]))
  return 0


def cmd_check(args, signals) -> int:
  import contextlib
  import jax
  import jax.numpy as jnp
  import mlp_jax as mj
  from mlp_jax.tools.train_options import network_option

  dtype = args.dtype or "float64"
  if args.grads is not None and dtype != "float64":
    raise mj.InputError(f"--dtype {dtype}: --grads is always diagnosed in float64 (its "
                        "parameters and data upcast), so that roundoff cannot hide a small "
                        "mistake; leave --dtype out")
  net = network_option(args.activation, len(args.hidden), args.output)
  grad_fn = None if args.grads is None else load_function(args.grads)
  x64 = jax.enable_x64(True) if dtype == "float64" else contextlib.nullcontext()
  with x64:
    sizes = (args.features,) + tuple(args.hidden) + (args.classes,)
    params = mj.init_params(jax.random.PRNGKey(args.seed), sizes, jnp.dtype(dtype))
    key_x, key_y = jax.random.split(jax.random.PRNGKey(args.seed + 1))
    x = jax.random.uniform(key_x, (args.m, args.features), jnp.dtype(dtype))
    y = _check_targets(key_y, net, args.m, args.classes, jnp.dtype(dtype))
    if grad_fn is None:
      report = mj.check_gradients(params, x, y, args.l2, activation=net.activation,
                                  output=net.output)
    else:
      from mlp_jax.tools.diagnosis import diagnose
      report = diagnose(grad_fn, params, x, y, args.l2, activation=net.activation,
                        output=net.output)
  print(report)
  return 0 if report.passed else 1


def _check_targets(key, net, m: int, k: int, dtype):
  """Targets of the kind the network's output takes: int labels (m,) in 0..K-1 (as before
  networks: the same draw), else (m, K) of `dtype`: 0/1 indicators for targets in [0, 1],
  Poisson(1) counts for targets >= 0, N(0, 1) values for real ones."""
  import jax
  out = net.out
  if out.labels:
    return jax.random.randint(key, (m,), 0, k)
  if (out.low, out.high) == (0.0, 1.0):
    return jax.random.bernoulli(key, 0.5, (m, k)).astype(dtype)
  if out.low == 0.0:
    return jax.random.poisson(key, 1.0, (m, k)).astype(dtype)
  return jax.random.normal(key, (m, k), dtype)


def load_function(spec: str):
  """`module:function` or `path/to/file.py:function` -> the function, wrapped so that an
  exception it raises becomes one `InputError` naming it, the exception and the user's lines."""
  import functools
  import importlib
  import importlib.util
  module_name, _, attr = spec.rpartition(":")
  if not module_name or not attr:
    raise InputError(f"--grads: expected module:function or file.py:function, got "
                     f"{printable(repr(spec))}")
  try:
    if module_name.endswith(".py"):
      spec_ = importlib.util.spec_from_file_location("user_grads", module_name)
      if spec_ is None or spec_.loader is None:
        raise ImportError(f"cannot load {module_name}")
      module = importlib.util.module_from_spec(spec_)
      spec_.loader.exec_module(module)
    else:
      module = importlib.import_module(module_name)
  except (ImportError, OSError) as err:
    raise InputError(f"--grads: cannot import {printable(module_name)}: {printable(err)}") from err
  except Exception as err:  # noqa: BLE001 - the user's module raised while it was imported
    raise InputError(f"--grads: importing {printable(module_name)} raised "
                     f"{_user_exception(err)}") from err
  fn = getattr(module, attr, None)
  if not callable(fn):
    raise InputError(f"--grads: {printable(module_name)} has no function {printable(repr(attr))}")

  @functools.wraps(fn)
  def guarded(*args, **kwargs):
    try:
      return fn(*args, **kwargs)
    except Exception as err:  # noqa: BLE001 - whatever the user's code raised, reported as theirs
      raise InputError(f"--grads: your function {printable(spec)} raised "
                       f"{_user_exception(err)}") from err

  return guarded


def _shown_path(path: str) -> str:
  """`path` relative to the working folder when it lies under it, else as it is."""
  relative = os.path.relpath(path) if os.path.isabs(path) else path
  return path if relative.startswith("..") else relative


def _user_exception(err: BaseException) -> str:
  """`Type: message, at file.py:LINE in func (`source`)`, naming only the user's own frames
  (not this package's, the standard library's or an installed package's): where it was raised,
  then where that was called from."""
  import sysconfig
  import traceback
  library = [os.path.dirname(os.path.dirname(os.path.abspath(__file__)))]  # mlp_jax/
  library += [sysconfig.get_paths()[k] for k in ("stdlib", "platstdlib", "purelib", "platlib")]
  library = [os.path.abspath(p) + os.sep for p in library]
  if isinstance(err, SyntaxError) and err.filename:
    frames = [(err.filename, err.lineno, "<module>", (err.text or "").strip())]
  else:
    frames = [(f.filename, f.lineno, f.name, (f.line or "").strip())
              for f in traceback.extract_tb(err.__traceback__)
              if not os.path.abspath(f.filename).startswith(tuple(library))
              and not f.filename.startswith("<")]
  where = [f"{printable(_shown_path(file))}:{line} in {name}"
           + (f" ({printable(code)})" if code else "")
           for file, line, name, code in reversed(frames)]
  return describe(err) + (f", at {where[0]}" if where else "") + "".join(
      f", called from {w}" for w in where[1:])
