"""Why narrow branches are slower per FLOP on XLA:CPU, and what helps.

  python -m benchmarks.investigations.narrow_widths [--parts convs,grouped,branches,flags,last,batch] [--reps 7]
      [--batch 4] [--rcan-groups 2] [--networks srresnet,rcan,carn]

Parts (batches of --batch 32×32 LR tiles, default 4: the CPU's big bucket; medians of interleaved runs):
- convs: one 3×3 'same' conv C→C at each width C, NHWC/HWIO (the library's layout) against NCHW/OIHW.
- grouped: CARN-M's g=4 grouped 3×3 conv: XLA's native grouped conv, one conv per group, one block-diagonal conv.
- branches: whole ×4 branches of --networks at each paper width, and the same branch computed with zero-padded
  channels (36→48, 50/52→64; outputs asserted equal). RCAN keeps --rcan-groups of its 10 residual groups to keep
  the run short (a block's per-FLOP speed does not depend on the depth). The library computes 50/52-wide
  branches at 64 on a CPU (`models.widen`) because of these rows.
- flags: the unpadded branches again, in one subprocess per XLA:CPU flag set.
- last: the 3×3 conv from C channels to RGB at 128×128, every network's last layer, against one matmul to 27
  channels and 9 shifted adds; then whole branches with that change.
- batch: per-tile time of whole branches run in calls of 1…32 tiles (what the bucket size decides).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import harness
from benchmarks.investigations import conv_forms
from classsr_jax.models import PAPER_WIDTHS, ModelSpec, build_network
from classsr_jax.models import flops as flops_lib
from classsr_jax.models.widen import widen_network_variables

DN = ("NHWC", "HWIO", "NHWC")
PARTS = ("convs", "grouped", "branches", "flags", "last", "batch")
FLAG_SETS = {
    "default": "",
    "oneDNN": "--xla_cpu_use_onednn=true",
    "no XNNPACK": "--xla_cpu_use_xnnpack=false",
    "XNN graph fusion": "--xla_cpu_experimental_xnn_graph_fusion_mode=XNN_GRAPH_FUSION_MODE_GREEDY",
    "fast math": "--xla_cpu_enable_fast_math=true",
}


def conv_nhwc(x, w):
    return jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=DN)


def conv_nchw(x, w):
    return jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NCHW", "OIHW", "NCHW"))


def gflops(flops: float, seconds: float) -> str:
    return f"{flops / seconds / 1e9:.0f}"


def part_convs(reps, batch):
    rng = np.random.default_rng(0)
    widths = (16, 24, 32, 36, 40, 48, 50, 52, 56, 60, 64, 72)
    fns = {}
    for c in widths:
        x = jnp.asarray(rng.random((batch, 32, 32, c), np.float32))
        w = jnp.asarray(rng.normal(size=(3, 3, c, c)).astype(np.float32))
        xt, wt = x.transpose(0, 3, 1, 2), w.transpose(3, 2, 0, 1)
        fns[c, "NHWC"] = lambda f=jax.jit(conv_nhwc), x=x, w=w: f(x, w)
        fns[c, "NCHW"] = lambda f=jax.jit(conv_nchw), x=xt, w=wt: f(x, w)
    t = harness.time_interleaved(fns, reps)
    rows = []
    for c in widths:
        fl = 2 * batch * 1024 * 9 * c * c
        rows.append([c] + [cell for layout in ("NHWC", "NCHW")
                           for cell in (harness.spread(t[c, layout]), gflops(fl, harness.median(t[c, layout])))])
    print(f"\n### One 3×3 conv C→C on {batch}×32×32 (GFLOP/s from the median)\n")
    print(harness.table(["C", "NHWC time", "NHWC GFLOP/s", "NCHW time", "NCHW GFLOP/s"], rows))


def part_grouped(reps, batch):
    rng = np.random.default_rng(0)
    g, widths = 4, (36, 52, 64)
    forms = {"native grouped": lambda x, w, **kw: jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", **kw),
             "per-group convs + concat":
                 lambda x, w, **kw: conv_forms.conv_grouped_as_split(x, w, (1, 1), "SAME", **kw),
             "block-diagonal dense": lambda x, w, **kw: conv_forms.conv_grouped_as_dense(x, w, (1, 1), "SAME", **kw)}
    fns = {}
    for c in widths:
        x = jnp.asarray(rng.random((batch, 32, 32, c), np.float32))
        w = jnp.asarray(rng.normal(size=(3, 3, c // g, c)).astype(np.float32))
        ref = None
        for name, form in forms.items():
            f = jax.jit(lambda x, w, form=form: form(x, w, dimension_numbers=DN, feature_group_count=g))
            out = np.asarray(f(x, w))
            ref = out if ref is None else ref
            err = float(np.abs(out - ref).max() / np.abs(ref).max())
            assert err < 1e-5, f"{name}, C={c}: differs from the native grouped conv by {err}"
            fns[c, name] = lambda f=f, x=x, w=w: f(x, w)
    t = harness.time_interleaved(fns, reps)
    rows = []
    for c in widths:
        fl = 2 * batch * 1024 * 9 * c * c // g
        native_over_split = harness.median(t[c, "native grouped"]) / harness.median(t[c, "per-group convs + concat"])
        rows.append([c, *(f"{harness.spread(t[c, n])} = {gflops(fl, harness.median(t[c, n]))} GF/s" for n in forms),
                     f"{native_over_split:.1f}×"])
    print(f"\n### Grouped 3×3 conv (g=4), C→C on {batch}×32×32 (GFLOP/s of the grouped conv's own MACs)\n")
    print(harness.table(["C", *forms, "native / per-group"], rows))


def branch_times(reps, batch, rcan_groups, networks, padded=True):
    """{label: (median s, spread, true FLOPs per tile of the unpadded branch)} of whole branches."""
    x = jnp.asarray(np.random.default_rng(0).random((batch, 32, 32, 3), np.float32))
    fns, flops = {}, {}
    for network in networks:
        extra = {"n_resgroups": rcan_groups} if network == "rcan" else {}
        for w in PAPER_WIDTHS[network]:
            wides = [w] + ([48 if w <= 40 else 64] if padded and w < 64 else [])
            for p in wides:
                model = build_network(network, w, 4, **extra)
                variables = jax.jit(model.init)(jax.random.PRNGKey(w), x[:1])
                ref = np.asarray(jax.jit(model.apply)(variables, x)) if p != w else None
                if p != w:  # the same branch with zero-padded channels: the same numbers
                    variables = widen_network_variables(network, w, p, 4, variables, extra)
                    model = build_network(network, p, 4, **extra)
                f = jax.jit(model.apply)
                if ref is not None:
                    err = float(np.abs(np.asarray(f(variables, x)) - ref).max())
                    assert err < 1e-4, f"{network} {w}→{p}: padded output differs by {err}"
                label = f"{network} {w}" + (f"→{p}" if p != w else "")
                fns[label] = lambda f=f, v=variables: f(v, x)
                spec = ModelSpec("network", network, (w,), 4, extra)
                flops[label] = flops_lib.model_flops(spec, convention="true").branches[0]
    t = harness.time_interleaved(fns, reps)
    return {k: (harness.median(t[k]), harness.spread(t[k]), flops[k]) for k in fns}


def part_branches(reps, batch, rcan_groups, networks):
    times = branch_times(reps, batch, rcan_groups, networks)
    rows = [[label, s, f"{1e3 * m / batch:.2f}", gflops(fl * batch, m)] for label, (m, s, fl) in times.items()]
    print(f"\n### Whole ×4 branches at batch {batch} (RCAN: {rcan_groups} of 10 residual groups); a→b: width a "
          f"computed at b with zero-padded weights\n")
    print(harness.table(["branch", "time per call", "ms/tile", "GFLOP/s (true FLOPs of the unpadded branch)"], rows))
    for net in networks:
        lo, hi = f"{net} {PAPER_WIDTHS[net][0]}", f"{net} 64"
        if lo in times and hi in times:
            t_ratio, f_ratio = times[hi][0] / times[lo][0], times[hi][2] / times[lo][2]
            print(f"{net}: b3/b1 time {t_ratio:.2f}, FLOPs {f_ratio:.2f}, "
                  f"{100 * t_ratio / f_ratio:.0f} % of the FLOPs ratio")


def part_flags(reps, batch, rcan_groups, networks):
    """One subprocess per flag set: XLA reads XLA_FLAGS once, when the backend starts."""
    results = {}
    for name, flags in FLAG_SETS.items():
        cmd = [sys.executable, "-m", "benchmarks.investigations.narrow_widths", "--flags-child", "--reps", str(reps),
               "--batch", str(batch), "--rcan-groups", str(rcan_groups), "--networks", ",".join(networks)]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, XLA_FLAGS=flags),
                              cwd=harness.REPO)
        if proc.returncode != 0:
            print(f"{name}: failed: {proc.stderr[-2000:]}")
            continue
        line = next(l for l in proc.stdout.splitlines() if l.startswith("RESULT "))
        results[name] = json.loads(line[len("RESULT "):])
        print(f"flags {name!r} ({flags or 'none'}) done, load average {harness.load_average()}", flush=True)
    labels = list(next(iter(results.values())))
    rows = [[label, *(f"{1e3 * results[n][label][0] / batch:.2f}" for n in results)] for label in labels]
    print(f"\n### Whole branches under XLA:CPU flag sets (ms/tile at batch {batch}, one subprocess per set)\n")
    print(harness.table(["branch", *(f"{n} (`{FLAG_SETS[n] or 'none'}`)" for n in results)], rows))


def part_last(reps):
    rng = np.random.default_rng(0)
    batch, widths = 8, (16, 36, 52, 64)
    as_matmul = jax.jit(
        lambda x, w: conv_forms.conv_rgb_as_matmul(x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=DN))
    fns = {}
    for c in widths:
        x = jnp.asarray(rng.random((batch, 128, 128, c), np.float32))
        w = jnp.asarray(rng.normal(size=(3, 3, c, 3)).astype(np.float32))
        err = float(np.abs(np.asarray(jax.jit(conv_nhwc)(x, w)) - np.asarray(as_matmul(x, w))).max())
        assert err < 1e-3, f"C={c}: the matmul form differs by {err}"
        fns[c, "conv"] = lambda f=jax.jit(conv_nhwc), x=x, w=w: f(x, w)
        fns[c, "matmul"] = lambda x=x, w=w: as_matmul(x, w)
    # The same change inside whole branches: every conv to ≤ 4 channels in the matmul form.
    xin = jnp.asarray(rng.random((4, 32, 32, 3), np.float32))
    branches = (("srresnet", 36), ("srresnet", 64), ("carn", 36), ("carn", 64))
    for network, w in branches:
        model = build_network(network, w, 4)
        variables = jax.jit(model.init)(jax.random.PRNGKey(0), xin[:1])
        for form, ctx in (("conv", contextlib.nullcontext), ("matmul", conv_forms.rgb_convs_as_matmul)):
            f = jax.jit(lambda v, x, model=model: model.apply(v, x))
            with ctx():  # traced (and compiled) here, so the program keeps the form
                jax.block_until_ready(f(variables, xin))
            fns[f"{network} {w}", form] = lambda f=f, v=variables: f(v, xin)
    t = harness.time_interleaved(fns, reps)
    m = lambda key: harness.median(t[key])
    rows = [[c, harness.spread(t[c, "conv"]), harness.spread(t[c, "matmul"]),
             f"{m((c, 'conv')) / m((c, 'matmul')):.1f}×", gflops(2 * batch * 128 * 128 * 27 * c, m((c, "conv")))]
            for c in widths]
    print(f"\n### The last conv C→3 (3×3) at 128×128, {batch} tiles\n")
    print(harness.table(["C", "lax conv", "matmul to 27 channels + 9 shifted adds", "speed-up", "conv GFLOP/s"], rows))
    rows = [[f"{net} {w}", f"{1e3 * m((f'{net} {w}', 'conv')) / 4:.2f}", f"{1e3 * m((f'{net} {w}', 'matmul')) / 4:.2f}",
             f"{m((f'{net} {w}', 'conv')) / m((f'{net} {w}', 'matmul')):.2f}×"] for net, w in branches]
    print("\nWhole branches at batch 4, ms/tile:\n")
    print(harness.table(["branch", "library conv", "matmul + shifts", "speed-up"], rows))


def part_batch(reps):
    """Per-tile time of whole branches when 32 tiles run in calls of 1, 2, 4, 8, 16 or 32 tiles."""
    n, sizes = 32, (1, 2, 4, 8, 16, 32)
    x = jnp.asarray(np.random.default_rng(0).random((n, 32, 32, 3), np.float32))
    cases = (("srresnet", 36), ("srresnet", 64), ("rcan", 64), ("carn", 36), ("carn", 64), ("fsrcnn", 56))
    fns = {}
    for network, w in cases:
        model = build_network(network, w, 4, **({"n_resgroups": 2} if network == "rcan" else {}))
        variables = jax.jit(model.init)(jax.random.PRNGKey(0), x[:1])
        f = jax.jit(model.apply)
        for b in sizes:
            calls = [x[i:i + b] for i in range(0, n, b)]
            fns[network, w, b] = lambda f=f, v=variables, calls=calls: [f(v, c) for c in calls]
    t = harness.time_interleaved(fns, reps)
    rows = []
    for network, w in cases:
        per_tile = [1e3 * harness.median(t[network, w, b]) / n for b in sizes]
        rows.append([f"{network} {w}", *(f"{v:.2f}" for v in per_tile), f"{per_tile[-1] / min(per_tile):.2f}×"])
    print(f"\n### Batch size: ms per tile when {n} tiles run in calls of b tiles (RCAN: 2 of 10 groups)\n")
    print(harness.table(["branch", *(f"b={b}" for b in sizes), "b=32 / best"], rows))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default=",".join(PARTS), help="comma list of " + ", ".join(PARTS))
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--rcan-groups", type=int, default=2)
    parser.add_argument("--networks", default="srresnet,rcan,carn", help="branches and flags: the networks")
    parser.add_argument("--flags-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    networks = args.networks.split(",")
    if args.flags_child:
        times = branch_times(args.reps, args.batch, args.rcan_groups, networks, padded=False)
        print("RESULT " + json.dumps({k: [m, fl] for k, (m, _, fl) in times.items()}))
        return
    parts = args.parts.split(",")
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        raise SystemExit(f"unknown part {', '.join(unknown)}: use {', '.join(PARTS)}")
    print(harness.machine_line(), flush=True)
    if "convs" in parts:
        part_convs(args.reps, args.batch)
    if "grouped" in parts:
        part_grouped(args.reps, args.batch)
    if "branches" in parts:
        part_branches(args.reps, args.batch, args.rcan_groups, networks)
    if "flags" in parts:
        part_flags(max(1, args.reps - 2), args.batch, args.rcan_groups, networks)
    if "last" in parts:
        part_last(args.reps)
    if "batch" in parts:
        part_batch(args.reps)


if __name__ == "__main__":
    main()
