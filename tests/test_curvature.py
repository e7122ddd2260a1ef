"""Curvature from the analytic passes, (E28)-(E35), against JAX's autodiff: jax.hessian and
jax.jacfwd for the exact diagonals and blocks, jax.vjp per column for the GGN diagonal, jax.jvp
with jax.vjp or jax.grad for the products, and the Monte-Carlo versions by their expectation."""

import statistics

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import mlp_jax as mj
from conftest import RTOL, assert_tree_close, call, network_batch, release_compiled_programs
from mlp_jax.core import curvature
from mlp_jax.core.network import make_network
from mlp_jax.oracle import curvature as oracle

ACTIVATIONS = ["relu", "leaky_relu", "identity", "tanh", "logistic", "gelu", "gelu_tanh"]
OUTPUTS = list(mj.OUTPUTS)
SMALL = (6, 5, 4, 3)  # two hidden layers: a smooth layer's curvature reaches the one below
L2 = 0.3


_RUN = [0]


@pytest.fixture(autouse=True)
def _bounded_compiled_programs():
  """Every network here compiles its own programs and the oracles' (about 17 MB a test): drop
  them every 20 tests, so the file's memory stays bounded."""
  yield
  _RUN[0] += 1
  if _RUN[0] % 20 == 0:
    release_compiled_programs()


def _setup(sizes, m, dtype, output="softmax_cross_entropy", seed=0):
  params = mj.init_params(seed, sizes, dtype)
  # nonzero biases, so no symmetry of the draw hides a wrong index
  params = tuple(layer._replace(b=0.1 * jnp.cos(jnp.arange(layer.b.shape[0], dtype=dtype)))
                 for layer in params)
  x, y = network_batch(seed + 1, sizes, m, dtype, output)
  return params, x, y


def _direction(params, seed=7):
  return mj.init_params(seed, mj.layer_sizes(params), params[0].w.dtype)


# Every activation with every output at the float64 bar; float32 on a network per output.
EVERY_NETWORK = [(a, o) for a in ACTIVATIONS for o in OUTPUTS]
FLOAT32_NETWORKS = [("relu", "softmax_cross_entropy"), ("tanh", "sigmoid_binary_cross_entropy"),
                    ("gelu", "identity_squared_error"), ("logistic", "poisson_log_link")]
CASES = ([pytest.param(a, o, "float64", id=f"{a}-{o}-float64") for a, o in EVERY_NETWORK]
         + [pytest.param(a, o, "float32", id=f"{a}-{o}-float32") for a, o in FLOAT32_NETWORKS])


@pytest.fixture
def case_dtype(request):
  """The dtype of a `CASES` case (float64 inside `jax.enable_x64`) and its bar."""
  with jax.enable_x64(request.param == "float64"):
    yield jnp.dtype(request.param), RTOL[request.param]


@pytest.mark.parametrize("activation,output,case_dtype", CASES, indirect=["case_dtype"])
def test_diagonals_E29_E32_match_jax_hessian_and_jacfwd(activation, output, case_dtype):
  """The Hessian diagonal against jax.hessian's; the GGN diagonal against the diagonal of
  (1/m) sum_i J_i^T H_i J_i from jax.jacfwd and jax.hessian of the output's loss."""
  dtype, rtol = case_dtype
  params, x, y = _setup(SMALL, 7, dtype, output)
  net = make_network(activation, output)
  kw = dict(activation=activation, output=output)
  assert_tree_close(mj.hessian_diagonal(params, x, y, L2, **kw),
                    oracle.autodiff_hessian_diagonal(params, x, y, L2, net=net), rtol)
  ggn = oracle.autodiff_ggn_matrix(params, x, y, L2, net=net)
  assert_tree_close(ravel_pytree(mj.ggn_diagonal(params, x, y, L2, **kw))[0],
                    jnp.diagonal(ggn), rtol)


