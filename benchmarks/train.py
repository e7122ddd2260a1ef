"""Time to accuracy: the source's network (one hidden layer of 256 ReLU units) trained with Adam
by mlp_jax (a per-step loop and a scanned epoch), scikit-learn's MLPClassifier, the hand-written
NumPy backprop and PyTorch eager autograd, on the same data, epochs, batch size and initial
weights (scikit-learn's are overwritten with them too).

Per epoch it records the epoch's wall time, the cumulative training time and the test accuracy
(evaluated with the clock stopped, by one NumPy forward pass for every implementation), so
time-to-accuracy curves can be drawn. Warm-up (JIT compilation, first touches) runs on copies
before the clock starts and is reported separately. A sweep of batch sizes compares samples/s.

    python benchmarks/train.py [--quick] [--usps PATH] [--out DIR] [--no-torch]
"""

import argparse
import os
import sys
import time
import warnings

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
import numpy_backprop as nb  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

import mlp_jax as mj  # noqa: E402
from mlp_jax.io import data  # noqa: E402
from mlp_jax.training import epoch, step  # noqa: E402

HIDDEN = 256
LR = 1e-3
L2 = 1e-4
BATCH = 128
SWEEP = (32, 128, 512)
EPOCHS = {"digits": 40, "usps": 20}
QUICK_EPOCHS = {"digits": 3, "usps": 2}
SWEEP_EPOCHS, QUICK_SWEEP_EPOCHS = 5, 1


def to_jax(params_np):
  return tuple(mj.Dense(jnp.asarray(w), jnp.asarray(b)) for w, b in params_np)


def copy_params(params_np):
  return [(w.copy(), b.copy()) for w, b in params_np]


class JaxStep:
  """mlp_jax per-step loop: `make_train_step` (jitted, donating) fed NumPy minibatches of a
  host-side permutation, as a user's Python loop would."""
  name = "mlp_jax step loop"

  def __init__(self, init, x, y, batch_size, seed):
    self.init, self.x, self.y, self.batch_size = init, x, y, batch_size
    self.opt = optax.adam(LR)
    self.step = step.make_train_step(self.opt, L2)
    self.rng = np.random.default_rng(seed)

  def warmup(self):
    params = to_jax(self.init)
    state = self.opt.init(params)
    for size in {self.batch_size, self.x.shape[0] % self.batch_size} - {0}:  # both shapes
      params, state, loss = self.step(params, state, self.x[:size], self.y[:size])
    jax.block_until_ready(loss)

  def start(self):
    self.params = to_jax(self.init)
    self.state = self.opt.init(self.params)
    jax.block_until_ready((self.params, self.state))

  def epoch(self, e):
    perm = self.rng.permutation(self.x.shape[0])
    losses = []
    for start in range(0, len(perm), self.batch_size):
      idx = perm[start:start + self.batch_size]
      self.params, self.state, loss = self.step(self.params, self.state, self.x[idx],
                                                self.y[idx])
      losses.append(loss)
    jax.block_until_ready(self.params)
    return losses

  def params_numpy(self):
    return nb.from_jax(self.params)


class JaxEpoch(JaxStep):
  """mlp_jax scanned epoch: `make_epoch`, the whole shuffled epoch in one compiled call, data
  resident on the device, the short last batch masked."""
  name = "mlp_jax scanned epoch"

  def __init__(self, init, x, y, batch_size, seed):
    super().__init__(init, x, y, batch_size, seed)
    self.seed = seed
    self.epoch_fn = epoch.make_epoch(self.opt, batch_size, L2)
    self.xd, self.yd = jnp.asarray(x), jnp.asarray(y)

  def warmup(self):
    params = to_jax(self.init)
    out = self.epoch_fn(params, self.opt.init(params), self.xd, self.yd,
                        epoch.epoch_key(self.seed + 1, 0))
    jax.block_until_ready(out)

  def epoch(self, e):
    self.params, self.state, stats = self.epoch_fn(self.params, self.state, self.xd, self.yd,
                                                   epoch.epoch_key(self.seed, e))
    jax.block_until_ready(self.params)
    return stats.losses


