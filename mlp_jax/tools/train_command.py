"""`mlp-jax train`: the command line's settings checked, the data prepared, `mj.fit` run into a
run folder (`run_folder`), and the finished run reported.

Heavy modules (JAX, the data) are imported inside the functions: `mlp-jax --help` stays fast,
and `cli.main` sets up its signal handling before any of them loads.
"""

from __future__ import annotations

import os
import sys

from mlp_jax.errors import printable
from mlp_jax.tables import text_block
from mlp_jax.tools import interrupts
from mlp_jax.tools.run_folder import NONFINITE
from mlp_jax.tools.train_options import (fit_settings, network_option, train_config,
                                         with_planned_noise)

# What the losses a run records mean (metrics.json says it beside them).
LOSS_DEFINITION = ("train_loss (mean over the epoch's steps), val_loss and test_loss are the "
                   "objective (E6) at the run's --l2: mean cross-entropy + l2/(2m) * sum of "
                   "squared weights, as mj.evaluate(params, x, y, l2) gives; l2=0 there is the "
                   "cross-entropy alone")


def cmd_train(args, signals) -> int:
  import time

  import jax
  import mlp_jax as mj
  from mlp_jax.io import data
  from mlp_jax.tools.run_folder import RunFolder, default_out
  from mlp_jax.training import multihost

  config = train_config(args)
  mesh = _mesh(args)
  primary = multihost.is_primary()  # only process 0 writes files
  if args.resume and args.out is None:
    raise mj.InputError("--resume: give the run's folder with --out")
  out = default_out(args.dataset) if args.out is None else args.out
  folder = RunFolder.open(out, resume=args.resume, overwrite=args.overwrite, primary=primary)
  splits = data.prepare(args.dataset, config["data"], val_fraction=args.val_fraction,
                        seed=args.split_seed, augment=args.augment,
                        num_samples=config["num_samples"],
                        scaling=args.scaling, shifts=config["shifts"])
  num_train = splits.train.x.shape[0]
  settings = fit_settings(args, config, splits)
  sizes = (splits.train.x.shape[1],) + tuple(args.hidden) + (splits.num_classes,)
  config.update(out=str(out), layer_sizes=list(sizes),
                devices=None if mesh is None else mesh.size,
                train_sha256=data.fingerprint(splits.train))
  done = folder.check_resume(config, args.epochs)
  if done is not None:
    print(printable(done))
    return 0
  if folder.saved is not None:
    print(f"resuming {printable(folder.checkpoint)} after epoch {folder.saved.state.epochs_done}")
  start = time.perf_counter()  # the session: calibration, training, report
  settings = with_planned_noise(settings, num_train, args.epochs, folder.saved)
  optimizer = mj.make_optimizer(args.optimizer, args.lr, schedule=args.schedule,
                                total_steps=args.epochs * mj.steps_per_epoch(num_train,
                                                                             args.batch_size))
  folder.start(config, {"scaler_mean": splits.scaler.mean, "scaler_scale": splits.scaler.scale})
  progress = _progress(args, folder, primary)
  resume_hint = f"continue with the same command and --resume --out {printable(out)}"

  def stopped_at_once() -> str:  # a second Ctrl-C or SIGTERM, in the middle of an epoch
    kept = (f"{printable(folder.checkpoint)} holds epoch {progress.saved_epochs}; {resume_hint}"
            if progress.saved_epochs else "no epoch had finished, so there is nothing to resume")
    return f"mlp-jax: {interrupts.word(signals.signum)} during epoch {progress.epochs + 1}; {kept}"

  try:
    with signals.graceful(stopped_at_once):
      result = mj.fit(
          mj.init_params(jax.random.PRNGKey(args.seed), sizes),
          (splits.train.x, splits.train.y), optimizer=optimizer, epochs=args.epochs,
          val=None if splits.val is None else (splits.val.x, splits.val.y), settings=settings,
          resume=None if folder.saved is None else folder.saved.state, mesh=mesh,
          on_epoch_end=progress, should_stop=signals.stop.is_set)
  except mj.NonFiniteError as err:
    raise _non_finite(err, folder, primary) from err
  finally:
    progress.close()
  if result.interrupted:
    print(f"mlp-jax: {interrupts.word(signals.signum)} after epoch {result.state.epochs_done} "
          f"of {args.epochs}; {printable(folder.checkpoint)} holds it; {resume_hint}",
          file=sys.stderr)
    return interrupts.exit_status(signals.signum)
  if primary:
    _report(args, config, splits, result, time.perf_counter() - start, folder, mesh)
  return 0


def _mesh(args):
  """The device mesh of `--devices` and the multi-process options, or None."""
  from mlp_jax.training import distributed, multihost
  if (args.coordinator or args.num_processes is not None or args.process_id is not None
      or os.environ.get(multihost.ENV_COORDINATOR)):
    coordinator = None if args.coordinator == "auto" else args.coordinator  # auto: JAX detects
    multihost.initialize_distributed(coordinator, args.num_processes, args.process_id,
                                     timeout_s=args.init_timeout)
    return distributed.make_mesh(args.devices or "all")  # several processes: one mesh over all
  return None if args.devices is None else distributed.make_mesh(args.devices)


