"""The epoch's shuffle: `jax.random.permutation` exactly, from one-operand sorts."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from mlp_jax.training.permutation import permutation, stable_order


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
@pytest.mark.parametrize("n", [1, 2, 3, 255, 256, 257, 7291, 65536, 70000])
def test_permutation_equals_jax_random_permutation(n, jit):
  fn = jax.jit(permutation, static_argnums=1) if jit else permutation
  for seed in (0, 1, 2**32 - 1):
    key = jax.random.PRNGKey(seed)
    ours, theirs = fn(key, n), jax.random.permutation(key, n)
    assert ours.dtype == theirs.dtype
    np.testing.assert_array_equal(ours, theirs)


def test_permutation_of_typed_keys_equals_jax_random_permutation():
  key = jax.random.key(7)
  np.testing.assert_array_equal(permutation(key, 1000), jax.random.permutation(key, 1000))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=300),
       st.sampled_from([1, 2**13 + 1, 2**19 - 1, 2**31]))
def test_stable_order_sorts_by_key_and_keeps_ties_in_order(values, spread):
  # A coarse spread makes ties common: equal keys must keep their input order.
  keys = np.asarray([(v // spread) * spread for v in values], np.uint32)
  np.testing.assert_array_equal(stable_order(jnp.asarray(keys)),
                                np.argsort(keys, kind="stable"))
