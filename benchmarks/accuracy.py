"""Test accuracy of the source's network (one hidden layer of 256 ReLU units) and objective (E6).

Protocol (the third; written down, grid included, before any of its test figures existed):

  1. Selection by 5-fold stratified cross-validation on the training set only: each
     configuration is trained on four folds and scored on the fifth, five times, so every
     training image is validated once and all configurations meet the same folds. Score: the
     mean validation accuracy (ties: the lower mean validation cross-entropy). It is
     scikit-learn's `GridSearchCV` over the library's training (`mj.fit`, as `mlp-jax train`
     runs it, wrapped as a classifier: `LibraryMLP`) in a pipeline (global scaling, then the
     classifier; the shifted copies are added inside each fold's training part), every fold
     trained with seed 0 (the second version of this script seeded fold k with k).
  2. Each configuration runs a fixed number of epochs with the learning rate decayed to 0 on a
     cosine, and its final parameters are scored: no early stopping.
  3. The chosen configuration is trained again on the whole training set (init and shuffling
     seed 0) and that model alone is evaluated on the test set: the headline figure.
  4. For the spread only (nothing is chosen from it), the same configuration is also trained
     with seeds 1-4 and tested.

Why it replaced the second protocol (two 10% validation splits, early stopping on the
validation loss): 729 validation images separate configurations by a handful of images, and the
validation loss rises while the accuracy still improves, which stopped the USPS runs after
8-97 epochs (the chosen ones after 12-54). The input scaling is fixed to "global" (one mean and
std for all pixels), a choice made from exploratory cross-validation runs on the training set
that are not kept in the repository. Tasks: USPS, USPS with one-pixel shifts of the training
images (4 or 8 neighbours, in the grid), and the bundled 8x8 digits (20% held out).

    python benchmarks/accuracy.py [--quick] [--usps PATH] [--tasks usps ...]
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402

from sklearn.base import BaseEstimator, ClassifierMixin, TransformerMixin, clone  # noqa: E402
from sklearn.model_selection import GridSearchCV, StratifiedKFold  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402

import mlp_jax as mj  # noqa: E402
from mlp_jax.io import data  # noqa: E402

FOLDS = 5
BATCH_SIZE = 128
SCALING = "global"
SPREAD_SEEDS = (1, 2, 3, 4)
OPTIMIZERS = [("adam", 1e-3), ("momentum", 0.1)]
GRIDS = {  # task -> {dataset, shift counts, lambdas, epoch counts}
    "digits": dict(dataset="digits", shifts=[0], l2=[1e-4, 0.01, 0.1, 1.0], epochs=[100, 300]),
    "usps": dict(dataset="usps", shifts=[0], l2=[1e-4, 0.01, 0.03, 0.1, 0.3, 1.0],
                 epochs=[100, 200]),
    "usps+augment": dict(dataset="usps", shifts=[4, 8], l2=[0.01, 0.1, 0.3], epochs=[60]),
}
QUICK = dict(folds=2, l2=[0.1], epochs=[2], optimizers=[("adam", 1e-3)], spread_seeds=(1,))
MLP = "estimator__librarymlp__"  # the grid's path to the classifier's parameters


class GlobalScaler(TransformerMixin, BaseEstimator):
  """The input scaling of the protocol: `data.fit_scaler(x, "global")`, one mean and std over
  all pixels, fitted on the rows `fit` sees."""

  def fit(self, X, y=None):
    self.scaler_ = data.fit_scaler(X, SCALING)
    return self

  def transform(self, X):
    return self.scaler_.apply(X)


class Augmented(ClassifierMixin, BaseEstimator):
  """`estimator` fitted on its training rows plus their one-pixel shifts (`shifts` 4 or 8; 0:
  none): the shifted copies of a fold's training images never reach its validation rows."""

  def __init__(self, estimator=None, image_shape=(16, 16), shifts=0):
    self.estimator, self.image_shape, self.shifts = estimator, image_shape, shifts

  def fit(self, X, y):
    if self.shifts:
      augmented = data.shift_augment(data.Dataset(X, y), self.image_shape, self.shifts)
      X, y = augmented.x, augmented.y
    self.estimator_ = clone(self.estimator).fit(X, y)
    self.classes_ = self.estimator_.classes_
    return self

  def predict(self, X):
    return self.estimator_.predict(X)

  def predict_proba(self, X):
    return self.estimator_.predict_proba(X)


