"""The benchmark scripts that tests can afford, run in their smoke modes so that they cannot rot."""

import os
import re
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_module(module, *args):
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # one CPU device, as on a one-GPU machine
    env["JAX_PLATFORMS"] = "cpu"
    return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=900)


def test_gpu_suite_smoke_mode_prints_every_section():
    run = run_module("benchmarks.gpu_suite", "--smoke")
    assert run.returncode == 0, run.stderr[-3000:]
    table = run.stdout.split("\n\n")[-1]
    rows = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith("| case")]
    labels = [row.split(" | ")[0][2:] for row in rows]
    assert labels == [
        "A. 8K ClassSR-fsrcnn, float32",
        "A. 8K ClassSR-fsrcnn, bfloat16",
        "B. fsrcnn b3/b1 (bf16)",
        "C. fsrcnn tile loop vs bucketed (bf16)",
        "D. 8K ClassSR-fsrcnn bf16, buckets 8/2",
    ]
    # Every timing is a number of seconds, and the host share a percentage.
    assert all(re.match(r"\| [^|]+ \| \d+\.\d+ (s|ms/tile|/ \d+\.\d+ s)", row) or "b3/b1" in row for row in rows)
    assert re.search(r"host \d+\.\d %", rows[0])
    assert "suite:" in run.stdout and "nproc=" in run.stdout
