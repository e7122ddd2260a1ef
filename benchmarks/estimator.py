"""`mj.MLPClassifier` / `mj.MLPRegressor` vs scikit-learn's at the same settings, in one run: fit
and predict time and test score for every solver and hidden activation.

    python benchmarks/estimator.py [--quick] [--datasets usps diabetes] [--solvers adam sgd lbfgs]
        [--activations identity logistic tanh relu] [--repeats 2] [--out DIR]

Data, float32 for both libraries (so both compute in float32; ours does by default):
  usps:     the bundled USPS, `mj.data.prepare("usps", val_fraction=0.0)` (globally scaled):
            7291 training, 2007 test rows, 256 features, 10 classes. MLPClassifier, hidden
            (256,). Score: test accuracy.
  diabetes: `sklearn.datasets.load_diabetes` (442 rows, 10 features), split by
            train_test_split(test_size=0.25, random_state=0) into 331 training, 111 test
            rows; X and y standardised with the training part's mean and standard deviation.
            MLPRegressor, hidden (64,), loss "squared_error". Score: test R^2 (the same on the
            standardised scale).
Both estimators of a pair get the same parameters: alpha 1e-4, batch_size "auto" (min(200,
rows)), shuffle, random_state 0 (so the same Glorot initial weights), and a fixed amount of
work: the stochastic solvers run exactly E epochs (max_iter=E, tol=0, n_iter_no_change=inf),
lbfgs at most I iterations (max_iter=I, tol=0; SciPy's L-BFGS-B may stop sooner on its own
decrease test, so n_iter_ is reported). ConvergenceWarning is silenced. The batch orders differ:
ours shuffles with JAX from a seed drawn from random_state, scikit-learn with NumPy, so the
stochastic solvers' scores differ by chance (with shuffle=False the runs are the same:
tests/test_estimator_parity.py).
  usps:     E = 20; I = 100; learning_rate_init: adam 1e-3, sgd 0.1 (momentum 0.9, Nesterov).
  diabetes: E = 200; I = 200; learning_rate_init 1e-3 for adam and for sgd (a probe with
            scikit-learn, not kept, found 1e-2 too large for adam with tanh and relu). lbfgs for
            200 iterations overfits the 331 rows (test R^2 below 0 for logistic, tanh and relu in
            both libraries: the table), so small numerical differences can move its R^2 far.
Per configuration (dataset, solver, activation): one untimed warm-up fit per library (ours
compiles its epoch or its loss-and-gradient there: the "first fit s" column), then --repeats
fits alternating between the libraries (so both see the same machine load); fit time is the
median. Predict time is `common.time_call`'s median on the test rows, score and n_iter_ those of
the last fit. Speedups are scikit-learn's time over ours. "Equal score": |accuracy difference|
<= 0.5 percentage points (usps), |R^2 difference| <= 0.02 (diabetes); every difference is in the
table. Summary: geometric-mean fit speedups by dataset, by dataset and solver, by solver, and the
number of configurations at >= 1.5x and equal score. Both lbfgs solvers run SciPy's L-BFGS-B,
whose host work goes through multi-threaded BLAS (see benchmarks/lbfgs.py).

--quick: USPS's first 1000 training rows and diabetes, 2 epochs / 5 lbfgs iterations, activation
relu, every solver, 1 repeat; a smoke test (~15 s).
"""

import argparse
import math
import os
import sys
import time
import warnings
from typing import Callable, Dict, List, NamedTuple, Sequence, Tuple

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

import numpy as np  # noqa: E402
import sklearn  # noqa: E402
from sklearn.datasets import load_diabetes  # noqa: E402
from sklearn.exceptions import ConvergenceWarning  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402
from sklearn.neural_network import MLPClassifier as SkClassifier  # noqa: E402
from sklearn.neural_network import MLPRegressor as SkRegressor  # noqa: E402

import mlp_jax as mj  # noqa: E402
from mlp_jax.tools import estimator_fitting  # noqa: E402

