"""Test setup: simulate 8 CPU devices before jax is imported anywhere, and share compiled programs."""

import atexit
import os
import shutil
import tempfile

# Fixtures every test module may use without importing them: the commands' tiny checkpoint, training's photos.
pytest_plugins = ["command_fixtures", "training_fixtures"]

# LLVM at -O0: XLA's CPU compiles take about half as long (most of this suite's time is compiling small
# programs), and the numbers are the same, since no fast-math pass runs at any level.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
# TensorFlow is only the data loader; keep it off any accelerator.
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

# One persistent compilation cache for the session and the commands it starts: many tests compile the same
# programs (the CLI in subprocesses, the smoke models), and a hit skips XLA. Entries are keyed by the program and
# the jax version, so a hit is the same executable; the folder is new each session and removed at its end.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="classsr_jax_tests_xla_cache_")
    atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
