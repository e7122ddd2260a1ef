"""Figures a training run writes: learning curves and the test confusion matrix (PNG)."""

from typing import Dict, List, Sequence

import numpy as np

from mlp_jax.errors import optional_import
from mlp_jax.io.atomic_file import atomic_write


def _figure():
  matplotlib = optional_import("matplotlib", "plots", "drawing curves.png and confusion.png")
  matplotlib.use("Agg")  # files only; no display needed
  import matplotlib.pyplot as plt
  return plt


def _save(fig, path) -> None:
  """Writes the figure atomically: a crash never leaves a half-written PNG at `path`."""
  with atomic_write(path) as f:
    fig.savefig(f, format="png", dpi=120, bbox_inches="tight")


def plot_curves(history: List[Dict[str, float]], path) -> None:
  """Loss and accuracy per epoch, train and validation, side by side."""
  plt = _figure()
  epochs = [r["epoch"] for r in history]
  fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
  for key, label in (("train_loss", "train"), ("val_loss", "validation")):
    if all(key in r for r in history):
      ax_loss.plot(epochs, [r[key] for r in history], marker=".", label=label)
  for key, label in (("train_acc", "train"), ("val_acc", "validation")):
    if all(key in r for r in history):
      ax_acc.plot(epochs, [100 * r[key] for r in history], marker=".", label=label)
  ax_loss.set(xlabel="epoch", ylabel="loss (E6)", title="loss")
  ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy")
  for ax in (ax_loss, ax_acc):
    ax.grid(alpha=0.3)
    ax.legend()
  _save(fig, path)
  plt.close(fig)


def plot_confusion(counts: np.ndarray, path, labels: Sequence[str] = None,
                   title: str = "test confusion matrix") -> None:
  """counts[true, predicted] as a heat map with the counts written in the cells."""
  plt = _figure()
  k = counts.shape[0]
  labels = [str(i) for i in range(k)] if labels is None else list(labels)
  fig, ax = plt.subplots(figsize=(0.5 * k + 2.5, 0.5 * k + 2))
  ax.imshow(counts, cmap="Blues")
  for i in range(k):
    for j in range(k):
      if counts[i, j]:
        ax.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=7,
                color="white" if counts[i, j] > counts.max() / 2 else "black")
  ax.set(xticks=range(k), yticks=range(k), xticklabels=labels, yticklabels=labels,
         xlabel="predicted", ylabel="true", title=title)
  _save(fig, path)
  plt.close(fig)