@pytest.mark.parametrize("m", [1, 5])
def test_ggn_diagonal_of_the_source_network_matches_the_vjp_route(m, dtype, rtol):
  params, x, y = _setup((256, 256, 10), m, dtype)
  want = oracle.autodiff_ggn_diagonal(params, x, y, L2)
  assert_tree_close(mj.ggn_diagonal(params, x, y, L2), want, rtol)
  assert_tree_close(mj.hessian_diagonal(params, x, y, L2), want, rtol)  # ReLU: Hessian = GGN


@pytest.mark.parametrize("activation", ["relu", "leaky_relu", "identity"])
def test_piecewise_linear_networks_have_hessian_equal_to_ggn(activation, dtype):
  params, x, y = _setup(SMALL, 9, dtype)
  net = dict(activation=activation)
  assert_tree_close(mj.hessian_diagonal(params, x, y, L2, **net),
                    mj.ggn_diagonal(params, x, y, L2, **net), 0.0)


def test_smooth_networks_hessian_differs_from_ggn():
  """The second-derivative terms (E31) are not zero: a check that could not fail otherwise."""
  params, x, y = _setup(SMALL, 9, jnp.float32)
  diff = [float(jnp.abs(h - g).max()) for h, g in zip(
      jax.tree.leaves(mj.hessian_diagonal(params, x, y, activation="tanh")),
      jax.tree.leaves(mj.ggn_diagonal(params, x, y, activation="tanh")))]
  assert max(diff) > 1e-3


@pytest.mark.parametrize("output", OUTPUTS)
@pytest.mark.parametrize("activation", ["relu", "tanh", "gelu"])
def test_per_sample_ggn_diagonals_are_each_examples_ggn(activation, output, dtype, rtol):
  params, x, y = _setup(SMALL, 6, dtype, output)
  net = dict(activation=activation, output=output)
  per = mj.per_sample_ggn_diagonals(params, x, y, **net)
  for i in (0, 5):
    one = mj.ggn_diagonal(params, x[i:i + 1], y[i:i + 1], **net)
    assert_tree_close(jax.tree.map(lambda d: d[i], per), one, rtol)
  mean = tuple(mj.Dense(d.w.mean(0) + L2 / 6, d.b.mean(0)) for d in per)
  assert_tree_close(mean, mj.ggn_diagonal(params, x, y, L2, **net), rtol)


def _blocks(params, matrix):
  """Per layer, the (W, W), (b, b) and (W, b) blocks of a (P, P) matrix over ravel_pytree."""
  flat, unravel = ravel_pytree(params)
  index = unravel(jnp.arange(flat.size, dtype=flat.dtype))
  for layer in index:
    w, b = layer.w.reshape(-1).astype(int), layer.b.astype(int)
    yield matrix[jnp.ix_(w, w)], matrix[jnp.ix_(b, b)], matrix[jnp.ix_(w, b)]


@pytest.mark.parametrize("output", OUTPUTS)
@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_kronecker_factors_E33_of_one_example_are_its_exact_ggn_blocks(
    activation, output, dtype, rtol):
  params, x, y = _setup(SMALL, 1, dtype, output)
  net = make_network(activation, output)
  factors = mj.kronecker_factors(params, x, y, activation=activation, output=output)
  ggn = oracle.autodiff_ggn_matrix(params, x, y, net=net)
  for f, (ww, bb, wb) in zip(factors, _blocks(params, ggn)):
    assert_tree_close(jnp.kron(f.a[:-1, :-1], f.g), ww, rtol)
    assert_tree_close(f.g, bb, rtol)
    assert_tree_close(jnp.kron(f.a[:-1, -1:], f.g), wb, rtol)


def test_kronecker_factors_are_input_and_output_second_moments(dtype, rtol):
  """Over a batch: a is (1/m) sum [a_i; 1][a_i; 1]^T, and the top layer's g is the mean output
  Hessian (1/m) sum_i H_i, both from their definitions."""
  params, x, y = _setup(SMALL, 8, dtype)
  factors = mj.kronecker_factors(params, x, y)
  padded = jnp.concatenate([x, jnp.ones((8, 1), dtype)], axis=1)
  assert_tree_close(factors[0].a, padded.T @ padded / 8, rtol)
  hessians = jax.vmap(jax.hessian(lambda z, t: -jax.nn.log_softmax(z)[t]))(
      mj.forward(params, x), y)
  assert_tree_close(factors[-1].g, hessians.mean(0), rtol)


