"""Regression on scikit-learn's diabetes data: test R^2 by hidden activation, against
scikit-learn's MLPRegressor.

    python benchmarks/regression.py [--quick] [--out DIR]

Data: `sklearn.datasets.load_diabetes` (442 patients, 10 features, a real target; bundled, no
download), split once into training and test parts (TEST_FRACTION, seed SPLIT_SEED), and the
training part again into fit and validation parts (VAL_FRACTION, seed VAL_SEED). Features and
target are standardised with the mean and standard deviation of the part that is trained on
(the fit part while selecting, the whole training part after); the test part is never seen
before the end.

Network: 10 -> HIDDEN -> 1 with activation A (identity, logistic, tanh, relu, gelu) and the
output "identity_squared_error" (E24); `mj.fit` with Adam, minibatches of BATCH, shuffled.

Protocol, per activation:
  1. selection: for every (learning rate, lambda) of the grid, `mj.fit` on the fit part for
     EPOCHS epochs with the validation part as `val`; the epoch count is the epoch of the
     highest `val_r2` in the history, so (learning rate, lambda, epochs) is the point of the
     grid and epoch with the highest validation R^2;
  2. test: `mj.fit` on the whole training part with those, from init seeds SEEDS (shuffle
     seed the same), and the test R^2 two ways: `mj.evaluate(...)[1]` on the standardised
     test part (R^2 does not change under the standardisation) and sklearn.metrics.r2_score
     of `mj.predict` un-standardised against the original target (a cross-check; they agree
     to float32 rounding);
  3. reference: scikit-learn's `MLPRegressor` (solver "adam", the same hidden size,
     activation, alpha = lambda, learning rate, batch size and epochs as max_iter, no early
     stop: tol 0 and n_iter_no_change > max_iter) on the same standardised data, random_state
     from SEEDS; scikit-learn has no GELU. Its initialisation (Glorot uniform) is not mlp_jax's
     (He normal); its penalty alpha/(2 B) sum ||W||^2 per batch is lambda's in (E6).
Also the test R^2 of ordinary least squares (`LinearRegression`) on the same split. Means and
standard deviations over SEEDS. --quick: relu and gelu only, one grid point, 20 epochs, one
seed.
"""

import argparse
import os
import sys
import time
import warnings
from typing import Dict, List, NamedTuple, Sequence, Tuple

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

import numpy as np  # noqa: E402
import sklearn  # noqa: E402
from sklearn.datasets import load_diabetes  # noqa: E402
from sklearn.exceptions import ConvergenceWarning  # noqa: E402
from sklearn.linear_model import LinearRegression  # noqa: E402
from sklearn.metrics import r2_score  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402
from sklearn.neural_network import MLPRegressor  # noqa: E402

import mlp_jax as mj  # noqa: E402

OUTPUT = "identity_squared_error"
ACTIVATIONS = ("identity", "logistic", "tanh", "relu", "gelu")
SKLEARN_ACTIVATIONS = ("identity", "logistic", "tanh", "relu")
HIDDEN = 64
BATCH = 32
TEST_FRACTION, SPLIT_SEED = 0.2, 0
VAL_FRACTION, VAL_SEED = 0.2, 1
GRID = {"lr": (1e-3, 1e-2), "l2": (1e-2, 1.0)}
EPOCHS = 200
SEEDS = (0, 1, 2)
QUICK_GRID = {"lr": (1e-2,), "l2": (1.0,)}
QUICK_EPOCHS = 20
QUICK_SEEDS = (0,)
QUICK_ACTIVATIONS = ("relu", "gelu")  # one with a scikit-learn column, one without


class Scaler(NamedTuple):
  """The means and standard deviations of features (n,) and target (a scalar)."""
  x_mean: np.ndarray
  x_std: np.ndarray
  y_mean: float
  y_std: float

  @classmethod
  def of(cls, x: np.ndarray, y: np.ndarray) -> "Scaler":
    return cls(x.mean(0), x.std(0), float(y.mean()), float(y.std()))

  def x(self, x: np.ndarray) -> np.ndarray:
    """Standardised features (m, n), float32."""
    return ((x - self.x_mean) / self.x_std).astype(np.float32)

  def y(self, y: np.ndarray) -> np.ndarray:
    """The standardised target as mj's (m, 1), float32."""
    return ((y - self.y_mean) / self.y_std).astype(np.float32)[:, None]

  def unscale(self, pred: np.ndarray) -> np.ndarray:
    """Predictions (m, 1) on the standardised scale back to the target's (m,)."""
    return np.asarray(pred, np.float64)[:, 0] * self.y_std + self.y_mean


