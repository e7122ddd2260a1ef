"""A run's output folder, as `mlp-jax train` keeps it: claimed, checkpointed each epoch, resumed.

    folder = RunFolder.open("runs/a", resume=False, overwrite=False)  # checks; writes nothing
    folder.check_resume(config, epochs)   # exact or refused (a `ResumeError` of one line)
    folder.start(config)                  # now the folder is created (or cleared with overwrite)
    fit(..., on_epoch_end=folder.save)    # the whole run state, atomically, after every epoch
    folder.save_metrics(metrics)          # then the report and plots of the finished run

Every file a run writes is written here, atomically, and listed in `OUTPUTS`.

Rules: a folder that already holds anything is refused unless the run resumes it (`resume`) or
replaces it (`overwrite`); a resume keeps every setting of the saved run except the few in
`MAY_CHANGE` (and `epochs` with a constant schedule); the data must be the same rows
(by fingerprint), wherever the file now lies.
"""

import csv
import datetime
import io
import json
import os
import pathlib
from typing import Optional, Sequence

from mlp_jax.errors import InputError, NonFiniteError, ResumeError
from mlp_jax.io.atomic_file import atomic_write, make_folder, storage_errors
from mlp_jax.training import run

CHECKPOINT = "checkpoint.npz"  # the whole run state after the last finished epoch (`save`)
CONFIG = "config.json"  # the settings, for `mlp-jax train --config` to replay (`start`)
METRICS, METRICS_CSV = "metrics.json", "metrics.csv"  # a finished run's report (`save_metrics`)
CURVES, CONFUSION = "curves.png", "confusion.png"     # its plots (`save_plots`)
NONFINITE = "nonfinite_batch.json"  # the batch that made a NaN/Inf (`save_nonfinite`)
OUTPUTS = (CHECKPOINT, CONFIG, METRICS, METRICS_CSV, CURVES, CONFUSION,
           NONFINITE)  # what a run writes, and `overwrite` removes
# Settings a resume may give anew: where the data file lies (its rows must be the same), how
# processes find each other, and how progress is shown.
MAY_CHANGE = ("data", "out", "resume", "overwrite", "config", "no_progress", "coordinator",
              "num_processes", "process_id", "init_timeout")


def flag(key: str) -> str:
  """A configuration key (or a `FitSettings` field) as the command line spells it."""
  return {"train_sha256": "training data (sha256)", "layer_sizes": "network",
          "val": "--val-fraction > 0"}.get(key, "--" + key.replace("_", "-"))


def split_seed(config: dict) -> int:
  """The seed of a recorded run's held-out rows: its `split_seed`, or, for a run recorded before
  that setting existed, its `seed` (which then drew the splits too)."""
  return config.get("split_seed", config.get("seed", 0))


def default_out(dataset: str) -> pathlib.Path:
  """runs/<dataset>-<date>-<time>, with a suffix if that exists: a new folder for every run."""
  stem = pathlib.Path("runs") / f"{dataset}-{datetime.datetime.now():%Y%m%d-%H%M%S}"
  path, n = stem, 1
  while path.exists():
    n += 1
    path = stem.with_name(f"{stem.name}-{n}")
  return path


