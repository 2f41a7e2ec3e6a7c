"""Routed inference on one photo-like LR image: what the routing costs, and what it gains over a tile loop.

  python -m benchmarks.bench_routing efficiency [--networks fsrcnn,carn,srresnet,rcan] [--reps N] [--rcan-reps 3]
      [--variants accelerator,buckets:8/2,widths:36/52/64] [--size 256] [--no-upscale]
  python -m benchmarks.bench_routing tile-loop [--networks ...] [--variants accelerator]
  python -m benchmarks.bench_routing efficiency tile-loop ...   # both, timed in the same rounds

Every network is a random ×4 ClassSR at the paper's widths whose Class-Module sends a third of the tiles to each
branch (`fixtures.thirds_classsr`), on the tiles of a size×size LR image (full protocol: 32×32 tiles, 8 px
overlap; 256×256 gives 121 tiles). Compilation happens in an untimed first round; every call of one network is
then timed in the same interleaved rounds, so the ratios compare like with like on a loaded machine.

efficiency. "The routed program" is the tile-level `RoutedModel.route` on the image's tiles (padded to a
multiple of the device count), so that its time is the routing alone, tile for tile:
- forced k: every tile sent to branch k; mixed: the classifier's own decisions;
- Σ own: each branch's plain jitted batched apply on exactly its n_k tiles of the mixed routing;
- classifier: the Class-Module alone on the same tiles. It is not routing machinery (every ClassSR runs it),
  so (mixed − classifier) / Σ own is what the routing itself costs;
- upscale: `Upscaler.upscale` of the whole image (tiles cut, routed, merged and quantised on the device).
Targets: mixed ≤ 1.10 × Σ own; b3/b1 time ≥ 60 % (CPU) or 85 % (GPU) of the FLOPs ratio, SRResNet and RCAN.
Variants add rows timed in the same rounds: accelerator (the GPU buckets and band size), buckets:B/S,
widths:A/B/C (branches computed at these widths with zero-padded weights; widths:36/52/64 turns the CPU's
widening of 50/52-wide branches off). "default" is the library's choice for this backend.

tile-loop. The original tests one tile at a time: the classifier at batch 1, the class read on the host, the
branch at batch 1, the SR tile merged on the host (`reference.TileMerger`), then the canvas quantised. That loop,
written in JAX, against `Upscaler.upscale` (asserted: the same classes, outputs within one uint8 level).
"Best compute" is Σ_k n_k × branch k's fastest per-tile time over calls of 1, 2, 4, 8 or all n_k tiles: every
scheme must compute every tile's branch, so loop / best compute bounds what batching can gain on this machine.
Targets: ≥ 5× for FSRCNN and CARN on a CPU, ≥ 20× on a GPU.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import fixtures, harness
from classsr_jax.inference import band_plan, reference, tiling
from classsr_jax.inference.reference import ReferenceRouter
from classsr_jax.inference.routing import GPU_BUCKETS, Buckets, RoutedModel
from classsr_jax.inference.upscaler import Upscaler
from classsr_jax.io.pixels import to_uint8
from classsr_jax.models import PAPER_WIDTHS
from classsr_jax.models import flops as flops_lib

PARTS = ("efficiency", "tile-loop")
DEFAULT_REPS = {"fsrcnn": 9, "carn": 5, "srresnet": 5, "rcan": 3}
BOUND_BATCHES = (1, 2, 4, 8)
VARIANTS = ("accelerator", "buckets:B/S", "widths:A/B/C")


def variant_settings(name: str) -> dict:
    """The RoutedModel / Upscaler settings of a variant; an empty dict is the library's defaults."""
    if name == "default":
        return {}
    if name == "accelerator":
        return {"buckets": GPU_BUCKETS, "band_tiles": band_plan.default_band_tiles("gpu")}
    kind, _, value = name.partition(":")
    try:
        numbers = tuple(int(v) for v in value.split("/"))
        if kind == "buckets" and len(numbers) == 2:
            return {"buckets": Buckets(*numbers)}
        if kind == "widths" and numbers:
            return {"widths": numbers}
    except ValueError:
        pass
    raise SystemExit(f"unknown variant {name!r}: use {', '.join(VARIANTS)}")


