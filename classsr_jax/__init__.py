"""classsr_jax: ClassSR (Kong et al., CVPR 2021) in JAX/Flax."""

import os

# TensorFlow is only our data loader; its start-up chatter (oneDNN, CPU features) would bury our output.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__version__ = "0.1.0"