class NumpyBackprop:
  """The hand-written NumPy backprop (numpy_backprop.py) with its NumPy Adam."""
  name = "numpy backprop"

  def __init__(self, init, x, y, batch_size, seed):
    self.init, self.x, self.y, self.batch_size = init, x, y, batch_size
    self.rng = np.random.default_rng(seed)

  def warmup(self):
    params = copy_params(self.init)
    opt = nb.Adam(params, LR)
    for size in {self.batch_size, self.x.shape[0] % self.batch_size} - {0}:
      _, grads = nb.loss_and_grads(params, self.x[:size], self.y[:size], L2)
      opt.update(params, grads)

  def start(self):
    self.params = copy_params(self.init)
    self.opt = nb.Adam(self.params, LR)

  def epoch(self, e):
    perm = self.rng.permutation(self.x.shape[0])
    losses = []
    for start in range(0, len(perm), self.batch_size):
      idx = perm[start:start + self.batch_size]
      loss, grads = nb.loss_and_grads(self.params, self.x[idx], self.y[idx], L2)
      self.opt.update(self.params, grads)
      losses.append(loss)
    return losses

  def params_numpy(self):
    return self.params


class Sklearn:
  """scikit-learn MLPClassifier(relu, adam, alpha=lambda), one `partial_fit` per epoch (it
  shuffles; its penalty alpha/(2 * batch) sum ||W||^2 is that of (E6)), started from the same
  weights: after one warm-up call its coefs_ are overwritten and its Adam state dropped."""
  name = "scikit-learn MLPClassifier"

  def __init__(self, init, x, y, batch_size, seed):
    self.init, self.x, self.y, self.batch_size, self.seed = init, x, y, batch_size, seed
    self.classes = np.arange(init[-1][0].shape[1])

  def _new(self):
    from sklearn.neural_network import MLPClassifier
    return MLPClassifier(hidden_layer_sizes=(HIDDEN,), activation="relu", solver="adam",
                         learning_rate_init=LR, alpha=L2, batch_size=self.batch_size,
                         shuffle=True, max_iter=1, random_state=np.random.RandomState(self.seed))

  def warmup(self):
    with warnings.catch_warnings():
      warnings.simplefilter("ignore")
      self._new().partial_fit(self.x[:self.batch_size], self.y[:self.batch_size],
                             classes=self.classes)

  def start(self):
    self.clf = self._new()
    with warnings.catch_warnings():
      warnings.simplefilter("ignore")
      self.clf.partial_fit(self.x[:1], self.y[:1], classes=self.classes)  # allocates its layers
    self.clf.coefs_ = [w.copy() for w, _ in self.init]
    self.clf.intercepts_ = [b.copy() for _, b in self.init]
    del self.clf._optimizer  # the next call builds a fresh Adam on the weights above
    self.clf.loss_curve_ = []

  def epoch(self, e):
    with warnings.catch_warnings():
      warnings.simplefilter("ignore")
      self.clf.partial_fit(self.x, self.y)
    return [self.clf.loss_]

  def params_numpy(self):
    return list(zip(self.clf.coefs_, self.clf.intercepts_))


