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


@pytest.mark.parametrize("output", sorted(mj.OUTPUTS))
def test_evaluate_scores_every_output_as_scikit_learn_would(output):
  """The loss is `mj.loss` of the network; the score is accuracy (subset accuracy for multilabel
  indicators) for classification outputs and scikit-learn's R^2 for regression ones, computed in
  chunks (a chunk of 8192 rows and a short one)."""
  metrics = pytest.importorskip("sklearn.metrics")
  from conftest import network_batch
  sizes, m = (12, 16, 3), 8200
  params = mj.init_params(jax.random.PRNGKey(0), sizes)
  x, y = network_batch(0, sizes, m, np.float32, output, scale=0.3)
  net = dict(activation="tanh", output=output)
  loss, score = mj.evaluate(params, x, y, 0.2, **net)
  np.testing.assert_allclose(loss, mj.loss(params, x, y, 0.2, **net), rtol=1e-5)
  predicted = np.asarray(mj.predict(params, x, **net))
  want = {"softmax_cross_entropy": lambda: metrics.accuracy_score(y, predicted),
          "sigmoid_binary_cross_entropy": lambda: metrics.accuracy_score(y, predicted),
          "identity_squared_error": lambda: metrics.r2_score(y, predicted),
          "poisson_log_link": lambda: metrics.r2_score(y, predicted)}[output]()
  assert score == pytest.approx(want, rel=1e-5, abs=1e-6)


def test_a_confusion_matrix_of_another_activation_uses_its_forward_pass():
  params = mj.init_params(jax.random.PRNGKey(0), SIZES)
  x, y = _data(30)
  counts = mj.confusion_matrix(params, x, y, activation="logistic")
  want = np.asarray(mj.predict(params, x, activation="logistic"))
  assert np.trace(counts) == int((want == np.asarray(y)).sum())
  assert not np.array_equal(want, np.asarray(mj.predict(params, x)))
