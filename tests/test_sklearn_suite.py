"""scikit-learn's own MLP tests, run on `mj.MLPClassifier` and `mj.MLPRegressor`.

The test file is the one inside the installed scikit-learn wheel
(`sklearn/neural_network/tests/test_mlp.py`), read as it is with one line changed: its import of
scikit-learn's two estimators becomes an import of the library's. Every test it defines is
collected here, under its own name, and runs twice: with JAX's 64-bit mode on (float64 input
trains in float64, as scikit-learn's tests assume) and in the library's default float32.
`FLOAT64_ONLY` names the tests whose bars need float64 arithmetic, each with the reason; in
float32 they are expected to fail (strictly: a pass there is reported).

Private attributes of scikit-learn's implementation that the file reads, each served by a
compatible one of the library's estimators:
- `_optimizer.learning_rate` (test_learning_rate_warmstart, test_adaptive_learning_rate): the
  solver's current rate, after "invscaling" or "adaptive" changed it;
- `_no_improvement_count` (test_n_iter_no_change, test_n_iter_no_change_inf): the same counter;
- `_loss_grad_lbfgs(packed, X, Y, sample_weight, ...)` (test_gradient): the objective and its
  analytic gradient, packed as scikit-learn packs them;
- test_fit sets `_coef_grads`, `_intercept_grads`, `_coef_velocity`, `_intercept_velocity` and
  `n_outputs_` / `out_activation_` / `coefs_` by hand before `partial_fit`: the estimator trains
  on from the weights it finds (its solver state starts fresh) and ignores the work arrays.
"""

import importlib.util
import types

import jax
import pytest

IMPORT = "from sklearn.neural_network import MLPClassifier, MLPRegressor"
OURS = "from mlp_jax import MLPClassifier, MLPRegressor"


def _load_suite() -> types.ModuleType:
  spec = importlib.util.find_spec("sklearn.neural_network.tests.test_mlp")
  if spec is None or spec.origin is None:
    pytest.skip("this scikit-learn wheel ships no neural_network/tests/test_mlp.py",
                allow_module_level=True)
  with open(spec.origin, encoding="utf-8") as f:
    text = f.read()
  assert text.count(IMPORT) == 1, f"{spec.origin}: expected one line `{IMPORT}`"
  module = types.ModuleType("sklearn_test_mlp_on_mlp_jax")
  module.__file__ = spec.origin
  exec(compile(text.replace(IMPORT, OURS), spec.origin, "exec"), module.__dict__)  # noqa: S102
  assert module.MLPClassifier.__module__ == "mlp_jax.tools.estimator"
  return module


SUITE = _load_suite()
TESTS = sorted(name for name in vars(SUITE) if name.startswith("test_"))
globals().update({name: getattr(SUITE, name) for name in TESTS})

# Tests whose bars only float64 arithmetic meets, and why.
FLOAT64_ONLY = {
    "test_gradient": "central differences of step 1e-5 against the analytic gradient, to 1e-7: "
                     "a float32 loss (rounding ~1e-7) gives differences off by ~1e-2",
}


@pytest.fixture
def global_random_seed():
  """scikit-learn's fixture of the same name, at its default seed."""
  return 42


@pytest.fixture(autouse=True, params=["float64", "float32"])
def precision(request):
  """Each test twice: in JAX's 64-bit mode, then in the default float32."""
  if request.param == "float32" and request.node.originalname in FLOAT64_ONLY:
    request.applymarker(pytest.mark.xfail(reason=FLOAT64_ONLY[request.node.originalname],
                                          strict=True))
  with jax.numpy_dtype_promotion("standard"), jax.enable_x64(request.param == "float64"):
    yield request.param


def test_every_test_of_the_file_is_collected():
  """The file defines the tests this module runs (57 in scikit-learn 1.9 with parameters)."""
  assert len(TESTS) >= 40 and all(callable(getattr(SUITE, name)) for name in TESTS)