class LibraryMLP(ClassifierMixin, BaseEstimator):
  """The library's own training as a scikit-learn classifier, so that the selection trains
  exactly as `mlp-jax train` does: He-normal initial weights from the seed
  (`mj.init_params`), `mj.fit` with the optimizer by name (`mj.make_optimizer`: "adam", or
  "momentum", Nesterov 0.9) and its learning rate decayed to 0 on a cosine over `max_iter`
  epochs, batches of `batch_size`, lambda = `alpha`. (`mj.MLPClassifier` trains as
  scikit-learn's MLPClassifier does instead: its initialisation, solvers and stops.)"""

  def __init__(self, hidden_layer_sizes=(256,), solver="adam", learning_rate_init=1e-3,
               alpha=1e-4, max_iter=100, batch_size=BATCH_SIZE, random_state=0):
    self.hidden_layer_sizes, self.solver = hidden_layer_sizes, solver
    self.learning_rate_init, self.alpha, self.max_iter = learning_rate_init, alpha, max_iter
    self.batch_size, self.random_state = batch_size, random_state

  def fit(self, X, y):
    self.classes_, labels = np.unique(y, return_inverse=True)
    X = np.ascontiguousarray(X, np.float32)
    sizes = (X.shape[1],) + tuple(self.hidden_layer_sizes) + (len(self.classes_),)
    batch = min(self.batch_size, X.shape[0])
    optimizer = mj.make_optimizer(self.solver, self.learning_rate_init, schedule="cosine",
                                  total_steps=self.max_iter * mj.steps_per_epoch(len(X), batch))
    params = mj.init_params(jax.random.PRNGKey(self.random_state), sizes, X.dtype)
    self.params_ = mj.fit(params, (X, labels.astype(np.int32)), optimizer=optimizer,
                          epochs=self.max_iter, batch_size=batch, l2=self.alpha,
                          seed=self.random_state).params
    return self

  def predict_proba(self, X):
    logits = np.asarray(mj.forward(self.params_, np.asarray(X, np.float32)), np.float64)
    shifted = logits - logits.max(axis=1, keepdims=True)  # log-softmax in float64
    return np.exp(shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True)))

  def predict(self, X):
    return self.classes_[np.asarray(mj.predict(self.params_, np.asarray(X, np.float32)))]


def model(shape, seed: int) -> Augmented:
  """The source's network (one hidden layer of 256) with a cosine schedule, globally scaled
  inputs and optional shifts; the grid sets solver, lr, lambda, epochs and shifts."""
  return Augmented(make_pipeline(GlobalScaler(), LibraryMLP(random_state=seed)), shape)


def param_grid(grid, quick):
  """One grid per (solver, lr) pair: lambda x epochs x shifts."""
  return [{"shifts": grid["shifts"], MLP + "solver": [solver], MLP + "learning_rate_init": [lr],
           MLP + "alpha": QUICK["l2"] if quick else grid["l2"],
           MLP + "max_iter": QUICK["epochs"] if quick else grid["epochs"]}
          for solver, lr in (QUICK["optimizers"] if quick else OPTIMIZERS)]