class Split(NamedTuple):
  x_train: np.ndarray
  x_test: np.ndarray
  y_train: np.ndarray
  y_test: np.ndarray


def load(test_fraction: float, seed: int) -> Tuple[Split, Split]:
  """(training/test split, fit/validation split of the training part), original scale."""
  x, y = load_diabetes(return_X_y=True)
  outer = Split(*train_test_split(x, y, test_size=test_fraction, random_state=seed))
  inner = Split(*train_test_split(outer.x_train, outer.y_train, test_size=VAL_FRACTION,
                                  random_state=VAL_SEED))
  return outer, inner


def train(split: Split, activation: str, optimizer, l2: float, epochs: int, seed: int,
          with_val: bool):
  """`mj.fit` on split's training part, standardised on it: (params, history, scaler)."""
  s = Scaler.of(split.x_train, split.y_train)
  params = mj.init_params(seed, (split.x_train.shape[1], HIDDEN, 1))
  val = (s.x(split.x_test), s.y(split.y_test)) if with_val else None
  result = mj.fit(params, (s.x(split.x_train), s.y(split.y_train)), optimizer=optimizer,
                  epochs=epochs, batch_size=BATCH, l2=l2, seed=seed, val=val,
                  activation=activation, output=OUTPUT)
  return result.state.params, result.state.history, s


def select(inner: Split, activation: str, grid: Dict, epochs: int, optimizers: Dict) -> Dict:
  """The grid point and epoch of the highest validation R^2, and every point's best."""
  tried = []
  for lr in grid["lr"]:
    for l2 in grid["l2"]:
      _, history, _ = train(inner, activation, optimizers[lr], l2, epochs, 0, with_val=True)
      best = max(history, key=lambda e: e["val_r2"])
      tried.append({"lr": lr, "l2": l2, "epochs": best["epoch"], "val_r2": best["val_r2"],
                    "last_val_r2": history[-1]["val_r2"]})
  return dict(max(tried, key=lambda t: t["val_r2"]), grid=tried)


def score_mlp_jax(outer: Split, activation: str, chosen: Dict, seeds: Sequence[int],
                 optimizers: Dict) -> Dict:
  """Test R^2 of mj.fit on the whole training part with the chosen settings, per seed."""
  r2_eval, r2_sklearn, seconds = [], [], []
  for seed in seeds:
    start = time.perf_counter()
    params, _, s = train(outer, activation, optimizers[chosen["lr"]], chosen["l2"],
                         chosen["epochs"], seed, with_val=False)
    seconds.append(time.perf_counter() - start)
    _, r2 = mj.evaluate(params, s.x(outer.x_test), s.y(outer.y_test),
                        activation=activation, output=OUTPUT)
    pred = mj.predict(params, s.x(outer.x_test), activation=activation, output=OUTPUT)
    r2_eval.append(float(r2))
    r2_sklearn.append(float(r2_score(outer.y_test, s.unscale(pred))))
  return {"r2_evaluate": r2_eval, "r2_sklearn_metric": r2_sklearn, "fit_seconds": seconds,
          "max_abs_diff": float(np.max(np.abs(np.subtract(r2_eval, r2_sklearn))))}


def score_sklearn(outer: Split, activation: str, chosen: Dict, seeds: Sequence[int]) -> Dict:
  """Test R^2 of scikit-learn's MLPRegressor with the same settings, per seed."""
  s = Scaler.of(outer.x_train, outer.y_train)
  r2, seconds = [], []
  for seed in seeds:
    model = MLPRegressor(hidden_layer_sizes=(HIDDEN,), activation=activation, solver="adam",
                         alpha=chosen["l2"], batch_size=BATCH, learning_rate_init=chosen["lr"],
                         max_iter=chosen["epochs"], shuffle=True, random_state=seed, tol=0.0,
                         n_iter_no_change=chosen["epochs"] + 1, early_stopping=False)
    start = time.perf_counter()
    with warnings.catch_warnings():
      warnings.simplefilter("ignore", ConvergenceWarning)  # max_iter is the epoch count
      model.fit(s.x(outer.x_train), s.y(outer.y_train)[:, 0])
    seconds.append(time.perf_counter() - start)
    pred = model.predict(s.x(outer.x_test))[:, None]
    r2.append(float(r2_score(outer.y_test, s.unscale(pred))))
  return {"r2": r2, "fit_seconds": seconds}


def linear_r2(outer: Split) -> float:
  """Test R^2 of ordinary least squares on the same split."""
  model = LinearRegression().fit(outer.x_train, outer.y_train)
  return float(r2_score(outer.y_test, model.predict(outer.x_test)))


