"""Hand-derived gradients of (E6), (E7)-(E12), for any depth; no autodiff on this path.

The backward pass is written out, with shapes for a batch of m rows:

    E = softmax(Z) - Y                                     (m, K)        (E7)
    Delta_L = E / m
    Delta_l = (Delta_{l+1} W_{l+1}^T) * 1[A_l > 0]        (m, d_l)      (E10)
    dL/dW_l = A_{l-1}^T Delta_l + (lambda / m) W_l        (d_{l-1}, d_l) (E8), (E11)
    dL/db_l = 1^T Delta_l                                  (d_l,)        (E9), (E12)

with A_0 = X. The ReLU mask uses a_l > 0, which equals h_l > 0, so the derivative at h = 0 is 0
as in the derivation. One forward pass serves both the loss and the gradients.

Another network (`network.Network`) changes two lines and nothing else: E is its output's error,
(E22)-(E25), and the mask 1[A_l > 0] is its activation's derivative g_l'(H_l), (E16)-(E21);
per-example weights s_i replace E / m by s_i e_i / sum_i s_i, (E26).
"""

from typing import Any, Optional, Sequence, Tuple, Union

import functools

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike, DTypeLike

from mlp_jax.core import eager, validation
from mlp_jax.core.model import Dense, Params, forward_pass, matmul
from mlp_jax.core.network import DEFAULT_OUTPUT, SOURCE, Network, make_network
from mlp_jax.core.objective import penalised_mean
from mlp_jax.core.outputs import cross_entropy, log_softmax, output_error


def losses_and_errors(net: Network, z: jax.Array, y: jax.Array) -> Tuple[jax.Array, jax.Array]:
  """Each example's loss l_i (m,) and output error dl_i/dz_i (m, K) of the network's output,
  (E5) and (E7) for softmax (from one log-softmax), (E22)-(E25) for the others."""
  if net.output == DEFAULT_OUTPUT:
    log_probs = log_softmax(z)
    return cross_entropy(log_probs, y), output_error(log_probs, y)
  return net.out.loss(z, y), net.out.error(z, y)


def relu_masks(activations: Sequence[jax.Array]) -> Tuple[jax.Array, ...]:
  """The ReLU derivative 1[h_l > 0] of every hidden layer, read from a_l > 0, (E10); bool."""
  return tuple(a > 0 for a in activations[1:])


def backprop_errors(params: Params, activations: Sequence[jax.Array], top: jax.Array,
                    compute_dtype: Optional[DTypeLike] = None,
                    masks: Optional[Sequence[jax.Array]] = None) -> Tuple[jax.Array, ...]:
  """The error signal of every layer, (E10) and its recursion for deeper nets.

  Args:
    params: the L layers.
    activations: the input of every layer, (X, A_1, ..., A_{L-1}), from `forward_activations`.
    top: the error at the logits, (m, K): E / m for the batch gradient, E per example.
    masks: the ReLU derivative of each hidden layer, (m, d_l); `relu_masks(activations)` by
      default (the diagnosis passes other conventions here).

  Returns:
    (Delta_1, ..., Delta_L), Delta_l of shape (m, d_l), with Delta_L = top.
  """
  masks = relu_masks(activations) if masks is None else masks
  deltas = [top]
  for layer, mask in zip(params[:0:-1], masks[::-1]):
    back = matmul(deltas[-1], layer.w.T, compute_dtype)
    deltas.append(jnp.where(mask, back, jnp.zeros_like(back)) if mask.dtype == bool
                  else back * mask)
  return tuple(deltas[::-1])


def layer_grads(params: Params, activations: Sequence[jax.Array],
                deltas: Sequence[jax.Array], l2: ArrayLike, m: ArrayLike,
                compute_dtype: Optional[DTypeLike] = None) -> Params:
  """dL/dW_l = A_{l-1}^T Delta_l + (lambda/m) W_l and dL/db_l = 1^T Delta_l, (E8)-(E12)."""
  dtype = params[0].w.dtype
  decay = jnp.asarray(l2, dtype) / m
  return tuple(
      Dense(w=matmul(a.T, delta, compute_dtype) + decay * layer.w, b=delta.sum(axis=0))
      for layer, a, delta in zip(params, activations, deltas))


def mean_with_penalty(sums: Params, params: Params, l2: ArrayLike, m: ArrayLike) -> Params:
  """sums / m + (lambda / m) W per layer, (E8)-(E12): a gradient from its data-term sums.

  For sums that are formed before the division, e.g. clipped (and noised) per-example sums.
  """
  decay = jnp.asarray(l2, params[0].w.dtype) / m
  return tuple(Dense(w=g.w / m + decay * p.w, b=g.b / m) for g, p in zip(sums, params))