def _monte_carlo_bound(draws, exact, false_failure=1e-6):
  """Largest |mean - exact| / (sd / sqrt(N)) over all entries, and the two-sided normal
  threshold that a correct estimator exceeds with probability `false_failure` in all
  (Bonferroni over the entries)."""
  n = draws[0].shape[0]
  worst, entries = 0.0, 0
  for d, e in zip(draws, exact):
    sd = np.asarray(d.std(0, ddof=1), np.float64) / np.sqrt(n)
    gap = np.abs(np.asarray(d.mean(0), np.float64) - np.asarray(e, np.float64))
    worst = max(worst, float(np.max(gap / np.maximum(sd, 1e-30))))
    entries += e.size
  return worst, statistics.NormalDist().inv_cdf(1 - false_failure / (2 * entries))


@pytest.mark.parametrize("output", OUTPUTS)
def test_monte_carlo_ggn_E30_is_unbiased(output):
  """Seeded draws, so deterministic; with a fresh seed a correct estimator fails with
  probability about 1e-6 (normal approximation of 2000 draws, Bonferroni over entries)."""
  with jax.enable_x64(True):
    params, x, y = _setup(SMALL, 5, jnp.float64, output)
    net = make_network("tanh", output)
    exact = jax.tree.leaves(mj.ggn_diagonal(params, x, y, activation="tanh", output=output))
    keys = jax.random.split(jax.random.PRNGKey(3), 2000)
    draws = jax.vmap(lambda k: curvature.GGN_DIAGONAL.plain(params, x, y, 0.0, k, net=net))(keys)
    worst, threshold = _monte_carlo_bound(jax.tree.leaves(draws), exact)
    assert worst < threshold, (worst, threshold)
    wrong = [2 * e for e in exact]  # the same test rejects an estimator off by a factor 2
    assert _monte_carlo_bound(jax.tree.leaves(draws), wrong)[0] > threshold


def test_monte_carlo_kfac_factor_is_unbiased():
  with jax.enable_x64(True):
    params, x, y = _setup(SMALL, 5, jnp.float64)
    exact = [f.g for f in mj.kronecker_factors(params, x, y)]
    keys = jax.random.split(jax.random.PRNGKey(4), 2000)
    draws = jax.vmap(lambda k: curvature.KRONECKER.plain(params, x, y, k, net=mj.Network()))(keys)
    worst, threshold = _monte_carlo_bound([f.g for f in draws], exact)
    assert worst < threshold, (worst, threshold)


def test_a_seed_repeats_its_draws_and_more_samples_cost_more_columns(dtype):
  params, x, y = _setup(SMALL, 5, dtype)
  four = mj.ggn_diagonal(params, x, y, key=jax.random.PRNGKey(0), samples=4)
  assert_tree_close(mj.ggn_diagonal(params, x, y, key=0, samples=4), four, 0.0)  # int seed
  tops = curvature.sampled_errors(mj.Network(), mj.forward(params, x), jax.random.PRNGKey(0), 4)
  assert tops.shape == (4, 5, 3)  # four columns of errors at the logits, (E30)
  other = mj.ggn_diagonal(params, x, y, key=1, samples=4)
  assert max(float(jnp.abs(a - b).max()) for a, b in zip(jax.tree.leaves(four),
                                                         jax.tree.leaves(other))) > 0