def run_task(name, grid, usps_path, quick):
  path = usps_path if grid["dataset"] == "usps" else None
  splits, shape = data.load_splits(grid["dataset"], path)  # unscaled
  folds = QUICK["folds"] if quick else FOLDS
  search = GridSearchCV(model(shape, seed=0), param_grid(grid, quick),
                        scoring={"acc": "accuracy", "loss": "neg_log_loss"}, refit=False,
                        cv=StratifiedKFold(folds, shuffle=True, random_state=0))
  start = time.perf_counter()
  search.fit(splits.train.x, splits.train.y)
  search_seconds = time.perf_counter() - start
  cv = search.cv_results_
  trials = []
  for i, params in enumerate(cv["params"]):
    trials.append({"shifts": params["shifts"], "optimizer": params[MLP + "solver"],
                   "lr": params[MLP + "learning_rate_init"], "l2": params[MLP + "alpha"],
                   "epochs": params[MLP + "max_iter"], "cv_acc": float(cv["mean_test_acc"][i]),
                   "cv_loss": float(-cv["mean_test_loss"][i]),
                   "fold_accs": [float(cv[f"split{k}_test_acc"][i]) for k in range(folds)],
                   "seconds": float(cv["mean_fit_time"][i] * folds)})
    t = trials[-1]
    print(f"  {name}: shifts={t['shifts']} {t['optimizer']} lr={t['lr']:g} l2={t['l2']:g} "
          f"epochs={t['epochs']}: cv {100 * t['cv_acc']:.2f}% (loss {t['cv_loss']:.4f})",
          flush=True)
  best = max(range(len(trials)), key=lambda i: (trials[i]["cv_acc"], -trials[i]["cv_loss"]))
  chosen = trials[best]
  tests = {}
  for seed in (0,) + (QUICK["spread_seeds"] if quick else SPREAD_SEEDS):
    start = time.perf_counter()
    final = model(shape, seed).set_params(**cv["params"][best]).fit(splits.train.x,
                                                                     splits.train.y)
    seconds = time.perf_counter() - start
    tests[seed] = {"test_acc": float(final.score(splits.test.x, splits.test.y)),
                   "train_seconds": seconds}
    print(f"  {name}: chosen configuration, seed {seed}: test "
          f"{100 * tests[seed]['test_acc']:.2f}% ({seconds:.1f} s)", flush=True)
  command = (f"mlp-jax train --dataset {grid['dataset']}"
             + (f" --data {os.path.relpath(path)}" if path else "")
             + (f" --augment --shifts {chosen['shifts']}" if chosen["shifts"] else "")
             + f" --scaling {SCALING} --optimizer {chosen['optimizer']} --lr {chosen['lr']:g}"
             f" --schedule cosine --l2 {chosen['l2']:g} --batch-size {BATCH_SIZE}"
             f" --epochs {chosen['epochs']} --val-fraction 0 --seed 0")
  spread = [tests[s]["test_acc"] for s in tests if s != 0]
  return {"task": name, "train_examples": int(splits.train.x.shape[0]),
          "test_examples": int(splits.test.x.shape[0]), "chosen": chosen,
          "test_acc": tests[0]["test_acc"], "final_train_seconds": tests[0]["train_seconds"],
          "spread_test_accs": spread, "tests_by_seed": tests, "trials": trials,
          "command": command, "search_seconds": search_seconds}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  common.add_args(parser)  # --quick: one configuration, two folds, two epochs
  parser.add_argument("--usps", default=common.USPS_DEFAULT, help="a USPS file (usps.h5) instead of the bundled copy")
  parser.add_argument("--tasks", nargs="+", choices=list(GRIDS), default=list(GRIDS))
  args = parser.parse_args()
  tasks = list(args.tasks)
  results = [run_task(name, GRIDS[name], args.usps, args.quick) for name in tasks]
  rows = []
  for r in results:
    c = r["chosen"]
    spread = r["spread_test_accs"]
    rows.append([r["task"], r["train_examples"], c["shifts"] or "-",
                 f"{c['optimizer']} lr={c['lr']:g} cosine", f"{c['l2']:g}", c["epochs"],
                 f"{100 * c['cv_acc']:.2f}", f"**{100 * r['test_acc']:.2f}**",
                 f"{100 * min(spread):.2f}–{100 * max(spread):.2f}" if spread else "-",
                 f"{r['final_train_seconds']:.1f}", f"{r['search_seconds']:.0f}"])
  md = common.markdown_table(
      ["task", "train rows", "shifts", "chosen optimizer", "lambda", "epochs", "CV acc %",
       "test acc % (seed 0)", "test acc %, seeds 1-4", "final training s", "whole search s"],
      rows)
  md += "\n\nCommands that retrain the chosen models (seed 0):\n\n" + "\n".join(
      f"    {r['command']}" for r in results)
  common.write_results(common.result_name("accuracy", args.quick),
                       {"machine": common.machine(), "quick": args.quick, "protocol": 3,
                        "results": results}, md, args.out)


if __name__ == "__main__":
  main()
