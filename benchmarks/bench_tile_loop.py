"""Bucketed routing against tile-at-a-time inference (issue 3, item 9).

  python -m benchmarks.bench_tile_loop [--networks fsrcnn,carn,srresnet,rcan] [--reps N] [--accelerator-sizes]

The original ClassSR tests one 32×32 tile at a time: classify it, run its branch at batch 1, put the SR tile
into the output. Written in JAX for the comparison: one jitted classifier and one jitted program per branch,
all at batch 1, and a Python loop over the tiles (one host round trip per tile to read the class). Both sides
cut the same 256×256 photo-like LR image into the same 121 tiles (full protocol), make the same routing
decisions (the classifier of `routing_common.tertile_classifier`, a third of the tiles per branch) and merge with the
same `tiling.TileMerger`; the bucketed side is `Upscaler.upscale` (library defaults). Weights are random.
Compile time is excluded (untimed warm-up round); times are medians of interleaved rounds.

Target: bucketed routing ≥ 5× faster for FSRCNN and CARN on CPU, ≥ 20× for every network on a GPU.
--accelerator-sizes adds Upscaler with the GPU/TPU chunk and bucket sizes (64/256/1024, 32/8) for comparison.
"Σ own" is the compute alone (each branch's plain batched apply on all its tiles at once, no classifier, no
merge); "best compute" is Σ_k n_k × branch k's fastest per-tile time over calls of 1, 2, 4, 8 or all n_k
tiles. Any scheme must compute every tile's branch, so loop / best compute bounds the speed-up that batching
can bring on this machine.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import routing_common as C
from classsr_jax import tiling
from classsr_jax.inference import ACCELERATOR_CHUNK_SIZES, Upscaler
from classsr_jax.models import PAPER_WIDTHS, ModelSpec
from classsr_jax.routing import ACCELERATOR_BUCKETS

DEFAULT_REPS = {"fsrcnn": 9, "carn": 5, "srresnet": 5, "rcan": 3}
BOUND_BATCHES = (1, 2, 4, 8)

class TileLoop:
    """The original's inference loop: per tile, classify (batch 1), read the class, run that branch (batch 1)."""

    def __init__(self, spec: ModelSpec, variables):
        self.spec = spec
        model = spec.build()
        self.variables = jax.device_put(variables)
        self.classify = jax.jit(lambda v, x: model.apply(v, x, method=model.classify))
        self.branches = [jax.jit(lambda v, x, k=k: model.apply(v, x, k, method=model.branch))
                         for k in range(spec.num_branches)]

    def upscale(self, lr: np.ndarray):
        grid = tiling.full_grid(lr.shape[0], lr.shape[1])
        merger = tiling.TileMerger(grid, self.spec.scale)
        classes = np.zeros(grid.num_tiles, np.int32)
        for i in range(grid.num_tiles):
            tile = jnp.asarray(tiling.extract_tiles(lr, grid, [i]))
            k = int(np.argmax(np.asarray(self.classify(self.variables, tile))[0]))
            classes[i] = k
            merger.add([i], np.asarray(self.branches[k](self.variables, tile)))
        return merger.result(), classes