def branch_apply(spec, k: int):
    """The plain jitted batched apply of branch k at its own width: f(variables, tiles)."""
    model = spec.build()
    return jax.jit(lambda v, x: model.apply(v, x, k, method=model.branch))


class TileLoop:
    """The original's inference: per tile, classify (batch 1), read the class, run that branch (batch 1), merge."""

    def __init__(self, spec, variables):
        model = spec.build()
        self.scale = spec.scale
        self.variables = jax.device_put(variables)
        self.classify = jax.jit(lambda v, x: model.apply(v, x, method=model.classify))
        self.branches = [jax.jit(lambda v, x, k=k: model.apply(v, x, k, method=model.branch))
                         for k in range(spec.num_branches)]

    def upscale(self, image: np.ndarray):
        grid = tiling.full_grid(*image.shape[:2])
        merger = reference.TileMerger(grid, self.scale)
        classes = np.zeros(grid.num_tiles, np.int32)
        for i in range(grid.num_tiles):
            tile = jnp.asarray(reference.extract_tiles(image, grid, [i]))
            classes[i] = int(np.argmax(np.asarray(self.classify(self.variables, tile))[0]))
            merger.add([i], np.asarray(self.branches[classes[i]](self.variables, tile)))
        return to_uint8(merger.result()), classes