SOLVERS = ("adam", "sgd", "lbfgs")
ACTIVATIONS = ("identity", "logistic", "tanh", "relu")
DATASETS = ("usps", "diabetes")
LIBRARIES = ("mlp_jax", "sklearn")
SPEEDUP = 1.5          # the speedup counted in the summary
QUICK_ROWS = 1000      # --quick: the first rows of USPS's training part
QUICK_EPOCHS, QUICK_LBFGS = 2, 5
PREDICT_REPEATS = 20


class Dataset(NamedTuple):
  """A benchmark problem: data (float32), the estimators, and the work per solver."""
  name: str
  x: np.ndarray           # (m, n) training features
  y: np.ndarray           # (m,) labels (int) or standardised target (float32)
  x_test: np.ndarray
  y_test: np.ndarray
  ours: type              # mj.MLPClassifier or mj.MLPRegressor
  theirs: type            # scikit-learn's counterpart
  hidden: Tuple[int, ...]
  epochs: int             # E, for adam and sgd
  lbfgs_iter: int         # I
  rates: Dict[str, float]  # learning_rate_init by stochastic solver
  score: str              # "accuracy %" or "R^2"
  equal: float            # the largest score difference called equal (in `score`'s units)


def usps(quick: bool) -> Dataset:
  """Bundled USPS, globally scaled; --quick keeps the first QUICK_ROWS training rows."""
  prepared = mj.data.prepare("usps", val_fraction=0.0)
  (x, y), (xt, yt) = prepared.train, prepared.test
  if quick:
    x, y = x[:QUICK_ROWS], y[:QUICK_ROWS]
  return Dataset("usps", x.astype(np.float32), y, xt.astype(np.float32), yt, mj.MLPClassifier,
                 SkClassifier, (256,), QUICK_EPOCHS if quick else 20,
                 QUICK_LBFGS if quick else 100, {"adam": 1e-3, "sgd": 0.1}, "accuracy %", 0.5)


def diabetes(quick: bool) -> Dataset:
  """load_diabetes, split 75/25 (seed 0), standardised with the training part's statistics."""
  x, y = load_diabetes(return_X_y=True)
  x, xt, y, yt = train_test_split(x, y, test_size=0.25, random_state=0)
  mx, sx, my, sy = x.mean(0), x.std(0), y.mean(), y.std()
  f32 = lambda a: a.astype(np.float32)
  return Dataset("diabetes", f32((x - mx) / sx), f32((y - my) / sy), f32((xt - mx) / sx),
                 f32((yt - my) / sy), mj.MLPRegressor, SkRegressor, (64,),
                 QUICK_EPOCHS if quick else 200, QUICK_LBFGS if quick else 200,
                 {"adam": 1e-3, "sgd": 1e-3}, "R^2", 0.02)


LOADERS = {"usps": usps, "diabetes": diabetes}


def settings(ds: Dataset, solver: str, activation: str) -> Dict:
  """The parameters both estimators of a configuration get: a fixed amount of work."""
  shared = dict(hidden_layer_sizes=ds.hidden, activation=activation, solver=solver, alpha=1e-4,
                batch_size="auto", random_state=0, tol=0.0)
  if solver == "lbfgs":
    return dict(shared, max_iter=ds.lbfgs_iter)
  return dict(shared, max_iter=ds.epochs, n_iter_no_change=np.inf,
              learning_rate_init=ds.rates[solver])


def timed_fit(make: Callable, x: np.ndarray, y: np.ndarray):
  """(a fresh estimator fitted on x, y, seconds), ConvergenceWarning silenced."""
  est = make()
  start = time.perf_counter()
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", ConvergenceWarning)  # max_iter is the amount of work
    est.fit(x, y)
  return est, time.perf_counter() - start


def score(ds: Dataset, est) -> float:
  """Test accuracy in percent, or test R^2."""
  value = float(est.score(ds.x_test, ds.y_test))
  return 100 * value if ds.score.endswith("%") else value