class Torch:
  """PyTorch eager: nn.Sequential(Linear, ReLU, Linear), torch.optim.Adam, cross-entropy plus
  the penalty of (E6), the same initial weights."""
  name = "torch eager"
  torch = None

  def __init__(self, init, x, y, batch_size, seed):
    self.init, self.batch_size = init, batch_size
    torch = self.torch
    self.x, self.y = torch.from_numpy(x), torch.from_numpy(y.astype(np.int64))
    self.rng = np.random.default_rng(seed)

  def _train_step(self, model, opt, idx):
    opt.zero_grad(set_to_none=True)
    loss = common.torch_loss(self.torch, model, self.x[idx], self.y[idx], L2)
    loss.backward()
    opt.step()
    return loss.detach()

  def warmup(self):
    model = common.torch_mlp(self.torch, self.init)
    opt = self.torch.optim.Adam(model.parameters(), lr=LR)
    for size in {self.batch_size, self.x.shape[0] % self.batch_size} - {0}:
      self._train_step(model, opt, self.torch.arange(size))

  def start(self):
    self.model = common.torch_mlp(self.torch, self.init)
    self.opt = self.torch.optim.Adam(self.model.parameters(), lr=LR)

  def epoch(self, e):
    perm = self.torch.from_numpy(self.rng.permutation(self.x.shape[0]))
    return [self._train_step(self.model, self.opt, perm[start:start + self.batch_size])
            for start in range(0, len(perm), self.batch_size)]

  def params_numpy(self):
    return common.torch_params_numpy(self.torch, self.model)


def train(runner_cls, init, prepared, batch_size, epochs, seed=0):
  """Warm-up, then `epochs` timed epochs from `init`, each followed by an untimed evaluation."""
  train_set, test = prepared.train, prepared.test
  runner = runner_cls(init, train_set.x, train_set.y, batch_size, seed)
  start = time.perf_counter()
  runner.warmup()
  warmup = time.perf_counter() - start
  runner.start()
  records, total = [], 0.0
  for e in range(epochs):
    start = time.perf_counter()
    losses = runner.epoch(e)
    seconds = time.perf_counter() - start
    total += seconds
    loss = float(np.mean([float(v) for v in np.asarray(losses, dtype=object).ravel()]))
    acc = nb.accuracy(runner.params_numpy(), test.x, test.y)
    records.append({"epoch": e + 1, "seconds": seconds, "cumulative_seconds": total,
                    "train_loss": loss, "test_acc": acc})
  times = common.summarize([r["seconds"] for r in records])
  n = train_set.x.shape[0]
  return {"impl": runner.name, "batch_size": batch_size, "train_examples": n,
          "test_examples": int(test.x.shape[0]), "epochs_run": epochs, "warmup_seconds": warmup,
          "compile_estimate_seconds": max(0.0, warmup - times["median"])
          if runner_cls is JaxEpoch else warmup,
          "epoch_seconds": times, "wall_seconds": total, "epochs_per_second": epochs / total,
          "samples_per_second": n * epochs / total,
          "samples_per_second_median_epoch": n / times["median"],
          "final_test_acc": records[-1]["test_acc"],
          "best_test_acc": max(r["test_acc"] for r in records), "epochs": records}


def time_to(records, target):
  """Cumulative training seconds until test accuracy first reached `target`, or None."""
  return next((r["cumulative_seconds"] for r in records if r["test_acc"] >= target), None)


def run_dataset(name, prepared, runners, epochs, sweep_epochs, sweep, seed):
  sizes = (prepared.train.x.shape[1], HIDDEN, prepared.num_classes)
  init = nb.from_jax(mj.init_params(jax.random.PRNGKey(seed), sizes))
  main = []
  for cls in runners:
    main.append(dict(train(cls, init, prepared, BATCH, epochs, seed), dataset=name))
    r = main[-1]
    print(f"  {name} {r['impl']}: {r['epochs_per_second']:.2f} epochs/s, "
          f"test {100 * r['final_test_acc']:.2f}%", flush=True)
  target = min(r["best_test_acc"] for r in main)
  for r in main:
    r["target_acc"], r["seconds_to_target"] = target, time_to(r["epochs"], target)
  swept = []
  for batch_size in sweep:
    if batch_size == BATCH:
      continue
    for cls in runners:
      swept.append(dict(train(cls, init, prepared, batch_size, sweep_epochs, seed),
                        dataset=name))
  return main, swept


