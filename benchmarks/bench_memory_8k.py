"""Peak memory and wall time of an 8K upscale (issue 3, item 9): LR 1920×1080 → 7680×4320, ClassSR-FSRCNN ×4.

  python -m benchmarks.bench_memory_8k [--network fsrcnn] [--repeats 5] [--buckets 4/1] [--chunks 32,128]

Each measurement runs in a fresh subprocess, so its peak resident set size (VmHWM of /proc/self/status, and
ru_maxrss) belongs to that one job: Python, JAX/XLA, the model, the compiled programs, the LR image, the
chunks of tiles and SR tiles in flight and the HR canvas of the incremental merge. The child builds a
randomly initialised ClassSR model (no checkpoint needed; the Class-Module's last layer is re-fitted on a
sample of the image's tiles so that the tiles spread over all three branches, as a trained one does), runs
`Upscaler.upscale` (full protocol, the library's default chunk and bucket sizes for the backend) once untimed (compilation), then
--repeats timed runs. Target: peak RSS under 3 GiB for ClassSR-FSRCNN on this 2-core CPU machine.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time


def rss_status() -> dict[str, float]:
    """VmRSS and VmHWM of this process in MiB."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                key, value = line.split(":", 1)
                out[key] = int(value.split()[0]) / 1024.0
    return out


def child(args) -> None:
    import numpy as np

    from benchmarks import routing_common as C
    from classsr_jax import tiling
    from classsr_jax.inference import Upscaler
    from classsr_jax.models import PAPER_WIDTHS, ModelSpec

    report = {"after_import": rss_status()}
    spec = ModelSpec("classsr", args.network, PAPER_WIDTHS[args.network], 4)
    h, w = args.height, args.width
    lr = C.photo_like(h, w, seed=0)
    grid = tiling.full_grid(h, w)
    sample = np.random.default_rng(0).choice(grid.num_tiles, size=min(1024, grid.num_tiles), replace=False)
    variables = C.tertile_classifier(spec, spec.init(), tiling.extract_tiles(lr, grid, np.sort(sample)))
    kw = {}
    if args.buckets:
        from classsr_jax.routing import Buckets

        kw["buckets"] = Buckets(*(int(v) for v in args.buckets.split("/")))
    if args.chunks:
        kw["chunk_sizes"] = tuple(int(v) for v in args.chunks.split(","))
    up = Upscaler(spec, variables, **kw)
    report["after_setup"] = rss_status()
    t0 = time.perf_counter()
    result = up.upscale(lr)
    report["first_run_s"] = time.perf_counter() - t0
    report["compile_s"] = result.compile_s
    report["after_first_run"] = rss_status()
    assert result.sr.shape == (4 * h, 4 * w, 3), result.sr.shape
    del result
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        result = up.upscale(lr)
        times.append(time.perf_counter() - t0)
        counts = result.class_counts
        del result
    report.update(
        times=times,
        class_counts=counts,
        buckets=[up.buckets.big, up.buckets.small],
        chunk_sizes=list(up.chunk_sizes),
        tiles=grid.num_tiles,
        final=rss_status(),
        ru_maxrss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
        machine=C.machine_line(),
    )
    print("RESULT " + json.dumps(report), flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--network", default="fsrcnn")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--height", type=int, default=1080)
    parser.add_argument("--width", type=int, default=1920)
    parser.add_argument("--buckets", default=None, metavar="B/S", help="Buckets(big=B, small=S) (default: the library's)")
    parser.add_argument("--chunks", default=None, metavar="C1,C2,…", help="Upscaler chunk sizes (default: the library's)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    cmd = [sys.executable, "-m", "benchmarks.bench_memory_8k", "--child", "--network", args.network,
           "--repeats", str(args.repeats), "--height", str(args.height), "--width", str(args.width)]
    for flag in ("buckets", "chunks"):
        if getattr(args, flag):
            cmd += [f"--{flag}", getattr(args, flag)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ))
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout + proc.stderr)
        raise SystemExit(f"child failed with exit code {proc.returncode}")
    line = next(l for l in proc.stdout.splitlines() if l.startswith("RESULT "))
    r = json.loads(line[len("RESULT "):])
    import numpy as np

    times = np.asarray(r["times"])
    peak = r["final"]["VmHWM"]
    print(f"machine: {r['machine']}")
    print(f"\n### Peak memory and time of one upscale, LR {args.width}×{args.height} → {4 * args.width}×{4 * args.height}, "
          f"ClassSR-{args.network} ×4 (random weights), {r['tiles']} tiles, class counts "
          f"{'/'.join(map(str, r['class_counts']))}, buckets {'/'.join(map(str, r['buckets']))}, chunks "
          f"{','.join(map(str, r['chunk_sizes']))}\n")
    print("| quantity | value |\n|---|---|")
    print(f"| peak RSS (VmHWM) | {peak:.0f} MiB ({peak / 1024:.2f} GiB) |")
    print(f"| peak RSS (ru_maxrss) | {r['ru_maxrss_mib']:.0f} MiB |")
    print(f"| RSS after imports | {r['after_import']['VmRSS']:.0f} MiB |")
    print(f"| RSS after model + image setup | {r['after_setup']['VmRSS']:.0f} MiB |")
    print(f"| peak RSS after the first (compiling) run | {r['after_first_run']['VmHWM']:.0f} MiB |")
    print(f"| first run (compile included) | {r['first_run_s']:.2f} s (compile {r['compile_s']:.2f} s) |")
    print(f"| warm run, median of {len(times)} (min–max) | {np.median(times):.2f} s ({times.min():.2f}–{times.max():.2f}) |")
    print(f"| whole child process wall time | {wall:.1f} s |")
    verdict = "met" if peak < 3 * 1024 else "NOT met"
    print(f"\nTarget peak RSS < 3 GiB: {verdict} ({peak / 1024:.2f} GiB).")


if __name__ == "__main__":
    main()
