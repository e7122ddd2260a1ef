import jax, optax
import mlp_jax as mj

x, y = jax.random.uniform(jax.random.PRNGKey(1), (64, 256)), jax.random.randint(jax.random.PRNGKey(2), (64,), 0, 10)
params = mj.init_params(jax.random.PRNGKey(0))            # 256 -> 256 ReLU -> 10 softmax
opt = optax.sgd(0.1)
state = opt.init(params)
for step in range(5):
  loss, grads = mj.loss_and_grads(params, x, y, l2=1e-3)  # hand-derived (E7)-(E12)
  updates, state = opt.update(grads, state)
  params = optax.apply_updates(params, updates)
  print(f"step {step}: loss {loss:.4f}")
print(mj.check_gradients(params, x, y, l2=1e-3))          # against jax.grad and finite differences
