"""Full-batch L-BFGS on USPS two ways: SciPy's L-BFGS-B (what `solver="lbfgs"` runs) against
`optax.lbfgs` compiled whole under one `jax.lax.while_loop`; why the estimators use SciPy.

    python benchmarks/lbfgs.py [--quick] [--iterations 50 100 200] [--repeats 2] [--out DIR]

Problem: the objective (E6) of a 256-256-10 network (ReLU hidden layer, softmax cross-entropy)
over the whole USPS training set (7291 rows, the bundled copy, globally scaled), lambda = 1e-4
(scikit-learn's alpha), float32; loss and gradient from `objective_and_grads` ((E7)-(E12)),
never `jax.grad`. Both start from the same Glorot-uniform weights, scikit-learn's draw from
`np.random.RandomState(0)` (`estimator_fitting.initial_weights`).

  scipy: `training.lbfgs.minimize_lbfgs`: SciPy's L-BFGS-B (history 10, its Wolfe line search)
         in a host loop, one compiled loss-and-gradient call per evaluation, parameters sent as
         a float64 vector, the BLAS that L-BFGS-B's own vector work runs through held to one
         thread (as `minimize_lbfgs` does); tol (gtol) 0, so it stops at max_iter or when SciPy
         sees no further decrease.
  scipy_blas_threads: the same SciPy call on the same `lbfgs.loss_and_grad_fn`, with BLAS left
         at its default threads: why `minimize_lbfgs` holds it to one (its threads contend
         with XLA's for the cores).
  optax: `optax.lbfgs()` (history 10, its default zoom line search, at most 20 steps) inside
         one jitted `lax.while_loop` of N iterations. The line search differentiates its
         `value_fn` with `jax.value_and_grad`; here `value_fn` is a `jax.custom_vjp` whose
         forward pass is `objective_and_grads` (the gradient kept as residual) and whose
         backward pass scales that gradient, so every evaluation is one analytic loss-and-
         gradient. `optax.value_and_grad_from_state` reuses the line search's last value and
         gradient, so evaluations = 1 + the line-search steps summed over iterations.

Each method first runs 1 iteration twice; "compile s" is the first of those less the second
(what only a first run pays: for optax compiling the whole optimisation, one program for every
N; for SciPy compiling the loss-and-gradient and the eager packing ops). Then, for each N of
--iterations, each method runs N iterations from the initial weights, --repeats times; wall
time is the median, so without compilation. Reported: wall s, iterations done, evaluations,
time per iteration and per evaluation, the final objective (E6) and training accuracy
(`mj.evaluate`), SciPy's stop message / the optax line searches that ended without sufficient
decrease. --quick: 5 iterations on the first 500 rows, one repeat.
"""

import argparse
import os
import sys
import time
from typing import Dict, List, NamedTuple, Tuple

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
import scipy  # noqa: E402

import mlp_jax as mj  # noqa: E402
from mlp_jax.core.backprop import objective_and_grads  # noqa: E402
from mlp_jax.core.model import Dense  # noqa: E402
from mlp_jax.tools.estimator_fitting import initial_weights  # noqa: E402
from mlp_jax.training import lbfgs  # noqa: E402

SIZES = (256, 256, 10)
L2 = 1e-4
ITERATIONS = (50, 100, 200)
QUICK_ITERATIONS, QUICK_ROWS = (5,), 500


class Run(NamedTuple):
  """One optimisation: final parameters, iterations done, loss-and-gradient evaluations."""
  params: mj.Params
  iterations: int
  evaluations: int
  note: str


def start_params() -> mj.Params:
  """scikit-learn's Glorot-uniform initial weights for random_state 0, float32."""
  coefs, intercepts = initial_weights(np.random.RandomState(0), list(SIZES), "relu", np.float32)
  return tuple(Dense(jnp.asarray(w), jnp.asarray(b)) for w, b in zip(coefs, intercepts))


# ------------------------------------------------------------------------------------ SciPy

