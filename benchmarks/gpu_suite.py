"""The GPU benchmark suite: one script, run once on a lent GPU, that prints the rows for docs/performance.md.

  bash benchmarks/gpu_suite.sh            # on the GPU machine (python -m benchmarks.gpu_suite)
  python -m benchmarks.gpu_suite --smoke  # tiny sizes on any backend, to keep the script working

It needs only jax, flax, numpy and orbax (the GPU machine has no tensorflow, clu or ml-collections) and builds
its own random-weight models (fixtures.thirds_classsr: a Class-Module that sends a third of the tiles to each
branch), so nothing big travels to the machine. Sections, each with its target:
  A. 8K ClassSR-RCAN end to end, from the upload of the uint8 LR to the download of the uint8 output
     (`timing.inference_s`), float32 and bfloat16, against RCAN-O (every tile to the widest branch) and the
     host's share of the time. Target: under 0.5 s in bfloat16 on one H100/H200.
  B. b3/b1 time against the FLOPs ratio for SRResNet and RCAN (every tile to branch 3, then to branch 1, in
     the same program). Target: at least 85 %.
  C. Bucketed routing against the tile-at-a-time loop of the original (per tile: the classifier at batch 1,
     its class read on the host, the branch at batch 1). Target: at least 20×.
  D. Bucket sizes for GPUs (32/8, 64/16, 128/16) on A's bfloat16 case, while the time budget lasts.
  E. File to file: A's LR as a PNG read, upscaled in bfloat16 and the 8K output written as a PNG, as the upscale
     command does it, with the host's core count. The random network's output is nearly flat and would encode
     at once, so the write is timed on photo-like content of the output's size (the LR resized bicubically).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import fixtures, harness
from classsr_jax.inference import reference, tiling
from classsr_jax.inference.routing import Buckets
from classsr_jax.inference.upscaler import Upscaler
from classsr_jax.models import flops as flops_lib

FULL = {"lr_hw": (1080, 1920), "reps": 5, "loop_tiles": 256, "budget_s": 420.0, "network": "rcan",
        "ratio_networks": ("srresnet", "rcan"), "buckets": ((32, 8), (64, 16), (128, 16))}
# The smoke run takes the same path with the cheapest network, so that the tests can afford it.
SMOKE = {"lr_hw": (40, 72), "reps": 1, "loop_tiles": 4, "budget_s": 600.0, "network": "fsrcnn",
         "ratio_networks": ("fsrcnn",), "buckets": ((8, 2),)}


def timed_upscales(upscaler: Upscaler, image: np.ndarray, reps: int, **routing):
    """Warm runs (the first call compiles): (median inference_s, median host share, result of the last)."""
    result = upscaler.upscale(image, **routing)
    times, shares = [], []
    for _ in range(reps):
        result = upscaler.upscale(image, **routing)
        times.append(result.inference_s)
        shares.append(result.host_s / result.inference_s)
    return float(np.median(times)), float(np.median(shares)), result


def peak_device_memory() -> str:
    """The device's peak bytes in use so far, where the backend reports it (GPUs and TPUs do)."""
    stats = jax.devices()[0].memory_stats() or {}
    peak = stats.get("peak_bytes_in_use")
    return f"peak {peak / 2**30:.2f} GiB on the device" if peak else "peak device memory: not reported"


def section_a(cfg, image01, image, rows):
    network = cfg["network"]
    spec, variables = fixtures.thirds_classsr(network, image01)
    out = {}
    for dtype in ("float32", "bfloat16"):
        classsr = Upscaler(spec, variables, dtype=dtype)
        original = Upscaler(spec.branch(2), spec.branch_variables(variables, 2), dtype=dtype)  # -O alone
        t_c, share_c, result = timed_upscales(classsr, image, cfg["reps"])
        t_o, share_o, _ = timed_upscales(original, image, cfg["reps"])
        out[dtype] = (classsr, t_c)
        rows.append([f"A. 8K ClassSR-{network}, {dtype}", f"{t_c:.3f} s", f"{result.flops_percent:.0f} % FLOPs",
                     f"{network}-O {t_o:.3f} s ({t_o / t_c:.2f}× slower)",
                     f"host {100 * share_c:.1f} % / {100 * share_o:.1f} %",
                     ("target < 0.5 s; " if dtype == "bfloat16" else "") + peak_device_memory()])
        print(harness.table(["case", "time", "", "", "", ""], rows[-1:]), flush=True)
    return spec, variables, out


def section_b(cfg, image01, image, rows):
    for network in cfg["ratio_networks"]:
        spec, variables = fixtures.thirds_classsr(network, image01)
        times = {}
        upscaler = Upscaler(spec, variables, dtype="bfloat16")
        for k in (0, 2):
            times[k], _, _ = timed_upscales(upscaler, image, cfg["reps"], force_class=k)
        f = flops_lib.model_flops(spec, convention="true")
        flops_ratio = f.branches[2] / f.branches[0]
        time_ratio = times[2] / times[0]
        rows.append([f"B. {network} b3/b1 (bf16)", f"{times[0]:.3f} / {times[2]:.3f} s", f"time ratio {time_ratio:.2f}",
                     f"FLOPs ratio {flops_ratio:.2f}", f"{100 * time_ratio / flops_ratio:.0f} % of the FLOPs ratio",
                     "target ≥ 85 %"])
        print(harness.table(["case", "time", "", "", "", ""], rows[-1:]), flush=True)


