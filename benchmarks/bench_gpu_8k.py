"""ClassSR-RCAN against RCAN-O end to end on an 8K output, on a GPU (issue 3, item 9).

  python -m benchmarks.bench_gpu_8k [--checkpoint CKPT] [--repeats 5] [--precision default|highest]

LR 1920×1080 → 7680×4320 (×4, full protocol, the library's GPU defaults: chunks of 1024 tiles, buckets 32/8), 3600
tiles. Three upscalers share the image:
- ClassSR-RCAN, mixed routing (the classifier's own decisions);
- ClassSR-RCAN with every tile forced to branch 3 (what the routing machinery costs against RCAN-O);
- RCAN-O alone: branch 3 of the same weights as a single network (`spec.branch(2)`), no classifier.

Without --checkpoint the weights are random and the Class-Module's last layer is re-fitted so that a third
of the tiles goes to each branch (`routing_common.tertile_classifier`); with a converted ClassSR-RCAN checkpoint
(`python -m classsr_jax.convert --model rcan --input ClassSR_RCAN.pth --output CKPT`) its classifier decides.
Each upscaler runs once untimed (compilation), then --repeats interleaved timed runs; the table gives
median (min–max) seconds, the paper's FLOPs figure and the executed FLOPs, and the GPU's peak memory.

The other GPU rows of item 9 come from the CPU scripts run unchanged on the GPU machine:
  python -m benchmarks.bench_routing --networks fsrcnn,carn,srresnet,rcan --reps 9 --rcan-reps 9
  python -m benchmarks.bench_tile_loop --networks fsrcnn,carn,srresnet,rcan --reps 9
  python -m benchmarks.bench_fsrcnn_deconv
This one needs a GPU: on a CPU it stops unless --allow-cpu is given (RCAN-O on an 8K output is ~120 TFLOPs).
"""

from __future__ import annotations

import argparse

import jax
import numpy as np

from benchmarks import routing_common as C


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", default=None, help="a converted ClassSR-RCAN checkpoint (default: random weights)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--height", type=int, default=1080)
    parser.add_argument("--width", type=int, default=1920)
    parser.add_argument("--precision", choices=("default", "highest"), default="default",
                        help="jax_default_matmul_precision: 'default' lets the GPU use TF32 for f32 convs")
    parser.add_argument("--allow-cpu", action="store_true")
    args = parser.parse_args()
    if jax.default_backend() == "cpu" and not args.allow_cpu:
        raise SystemExit("bench_gpu_8k needs a GPU (jax.default_backend() is 'cpu'); pass --allow-cpu to run it anyway")
    if args.precision == "highest":
        jax.config.update("jax_default_matmul_precision", "highest")

    from classsr_jax import flops as flops_lib
    from classsr_jax import tiling
    from classsr_jax.checkpointing import load_model
    from classsr_jax.inference import Upscaler
    from classsr_jax.models import PAPER_WIDTHS, ModelSpec

    print(f"machine: {C.machine_line()}; precision {args.precision}", flush=True)
    h, w = args.height, args.width
    lr = C.photo_like(h, w, seed=0)
    grid = tiling.full_grid(h, w)
    if args.checkpoint:
        loaded = load_model(args.checkpoint)
        spec, variables = loaded.spec, loaded.variables
        if spec.kind != "classsr" or spec.network != "rcan":
            raise SystemExit(f"{args.checkpoint} is not a ClassSR-RCAN checkpoint")
        weights = f"checkpoint {args.checkpoint}"
    else:
        spec = ModelSpec("classsr", "rcan", PAPER_WIDTHS["rcan"], 4)
        sample = np.sort(np.random.default_rng(0).choice(grid.num_tiles, size=min(1024, grid.num_tiles), replace=False))
        variables = C.tertile_classifier(spec, spec.init(), tiling.extract_tiles(lr, grid, sample))
        weights = "random weights, classifier re-fitted to thirds"
    last = spec.num_branches
    spec_o = spec.branch(last - 1)
    vars_o = {"params": variables["params"][f"net{last}"]}

    ups = {
        "ClassSR-RCAN (mixed)": Upscaler(spec, variables),
        "ClassSR-RCAN forced to branch 3": Upscaler(spec, variables, force_class=last - 1),
        "RCAN-O": Upscaler(spec_o, vars_o),
    }
    results, compile_s = {}, {}
    for name, up in ups.items():
        r = up.upscale(lr)
        results[name] = r
        compile_s[name] = r.compile_s
    times = C.time_interleaved({name: (lambda up=up: up.upscale(lr).sr) for name, up in ups.items()}, args.repeats,
                               warmup=0)
    fl = flops_lib.model_flops(spec)
    base = C.med(times["RCAN-O"])
    print(f"\n### ClassSR-RCAN against RCAN-O, LR {w}×{h} → {4 * w}×{4 * h}, {grid.num_tiles} tiles, ×4 RCAN, {weights}, "
          f"median (min–max) of {args.repeats} interleaved runs\n")
    print("| model | class counts | FLOPs/tile (paper) | % of RCAN-O | executed TFLOPs | time | speed-up over RCAN-O | compile s |")
    print("|---|---|---|---|---|---|---|---|")
    for name, r in results.items():
        flops_fig = r.flops if name != "RCAN-O" else fl.original
        print(f"| {name} | {'/'.join(map(str, r.class_counts))} | {flops_lib.format_flops(flops_fig)} | "
              f"{100 * flops_fig / fl.original:.0f} % | {r.executed_flops / 1e12:.1f} | {C.spread(times[name])} | "
              f"{base / C.med(times[name]):.2f}× | {compile_s[name]:.1f} |")
    mixed = results["ClassSR-RCAN (mixed)"]
    ideal = fl.original / mixed.flops
    got = base / C.med(times["ClassSR-RCAN (mixed)"])
    print(f"\nFLOPs say ClassSR-RCAN should be {ideal:.2f}× faster than RCAN-O on this routing; measured {got:.2f}× "
          f"({100 * got / ideal:.0f} % of the FLOPs speed-up).")
    try:
        stats = jax.devices()[0].memory_stats() or {}
        if "peak_bytes_in_use" in stats:
            print(f"Peak device memory: {stats['peak_bytes_in_use'] / 2**30:.2f} GiB.")
    except Exception:  # memory_stats is backend dependent
        pass


if __name__ == "__main__":
    main()