def run_config(ds: Dataset, solver: str, activation: str, repeats: int,
               predict_repeats: int) -> Dict:
  """Warm-up fits, `repeats` alternating timed fits, predict timing and scores of one config."""
  params = settings(ds, solver, activation)
  makers = {"mlp_jax": lambda: ds.ours(**params), "sklearn": lambda: ds.theirs(**params)}
  first = {lib: timed_fit(makers[lib], ds.x, ds.y)[1] for lib in LIBRARIES}
  fits: Dict[str, List[float]] = {lib: [] for lib in LIBRARIES}
  fitted = {}
  for _ in range(repeats):
    for lib in LIBRARIES:  # alternating, so both see the same machine load
      fitted[lib], seconds = timed_fit(makers[lib], ds.x, ds.y)
      fits[lib].append(seconds)
  out = {"dataset": ds.name, "solver": solver, "activation": activation,
         "settings": {k: (str(v) if isinstance(v, float) and math.isinf(v) else v)
                      for k, v in params.items()}}
  for lib, est in fitted.items():
    predict = common.time_call(lambda est=est: est.predict(ds.x_test), repeats=predict_repeats)
    out[lib] = {"first_fit_s": first[lib], "fit_s": common.summarize(fits[lib]),
                "predict_s": predict, "score": score(ds, est), "n_iter": int(est.n_iter_),
                "loss": float(est.loss_)}
  ours, theirs = out["mlp_jax"], out["sklearn"]
  out["fit_speedup"] = theirs["fit_s"]["median"] / ours["fit_s"]["median"]
  out["predict_speedup"] = theirs["predict_s"]["median"] / ours["predict_s"]["median"]
  out["score_diff"] = ours["score"] - theirs["score"]
  out["equal_score"] = bool(abs(out["score_diff"]) <= ds.equal)
  return out


def geomean(values: Sequence[float]) -> float:
  return float(np.exp(np.mean(np.log(values))))


def summary(results: List[Dict]) -> Dict:
  """Geometric-mean fit speedups by dataset, by (dataset, solver) and by solver; counts."""
  groups: Dict[str, List[float]] = {}
  for r in results:
    for key in (r["dataset"], f"{r['dataset']}/{r['solver']}", f"all/{r['solver']}"):
      groups.setdefault(key, []).append(r["fit_speedup"])
  fast_equal = [r for r in results if r["fit_speedup"] >= SPEEDUP and r["equal_score"]]
  return {"geomean_fit_speedup": {k: geomean(v) for k, v in groups.items()},
          "configs": len(results), "equal_score": sum(r["equal_score"] for r in results),
          f"fast_{SPEEDUP}x": sum(r["fit_speedup"] >= SPEEDUP for r in results),
          f"fast_{SPEEDUP}x_equal_score": len(fast_equal)}


def markdown(datasets: Dict[str, Dataset], results: List[Dict], summ: Dict, repeats: int,
             notes: List[str]) -> str:
  rows = []
  for r in results:
    ds, ours, theirs = datasets[r["dataset"]], r["mlp_jax"], r["sklearn"]
    fmt = (lambda v: f"{v:.2f}") if ds.score.endswith("%") else (lambda v: f"{v:.3f}")
    rows.append([r["dataset"], r["solver"], r["activation"], f"{ours['fit_s']['median']:.3f}",
                 f"{theirs['fit_s']['median']:.3f}", f"{r['fit_speedup']:.2f}",
                 fmt(ours["score"]), fmt(theirs["score"]), f"{r['score_diff']:+.3f}",
                 "yes" if r["equal_score"] else "**no**", f"{r['predict_speedup']:.2f}",
                 f"{ours['first_fit_s']:.2f}", f"{ours['n_iter']}/{theirs['n_iter']}"])
  work = "; ".join(f"{d.name}: {len(d.y)} training and {len(d.y_test)} test rows, hidden "
                   f"{d.hidden}, {d.epochs} epochs (adam {d.rates['adam']:g}, sgd "
                   f"{d.rates['sgd']:g}), lbfgs max_iter {d.lbfgs_iter}, score {d.score}, "
                   f"equal within {d.equal:g}" for d in datasets.values())
  geo = summ["geomean_fit_speedup"]
  summary_rows = [[k, f"{v:.2f}"] for k, v in geo.items()]
  lines = [f"### mlp_jax vs scikit-learn estimators, same settings (alpha 1e-4, batch auto, "
           f"random_state 0, float32, {repeats} alternating fit(s) each)\n",
           work + ".\n",
           common.markdown_table(
               ["dataset", "solver", "activation", "ours fit s", "sklearn fit s",
                "fit speedup (sklearn/ours)", "ours score", "sklearn score",
                "score diff (ours-sklearn)", "equal score", "predict speedup",
                "ours first fit s", "n_iter_ ours/sklearn"], rows),
           "\n### Geometric-mean fit speedup (sklearn/ours)\n",
           common.markdown_table(["group", "geomean fit speedup"], summary_rows),
           f"\n{summ[f'fast_{SPEEDUP}x_equal_score']} of {summ['configs']} configurations fit "
           f">= {SPEEDUP}x faster at equal score ({summ[f'fast_{SPEEDUP}x']} at >= {SPEEDUP}x "
           f"whatever the score; {summ['equal_score']} at equal score)."]
  if notes:
    lines += ["", *[f"- {n}" for n in notes]]
  return "\n".join(lines)


