"""The oracle: `jax.grad` and `vmap(grad)` of the same objective (`autodiff`), and the gradient
check that holds a gradient function to them and to float64 central differences (`check`)."""