def routed_calls(spec, variables, tiles, settings, name, fns):
    """Adds the routed program's forced and mixed calls of one variant to `fns`; returns its settings row."""
    routed = RoutedModel(spec, settings.get("buckets"), compute_widths=settings.get("widths"))
    placed, router = routed.place_variables(variables), ReferenceRouter(routed)
    n, devices = len(tiles), routed.num_devices
    padded = np.zeros((-(-n // devices) * devices, *tiles.shape[1:]), np.float32)
    padded[:n] = tiles
    valid = np.arange(len(padded)) < n
    offsets = np.zeros(spec.num_branches, np.float32)
    for k in range(spec.num_branches):
        fns[name, f"forced {k + 1}"] = lambda k=k: router.route(placed, padded, valid, offsets, k)
    fns[name, "mixed"] = lambda: router.route(placed, padded, valid, offsets, -1)
    b = routed.buckets
    return {"buckets": f"{b.big}/{b.small}", "widths": "/".join(map(str, routed.compute_spec.widths))}


def bench_network(network, parts, variants, reps, size, seed, with_upscale):
    """Builds every call the parts need, checks they agree, and times them in one interleaved run."""
    image = fixtures.photo_like(size, size, seed)
    spec, variables = fixtures.thirds_classsr(network, image, seed=seed)
    tiles = reference.extract_tiles(image, tiling.full_grid(size, size)).astype(np.float32)
    model = spec.build()
    dvars = jax.device_put(variables)
    classify = jax.jit(lambda v, x: model.apply(v, x, method=model.classify))
    classes = np.argmax(np.asarray(classify(dvars, tiles)), axis=-1)
    counts = np.bincount(classes, minlength=spec.num_branches)
    if (counts == 0).any():  # a third of fewer than 3 tiles
        raise SystemExit(f"{network}: a {size}×{size} image leaves a branch without tiles ({counts}); "
                         "use a bigger --size")
    fns, settings = {}, {}
    for name in ["default", *variants]:
        s = variant_settings(name)
        if len(s.get("widths", spec.widths)) != spec.num_branches:
            continue  # widths written for a network with another number of branches
        if "efficiency" in parts:
            settings[name] = routed_calls(spec, variables, tiles, s, name, fns)
        if (with_upscale or "tile-loop" in parts) and "widths" not in s:  # Upscaler takes no compute widths
            up = Upscaler(spec, variables, buckets=s.get("buckets"), band_tiles=s.get("band_tiles"))
            result = up.upscale(image)
            np.testing.assert_array_equal(result.classes, classes)
            fns[name, "upscale"] = lambda up=up: up.upscale(image).sr
    if "efficiency" in parts:
        fns["classifier"] = lambda: classify(dvars, tiles)
        sr, routed_classes, _, _ = fns["default", "mixed"]()
        np.testing.assert_array_equal(np.asarray(routed_classes)[: len(tiles)], classes)
    for k in range(spec.num_branches):
        apply_k, xk = branch_apply(spec, k), jnp.asarray(tiles[classes == k])
        fns["own", k] = lambda apply_k=apply_k, xk=xk: apply_k(dvars, xk)
        if "efficiency" in parts:  # the routed program computes what the branch alone computes
            err = float(np.abs(np.asarray(fns["own", k]()) - np.asarray(sr)[: len(tiles)][classes == k]).max())
            assert err < 1e-3, f"{network}: routed tiles of branch {k + 1} differ from the branch alone by {err}"
        if "tile-loop" in parts:  # the same compute in calls of b tiles, for the bound
            for b in BOUND_BATCHES:
                calls = [xk[i:i + b] for i in range(0, len(xk) - len(xk) % b, b)]
                fns["calls", k, b] = lambda apply_k=apply_k, calls=calls: [apply_k(dvars, c) for c in calls]
    if "tile-loop" in parts:
        loop = TileLoop(spec, variables)
        looped, loop_classes = loop.upscale(image)
        np.testing.assert_array_equal(loop_classes, classes)
        diff = int(np.abs(looped.astype(int) - fns["default", "upscale"]().astype(int)).max())
        assert diff <= 1, f"{network}: the tile loop's output and Upscaler's differ by {diff} levels"
        fns["loop"] = lambda: loop.upscale(image)[0]
    times = harness.time_interleaved(fns, reps)
    return spec, counts, settings, {key: harness.median(t) for key, t in times.items()}, times


def efficiency_rows(network, reps, spec, settings, t):
    """(the default's row, one row per variant) of the efficiency tables."""
    k_last = spec.num_branches
    own = sum(t["own", k] for k in range(k_last))
    paper, true = flops_lib.model_flops(spec), flops_lib.model_flops(spec, convention="true")
    ratio, ratio_true = paper.branches[-1] / paper.branches[0], true.branches[-1] / true.branches[0]
    fsrcnn = network == "fsrcnn"  # its paper FLOPs count the deconv on the HR grid: the true ratio is shown too
    main, variants = None, []
    for name, s in settings.items():
        forced = [harness.seconds(t[name, f"forced {k + 1}"]) for k in range(k_last)]
        mixed = t[name, "mixed"]
        b31 = t[name, f"forced {k_last}"] / t[name, "forced 1"]
        share = f"{100 * b31 / ratio:.0f} %" + (f" (true FLOPs: {100 * b31 / ratio_true:.0f} %)" if fsrcnn else "")
        costs = [f"{mixed / own:.2f}", f"{(mixed - t['classifier']) / own:.2f}", f"{b31:.2f}"]
        upscale = harness.seconds(t[name, "upscale"]) if (name, "upscale") in t else "—"
        if name == "default":
            flops = f"{ratio:.2f}" + (f" (true {ratio_true:.2f})" if fsrcnn else "")
            main = [f"{network} ({reps} reps)", *forced, harness.seconds(mixed), harness.seconds(own), *costs, flops,
                    share, harness.seconds(t["classifier"]), upscale]
        else:
            variants.append([network, name, s["buckets"], s["widths"], *forced, harness.seconds(mixed),
                             f"{t['default', 'mixed'] / mixed:.2f}×", *costs, share, upscale])
    return main, variants


def tile_loop_row(network, reps, spec, counts, t, times, variants):
    """Loop, bucketed Upscaler per variant, Σ own and the best-compute bound."""
    own = sum(t["own", k] for k in range(spec.num_branches))
    # Fastest per-tile compute of each branch over the call sizes, times its tile count: no scheme that computes
    # every tile's branch can beat this.
    best = 0.0
    for k, n_k in enumerate(counts):
        per_tile = [t["own", k] / n_k] + [t["calls", k, b] / (n_k - n_k % b) for b in BOUND_BATCHES if n_k >= b]
        best += n_k * min(per_tile)
    row = [f"{network} ({reps} reps)", "/".join(map(str, counts)), harness.spread(times["loop"])]
    for name in ["default", *variants]:
        if (name, "upscale") in t:
            row += [harness.spread(times[name, "upscale"]), f"{t['loop'] / t[name, 'upscale']:.1f}×"]
    return row + [harness.seconds(own), harness.seconds(best), f"{t['loop'] / best:.1f}×"]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("parts", nargs="+", choices=PARTS)
    parser.add_argument("--networks", default="fsrcnn,carn,srresnet",
                        help="comma list of fsrcnn,carn,srresnet,rcan "
                             "(RCAN at full depth takes minutes per round on 2 cores)")
    parser.add_argument("--reps", type=int, default=None, help=f"timed rounds (default per network: {DEFAULT_REPS})")
    parser.add_argument("--rcan-reps", type=int, default=DEFAULT_REPS["rcan"])
    parser.add_argument("--variants", default="", help="comma list of " + ", ".join(VARIANTS))
    parser.add_argument("--size", type=int, default=256, help="LR image side in pixels")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-upscale", action="store_true", help="efficiency: skip the Upscaler.upscale column")
    args = parser.parse_args(argv)
    parts = set(args.parts)
    variants = [v for v in args.variants.split(",") if v]
    for v in variants:
        variant_settings(v)  # refuses unknown names before any work
    networks = args.networks.split(",")
    unknown = [n for n in networks if n not in PAPER_WIDTHS]
    if unknown:
        raise SystemExit(f"unknown network {', '.join(unknown)}: use {', '.join(PAPER_WIDTHS)}")
    print(harness.machine_line(), flush=True)
    main_rows, variant_rows, loop_rows = [], [], []
    for network in networks:
        reps = args.rcan_reps if network == "rcan" else (args.reps or DEFAULT_REPS[network])
        with_upscale = not args.no_upscale and network != "rcan"  # RCAN's 256×256 upscale: ~15 s per round
        spec, counts, settings, t, times = bench_network(network, parts, variants, reps, args.size, args.seed,
                                                         with_upscale)
        print(f"{network}: {reps} rounds, tiles per branch {'/'.join(map(str, counts))}, load average "
              f"{harness.load_average()}", flush=True)
        if "efficiency" in parts:
            row, more = efficiency_rows(network, reps, spec, settings, t)
            main_rows.append(row)
            variant_rows += more
        if "tile-loop" in parts:
            loop_rows.append(tile_loop_row(network, reps, spec, counts, t, times, variants))
    tiles = tiling.full_grid(args.size, args.size).num_tiles
    if main_rows:
        print(f"\n### Routing efficiency, {args.size}×{args.size} LR image ({tiles} tiles), medians\n")
        print(harness.table(["network", "forced 1", "forced 2", "forced 3", "mixed", "Σ own", "mixed / Σ own",
                             "(mixed − classifier) / Σ own", "b3/b1 time", "b3/b1 FLOPs (paper)",
                             "b3/b1 as % of FLOPs ratio", "classifier", "upscale"], main_rows))
    if variant_rows:
        print("\n### Variants, same rounds (speed-up = default mixed / variant mixed)\n")
        print(harness.table(["network", "variant", "buckets", "widths", "forced 1", "forced 2", "forced 3", "mixed",
                             "speed-up", "mixed / Σ own", "(mixed − classifier) / Σ own", "b3/b1 time",
                             "b3/b1 as % of FLOPs ratio", "upscale"], variant_rows))
    if loop_rows:
        shown = ["default"] + [v for v in variants if "widths" not in variant_settings(v)]
        print(f"\n### Bucketed routing against the tile-at-a-time loop, {args.size}×{args.size} LR image ({tiles} "
              f"tiles), median (min–max)\n")
        heads = [h for v in shown for h in (f"Upscaler ({v})", "speed-up")]
        print(harness.table(["network", "tiles per branch", "tile loop (batch 1)", *heads, "Σ own", "best compute",
                             "loop / best compute: bound on any speed-up"], loop_rows))


if __name__ == "__main__":
    main()