def run_scipy(params: mj.Params, x: jax.Array, y: jax.Array, iterations: int) -> Run:
  """SciPy's L-BFGS-B for at most `iterations` iterations, gtol 0."""
  result = lbfgs.minimize_lbfgs(params, x, y, l2=L2, max_iter=iterations, tol=0.0)
  return Run(result.params, result.iterations, result.evaluations, result.message)


def run_scipy_blas_threads(params: mj.Params, x: jax.Array, y: jax.Array,
                           iterations: int) -> Run:
  """`run_scipy` with BLAS at its default threads: SciPy's L-BFGS-B called directly on the same
  compiled loss-and-gradient, as `minimize_lbfgs` calls it but outside its one-thread limit."""
  import scipy.optimize
  f = lbfgs.loss_and_grad_fn(x, y, L2, SIZES)
  res = scipy.optimize.minimize(f, lbfgs.pack(params), method="L-BFGS-B", jac=True,
                                options={"maxiter": iterations, "maxfun": 15000, "gtol": 0.0})
  return Run(lbfgs.unpack(res.x, SIZES, params[0].w.dtype), int(res.nit), int(res.nfev),
             str(res.message))


# ------------------------------------------------------------------------------------ optax

def analytic_value_fn(x: jax.Array, y: jax.Array, l2: jax.Array):
  """The objective (E6) of params as a function that `jax.value_and_grad` differentiates by the
  analytic gradient: forward `objective_and_grads` (gradient saved), backward g * gradient."""

  @jax.custom_vjp
  def value_fn(params):
    return objective_and_grads(params, x, y, l2)[0]

  def forward(params):
    return objective_and_grads(params, x, y, l2)

  def backward(grads, g):
    return (jax.tree.map(lambda t: g * t, grads),)

  value_fn.defvjp(forward, backward)
  return value_fn


@jax.jit
def _optax_lbfgs(params: mj.Params, x: jax.Array, y: jax.Array, l2: jax.Array,
                 iterations: jax.Array) -> Tuple[mj.Params, jax.Array, jax.Array, jax.Array]:
  """`iterations` (a traced int) of optax.lbfgs under one while_loop: (params, iterations,
  evaluations, iterations whose line search ended without sufficient decrease)."""
  solver = optax.lbfgs()
  value_fn = analytic_value_fn(x, y, l2)
  value_and_grad = optax.value_and_grad_from_state(value_fn)

  def body(carry):
    params, state, k, evals, failed = carry
    value, grad = value_and_grad(params, state=state)
    updates, state = solver.update(grad, state, params, value=value, grad=grad,
                                   value_fn=value_fn)
    params = optax.apply_updates(params, updates)
    steps = optax.tree.get(state, "num_linesearch_steps")
    bad = optax.tree.get(state, "decrease_error") > 0
    return params, state, k + 1, evals + steps, failed + bad.astype(jnp.int32)

  zero = jnp.asarray(0, jnp.int32)
  # evaluations start at 1: value_and_grad_from_state evaluates at the start (the state's
  # value is inf), then reuses the line search's last evaluation
  carry = (params, solver.init(params), zero, zero + 1, zero)
  params, _, k, evals, failed = jax.lax.while_loop(lambda c: c[2] < iterations, body, carry)
  return params, k, evals, failed


def optax_args(params, x, y, iterations: int):
  return params, x, y, jnp.asarray(L2, x.dtype), jnp.asarray(iterations, jnp.int32)


def run_optax(params: mj.Params, x: jax.Array, y: jax.Array, iterations: int) -> Run:
  params, k, evals, failed = jax.block_until_ready(
      _optax_lbfgs(*optax_args(params, x, y, iterations)))
  note = f"{int(failed)} line search(es) without sufficient decrease"
  return Run(params, int(k), int(evals), note)


# ------------------------------------------------------------------------------- the tables

RUNNERS = {"scipy": run_scipy, "scipy_blas_threads": run_scipy_blas_threads,
           "optax": run_optax}


def compile_seconds(method: str, params, x, y) -> float:
  """What the first run pays once: a first 1-iteration run (compiling, for optax the whole
  optimisation, for SciPy the loss-and-gradient and the packing) less a second one."""
  times = []
  for _ in range(2):
    start = time.perf_counter()
    jax.block_until_ready(RUNNERS[method](params, x, y, 1).params)
    times.append(time.perf_counter() - start)
  return times[0] - times[1]


