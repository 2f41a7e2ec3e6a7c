"""classsr_jax: ClassSR (Kong et al., CVPR 2021) in JAX/Flax."""

import os

# TensorFlow is only our data loader; its start-up chatter (oneDNN, CPU features) would bury our output.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# oneDNN's fused ops only matter for TF models; the loader does not need them, and they announce themselves.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

__version__ = "0.1.0"
