"""`jax.random.permutation(key, n)`, bit for bit, at under half its cost on CPU.

JAX shuffles by sorting: each of its ceil(3 ln n / ln(2**32 - 1)) rounds draws fresh 32-bit
keys and reorders the values by a stable key-value sort. XLA's CPU sort is fast only for one
operand of a primitive type; a key-value sort calls a compiled comparator for every comparison.
On a 2-core machine one key-value sort of n = 7291 took 1.95 ms and a u32 sort with its key
draw 0.79 ms; the whole permutation 4.1 ms with JAX's sorts and 1.6 ms with these
(`benchmarks/reproduce/epoch_experiments.py shuffle`; docs/benchmarks.md has what it buys the
epoch).

Here each stable key-value sort is an LSD radix sort whose passes are one-operand u32 sorts:
with p = bits to number n positions, a pass packs a (32 - p)-bit digit of the key above the
element's current position, sorts the packed words, and reads the new order from their low p
bits. Ties in the digit are broken by position, so each pass is stable, and so is the whole
sort: two passes for n <= 65536, more beyond. The result equals JAX's own permutation for the
same key (tests/test_permutation.py checks it against `jax.random.permutation`).
"""

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax


def stable_order(keys: jax.Array) -> jax.Array:
  """The indices that sort u32 `keys` (n,) ascending, ties in their original order.

  Equals `jnp.argsort(keys, stable=True)` as uint32, with one-operand sorts only.
  """
  n = keys.shape[0]
  position_bits = max(1, (n - 1).bit_length())
  digit_bits = 32 - position_bits
  positions = jnp.arange(n, dtype=jnp.uint32)
  low = jnp.uint32((1 << position_bits) - 1)
  order = positions
  for shift in range(0, 32, digit_bits):
    digit = (keys[order] >> shift) & jnp.uint32((1 << min(digit_bits, 32 - shift)) - 1)
    order = order[lax.sort((digit << position_bits) | positions) & low]
  return order


def permutation(key: jax.Array, n: int) -> jax.Array:
  """A random permutation of 0..n-1 as int32 (n,): `jax.random.permutation(key, n)` exactly."""
  x = jnp.arange(n, dtype=jnp.int32)
  rounds = int(np.ceil(3 * np.log(max(1, n)) / np.log(np.iinfo(np.uint32).max)))
  for _ in range(rounds):
    key, subkey = jax.random.split(key)
    x = x[stable_order(jax.random.bits(subkey, (n,), jnp.uint32))]
  return x