def _progress(args, folder, primary):
  """The `on_epoch_end` of a run: save the run state, then advance the progress bar. Counts the
  epochs done and saved (read by the signal watcher when a run is stopped at once)."""
  bar = None
  done = 0 if folder.saved is None else folder.saved.state.epochs_done
  if not args.no_progress and primary and sys.stderr.isatty():  # no \r frames in log files
    from tqdm import tqdm
    bar = tqdm(total=args.epochs, initial=done, unit="epoch", desc="train", file=sys.stderr)

  class Progress:
    epochs = saved_epochs = done

    def __call__(self, state):
      self.epochs = state.epochs_done
      folder.save(state)
      self.saved_epochs = state.epochs_done
      if bar is not None:
        record = state.history[-1]
        extra = {"eps": f"{record['epsilon']:.2f}"} if "epsilon" in record else {}
        bar.set_postfix(loss=f"{record['train_loss']:.4f}",
                        val_acc=f"{100 * record.get('val_acc', float('nan')):.2f}%", **extra)
        bar.update(1)

    def close(self):
      if bar is not None:
        bar.close()

  return Progress()


def _non_finite(err, folder, primary):
  """The error to show for a run that produced NaN/Inf: the offending batch is written beside
  the checkpoint of the last good epoch, which stays."""
  if primary:
    folder.save_nonfinite(err)
  kept = (f"; last good checkpoint kept at {folder.checkpoint}" if folder.checkpoint.exists()
          else "; no epoch had finished, so no checkpoint was written")
  return err.with_message(f"{err} (offending batch in {folder.path}/{NONFINITE}{kept})")


def _report(args, config, splits, result, seconds, folder, mesh) -> None:
  """Test accuracy, metrics.json/.csv, plots and the summary table of a finished run."""
  import jax
  import mlp_jax as mj
  activation = network_option(config["activation"], len(args.hidden)).activation
  test_loss, test_acc = mj.evaluate(result.params, splits.test.x, splits.test.y, args.l2,
                                    activation=activation)
  counts = mj.confusion_matrix(result.params, splits.test.x, splits.test.y,
                               activation=activation)
  history, out = result.history, folder.path
  # fit's last record holds the whole run's epsilon, from its ledger at --delta.
  epsilon = history[-1]["epsilon"] if args.dp else None
  metrics = {"loss_definition": LOSS_DEFINITION, "config": config, "history": history,
             "best_epoch": result.best_epoch,
             "stopped_early": result.stopped_early, "test_loss": test_loss,
             "test_accuracy": test_acc, "train_seconds": seconds, "epsilon": epsilon,
             "train_examples": int(splits.train.x.shape[0]),
             "test_examples": int(splits.test.x.shape[0]),
             "device": str(jax.devices()[0].device_kind), "confusion": counts.tolist(),
             "num_devices": 1 if mesh is None else mesh.size,
             "num_processes": jax.process_count()}
  folder.save_metrics(metrics)
  try:
    folder.save_plots(history, counts)
  except mj.MissingDependencyError as e:
    print(f"mlp-jax: no plots: {printable(e)}", file=sys.stderr)
  last = history[-1]
  print(text_block([
      ["dataset", f"{args.dataset} ({splits.train.x.shape[0]} train, "
                  f"{0 if splits.val is None else splits.val.x.shape[0]} val, "
                  f"{splits.test.x.shape[0]} test)"],
      ["network", "-".join(map(str, config["layer_sizes"]))
                  + ("" if config["activation"] == "relu" else f" {config['activation']}")
                  + f", {args.optimizer} "
                  f"lr={args.lr:g}" + (" cosine" if args.schedule == "cosine" else "") + ", "
                  f"l2={args.l2:g}, batch={args.batch_size}"],
      ["epochs", f"{len(history)} (best {result.best_epoch}"
                 f"{', stopped early' if result.stopped_early else ''})"],
      ["train loss", f"{last['train_loss']:.4f}"],
      ["val accuracy", f"{100 * last['val_acc']:.2f}%" if "val_acc" in last else "-"],
      ["test accuracy", f"{100 * test_acc:.2f}%"],
  ] + ([["privacy", _privacy_line(config, result, epsilon)]] if args.dp else []) + [
      ["train time", f"{sum(r['epoch_seconds'] for r in history):.1f} s in epochs, "
                     f"{seconds:.1f} s this session"],
      ["output", printable(out)],
  ]))


def _privacy_line(config, result, epsilon) -> str:
  """The summary's privacy row: (epsilon, delta) over the whole run, the clip norm (adaptive:
  its quantile and last value) and the noise multiplier (chosen: for which target)."""
  sigma = result.state.settings["dp"][1]  # the run's own, calibrated or given
  clip = f"C={config['clip_norm']:g}"
  if config["target_quantile"] is not None:
    clip += (f" adaptive to the {config['target_quantile']:g} quantile (last "
             f"{result.history[-1]['clip_norm']:.3g})")
  noise = f"sigma={sigma:.4g}"
  if config["target_epsilon"] is not None:
    noise += f" (chosen for epsilon <= {config['target_epsilon']:g})"
  return (f"({epsilon:.2f}, {config['delta']:g})-DP over all {len(result.history)} epochs, "
          f"{clip}, {noise}")