class RunFolder:
  """The output folder of one run; `saved` is the run found there when resuming."""

  def __init__(self, path: pathlib.Path, saved: Optional[run.SavedRun], overwrite: bool,
               primary: bool = True):
    self.path, self.saved, self.overwrite, self.primary = path, saved, overwrite, primary
    self.checkpoint = path / CHECKPOINT
    self.config: dict = {}
    self.arrays: dict = {}

  @classmethod
  def open(cls, path, *, resume: bool, overwrite: bool, primary: bool = True) -> "RunFolder":
    """Checks `path` as the folder of a new (or resumed) run and loads the run to resume.
    Creates, changes and removes nothing."""
    if resume and overwrite:
      raise InputError("--resume and --overwrite: choose one (continue the run in --out, or "
                        "replace it)")
    if not str(path):
      raise InputError("--out: expected a folder name, got ''")
    path = pathlib.Path(path)
    with storage_errors(path):
      exists = path.exists()
      if exists and not path.is_dir():
        raise InputError(f"--out {path}: exists and is not a folder")
      held = sorted(os.listdir(path)) if exists else []
    saved = None
    if resume and (path / CHECKPOINT).exists():
      saved = run.load_run(path / CHECKPOINT)
    elif resume and held:
      raise ResumeError(f"--resume: {path} holds no {CHECKPOINT} to resume (it holds "
                        f"{', '.join(held[:4])}); use --overwrite to replace it")
    elif held and not overwrite and primary:  # other processes write nothing
      raise InputError(
          f"--out {path} already holds {', '.join(held[:4])}{', ...' if len(held) > 4 else ''}"
          "; continue that run with --resume, replace it with --overwrite, or choose another "
          "--out")
    return cls(path, saved, overwrite, primary)

  def check_resume(self, config: dict, epochs: int) -> Optional[str]:
    """With a saved run: refuses (`ResumeError`) any change of a setting that must be kept;
    returns the line that says why nothing is left to train, or None. Without: None."""
    if self.saved is None:
      return None
    where = str(self.checkpoint)
    saved = dict(self.saved.config)
    saved["split_seed"] = split_seed(saved)
    saved.setdefault("activation", "relu")  # runs recorded before --activation existed
    asked = {k: v for k, v in config.items() if k not in MAY_CHANGE and k != "epochs"}
    run.check_unchanged(saved, asked, where, flag)
    if config.get("schedule") == "cosine" and saved.get("epochs") != epochs:
      raise ResumeError(f"{where}: its cosine schedule spans {saved.get('epochs')} epochs; a "
                        f"resume must keep --epochs {saved.get('epochs')}")
    return run.check_more_epochs(self.saved.state, epochs, where)

  def start(self, config: dict, arrays: dict) -> None:
    """Creates the folder (with `overwrite`, removes the outputs of the run it held) and keeps
    the configuration and arrays (e.g. the scaler) every checkpoint will hold."""
    self.config, self.arrays = dict(config), dict(arrays)
    if not self.primary:
      return
    make_folder(self.path)
    if self.overwrite and self.saved is None:
      with storage_errors(self.path):
        for name in OUTPUTS:
          (self.path / name).unlink(missing_ok=True)
    with atomic_write(self.path / CONFIG, "w") as f:
      json.dump(self.config, f, indent=1)

  def save(self, state: run.RunState) -> None:
    """Writes the run state after an epoch, atomically (only the primary process writes)."""
    if self.primary:
      run.save_run(self.checkpoint, state, config=self.config, arrays=self.arrays)

  def save_metrics(self, metrics: dict) -> None:
    """The finished run's report: `metrics` as JSON, and its "history" (one row per epoch) as
    CSV."""
    with atomic_write(self.path / METRICS, "w") as f:
      json.dump(metrics, f, indent=1)
    with atomic_write(self.path / METRICS_CSV, "w") as f:
      f.write(history_csv(metrics["history"]))

  def save_plots(self, history: Sequence[dict], confusion) -> None:
    """Learning curves and the test set's confusion matrix as PNG files; raises
    `MissingDependencyError` without matplotlib."""
    from mlp_jax.tools import plots
    plots.plot_curves(history, self.path / CURVES)
    plots.plot_confusion(confusion, self.path / CONFUSION)

  def save_nonfinite(self, err: NonFiniteError) -> None:
    """Where a run produced NaN/Inf: the epoch, step and rows of the offending batch."""
    with atomic_write(self.path / NONFINITE, "w") as f:
      json.dump({"epoch": err.epoch, "step": err.step,
                 "batch_indices": err.batch_indices.tolist(), "message": str(err)}, f)


def history_csv(history: Sequence[dict]) -> str:
  """One CSV row per epoch record, "epoch" first, then the other keys in order."""
  keys = sorted({k for r in history for k in r}, key=lambda k: (k != "epoch", k))
  out = io.StringIO()
  writer = csv.DictWriter(out, fieldnames=keys)
  writer.writeheader()
  writer.writerows(history)
  return out.getvalue()