def measure(method: str, params, x, y, iterations: int, repeats: int) -> Dict:
  """`repeats` timed runs of N iterations from `params`; the last run's outcome."""
  times: List[float] = []
  for _ in range(repeats):
    start = time.perf_counter()
    run = RUNNERS[method](params, x, y, iterations)
    jax.block_until_ready(run.params)
    times.append(time.perf_counter() - start)
  loss, acc = mj.evaluate(run.params, x, y, l2=L2)
  wall = common.summarize(times)
  return {"method": method, "max_iter": iterations, "wall_s": wall,
          "iterations": run.iterations, "evaluations": run.evaluations,
          "ms_per_iteration": 1e3 * wall["median"] / max(run.iterations, 1),
          "ms_per_evaluation": 1e3 * wall["median"] / max(run.evaluations, 1),
          "loss": float(loss), "train_acc": float(acc), "note": run.note}


def markdown(payload: Dict, notes: List[str]) -> str:
  rows = [[r["max_iter"], r["method"], f"{r['wall_s']['median']:.3f}", r["iterations"],
           r["evaluations"], f"{r['ms_per_iteration']:.2f}", f"{r['ms_per_evaluation']:.2f}",
           f"{r['loss']:.6f}", f"{100 * r['train_acc']:.2f}", r["note"]]
          for r in payload["results"]]
  compile_s = payload["compile_s"]
  lines = [f"### Full-batch L-BFGS, USPS {payload['rows']} rows, 256-256-10 ReLU softmax, "
           f"lambda {L2:g}, float32: SciPy L-BFGS-B vs optax.lbfgs in one while_loop\n",
           common.markdown_table(["N", "method", "wall s (median)", "iterations", "evaluations",
                                  "ms / iteration", "ms / evaluation", "final loss (E6)",
                                  "train acc %", "stop / line search"], rows),
           f"\nCompile s (not in the wall times): scipy {compile_s['scipy']:.2f} (the "
           f"loss-and-gradient), optax {compile_s['optax']:.2f} (the whole optimisation, one "
           f"program for every N). Initial loss {payload['initial_loss']:.6f}; "
           f"{payload['repeats']} run(s) per row."]
  if notes:
    lines += ["", *[f"- {n}" for n in notes]]
  return "\n".join(lines)


def main():
  parser = common.add_args(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
  parser.add_argument("--iterations", type=int, nargs="+", default=list(ITERATIONS))
  parser.add_argument("--repeats", type=int, default=2)
  args = parser.parse_args()
  iterations, repeats = ((QUICK_ITERATIONS, 1) if args.quick
                         else (tuple(args.iterations), args.repeats))
  prepared = mj.data.prepare("usps", val_fraction=0.0)  # scaling "global"
  x, y = prepared.train
  if args.quick:
    x, y = x[:QUICK_ROWS], y[:QUICK_ROWS]
  x, y = jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.int32)
  params = start_params()
  notes = [n for n in (common.busy_note(),) if n]
  compile_s = {method: compile_seconds(method, params, x, y) for method in RUNNERS}
  results = []
  for n in iterations:
    for method in RUNNERS:
      results.append(measure(method, params, x, y, n, repeats))
      print(f"  N={n} {method}: {results[-1]['wall_s']['median']:.2f} s", flush=True)
  if args.quick:
    notes.append(f"--quick: {QUICK_ITERATIONS[0]} iterations on the first {QUICK_ROWS} rows; "
                 "only a smoke test")
  payload = {"machine": common.machine(scipy=scipy.__version__), "quick": args.quick,
             "rows": int(x.shape[0]), "sizes": list(SIZES), "l2": L2, "dtype": "float32",
             "iterations": list(iterations), "repeats": repeats, "compile_s": compile_s,
             "initial_loss": float(mj.evaluate(params, x, y, l2=L2)[0]), "notes": notes,
             "results": results}
  common.write_results(common.result_name("lbfgs", args.quick), payload,
                       markdown(payload, notes), args.out)


if __name__ == "__main__":
  main()
