"""A hand-written NumPy reference: forward (E1)-(E3), softmax, backward (E7)-(E12), and Adam.

The same equations as `mlp_jax.core.backprop`, for any depth, in the dtype of the parameters
(float32 by default), with no JAX. Parameters are a list of (w, b) pairs, w (fan_in, fan_out).
The benchmarks use it as the "plain BLAS" peer and the GEMM counts below as their FLOP model.

    params = from_jax(mj.init_params(key))
    loss, grads = loss_and_grads(params, x, y, l2=1e-3)
"""

from typing import List, Sequence, Tuple

import numpy as np

Layer = Tuple[np.ndarray, np.ndarray]


def from_jax(params) -> List[Layer]:
  """mlp_jax parameters (a tuple of Dense) as a list of NumPy (w, b) pairs (copies)."""
  return [(np.array(layer.w), np.array(layer.b)) for layer in params]


def forward_activations(params: Sequence[Layer], x: np.ndarray):
  """(logits, activations): activations is (x, a_1, ..., a_{L-1}), a_l = ReLU(h_l), (E1)-(E3)."""
  activations = [x]
  for w, b in params[:-1]:
    h = activations[-1] @ w
    h += b
    np.maximum(h, 0, out=h)
    activations.append(h)
  w, b = params[-1]
  logits = activations[-1] @ w
  logits += b
  return logits, activations


def predict(params: Sequence[Layer], x: np.ndarray) -> np.ndarray:
  return np.argmax(forward_activations(params, x)[0], axis=1)


def accuracy(params: Sequence[Layer], x: np.ndarray, y: np.ndarray) -> float:
  return float(np.mean(predict(params, x) == y))


def loss_and_grads(params: Sequence[Layer], x: np.ndarray, y: np.ndarray, l2: float = 0.0):
  """Loss (E6) and its gradient by (E7)-(E12), written out; returns (loss, [(dw, db), ...])."""
  m = x.shape[0]
  dtype = params[0][0].dtype
  logits, activations = forward_activations(params, x)
  logits -= logits.max(axis=1, keepdims=True)         # stable softmax, (E4)
  probs = np.exp(logits)
  sums = probs.sum(axis=1, keepdims=True)
  rows = np.arange(m)
  data_loss = float(np.mean(np.log(sums[:, 0]) - logits[rows, y]))  # (E5)
  probs /= sums
  probs[rows, y] -= 1                                   # E = softmax(Z) - Y, (E7)
  delta = probs
  delta *= dtype.type(1.0 / m)                          # Delta_L = E / m
  decay = dtype.type(l2 / m)
  grads = [None] * len(params)
  for l in range(len(params) - 1, -1, -1):
    w = params[l][0]
    a = activations[l]
    dw = a.T @ delta                                    # A_{l-1}^T Delta_l, (E8), (E11)
    if l2:
      dw += decay * w
    grads[l] = (dw, delta.sum(axis=0))                  # 1^T Delta_l, (E9), (E12)
    if l:
      back = delta @ w.T                                # (E10)
      back *= a > 0
      delta = back
  penalty = 0.5 * l2 / m * sum(float(np.vdot(w, w)) for w, _ in params)
  return data_loss + penalty, grads


def gemm_shapes(sizes: Sequence[int], m: int) -> List[Tuple[Tuple[int, int], Tuple[int, int]]]:
  """The (a, b) shapes of every GEMM a @ b of one loss+gradient, in the order they run:
  L forward products, then per layer from the top the weight gradient A^T Delta and, for every
  layer but the first, the input gradient Delta W^T. No input gradient of layer 1 is needed."""
  pairs = list(zip(sizes[:-1], sizes[1:]))
  shapes = [((m, fan_in), (fan_in, fan_out)) for fan_in, fan_out in pairs]
  for l in range(len(pairs) - 1, -1, -1):
    fan_in, fan_out = pairs[l]
    shapes.append(((fan_in, m), (m, fan_out)))
    if l:
      shapes.append(((m, fan_out), (fan_out, fan_in)))
  return shapes


def gemm_flops(sizes: Sequence[int], m: int) -> int:
  """Exact GEMM FLOPs of one loss+gradient: 2m sum(fan_in fan_out) forward, as much again for the
  weight gradients, and 2m sum_{l>=2} fan_in fan_out for the input gradients. For (n, d, K) this
  is 2m(2nd + 3dK)."""
  return sum(2 * a[0] * a[1] * b[1] for a, b in gemm_shapes(sizes, m))


def gemms_alone(sizes: Sequence[int], m: int, dtype=np.float32, seed: int = 0):
  """A callable issuing just the GEMMs of one gradient, with the memory layout `loss_and_grads`
  gives them (A^T and W^T as transposed views) and preallocated outputs: the floor a gradient
  cannot beat."""
  rng = np.random.default_rng(seed)
  new = lambda *shape: rng.standard_normal(shape).astype(dtype)
  pairs = list(zip(sizes[:-1], sizes[1:]))
  ops = [(new(m, fan_in), new(fan_in, fan_out)) for fan_in, fan_out in pairs]  # X W
  for l in range(len(pairs) - 1, -1, -1):
    fan_in, fan_out = pairs[l]
    ops.append((new(m, fan_in).T, new(m, fan_out)))         # A^T Delta
    if l:
      ops.append((new(m, fan_out), new(fan_in, fan_out).T))  # Delta W^T
  ops = [(a, b, np.empty((a.shape[0], b.shape[1]), dtype)) for a, b in ops]

  def run():
    for a, b, out in ops:
      np.matmul(a, b, out=out)
    return out

  return run


class Adam:
  """optax.adam's update (b1=0.9, b2=0.999, eps=1e-8, bias-corrected), in place, in NumPy."""

  def __init__(self, params: Sequence[Layer], lr: float, b1=0.9, b2=0.999, eps=1e-8):
    self.lr, self.b1, self.b2, self.eps, self.t = lr, b1, b2, eps, 0
    self.mu = [np.zeros_like(p) for layer in params for p in layer]
    self.nu = [np.zeros_like(p) for layer in params for p in layer]

  def update(self, params: List[Layer], grads: Sequence[Layer]) -> None:
    """params -= lr * mu_hat / (sqrt(nu_hat) + eps), leaf by leaf, in place."""
    self.t += 1
    c1, c2 = 1 - self.b1 ** self.t, 1 - self.b2 ** self.t
    leaves = [p for layer in params for p in layer]
    g_leaves = [g for layer in grads for g in layer]
    for p, g, mu, nu in zip(leaves, g_leaves, self.mu, self.nu):
      mu *= self.b1
      mu += (1 - self.b1) * g
      nu *= self.b2
      nu += (1 - self.b2) * (g * g)
      step = np.sqrt(nu / c2)
      step += self.eps
      np.divide(mu / c1, step, out=step)
      step *= self.lr
      p -= step
