"""Routing efficiency on one 256×256 LR image (issue 3, item 9): forced branches, mixed routing, own times.

  python -m benchmarks.bench_routing [--networks fsrcnn,carn,srresnet,rcan] [--reps N] [--rcan-reps 3]
      [--variants accelerator,chunks:64/128,buckets:8/2,widths:36/52/64]

For each ×4 ClassSR network (random-initialised weights, whose Class-Module's last layer is re-fitted so that
it sends a third of the tiles to each branch, see `routing_common.tertile_classifier`), on the 121 tiles of a 256×256
photo-like LR image (full protocol, 32×32 tiles with 8 px overlap):

- forced k: the routed program (`RoutedModel.route`, the chunk exactly as `Upscaler` builds it: 121 tiles
  padded to a chunk of 256) with every tile forced to branch k;
- mixed: the same program with the classifier's own decisions (≈ 1/3 of the tiles per branch);
- own k: branch k alone, a plain jitted batched apply on exactly its n_k tiles of the mixed routing;
- upscale: `Upscaler.upscale` of the whole image, mixed routing (tiling and merging on the host included).

Targets: (i) mixed ≤ 1.10 × Σ own; (ii) forced-3 / forced-1 time ≥ 60 % (CPU) or 85 % (GPU) of the FLOPs ratio
for SRResNet and RCAN. Compile time is excluded (one untimed warm-up round); every variant is timed in the
same interleaved rounds, so the ratios compare like with like under the machine's varying load.

--variants adds rows measured in the same run, so that other settings compare like with like (nothing in
`classsr_jax` is edited): accelerator (the GPU/TPU defaults: chunks of 64/256/1024 tiles, buckets 32/8),
chunks:A/B/... (Upscaler chunk sizes), buckets:B/S (Buckets(big=B, small=S)), widths:A/B/C (branches computed at these
widths with zero-padded weights, `models.widen`; widths:36/52/64 turns the CPU default's widening off). "default"
is the library's default for this backend (`default_chunk_sizes`, `default_buckets`, `default_compute_widths`).
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import routing_common as C
from classsr_jax import flops as flops_lib
from classsr_jax import tiling
from classsr_jax.inference import ACCELERATOR_CHUNK_SIZES, Upscaler
from classsr_jax.models import PAPER_WIDTHS, ModelSpec
from classsr_jax.routing import ACCELERATOR_BUCKETS, Buckets, RoutedModel

DEFAULT_REPS = {"fsrcnn": 9, "carn": 5, "srresnet": 5, "rcan": 3}
VARIANTS = ("accelerator", "chunks:A/B/...", "buckets:B/S", "widths:A/B/C")


def variant_config(name: str, network: str):
    """(chunk sizes, buckets, compute widths) of a variant (None: the library defaults)."""
    chunks, buckets, widths = None, None, None
    if name == "default":
        pass
    elif name == "accelerator":
        chunks, buckets = ACCELERATOR_CHUNK_SIZES, ACCELERATOR_BUCKETS
    elif name.startswith("chunks:"):
        chunks = tuple(int(v) for v in name.split(":", 1)[1].split("/"))
    elif name.startswith("buckets:"):
        big, small = (int(v) for v in name.split(":", 1)[1].split("/"))
        buckets = Buckets(big, small)
    elif name.startswith("widths:"):
        widths = tuple(int(v) for v in name.split(":", 1)[1].split("/"))
    else:
        raise ValueError(f"unknown variant {name!r}: use {', '.join(VARIANTS)}")
    return chunks, buckets, widths


def bench_network(network: str, reps: int, variants: list[str], size: int, seed: int, upscale: bool):
    spec = ModelSpec("classsr", network, PAPER_WIDTHS[network], 4)
    image = C.photo_like(size, size, seed)
    grid = tiling.full_grid(size, size)
    tiles = tiling.extract_tiles(image, grid).astype(np.float32)
    n = len(tiles)
    variables = C.tertile_classifier(spec, spec.init(seed=seed), tiles)
    offsets = np.zeros(spec.num_branches, np.float32)

    fns, info = {}, {}
    for name in ["default", *variants]:
        cfg = variant_config(name, network)
        if cfg is None:
            continue
        chunks, buckets, widths = cfg
        if widths is not None and len(widths) != spec.num_branches:
            continue  # widths written for another network
        routed = RoutedModel(spec, buckets, compute_widths=widths)
        placed = routed.place_variables(variables)
        m = C.chunk_size(n, chunks)
        padded = np.zeros((m, *tiles.shape[1:]), np.float32)
        padded[:n] = tiles
        valid = np.arange(m) < n
        info[name] = dict(chunk=m, buckets=routed.buckets, widths=routed.compute_spec.widths)

        def route(force, routed=routed, placed=placed, padded=padded, valid=valid):
            return routed.route(placed, padded, valid, offsets, force)

        for k in range(spec.num_branches):
            fns[name, f"forced{k + 1}"] = lambda k=k, route=route: route(k)
        fns[name, "mixed"] = lambda route=route: route(-1)

    # The mixed routing's decisions, checked against the plain branches below.
    sr, classes, _, counts = fns["default", "mixed"]()
    classes = np.asarray(classes)[:n]
    counts = np.bincount(classes, minlength=spec.num_branches)
    if (counts == 0).any():
        raise RuntimeError(f"the mixed routing left a branch empty: {counts}")
    sr = np.asarray(sr)[:n]

    model = spec.build()
    dvars = jax.device_put(variables)
    for k in range(spec.num_branches):
        f = C.branch_apply(spec, k)
        xk = jnp.asarray(tiles[classes == k])
        fns["own", f"own{k + 1}"] = lambda f=f, xk=xk: f(dvars, xk)
        out = np.asarray(fns["own", f"own{k + 1}"]())
        err = float(np.abs(out - sr[classes == k]).max())
        if err > 1e-3:
            raise AssertionError(f"{network}: routed tiles of branch {k + 1} differ from the branch alone by {err}")
    classify = jax.jit(lambda v, x: model.apply(v, x, method=model.classify))
    for m in sorted({i["chunk"] for i in info.values()}):
        chunk = jnp.asarray(np.concatenate([tiles, np.zeros((m - n, *tiles.shape[1:]), np.float32)]))
        fns["classifier", m] = lambda chunk=chunk: classify(dvars, chunk)
    if upscale:
        up = Upscaler(spec, variables)
        fns["upscale", "mixed"] = lambda: up.upscale(image).sr

    t0 = time.perf_counter()
    times = C.time_interleaved({key: f for key, f in fns.items()}, reps)
    wall = time.perf_counter() - t0
    return spec, counts, info, times, wall


def report(network, spec, counts, info, times, upscale):
    fl = flops_lib.model_flops(spec)
    fl_true = flops_lib.model_flops(spec, convention="true")
    ratio_paper = fl.branches[-1] / fl.branches[0]
    ratio_true = fl_true.branches[-1] / fl_true.branches[0]
    t = lambda key: C.med(times[key])
    rows = []
    for name in info:
        own_sum = sum(t(("own", f"own{k + 1}")) for k in range(spec.num_branches))
        b31 = t((name, "forced3")) / t((name, "forced1"))
        pct = f"{100 * b31 / ratio_paper:.0f} %"
        if network == "fsrcnn":
            pct += f" (true: {100 * b31 / ratio_true:.0f} %)"
        machinery = (t((name, "mixed")) - t(("classifier", info[name]["chunk"]))) / own_sum
        rows.append((name, t((name, "forced1")), t((name, "forced2")), t((name, "forced3")), t((name, "mixed")),
                     own_sum, t((name, "mixed")) / own_sum, b31, pct, info[name], machinery))
    own_rate = []
    for k in range(spec.num_branches):
        per_tile = t(("own", f"own{k + 1}")) / counts[k]
        own_rate.append((per_tile, fl_true.branches[k] / per_tile / 1e9))
    plain_b31 = own_rate[-1][0] / own_rate[0][0]
    return dict(network=network, rows=rows, own_rate=own_rate, plain_b31=plain_b31, ratio_paper=ratio_paper,
                ratio_true=ratio_true, classifier=t(("classifier", info["default"]["chunk"])),
                upscale=t(("upscale", "mixed")) if upscale else None, counts=counts,
                spread={k: C.spread(v) for k, v in times.items()})


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--networks", default="fsrcnn,carn,srresnet",
                        help="comma list of fsrcnn,carn,srresnet,rcan (rcan at full depth takes ~8 min on 2 CPU cores)")
    parser.add_argument("--reps", type=int, default=None, help="timed rounds (default per network: %s)" % DEFAULT_REPS)
    parser.add_argument("--rcan-reps", type=int, default=DEFAULT_REPS["rcan"])
    parser.add_argument("--variants", default="", help="comma list of " + ",".join(VARIANTS))
    parser.add_argument("--size", type=int, default=256, help="LR image side")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-upscale", action="store_true", help="skip the end-to-end Upscaler.upscale column")
    args = parser.parse_args()
    variants = [v for v in args.variants.split(",") if v]
    for v in variants:
        variant_config(v, "carn")  # validates the name
    print(f"machine: {C.machine_line()}; load average before: {C.load_average()}", flush=True)
    results = []
    for network in args.networks.split(","):
        reps = args.rcan_reps if network == "rcan" else (args.reps or DEFAULT_REPS[network])
        upscale = not args.no_upscale and network != "rcan"
        spec, counts, info, times, wall = bench_network(network, reps, variants, args.size, args.seed, upscale)
        r = report(network, spec, counts, info, times, upscale)
        r["reps"], r["wall"] = reps, wall
        results.append(r)
        print(f"{network}: {reps} timed rounds in {wall:.0f} s, load average {C.load_average()}", flush=True)
        for key, s in r["spread"].items():
            print(f"  {key}: median {s}")

    print(f"\n### Routing efficiency, 256×256 LR image ({'/'.join(str(c) for c in results[0]['counts'])} tiles of "
          f"{sum(results[0]['counts'])} per branch in the mixed routing), median of the timed rounds\n")
    print("| network | forced 1 | forced 2 | forced 3 | mixed | Σ own (n_k tiles) | mixed / Σ own "
          "| (mixed − classifier) / Σ own | b3/b1 time | FLOPs b3/b1 (paper) | b3/b1 as % of FLOPs ratio "
          "| plain b3/b1 % | classifier (chunk) | upscale (mixed) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        name, f1, f2, f3, mx, own, mo, b31, pct, _, mach = r["rows"][0]
        plain = f"{100 * r['plain_b31'] / r['ratio_paper']:.0f} %"
        if r["network"] == "fsrcnn":
            plain += f" (true: {100 * r['plain_b31'] / r['ratio_true']:.0f} %)"
        up = C.fmt_s(r["upscale"]) if r["upscale"] is not None else "—"
        ratio = f"{r['ratio_paper']:.2f}"
        if r["network"] == "fsrcnn":
            ratio += f" (true {r['ratio_true']:.2f})"
        print(f"| {r['network']} ({r['reps']} reps) | {C.fmt_s(f1)} | {C.fmt_s(f2)} | {C.fmt_s(f3)} | {C.fmt_s(mx)} | "
              f"{C.fmt_s(own)} | {mo:.2f} | {mach:.2f} | {b31:.2f} | {ratio} | {pct} | {plain} | {C.fmt_s(r['classifier'])} | {up} |")
    print("\nPer-branch speed of the plain batched apply (own k, true FLOPs):\n")
    print("| network | branch 1 ms/tile (GFLOP/s) | branch 2 | branch 3 |\n|---|---|---|---|")
    for r in results:
        cells = " | ".join(f"{1e3 * pt:.2f} ({gf:.0f})" for pt, gf in r["own_rate"])
        print(f"| {r['network']} | {cells} |")
    if variants:
        print("\n### Variants, same runs (route program; speed-up = default mixed / variant mixed)\n")
        print("| network | variant | chunk | buckets | widths | forced 1 | forced 2 | forced 3 | mixed | speed-up "
              "| mixed / Σ own | (mixed − classifier) / Σ own | b3/b1 % of FLOPs ratio |")
        print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        for r in results:
            base = r["rows"][0][4]
            for name, f1, f2, f3, mx, own, mo, b31, pct, inf, mach in r["rows"]:
                b = inf["buckets"]
                print(f"| {r['network']} | {name} | {inf['chunk']} | {b.big}/{b.small} | {'/'.join(map(str, inf['widths']))}"
                      f" | {C.fmt_s(f1)} | {C.fmt_s(f2)} | {C.fmt_s(f3)} | "
                      f"{C.fmt_s(mx)} | {base / mx:.2f}× | {mo:.2f} | {mach:.2f} | {pct} |")


if __name__ == "__main__":
    main()
