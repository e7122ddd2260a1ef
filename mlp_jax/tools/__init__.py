"""What a person runs or reads: the `mlp-jax` command line (`cli`), figures (`plots`) and the
diagnosis of a hand-written gradient (`diagnosis`). Nothing in the library imports this layer."""
