"""Test setup: simulate 8 CPU devices before jax is imported anywhere."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
# TensorFlow is only the data loader; keep it off any accelerator.
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