def objective_and_grads(params: Params, x: jax.Array, y: jax.Array, l2: ArrayLike,
                        compute_dtype: Optional[DTypeLike] = None,
                        mask: Optional[jax.Array] = None,
                        net: Network = SOURCE) -> Tuple[jax.Array, Params]:
  """The loss (E6) and its analytic gradient without input checks: traceable, the training core.

  `mask`, optional (m,) of 0/1 in the parameters' dtype, marks padding rows with 0: loss and
  gradients are then exactly those of (E6) over the unmasked rows, with m = sum(mask). This lets
  a short last minibatch reuse the compiled step of a full one. Any weights s_i >= 0 do the
  same: (E26) with m = sum(s), the `sample_weight` of `loss_and_grads`.
  """
  logits, activations, derivatives = forward_pass(params, x, compute_dtype, net)
  per_example, error = losses_and_errors(net, logits, y)  # (E5), (E7); (E22)-(E25)
  if mask is None:
    m: Union[int, jax.Array] = x.shape[0]
    top = error / m
  else:
    m = mask.sum()
    top = error * (mask / m)[:, None]
  loss = penalised_mean(per_example, params, l2, m, mask)
  deltas = backprop_errors(params, activations, top, compute_dtype, derivatives)
  return loss, layer_grads(params, activations, deltas, l2, m, compute_dtype)


objective_and_grads_jit = jax.jit(objective_and_grads, static_argnames=("compute_dtype", "net"))


@functools.partial(jax.jit, static_argnames=("compute_dtype", "net"))
def _loss_and_grads_flagged(params, x, y, l2, compute_dtype=None, mask=None, net=SOURCE):
  """The core plus a flag raised by a non-finite loss or gradient, or a target out of range.

  NaN or Inf anywhere in x reaches the loss or the gradient of W1 (= X^T Delta_1), so the flag
  covers the value checks of the inputs at the cost of reductions over y and the gradient, not a
  pass over x.
  """
  loss, grads = objective_and_grads(params, x, y, l2, compute_dtype, mask, net)
  finite = jnp.isfinite(loss) & eager.all_finite(grads)
  return (loss, grads), ~finite | eager.targets_flag(params, y, net)


_LOSS_AND_GRADS = eager.Compiled(objective_and_grads_jit, _loss_and_grads_flagged)


def loss_and_grads(params: Params, x: ArrayLike, y: ArrayLike, l2: ArrayLike = 0.0, *,
                   compute_dtype: Optional[DTypeLike] = None, activation: Any = "relu",
                   output: str = DEFAULT_OUTPUT, sample_weight: Optional[ArrayLike] = None,
                   ) -> Tuple[jax.Array, Params]:
  """The loss (E6) and its analytic gradient (E7)-(E12), from one shared forward pass.

  Args:
    params: tuple of `Dense`, any depth.
    x: features (m, n), floating; cast to the parameters' dtype.
    y: the targets `output` takes: integer labels (m,) in 0..K-1 for softmax (the default);
      real values (m, K) for the others (`outputs.OUTPUTS`).
    l2: the penalty lambda >= 0 (traced: changing it does not recompile).
    compute_dtype: optional GEMM input dtype (e.g. jnp.bfloat16); products are accumulated,
      and the output layer and the loss computed, in the parameters' dtype.
    activation: the hidden layers' activation, "relu" by default, or one per hidden layer
      (a name, "leaky_relu:SLOPE" or an `Activation`; see `network`), (E16)-(E21).
    output: the output layer and its loss, "softmax_cross_entropy" by default, (E22)-(E25).
    sample_weight: optional per-example weights s_i >= 0 (m,): the weighted objective (E26).

  Returns:
    (loss, grads): a scalar and a tuple of `Dense` shaped like `params`.
  """
  net = make_network(activation, output)
  weights = None
  if sample_weight is not None:
    weights = validation.check_sample_weight(sample_weight, validation.check_params(params),
                                             jnp.shape(x)[0])
  return eager.checked_call(_LOSS_AND_GRADS, params, x, y, l2, l2=l2, net=net,
                            compute_dtype=compute_dtype, mask=weights)


def grads(params: Params, x: ArrayLike, y: ArrayLike, l2: ArrayLike = 0.0, *,
          compute_dtype: Optional[DTypeLike] = None, activation: Any = "relu",
          output: str = DEFAULT_OUTPUT, sample_weight: Optional[ArrayLike] = None) -> Params:
  """The analytic gradient of (E6), (E7)-(E12); see `loss_and_grads`."""
  return loss_and_grads(params, x, y, l2, compute_dtype=compute_dtype, activation=activation,
                        output=output, sample_weight=sample_weight)[1]
