"""Training throughput on a CPU run as 1 JAX device and as 2 (`config.cpu_devices`), tiles per second.

  python -m benchmarks.bench_cpu_devices [--rounds 3] [--steps 200] [--devices 1,2] [--widths 16,36,56] [--batches 8,16]

For each FSRCNN width of the quickstart (16, 36, 56 = -O) and global batch (8, 16): `train.train_step` through
`parallel.data_parallel` on random tiles already on the devices, `--steps` steps queued as the training loop
queues them (`train.StepsInFlight`: at most `train.MAX_STEPS_IN_FLIGHT` ahead). The device count is fixed when
JAX starts, so each count runs in its own worker process; the workers take turns, one round each at a time, so a
shared machine's load falls on every count alike. The table gives the median over the rounds and the ratio to 1
device.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import jax

from benchmarks import harness
from benchmarks.investigations.train_step_profile import step_runner
from classsr_jax.training import train


def measure(steps: int, widths: list[int], batches: list[int]) -> dict[str, float]:
    """In a worker: tiles/s of every (width, batch), as {"width,batch": rate}."""
    rates = {}
    for width in widths:
        for batch in batches:
            run, _ = step_runner(batch, width=width)  # compiled, one step run
            in_flight = train.StepsInFlight()
            t0 = time.perf_counter()
            for _ in range(steps):
                in_flight.add(run())
            in_flight.wait()
            rates[f"{width},{batch}"] = batch * steps / (time.perf_counter() - t0)
    return rates


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--devices", default="1,2", help="comma list of CPU device counts")
    parser.add_argument("--widths", default="16,36,56")
    parser.add_argument("--batches", default="8,16", help="global batch sizes (each a multiple of every count)")
    parser.add_argument("--worker", type=int, default=0, help=argparse.SUPPRESS)  # a worker with this many devices
    args = parser.parse_args(argv)
    widths, batches = [int(w) for w in args.widths.split(",")], [int(b) for b in args.batches.split(",")]
    if args.worker:  # before JAX starts its backends
        jax.config.update("jax_num_cpu_devices", args.worker)
        print(json.dumps(measure(args.steps, widths, batches)))
        return
    counts = [int(c) for c in args.devices.split(",")]
    print(harness.machine_line(), flush=True)
    results: dict[int, list[dict[str, float]]] = {c: [] for c in counts}
    for r in range(args.rounds):
        for count in counts[r % len(counts):] + counts[: r % len(counts)]:
            out = subprocess.run([sys.executable, "-m", "benchmarks.bench_cpu_devices", "--worker", str(count),
                                  "--steps", str(args.steps), "--widths", args.widths, "--batches", args.batches],
                                 cwd=harness.REPO, capture_output=True, text=True, check=True)
            results[count].append(json.loads(out.stdout.strip().splitlines()[-1]))
    rows = []
    for width in widths:
        for batch in batches:
            key = f"{width},{batch}"
            medians = [harness.median([run[key] for run in results[c]]) for c in counts]
            rows.append([str(width), str(batch)] + [f"{m:.0f}" for m in medians]
                        + [f"{m / medians[0]:.2f}×" for m in medians[1:]])
    header = (["width", "global batch"] + [f"{c} device(s), tiles/s" for c in counts]
              + [f"{c} / {counts[0]}" for c in counts[1:]])
    print(harness.table(header, rows))


if __name__ == "__main__":
    main()