def mean_sd(values: Sequence[float]) -> str:
  if len(values) == 1:
    return f"{values[0]:.3f}"
  return f"{np.mean(values):.3f} ± {np.std(values, ddof=1):.3f}"


def markdown(results: List[Dict], payload: Dict, notes: List[str]) -> str:
  rows = []
  for r in results:
    c, mj_, sk = r["chosen"], r["mlp_jax"], r["sklearn"]
    rows.append([r["activation"], f"{c['lr']:g}", f"{c['l2']:g}", c["epochs"],
                 f"{c['val_r2']:.3f}", mean_sd(mj_["r2_evaluate"]),
                 mean_sd(mj_["r2_sklearn_metric"]), f"{mj_['max_abs_diff']:.1e}",
                 mean_sd(sk["r2"]) if sk else "-"])
  grid_rows = [[r["activation"], f"{t['lr']:g}", f"{t['l2']:g}", t["epochs"],
                f"{t['val_r2']:.3f}", f"{t['last_val_r2']:.3f}"]
               for r in results for t in r["chosen"]["grid"]]
  n_seeds = len(payload["seeds"])
  lines = [f"### Diabetes regression, 10-{HIDDEN}-1, output {OUTPUT}: test R^2 "
           f"({payload['sizes']['train']} training, {payload['sizes']['test']} test rows; "
           f"{'mean ± sd over ' if n_seeds > 1 else ''}{n_seeds} seed{'s' * (n_seeds > 1)})\n",
           common.markdown_table(
               ["activation", "lr", "lambda", "epochs", "val R^2 (selection)",
                "mlp_jax test R^2 (mj.evaluate)", "mlp_jax test R^2 (r2_score)",
                "max abs difference", "scikit-learn MLPRegressor test R^2"], rows),
           f"\nOrdinary least squares (LinearRegression) on the same split: test R^2 "
           f"{payload['linear_r2']:.3f}.",
           f"\n### Selection grid (fit {payload['sizes']['fit']} rows, validation "
           f"{payload['sizes']['val']} rows, {payload['epochs']} epochs, seed 0)\n",
           common.markdown_table(["activation", "lr", "lambda", "best epoch",
                                  "best val R^2", "val R^2 at the last epoch"], grid_rows)]
  if notes:
    lines += ["", *[f"- {x}" for x in notes]]
  return "\n".join(lines)


def main():
  parser = common.add_args(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
  args = parser.parse_args()
  activations, grid, epochs, seeds = (
      (QUICK_ACTIVATIONS, QUICK_GRID, QUICK_EPOCHS, QUICK_SEEDS) if args.quick
      else (ACTIVATIONS, GRID, EPOCHS, SEEDS))
  outer, inner = load(TEST_FRACTION, SPLIT_SEED)
  optimizers = {lr: mj.make_optimizer("adam", lr) for lr in grid["lr"]}  # one object per lr:
  # fit compiles one epoch program per optimizer object and settings, and reuses it
  notes = []
  busy = common.busy_note()
  if busy:
    notes.append(busy)
  start_all = time.perf_counter()
  results = []
  for activation in activations:
    start = time.perf_counter()
    chosen = select(inner, activation, grid, epochs, optimizers)
    results.append({
        "activation": activation, "chosen": chosen,
        "mlp_jax": score_mlp_jax(outer, activation, chosen, seeds, optimizers),
        "sklearn": (score_sklearn(outer, activation, chosen, seeds)
                    if activation in SKLEARN_ACTIVATIONS else None)})
    print(f"  {activation}: {time.perf_counter() - start:.1f} s", flush=True)
  total = time.perf_counter() - start_all
  notes.append(f"whole run {total:.0f} s (mlp_jax's fits include compiling)")
  if args.quick:
    notes.append("--quick: two activations, one grid point, few epochs, one seed; only a smoke "
                 "test")
  payload = {"machine": common.machine(sklearn=sklearn.__version__), "quick": args.quick,
             "data": "sklearn.datasets.load_diabetes", "output": OUTPUT, "hidden": HIDDEN,
             "batch_size": BATCH, "optimizer": "adam", "grid": grid, "epochs": epochs,
             "seeds": list(seeds), "test_fraction": TEST_FRACTION, "split_seed": SPLIT_SEED,
             "val_fraction": VAL_FRACTION, "val_seed": VAL_SEED,
             "sizes": {"train": len(outer.y_train), "test": len(outer.y_test),
                       "fit": len(inner.y_train), "val": len(inner.y_test)},
             "linear_r2": linear_r2(outer), "seconds": total, "notes": notes,
             "results": results}
  common.write_results(common.result_name("regression", args.quick), payload,
                       markdown(results, payload, notes), args.out)


if __name__ == "__main__":
  main()
