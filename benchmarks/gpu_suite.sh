#!/usr/bin/env bash
# The GPU benchmark suite (benchmarks/gpu_suite.py): run once, from the repository root, on a machine with one
# GPU and JAX with CUDA; it finishes in under 8 minutes and prints the rows for docs/performance.md.
set -euo pipefail
cd "$(dirname "$0")/.."
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
exec python3 -m benchmarks.gpu_suite "$@"
