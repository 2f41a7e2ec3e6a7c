"""classsr_jax: ClassSR (Kong et al., CVPR 2021) in JAX/Flax.

    import classsr_jax
    model = classsr_jax.load("quickstart")     # the bundled model, a checkpoint folder or a training workdir
    model.upscale_file("photo.jpg", "photo_x4.png")

`load`, `Model` and `ModelInfo` live in `classsr_jax.api` and are imported on first use, so that
`import classsr_jax` stays cheap for the commands (their `--help` and `--version` load no JAX).
"""

import os

# TensorFlow is only our data loader; its start-up chatter (oneDNN, CPU features) would bury our output.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# oneDNN's fused ops only matter for TF models; the loader does not need them, and they announce themselves.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

__version__ = "0.1.0"
__all__ = ["load", "Model", "ModelInfo", "__version__"]
_API = ("load", "Model", "ModelInfo")


def __getattr__(name: str):
    """`classsr_jax.load` and friends, imported from classsr_jax.api when first asked for (PEP 562)."""
    if name in _API:
        from classsr_jax import api

        return getattr(api, name)
    raise AttributeError(f"module 'classsr_jax' has no attribute {name!r}")
