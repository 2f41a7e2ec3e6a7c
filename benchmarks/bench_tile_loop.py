"""Bucketed routing against tile-at-a-time inference (issue 3, item 9).

  python -m benchmarks.bench_tile_loop [--networks fsrcnn,carn,srresnet,rcan] [--reps N] [--split-groups]

The original ClassSR tests one 32×32 tile at a time: classify it, run its branch at batch 1, put the SR tile
into the output. Written in JAX for the comparison: one jitted classifier and one jitted program per branch,
all at batch 1, and a Python loop over the tiles (one host round trip per tile to read the class). Both sides
cut the same 256×256 photo-like LR image into the same 121 tiles (full protocol), make the same routing
decisions (the classifier of `routing_common.tertile_classifier`, a third of the tiles per branch) and merge with the
same `tiling.TileMerger`; the bucketed side is `Upscaler.upscale` (library defaults). Weights are random.
Compile time is excluded (untimed warm-up round); times are medians of interleaved rounds.

Target: bucketed routing ≥ 5× faster for FSRCNN and CARN on CPU, ≥ 20× for every network on a GPU.
--split-groups adds the same comparison with CARN-M's grouped convs computed per group (the proposed library
change measured in bench_routing), on both sides; --proposed adds Upscaler with the proposed chunk sizes and
buckets (constructor arguments, no library change). "Σ own" is the compute alone (each branch's plain batched
apply on its tiles, no classifier, no merge): loop / Σ own bounds what any batching can gain over the loop.
"""

from __future__ import annotations

import argparse
import contextlib

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import routing_common as C
from classsr_jax import tiling
from classsr_jax.checkpointing import init_variables
from classsr_jax.inference import Upscaler
from classsr_jax.models import PAPER_WIDTHS, ModelSpec
from classsr_jax.routing import Buckets

DEFAULT_REPS = {"fsrcnn": 9, "carn": 5, "srresnet": 5, "rcan": 3}
PROPOSED_CHUNKS = (64, 128, 256, 512, 1024)
PROPOSED_BUCKETS = Buckets(4, 1)


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
    parser.add_argument("--split-groups", action="store_true", help="also measure CARN with per-group convs")
    parser.add_argument("--proposed", action="store_true",
                        help="also time Upscaler with the proposed chunk sizes (64…1024) and buckets (4/1)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(f"machine: {C.machine_line()}; load average: {C.load_average()}", flush=True)
    image = C.photo_like(args.size, args.size, args.seed)
    grid = tiling.full_grid(args.size, args.size)
    tiles = tiling.extract_tiles(image, grid).astype(np.float32)
    rows = []
    for network in args.networks.split(","):
        spec = ModelSpec("classsr", network, PAPER_WIDTHS[network], 4)
        variables = C.tertile_classifier(spec, init_variables(spec, args.seed), tiles)
        modes = ["default"] + (["split"] if network == "carn" and args.split_groups else [])
        fns = {}
        for mode in modes:
            ctx = (lambda: C.grouped_conv_as_split("split")) if mode == "split" else contextlib.nullcontext
            ups = {"bucketed": Upscaler(spec, variables)}
            if args.proposed:
                ups["bucketed, proposed"] = Upscaler(spec, variables, chunk_sizes=PROPOSED_CHUNKS, buckets=PROPOSED_BUCKETS)
            loop = TileLoop(spec, variables)
            with ctx():
                looped, loop_classes = loop.upscale(image)
                for name, up in ups.items():
                    routed = up.upscale(image)
                    np.testing.assert_array_equal(routed.classes, loop_classes)
                    err = float(np.abs(routed.sr - looped).max())
                    assert err < 1e-3, f"{network}: {name} and tile-loop outputs differ by {err}"
            for name, up in ups.items():
                fns[mode, name] = lambda up=up, ctx=ctx: _in(ctx, lambda: up.upscale(image).sr)
            fns[mode, "loop"] = lambda loop=loop, ctx=ctx: _in(ctx, lambda: loop.upscale(image)[0])
            # The compute alone: each branch's plain batched apply on its tiles (no classifier, no merge).
            dvars = jax.device_put(variables)
            for k in range(spec.num_branches):
                f, xk = C.branch_apply(spec, k), jnp.asarray(tiles[loop_classes == k])
                fns[mode, f"own{k}"] = lambda f=f, xk=xk, ctx=ctx: _in(ctx, lambda: f(dvars, xk))
        reps = args.reps or DEFAULT_REPS[network]
        times = C.time_interleaved(fns, reps)
        counts = np.bincount(loop_classes, minlength=spec.num_branches)
        for mode in modes:
            own = sum(C.med(times[mode, f"own{k}"]) for k in range(spec.num_branches))
            label = network + (" (grouped convs split)" if mode == "split" else "")
            rows.append((label, reps, counts, {n: t for (m, n), t in times.items() if m == mode}, own))
            print(f"{label}: " + ", ".join(f"{n} {C.spread(t)}" for (m, n), t in times.items() if m == mode), flush=True)

    print(f"\n### Bucketed routing against the tile-at-a-time loop, {args.size}×{args.size} LR image "
          f"({grid.num_tiles} tiles), median (min–max) of interleaved rounds\n")
    head = "| network | tiles per branch | tile loop (batch 1) | bucketed (Upscaler defaults) | speed-up |"
    line = "|---|---|---|---|---|"
    if args.proposed:
        head += " bucketed (chunks 64…1024, buckets 4/1) | speed-up |"
        line += "---|---|"
    print(head + " Σ own (compute only) | loop / Σ own |")
    print(line + "---|---|")
    for name, reps, counts, t, own in rows:
        lp = C.med(t["loop"])
        cells = f"| {name} ({reps} reps) | {'/'.join(map(str, counts))} | {C.spread(t['loop'])} | {C.spread(t['bucketed'])} | " \
                f"{lp / C.med(t['bucketed']):.1f}× |"
        if args.proposed:
            cells += f" {C.spread(t['bucketed, proposed'])} | {lp / C.med(t['bucketed, proposed']):.1f}× |"
        print(cells + f" {C.fmt_s(own)} | {lp / own:.1f}× |")


def _in(ctx, f):
    with ctx():
        return f()

if __name__ == "__main__":
    main()
