"""`evaluate` and `confusion_matrix` on a whole dataset."""

import jax
import numpy as np
import pytest

import mlp_jax as mj
from conftest import TRAIN_SIZES as SIZES, train_batch as _data


def test_evaluate_and_confusion_matrix():
  params = mj.init_params(jax.random.PRNGKey(0), SIZES)
  x, y = _data(30)
  loss, acc = mj.evaluate(params, x, y, 0.2)
  np.testing.assert_allclose(loss, mj.loss(params, x, y, 0.2), rtol=1e-5)
  assert acc == pytest.approx(float((mj.predict(params, x) == y).mean()))
  counts = mj.confusion_matrix(params, x, y)
  assert counts.shape == (5, 5) and counts.sum() == 30
  assert np.trace(counts) == round(acc * 30)