@pytest.mark.parametrize("activation,output,case_dtype", CASES, indirect=["case_dtype"])
def test_products_E34_E35_match_jvp_and_vjp(activation, output, case_dtype):
  dtype, rtol = case_dtype
  params, x, y = _setup(SMALL, 7, dtype, output)
  v = _direction(params)
  net = make_network(activation, output)
  kw = dict(activation=activation, output=output)
  assert_tree_close(mj.ggn_vector_product(params, x, y, v, L2, **kw),
                    oracle.autodiff_ggn_vector_product(params, x, y, v, L2, net=net), rtol)
  assert_tree_close(mj.hessian_vector_product(params, x, y, v, L2, **kw),
                    oracle.autodiff_hessian_vector_product(params, x, y, v, L2, net=net), rtol)


@pytest.mark.parametrize("m", [1, 6])
def test_products_of_the_source_network(m, dtype, rtol):
  params, x, y = _setup((256, 256, 10), m, dtype)
  v = _direction(params)
  assert_tree_close(mj.ggn_vector_product(params, x, y, v, L2),
                    oracle.autodiff_ggn_vector_product(params, x, y, v, L2), rtol)
  assert_tree_close(mj.hessian_vector_product(params, x, y, v, L2),
                    oracle.autodiff_hessian_vector_product(params, x, y, v, L2), rtol)


def test_ggn_is_symmetric_positive_semidefinite_and_the_hessian_symmetric():
  with jax.enable_x64(True):
    params, x, y = _setup(SMALL, 7, jnp.float64)
    u, v = _direction(params, 1), _direction(params, 2)
    dot = lambda a, b: float(ravel_pytree(a)[0] @ ravel_pytree(b)[0])  # noqa: E731
    for product in (mj.ggn_vector_product, mj.hessian_vector_product):
      uv = dot(u, product(params, x, y, v, activation="tanh"))
      vu = dot(v, product(params, x, y, u, activation="tanh"))
      assert abs(uv - vu) <= 1e-12 * max(abs(uv), 1.0)
    assert dot(v, mj.ggn_vector_product(params, x, y, v, activation="tanh")) > 0
    hv = mj.hessian_vector_product(params, x, y, v, activation="tanh")
    assert dot(v, hv) != pytest.approx(dot(v, mj.ggn_vector_product(
        params, x, y, v, activation="tanh")), rel=1e-6)  # tanh's own curvature is there


@pytest.mark.parametrize("jit_mode", ["jit", "no-jit"])
def test_compiled_and_op_by_op_calls_agree(jit_mode, dtype, rtol):
  params, x, y = _setup(SMALL, 4, dtype)
  v = _direction(params)
  for fn in (lambda p, a, b: mj.ggn_diagonal(p, a, b, L2, activation="tanh"),
             lambda p, a, b: mj.hessian_diagonal(p, a, b, L2, activation="gelu"),
             lambda p, a, b: mj.kronecker_factors(p, a, b),
             lambda p, a, b: mj.hessian_vector_product(p, a, b, v, L2, activation="tanh")):
    assert_tree_close(call(fn, jit_mode, params, x, y), fn(params, x, y), rtol)


def test_bad_arguments_are_named():
  params, x, y = _setup(SMALL, 4, jnp.float32)
  v = _direction(params)
  with pytest.raises(mj.InputError, match=r"v: layer 1 w must have the shape of params' \(5, 4"):
    mj.hessian_vector_product(params, x, y, (v[0], v[0], v[2]))
  with pytest.raises(mj.InputError, match="v: expected 3 layers"):
    mj.ggn_vector_product(params, x, y, v[:2])
  with pytest.raises(mj.InputTypeError, match="v: expected a tuple of Dense"):
    mj.ggn_vector_product(params, x, y, {"w": v[0].w})
  with pytest.raises(mj.InputError, match="samples"):
    mj.ggn_diagonal(params, x, y, key=0, samples=0)
  with pytest.raises(mj.InputTypeError, match="key"):
    mj.kronecker_factors(params, x, y, key="seed")
  with pytest.raises(mj.InputError, match="label"):
    mj.hessian_diagonal(params, x, y.at[0].set(3))
  with pytest.raises(mj.InputError, match="x: expected finite values"):
    mj.ggn_diagonal(params, x.at[1, 1].set(jnp.inf), y)

