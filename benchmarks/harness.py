"""What every benchmark shares: the machine line, interleaved timing, tables, and side-by-side runs of the code
at another commit (a temporary git worktree) in worker processes.

Side by side: `Workers` starts one worker process per code tree (this checkout and, say, the commit before a
change) running the same worker script, and `Workers.interleave` asks them in turn, one at a time, so both
see the same load on a shared machine and their ratio measured in one run is fair.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from classsr_jax.evaluation.tables import markdown_table

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo (or what platform says elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def load_average() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def machine_line() -> str:
    """nproc, CPU, accelerators, jax version, XLA flags, date and load: the line every result carries."""
    import jax

    devices = jax.devices()
    kinds = sorted({d.device_kind for d in devices})
    return (
        f"nproc={os.cpu_count()}, CPU {cpu_model()}, backend={jax.default_backend()} "
        f"({len(devices)} × {', '.join(kinds)}), jax {jax.__version__}, "
        f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}, date {datetime.date.today().isoformat()}, "
        f"load average {load_average()}"
    )


def time_interleaved(fns: dict[str, Callable[[], Any]], reps: int, warmup: int = 1) -> dict[str, list[float]]:
    """Seconds of every call of each fn, measured in rounds (one call of each per round, rotating order), so
    the other jobs of a shared machine load every variant alike. `warmup` untimed rounds first. Each fn must
    return what it computed; device arrays are waited for."""
    import jax

    names = list(fns)
    for _ in range(warmup):
        for name in names:
            jax.block_until_ready(fns[name]())
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(reps):
        for name in names[r % len(names):] + names[: r % len(names)]:
            t0 = time.perf_counter()
            jax.block_until_ready(fns[name]())
            times[name].append(time.perf_counter() - t0)
    return times


def median(ts) -> float:
    return float(np.median(ts))


def spread(ts) -> str:
    """'median (min–max)' in seconds or milliseconds."""
    lo, m, hi = float(np.min(ts)), median(ts), float(np.max(ts))
    if hi < 1.0:
        return f"{1e3 * m:.1f} ms ({1e3 * lo:.1f}–{1e3 * hi:.1f})"
    return f"{m:.2f} s ({lo:.2f}–{hi:.2f})"


def seconds(t: float) -> str:
    return f"{1e3 * t:.1f} ms" if t < 1.0 else f"{t:.2f} s"


table = markdown_table  # the project's one table formatter


@contextlib.contextmanager
def worktree(rev: str) -> Iterator[str]:
    """A temporary git worktree of this repository at `rev` (removed afterwards)."""
    path = tempfile.mkdtemp(prefix="classsr_worktree_")
    subprocess.run(["git", "-C", REPO, "worktree", "add", "--detach", "-f", path, rev], check=True,
                   capture_output=True)
    try:
        yield path
    finally:
        subprocess.run(["git", "-C", REPO, "worktree", "remove", "--force", path], capture_output=True)


class Workers:
    """Worker processes, one per code tree, each running `script` with that tree first on sys.path.

    The script reads one JSON request per line on stdin and answers one JSON line on stdout (see
    `upscale_worker.serve`).
    """

    def __init__(self, script: str, trees: dict[str, str], env: dict[str, str] | None = None):
        self.procs = {}
        for name, tree in trees.items():
            child_env = {**os.environ, **(env or {}), "PYTHONPATH": tree, "CLASSSR_BENCH_TREE": tree}
            self.procs[name] = subprocess.Popen(
                [sys.executable, script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=child_env,
                cwd=tree,
            )

    def ask(self, name: str, request: dict) -> dict:
        proc = self.procs[name]
        proc.stdin.write(json.dumps(request) + "\n")
        proc.stdin.flush()
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"worker {name} died (exit code {proc.wait()})")
        return json.loads(line)

    def interleave(self, request: dict, rounds: int) -> dict[str, list[dict]]:
        """Every worker answers `request` once per round, in a rotating order."""
        names = list(self.procs)
        answers: dict[str, list[dict]] = {name: [] for name in names}
        for r in range(rounds):
            for name in names[r % len(names):] + names[: r % len(names)]:
                answers[name].append(self.ask(name, request))
        return answers

    def close(self) -> None:
        for proc in self.procs.values():
            proc.stdin.close()
            proc.wait(timeout=60)

    def __enter__(self) -> "Workers":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