def section_c(cfg, image01, image, rows, spec, variables, bucketed: Upscaler, bucketed_s: float):
    """Per-tile time of the original's loop (batch 1, a host round trip per tile) on the first tiles."""
    model = spec.build(dtype=jnp.bfloat16)
    placed = jax.device_put(jax.tree_util.tree_map(
        lambda a: np.asarray(a).astype(jnp.bfloat16) if np.asarray(a).dtype == np.float32 else a, variables))
    classify = jax.jit(lambda v, x: model.apply(v, x, method=model.classify))
    branches = [jax.jit(lambda v, x, k=k: model.apply(v, x, k, method=model.branch)) for k in range(3)]
    grid = tiling.full_grid(*image01.shape[:2])
    tiles = reference.extract_tiles(image01, grid, np.arange(min(cfg["loop_tiles"], grid.num_tiles)))

    def loop():
        out = None
        for tile in tiles:
            x = jnp.asarray(tile[None])
            k = int(np.argmax(np.asarray(classify(placed, x))))
            out = np.asarray(branches[k](placed, x))
        return out

    loop()  # compiles the classifier and the branches it meets
    for k in range(3):
        branches[k](placed, jnp.asarray(tiles[:1])).block_until_ready()
    t0 = time.perf_counter()
    loop()
    per_tile_loop = (time.perf_counter() - t0) / len(tiles)
    per_tile_bucketed = bucketed_s / grid.num_tiles
    rows.append([f"C. {spec.network} tile loop vs bucketed (bf16)", f"{1e3 * per_tile_loop:.2f} ms/tile",
                 f"bucketed {1e3 * per_tile_bucketed:.3f} ms/tile", f"{per_tile_loop / per_tile_bucketed:.1f}×",
                 f"loop over the first {len(tiles)} tiles", "target ≥ 20×"])
    print(harness.table(["case", "time", "", "", "", ""], rows[-1:]), flush=True)


def section_d(cfg, image, rows, spec, variables, started):
    for big, small in cfg["buckets"]:
        if time.perf_counter() - started > cfg["budget_s"]:
            rows.append(["D. buckets", "skipped: out of time", "", "", "", ""])
            return
        upscaler = Upscaler(spec, variables, dtype="bfloat16", buckets=Buckets(big, small))
        t, share, _ = timed_upscales(upscaler, image, cfg["reps"])
        rows.append([f"D. 8K ClassSR-{spec.network} bf16, buckets {big}/{small}", f"{t:.3f} s",
                     f"host {100 * share:.1f} %", "", "", ""])
        print(harness.table(["case", "time", "", "", "", ""], rows[-1:]), flush=True)


def section_e(cfg, image01, rows, spec, variables):
    try:  # the image I/O needs Pillow and tifffile, which a bare JAX machine may lack
        from classsr_jax.inference.layouts import upscale_image
        from classsr_jax.io.images import read_image, write_image
    except ImportError as e:
        rows.append(["E. file to file", f"skipped: {e}", "", "", "", ""])
        return
    upscaler = Upscaler(spec, variables, dtype="bfloat16")
    with tempfile.TemporaryDirectory() as folder:
        lr_path, out_path = os.path.join(folder, "lr.png"), os.path.join(folder, "out.png")
        write_image(lr_path, image01)
        t0 = time.perf_counter()
        image = read_image(lr_path)
        read_s = time.perf_counter() - t0
        upscale_image(upscaler, image)  # compiles
        result, _ = upscale_image(upscaler, image)
        out_hw = result.sr.shape[:2]
        content = np.asarray(jax.image.resize(image01, (*out_hw, 3), "bicubic"))
        t0 = time.perf_counter()
        write_image(out_path, content)
        write_s = time.perf_counter() - t0
    rows.append([f"E. file to file, {out_hw[1]}×{out_hw[0]} ClassSR-{spec.network} bf16, PNG", f"read {read_s:.2f} s",
                 f"inference {result.inference_s:.3f} s", f"write {write_s:.2f} s (photo-like)",
                 f"host: {os.cpu_count()} cores", "the host's part of a user's wall time"])
    print(harness.table(["case", "time", "", "", "", ""], rows[-1:]), flush=True)


def main(argv=None) -> list[list[str]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, for a check on any backend")
    args = parser.parse_args(argv)
    cfg = SMOKE if args.smoke else FULL
    started = time.perf_counter()
    print(harness.machine_line(), flush=True)
    image01 = fixtures.photo_like(*cfg["lr_hw"], seed=0)
    image = np.rint(image01 * 255).astype(np.uint8)
    rows: list[list[str]] = []
    spec, variables, by_dtype = section_a(cfg, image01, image, rows)
    section_b(cfg, image01, image, rows)
    bucketed, bucketed_s = by_dtype["bfloat16"]
    section_c(cfg, image01, image, rows, spec, variables, bucketed, bucketed_s)
    section_d(cfg, image, rows, spec, variables, started)
    section_e(cfg, image01, rows, spec, variables)
    print()
    print(harness.table(["case", "time", "", "", "", ""], rows))
    print(f"suite: {time.perf_counter() - started:.0f} s; {harness.machine_line()}")
    return rows


if __name__ == "__main__":
    main()
