"""The verified core: the network, its objective and the hand-derived gradients, (E1)-(E15).

Pure `jax.numpy` functions, no files and no host round trips in the math:
`model` (layers, forward pass), `objective` (softmax cross-entropy plus the L2 penalty),
`backprop` (the analytic batch gradient), `per_example` (per-example gradients, norms and clipped
sums); `checks` validates arguments at the public entry points; `inference` (`mj.forward`,
`mj.predict`) is `model`'s forward pass behind those checks.
"""
