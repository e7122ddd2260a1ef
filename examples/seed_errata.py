"""The source derivation implemented literally, erratum by erratum, and what the oracle says.

`erratum_grad_fn("SN")` (that is, `source_grads(..., sN=True)`) is the 2-layer gradient exactly
as the source writes it, correct except for erratum (SN) of docs/derivation.md. Run it to see each one caught:

    python examples/seed_errata.py
"""

import jax
import jax.numpy as jnp

import mlp_jax as mj


def _pieces(params, x, y):
  (l1, l2_) = params
  h = x @ l1.w + l1.b[None, :]
  a = jax.nn.relu(h)
  z = a @ l2_.w + l2_.b[None, :]
  yhat = jax.nn.softmax(z, axis=1)
  onehot = jax.nn.one_hot(y, z.shape[1], dtype=z.dtype)
  return h, a, yhat, onehot


def source_grads(params, x, y, l2=0.0, *, s1=False, s2=False, s3=False, s4=False):
  """The source's formulas for (W1, b1, W2, b2), with the chosen errata left in."""
  (l1, l2_) = params
  m, n = x.shape
  h, a, yhat, onehot = _pieces(params, x, y)
  if s1:
    # "1° j != t: dL/dz_t = yhat_t - 1" and "2° j = t: dL/dz_j = yhat_j", taken as labelled.
    yhat_t = jnp.take_along_axis(yhat, y[:, None], axis=1)
    err = jnp.where(onehot > 0, yhat, yhat_t - 1)
  else:
    err = yhat - onehot                                   # (E7)
  gw2 = a.T @ err if s2 else a.T @ err / m                # (S2) drops the 1/m
  gw2 = gw2 + l2 / m * l2_.w
  gb2 = err.sum(0) / m
  back = err @ l2_.w.T
  mask = (h > 0).astype(x.dtype)
  if s3:
    # X^(1)*: input feature i of each sample masked by the sign of hidden unit i (needs n = d).
    gw1 = (x * mask).T @ back / m
  else:
    gw1 = x.T @ (back * mask) / m                         # (E10)-(E11)
  gw1 = gw1 + l2 / m * l1.w
  gb1 = (back * mask).sum(0) / (n if s4 else m)         # (S4) divides by n
  return (mj.Dense(gw1, gb1), mj.Dense(gw2, gb2))


ERRATA = {
    "S1": dict(s1=True),
    "S2": dict(s2=True),
    "S3": dict(s3=True),
    "S4": dict(s4=True),
}


def erratum_grad_fn(name):
  """The source's gradient with erratum `name` ('S1'..'S4'), or the corrected one for None."""
  flags = ERRATA.get(name, {})
  return lambda params, x, y, l2=0.0: source_grads(params, x, y, l2, **flags)


def main():
  from mlp_jax.tools.diagnosis import diagnose
  jax.config.update("jax_enable_x64", True)
  params = mj.init_params(jax.random.PRNGKey(0), (256, 256, 10), jnp.float64)
  x = jax.random.uniform(jax.random.PRNGKey(1), (37, 256), jnp.float64)
  y = jax.random.randint(jax.random.PRNGKey(2), (37,), 0, 10)
  for name in [None] + list(ERRATA):
    print(f"=== source formulas, {'corrected' if name is None else 'with ' + name}")
    print(mj.check_gradients(params, x, y, 0.1, grad_fn=erratum_grad_fn(name)))
    print()
    if name is not None:  # which gradient is wrong, where, and the likely mistake
      print(diagnose(erratum_grad_fn(name), params, x, y, 0.1))
      print()


if __name__ == "__main__":
  main()