def main():
  parser = common.add_args(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
  parser.add_argument("--datasets", nargs="+", choices=DATASETS, default=None,
                      help="default: both")
  parser.add_argument("--solvers", nargs="+", choices=SOLVERS, default=list(SOLVERS))
  parser.add_argument("--activations", nargs="+", choices=ACTIVATIONS, default=None,
                      help="default: all four (--quick: relu)")
  parser.add_argument("--repeats", type=int, default=2)
  parser.add_argument("--epochs-per-call", type=int, default=None,
                      help="ours: epochs per compiled call of a small fit (the library's "
                           f"CHUNK_EPOCHS, {estimator_fitting.CHUNK_EPOCHS}); 1 times it "
                           "without running epochs in a row (results: estimator_epochs_per_call*)")
  args = parser.parse_args()
  name = "estimator"
  if args.epochs_per_call is not None:
    estimator_fitting.CHUNK_EPOCHS = args.epochs_per_call
    name = f"estimator_epochs_per_call{args.epochs_per_call}"
  names = args.datasets or list(DATASETS)
  activations = args.activations or (["relu"] if args.quick else list(ACTIVATIONS))
  repeats = 1 if args.quick else args.repeats
  predict_repeats = 3 if args.quick else PREDICT_REPEATS
  datasets = {name: LOADERS[name](args.quick) for name in names}
  notes = [n for n in (common.busy_note(),) if n]
  start_all = time.perf_counter()
  results = []
  for ds in datasets.values():
    for solver in args.solvers:
      for activation in activations:
        r = run_config(ds, solver, activation, repeats, predict_repeats)
        results.append(r)
        print(f"  {ds.name} {solver} {activation}: speedup {r['fit_speedup']:.2f}, score diff "
              f"{r['score_diff']:+.3f}", flush=True)
  summ = summary(results)
  notes.append(f"whole run {time.perf_counter() - start_all:.0f} s")
  if args.quick:
    notes.append(f"--quick: the first {QUICK_ROWS} USPS training rows, {QUICK_EPOCHS} epochs / "
                 f"{QUICK_LBFGS} lbfgs iterations, one activation, 1 repeat; only a smoke test")
  notes.append(f"ours: {estimator_fitting.CHUNK_EPOCHS} epoch(s) per compiled call of a small fit")
  payload = {"machine": common.machine(sklearn=sklearn.__version__), "quick": args.quick,
             "repeats": repeats, "predict_repeats": predict_repeats,
             "datasets": {d.name: {"train_rows": len(d.y), "test_rows": len(d.y_test),
                                   "hidden": list(d.hidden), "epochs": d.epochs,
                                   "lbfgs_iter": d.lbfgs_iter, "rates": d.rates,
                                   "score": d.score, "equal_within": d.equal}
                          for d in datasets.values()},
             "summary": summ, "notes": notes, "results": results}
  common.write_results(common.result_name(name, args.quick), payload,
                       markdown(datasets, results, summ, repeats, notes), args.out)


if __name__ == "__main__":
  main()
