"""`mj.MLPClassifier` vs scikit-learn's `MLPClassifier` on USPS at the same settings, in one run.

Both: 256 inputs (globally scaled USPS, the bundled copy), one hidden layer of 256 ReLU units,
softmax output, alpha = lambda = 1e-4, Adam at 1e-3 (constant), batch 128, shuffled, and
exactly `--epochs` epochs (scikit-learn's `tol` stop is switched off: tol=0 and
n_iter_no_change=epochs). Each estimator is first fitted once untimed-for-the-ratio (the "first
fit" column: JAX's start-up and first compilations, scikit-learn's imports); then fits alternate
between the two, `--repeats` times each. Ours still compiles its epoch in every fit (a fresh
estimator), which the fit times include. Predict time is the median over repeats on the 2007 test
rows. The table gives medians and the ratios.

    python benchmarks/estimator.py [--quick] [--epochs 30] [--repeats 3]
"""

import argparse
import os
import sys
import time
import warnings

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

from sklearn.exceptions import ConvergenceWarning  # noqa: E402
from sklearn.neural_network import MLPClassifier as SkMLP  # noqa: E402

import mlp_jax as mj  # noqa: E402


def estimators(epochs: int, seed: int):
  shared = dict(hidden_layer_sizes=(256,), alpha=1e-4, batch_size=128, learning_rate_init=1e-3,
                max_iter=epochs, solver="adam", shuffle=True, random_state=seed)
  return {"mlp_jax": lambda: mj.MLPClassifier(**shared),
          "scikit-learn": lambda: SkMLP(**shared, tol=0.0, n_iter_no_change=epochs)}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  common.add_args(parser)
  parser.add_argument("--epochs", type=int, default=30)
  parser.add_argument("--repeats", type=int, default=3)
  args = parser.parse_args()
  epochs, repeats = (2, 1) if args.quick else (args.epochs, args.repeats)
  prepared = mj.data.prepare("usps", val_fraction=0.0)  # scaling "global"
  (x, y), (xt, yt) = prepared.train, prepared.test
  makers = estimators(epochs, seed=0)
  fits = {name: [] for name in makers}
  fitted, first = {}, {}
  for name, make in makers.items():
    start = time.perf_counter()
    with warnings.catch_warnings():
      warnings.simplefilter("ignore", ConvergenceWarning)
      make().fit(x, y)
    first[name] = time.perf_counter() - start
  for _ in range(repeats):
    for name, make in makers.items():  # alternating, so both see the same machine load
      est = make()
      start = time.perf_counter()
      with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est.fit(x, y)
      fits[name].append(time.perf_counter() - start)
      fitted[name] = est
  rows, results = [], {}
  for name, est in fitted.items():
    predict = common.time_call(lambda: est.predict(xt), repeats=20)
    results[name] = {"first_fit_s": first[name], "fit_s": common.summarize(fits[name]),
                     "predict_s": predict,
                     "test_acc": float(est.score(xt, yt)), "epochs": int(est.n_iter_)}
  ours, theirs = results["mlp_jax"], results["scikit-learn"]
  for name, r in results.items():
    rows.append([name, f"{r['first_fit_s']:.2f}", f"{r['fit_s']['median']:.2f}",
                 common.ms(r["predict_s"]["median"]),
                 f"{100 * r['test_acc']:.2f}", r["epochs"]])
  fit_ratio = theirs["fit_s"]["median"] / ours["fit_s"]["median"]
  predict_ratio = theirs["predict_s"]["median"] / ours["predict_s"]["median"]
  md = common.markdown_table(["estimator", "first fit s", "fit s (median)",
                              "predict ms (2007 rows)",
                              "test acc %", "epochs"], rows)
  md += (f"\n\nmlp_jax is {fit_ratio:.2f}x faster to fit and {predict_ratio:.2f}x faster to "
         f"predict than scikit-learn's MLPClassifier ({repeats} alternating fits each).")
  print(md)
  common.write_results(common.result_name("estimator", args.quick),
                       {"machine": common.machine(), "quick": args.quick, "epochs": epochs,
                        "repeats": repeats, "results": results, "fit_speedup": fit_ratio,
                        "predict_speedup": predict_ratio}, md, args.out)


if __name__ == "__main__":
  main()
