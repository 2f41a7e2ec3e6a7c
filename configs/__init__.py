"""The training configs: `get_config()` files, installed as the package `classsr_jax.configs`."""
