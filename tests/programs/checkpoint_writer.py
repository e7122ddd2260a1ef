"""Saves checkpoints to the path given, one after another, until killed: a writer for
test_atomic_file's kill-mid-save test.

    python checkpoint_writer.py PATH

Save i holds parameters (256, 1024) and (1024, 256) full of i, an optimizer state of -i and i,
epoch i, step 10 i and config {"i": i}, so a reader can tell a whole save from a torn one.
Prints "saved" once the first save is done.
"""

import sys

import numpy as np

from mlp_jax.core.model import Dense
from mlp_jax.io.checkpoint import save_checkpoint


def main(path: str) -> None:
  for i in range(1, 10**6):
    params = (Dense(np.full((256, 1024), i, np.float32), np.full((1024,), i, np.float32)),
              Dense(np.full((1024, 256), i, np.float32), np.full((256,), i, np.float32)))
    opt_state = [np.full((256, 1024), -i, np.float32), np.int32(i)]
    save_checkpoint(path, params, opt_state, epoch=i, step=10 * i, config={"i": i})
    if i == 1:
      print("saved", flush=True)


if __name__ == "__main__":
  main(sys.argv[1])