def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--networks", default="fsrcnn,carn,srresnet", help="comma list of fsrcnn,carn,srresnet,rcan")
    parser.add_argument("--reps", type=int, default=None, help=f"timed rounds (default per network: {DEFAULT_REPS})")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--accelerator-sizes", action="store_true",
                        help="also time Upscaler with the GPU/TPU chunk sizes (64/256/1024) and buckets (32/8)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(f"machine: {C.machine_line()}; load average: {C.load_average()}", flush=True)
    image = C.photo_like(args.size, args.size, args.seed)
    grid = tiling.full_grid(args.size, args.size)
    tiles = tiling.extract_tiles(image, grid).astype(np.float32)
    rows = []
    for network in args.networks.split(","):
        spec = ModelSpec("classsr", network, PAPER_WIDTHS[network], 4)
        variables = C.tertile_classifier(spec, spec.init(seed=args.seed), tiles)
        ups = {"bucketed": Upscaler(spec, variables)}
        if args.accelerator_sizes:
            ups["bucketed, accelerator sizes"] = Upscaler(spec, variables, chunk_sizes=ACCELERATOR_CHUNK_SIZES,
                                                          buckets=ACCELERATOR_BUCKETS)
        loop = TileLoop(spec, variables)
        looped, loop_classes = loop.upscale(image)
        fns = {"loop": lambda loop=loop: loop.upscale(image)[0]}
        for name, up in ups.items():
            routed = up.upscale(image)
            np.testing.assert_array_equal(routed.classes, loop_classes)
            err = float(np.abs(routed.sr - looped).max())
            assert err < 1e-3, f"{network}: {name} and tile-loop outputs differ by {err}"
            fns[name] = lambda up=up: up.upscale(image).sr
        # The compute alone: each branch's plain apply on its tiles (no classifier, no merge), in calls of b
        # tiles for every b of BOUND_BATCHES and in one call of all n_k ("own").
        dvars = jax.device_put(variables)
        for k in range(spec.num_branches):
            f, xk = C.branch_apply(spec, k), jnp.asarray(tiles[loop_classes == k])
            fns[f"own{k}"] = lambda f=f, xk=xk: f(dvars, xk)
            for b in BOUND_BATCHES:
                parts = [xk[i:i + b] for i in range(0, len(xk) - len(xk) % b, b)]
                fns[f"b{b}-{k}"] = lambda f=f, parts=parts: [f(dvars, p) for p in parts]
        reps = args.reps or DEFAULT_REPS[network]
        times = C.time_interleaved(fns, reps)
        counts = np.bincount(loop_classes, minlength=spec.num_branches)
        own = sum(C.med(times[f"own{k}"]) for k in range(spec.num_branches))
        # Fastest per-tile compute of each branch over the batch sizes, times its tile count: no scheme that
        # computes every tile's branch can beat this, so loop / best bounds any batching's speed-up.
        best = 0.0
        for k in range(spec.num_branches):
            per_tile = [C.med(times[f"own{k}"]) / counts[k]]
            per_tile += [C.med(times[f"b{b}-{k}"]) / (counts[k] - counts[k] % b) for b in BOUND_BATCHES]
            best += counts[k] * min(per_tile)
        rows.append((network, reps, counts, times, own, best))
        shown = [n for n in times if not (n[0] == "b" and n[1].isdigit())]  # the per-batch-size rows stay out
        print(f"{network}: " + ", ".join(f"{n} {C.spread(times[n])}" for n in shown), flush=True)

    print(f"\n### Bucketed routing against the tile-at-a-time loop, {args.size}×{args.size} LR image "
          f"({grid.num_tiles} tiles), median (min–max) of interleaved rounds\n")
    head = "| network | tiles per branch | tile loop (batch 1) | bucketed (Upscaler defaults) | speed-up |"
    line = "|---|---|---|---|---|"
    if args.accelerator_sizes:
        head += " bucketed (chunks 64/256/1024, buckets 32/8) | speed-up |"
        line += "---|---|"
    print(head + " Σ own (compute only) | loop / Σ own | best compute | loop / best (bound on any speed-up) |")
    print(line + "---|---|---|---|")
    for name, reps, counts, t, own, best in rows:
        lp = C.med(t["loop"])
        cells = f"| {name} ({reps} reps) | {'/'.join(map(str, counts))} | {C.spread(t['loop'])} | {C.spread(t['bucketed'])} | " \
                f"{lp / C.med(t['bucketed']):.1f}× |"
        if args.accelerator_sizes:
            cells += f" {C.spread(t['bucketed, accelerator sizes'])} | {lp / C.med(t['bucketed, accelerator sizes']):.1f}× |"
        print(cells + f" {C.fmt_s(own)} | {lp / own:.1f}× | {C.fmt_s(best)} | {lp / best:.1f}× |")

if __name__ == "__main__":
    main()