def markdown(main, swept, notes):
  lines = []
  for dataset in dict.fromkeys(r["dataset"] for r in main):
    rows = [r for r in main if r["dataset"] == dataset]
    r0 = rows[0]
    lines += [f"\n### {dataset}: {r0['train_examples']} train / {r0['test_examples']} test rows, "
              f"batch {BATCH}, {r0['epochs_run']} epochs, Adam lr={LR:g}, lambda={L2:g}\n",
              common.markdown_table(
                  ["implementation", "warm-up s", "epoch ms median [p10-p90]", "epochs/s",
                   "samples/s (whole run)", f"wall s ({r0['epochs_run']} epochs)", "final test acc %",
                   "best test acc %", f"s to {100 * r0['target_acc']:.2f}%"],
                  [[r["impl"], f"{r['warmup_seconds']:.2f}", common.ms_spread(r["epoch_seconds"]),
                    f"{r['epochs_per_second']:.1f}", f"{r['samples_per_second']:.0f}",
                    f"{r['wall_seconds']:.2f}", f"{100 * r['final_test_acc']:.2f}",
                    f"{100 * r['best_test_acc']:.2f}",
                    "-" if r["seconds_to_target"] is None else f"{r['seconds_to_target']:.2f}"]
                   for r in rows])]
  all_runs = main + swept
  batches = sorted({r["batch_size"] for r in all_runs})
  if len(batches) > 1:
    rows = []
    for dataset in dict.fromkeys(r["dataset"] for r in all_runs):
      for impl in dict.fromkeys(r["impl"] for r in all_runs):
        at = {r["batch_size"]: r for r in all_runs if r["dataset"] == dataset and r["impl"] == impl}
        rows.append([dataset, impl] + [f"{at[b]['samples_per_second_median_epoch']:.0f}"
                                       if b in at else "-" for b in batches])
    lines += ["\n### Samples/s by batch size (median epoch)\n",
              common.markdown_table(["dataset", "implementation"] + [f"B={b}" for b in batches],
                                    rows)]
  if notes:
    lines += ["", *[f"- {n}" for n in notes]]
  return "\n".join(lines).lstrip()


def main():
  parser = common.add_args(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
  parser.add_argument("--usps", default=common.USPS_DEFAULT,
                      help="a USPS file (usps.h5) instead of the bundled copy")
  parser.add_argument("--no-torch", action="store_true", help="skip the PyTorch peer")
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args()
  notes = []
  runners = [JaxStep, JaxEpoch, NumpyBackprop, Sklearn]
  torch, why = (None, "PyTorch skipped (--no-torch)") if args.no_torch else \
      common.try_import_torch()
  if torch is None:
    notes.append(why)
  else:
    Torch.torch = torch
    runners.append(Torch)
  busy = common.busy_note()
  if busy:
    notes.append(busy)
  datasets = [("digits", dict(dataset="digits")), ("usps", dict(dataset="usps", path=args.usps))]
  epochs = QUICK_EPOCHS if args.quick else EPOCHS
  main_runs, swept = [], []
  for name, spec in datasets:
    prepared = data.prepare(val_fraction=0, seed=args.seed, **spec)
    # quick: the batch-size sweep on the small digits set only
    sweep = SWEEP if (not args.quick or name == "digits") else ()
    done, more = run_dataset(name, prepared, runners, epochs[name],
                             QUICK_SWEEP_EPOCHS if args.quick else SWEEP_EPOCHS, sweep,
                             args.seed)
    main_runs += done
    swept += more
  if args.quick:
    notes.append("--quick: few epochs; timings are only a smoke test")
  import sklearn
  extra = {"sklearn": sklearn.__version__}
  if torch is not None:
    extra.update(torch=torch.__version__, torch_threads=torch.get_num_threads())
  payload = {"machine": common.machine(**extra), "quick": args.quick, "lr": LR, "l2": L2,
             "hidden": HIDDEN, "batch_size": BATCH, "sweep": list(SWEEP), "notes": notes,
             "results": main_runs, "sweep_results": swept}
  common.write_results(common.result_name("train", args.quick), payload,
                       markdown(main_runs, swept, notes), args.out)


if __name__ == "__main__":
  main()
