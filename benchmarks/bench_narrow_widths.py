"""Why narrow branches are slower per FLOP on XLA:CPU, and what helps (issue 3, item 9 investigation).

  python -m benchmarks.bench_narrow_widths [--parts convs,grouped,branches,flags,last,batch] [--reps 7]
      [--rcan-groups 2] [--batch 4]

Parts (on batches of --batch tiles of 32×32 LR pixels, default 4: the CPU's big bucket; medians of interleaved runs):
- convs: one 3×3 'same' conv C→C at each width C, NHWC/HWIO (what the library uses) against NCHW/OIHW.
- grouped: CARN-M's g=4 grouped 3×3 conv: XLA's native grouped conv, per-group convs + concat, one
  block-diagonal dense conv.
- branches: whole ×4 branches at each paper width, and the same branch computed with zero-padded channels
  (36→48, 50/52→64; outputs asserted equal), SRResNet, RCAN (with --rcan-groups of its 10 residual groups,
  default 2, to keep the run short: the per-FLOP behaviour of a block does not depend on the depth) and
  CARN-M. The library computes 50/52-wide branches at 64 on a CPU (`models.widen`) because of these rows.
- flags: the unpadded branch rows again in one subprocess per XLA:CPU flag set (oneDNN, no XNNPACK, XNNPACK
  graph fusion, fast math).
- last: the 3×3 conv from C channels to 3 (RGB) at 128×128, every network's last layer, against computing it
  as one matmul to 27 channels followed by 9 shifted adds; then whole branches with that change.
- batch: per-tile time of whole branches run in calls of 1…32 tiles (what the bucket size decides).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import routing_common as C

DN = ("NHWC", "HWIO", "NHWC")
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
    t = C.time_interleaved(fns, reps)
    print(f"\n### One 3×3 conv C→C on {batch}×32×32 (GFLOP/s from the median; min–max time)\n")
    print("| C | NHWC ms | NHWC GFLOP/s | NCHW ms | NCHW GFLOP/s |\n|---|---|---|---|---|")
    for c in widths:
        fl = 2 * batch * 1024 * 9 * c * c
        a, b = C.med(t[c, "NHWC"]), C.med(t[c, "NCHW"])
        print(f"| {c} | {C.spread(t[c, 'NHWC'])} | {fl / a / 1e9:.0f} | {C.spread(t[c, 'NCHW'])} | {fl / b / 1e9:.0f} |")


def part_grouped(reps, batch):
    rng = np.random.default_rng(0)
    g = 4
    fns = {}
    for c in (36, 52, 64):
        x = jnp.asarray(rng.random((batch, 32, 32, c), np.float32))
        w = jnp.asarray(rng.normal(size=(3, 3, c // g, c)).astype(np.float32))
        native = jax.jit(lambda x, w: jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=DN,
                                                                  feature_group_count=g))
        split = jax.jit(lambda x, w: C.conv_grouped_as_split(x, w, (1, 1), "SAME", dimension_numbers=DN,
                                                             feature_group_count=g))
        dense = jax.jit(lambda x, w: C.conv_grouped_as_dense(x, w, (1, 1), "SAME", dimension_numbers=DN,
                                                             feature_group_count=g))
        ref = np.asarray(native(x, w))
        for name, f in (("native", native), ("per-group", split), ("block-diagonal", dense)):
            err = float(np.abs(np.asarray(f(x, w)) - ref).max() / np.abs(ref).max())
            assert err < 1e-5, (name, c, err)
            fns[c, name] = lambda f=f, x=x, w=w: f(x, w)
    t = C.time_interleaved(fns, reps)
    print(f"\n### Grouped 3×3 conv (g=4), C→C on {batch}×32×32 (useful GFLOP/s = the grouped conv's MACs × 2)\n")
    print("| C | native grouped | per-group convs + concat | block-diagonal dense | native / per-group |")
    print("|---|---|---|---|---|")
    for c in (36, 52, 64):
        fl = 2 * batch * 1024 * 9 * c * c // g
        cells = " | ".join(f"{C.spread(t[c, n])} = {fl / C.med(t[c, n]) / 1e9:.0f} GF/s"
                           for n in ("native", "per-group", "block-diagonal"))
        print(f"| {c} | {cells} | {C.med(t[c, 'native']) / C.med(t[c, 'per-group']):.1f}× |")


def branch_rows(reps, batch, rcan_groups, padded=True, networks=("srresnet", "rcan", "carn")):
    """{label: (median s, per-tile true FLOPs)} of whole branches, and the padded-equality checks."""
    from classsr_jax import flops as flops_lib
    from classsr_jax.models import PAPER_WIDTHS, ModelSpec, build_network
    from classsr_jax.models.widen import widen_network_variables

    x = jnp.asarray(np.random.default_rng(0).random((batch, 32, 32, 3), np.float32))
    fns, fl, order = {}, {}, []
    for network in networks:
        extra = {"n_resgroups": rcan_groups} if network == "rcan" else {}
        for w in PAPER_WIDTHS[network]:
            targets = [w]
            if padded and w < 64:
                targets.append(48 if w <= 40 else 64)
            for p in targets:
                model = build_network(network, w, 4, **extra)
                variables = jax.jit(model.init)(jax.random.PRNGKey(w), x[:1])
                ref = None
                if p != w:
                    ref = np.asarray(jax.jit(model.apply)(variables, x[:4]))
                    variables = widen_network_variables(network, w, p, 4, variables, extra)
                    model = build_network(network, p, 4, **extra)
                f = jax.jit(model.apply)
                out = np.asarray(f(variables, x[:4]))
                if ref is not None:
                    err = float(np.abs(out - ref).max())
                    assert err < 1e-4, f"{network} {w}→{p}: padded output differs by {err}"
                label = f"{network} {w}" + (f"→{p}" if p != w else "")
                fns[label] = lambda f=f, v=variables: f(v, x)
                spec = ModelSpec("network", network, (w,), 4, extra)
                fl[label] = flops_lib.model_flops(spec, convention="true").branches[0]
                order.append(label)
    t = C.time_interleaved(fns, reps)
    return {k: (C.med(t[k]), fl[k], C.spread(t[k])) for k in order}


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def print_branches(rows, batch, title):
    from classsr_jax.models import PAPER_WIDTHS

    print(f"\n### {title}\n")
    print("| branch | time per call (min–max) | ms/tile | GFLOP/s (true FLOPs of the unpadded branch) |")
    print("|---|---|---|---|")
    for label, (t, fl, s) in rows.items():
        print(f"| {label} | {s} | {1e3 * t / batch:.2f} | {fl * batch / t / 1e9:.0f} |")
    print()
    for label in rows:
        net, w = label.split(" ")
        if "→" in w or int(w) != PAPER_WIDTHS[net][0]:
            continue
        hi = f"{net} 64"
        if hi in rows:
            ratio = rows[hi][0] / rows[label][0]
            flops_ratio = rows[hi][1] / rows[label][1]
            print(f"{net}: b3/b1 time {ratio:.2f}, FLOPs {flops_ratio:.2f}, {100 * ratio / flops_ratio:.0f} % of the FLOPs ratio")


def part_flags(reps, batch, rcan_groups):
    results = {}
    for name, flags in FLAG_SETS.items():
        env = dict(os.environ, XLA_FLAGS=flags)
        cmd = [sys.executable, "-m", "benchmarks.bench_narrow_widths", "--flags-child", "--reps", str(reps),
               "--batch", str(batch), "--rcan-groups", str(rcan_groups)]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            print(f"{name}: failed: {proc.stderr[-2000:]}")
            continue
        line = next(l for l in proc.stdout.splitlines() if l.startswith("RESULT "))
        results[name] = json.loads(line[len("RESULT "):])
        print(f"flags {name!r} ({flags or 'none'}) done, load average {C.load_average()}", flush=True)
    labels = list(next(iter(results.values())))
    print(f"\n### Whole branches under XLA:CPU flag sets (ms/tile at batch {batch}, one subprocess per set)\n")
    print("| branch | " + " | ".join(f"{n} (`{FLAG_SETS[n] or 'none'}`)" for n in results) + " |")
    print("|---|" + "---|" * len(results))
    for label in labels:
        print(f"| {label} | " + " | ".join(f"{1e3 * results[n][label][0] / batch:.2f}" for n in results) + " |")
    from classsr_jax.models import PAPER_WIDTHS

    for net in ("srresnet", "rcan", "carn"):
        lo, hi = f"{net} {PAPER_WIDTHS[net][0]}", f"{net} 64"
        if lo in labels and hi in labels:
            cells = []
            for n in results:
                r = results[n]
                cells.append(f"{n}: {100 * (r[hi][0] / r[lo][0]) / (r[hi][1] / r[lo][1]):.0f} %")
            print(f"{net} b3/b1 as % of the FLOPs ratio — " + ", ".join(cells))


def part_last(reps):
    rng = np.random.default_rng(0)
    batch = 8

    def taps_matmul(x, w):
        k, _, ci, co = w.shape
        n, h, wd, _ = x.shape
        z = jnp.einsum("nhwc,co->nhwo", x, w.transpose(2, 0, 1, 3).reshape(ci, k * k * co))
        z = jnp.pad(z.reshape(n, h, wd, k * k, co), ((0, 0), (1, 1), (1, 1), (0, 0), (0, 0)))
        return sum(z[:, i:i + h, j:j + wd, i * k + j, :] for i in range(k) for j in range(k))

    fns = {}
    for c in (16, 36, 52, 64):
        x = jnp.asarray(rng.random((batch, 128, 128, c), np.float32))
        w = jnp.asarray(rng.normal(size=(3, 3, c, 3)).astype(np.float32))
        a, b = jax.jit(conv_nhwc), jax.jit(taps_matmul)
        err = float(np.abs(np.asarray(a(x, w)) - np.asarray(b(x, w))).max())
        assert err < 1e-3, err
        fns[c, "conv"] = lambda f=a, x=x, w=w: f(x, w)
        fns[c, "matmul + shifts"] = lambda f=b, x=x, w=w: f(x, w)
    # The same change inside whole branches (every k×k conv to ≤ 4 channels as matmul + shifts).
    from classsr_jax.models import build_network

    xin = jnp.asarray(rng.random((4, 32, 32, 3), np.float32))
    for network, w, base in (("srresnet", 36, None), ("srresnet", 64, None), ("carn", 36, None), ("carn", 64, None)):
        model = build_network(network, w, 4)
        variables = jax.jit(model.init)(jax.random.PRNGKey(0), xin[:1])
        for mode in (base, "split+rgb-matmul" if base else "rgb-matmul"):
            f = jax.jit(lambda v, x, model=model: model.apply(v, x))
            ctx = C.grouped_conv_as_split(mode) if mode else _null()
            with ctx:
                jax.block_until_ready(f(variables, xin))
            fns[f"{network} {w}", mode or "library"] = lambda f=f, v=variables: f(v, xin)
    t = C.time_interleaved(fns, reps)
    print(f"\n### The last conv C→3 (3×3) at 128×128, {batch} tiles\n")
    print("| C | lax conv | matmul to 27 channels + 9 shifted adds | speed-up | conv GFLOP/s |\n|---|---|---|---|---|")
    for c in (16, 36, 52, 64):
        fl = 2 * batch * 128 * 128 * 27 * c
        print(f"| {c} | {C.spread(t[c, 'conv'])} | {C.spread(t[c, 'matmul + shifts'])} | "
              f"{C.med(t[c, 'conv']) / C.med(t[c, 'matmul + shifts']):.1f}× | {fl / C.med(t[c, 'conv']) / 1e9:.0f} |")
    print("\nWhole branches at batch 4 with every conv to ≤ 4 channels in the matmul form (ms/tile):\n")
    print("| branch | library conv | matmul + shifts | speed-up |\n|---|---|---|---|")
    for key in sorted({k[0] for k in fns if isinstance(k[0], str)}):
        a, b = [k for k in fns if k[0] == key]
        print(f"| {key} | {1e3 * C.med(t[a]) / 4:.2f} | "
              f"{1e3 * C.med(t[b]) / 4:.2f} | {C.med(t[a]) / C.med(t[b]):.2f}× |")


def part_batch(reps):
    """Per-tile time of whole branches when 32 tiles are run in calls of 1, 2, 4, 8, 16 or 32 tiles."""
    from classsr_jax.models import build_network

    n = 32
    x = jnp.asarray(np.random.default_rng(0).random((n, 32, 32, 3), np.float32))
    sizes = (1, 2, 4, 8, 16, 32)
    cases = (("srresnet", 36, None), ("srresnet", 64, None), ("rcan", 64, None), ("carn", 36, None),
             ("carn", 64, None), ("fsrcnn", 56, None))
    fns = {}
    for network, w, mode in cases:
        extra = {"n_resgroups": 2} if network == "rcan" else {}
        model = build_network(network, w, 4, **extra)
        variables = jax.jit(model.init)(jax.random.PRNGKey(0), x[:1])
        for b in sizes:
            f = jax.jit(lambda v, x, model=model: model.apply(v, x))
            parts = [x[i:i + b] for i in range(0, n, b)]
            with (C.grouped_conv_as_split(mode) if mode else _null()):
                jax.block_until_ready(f(variables, parts[0]))
            fns[network, w, b] = lambda f=f, v=variables, parts=parts: [f(v, p) for p in parts]
    t = C.time_interleaved(fns, reps)
    print(f"\n### Batch size: ms per tile when {n} tiles run in calls of b tiles (RCAN: 2 of 10 groups)\n")
    print("| branch | " + " | ".join(f"b={b}" for b in sizes) + " | b=32 / best |")
    print("|---|" + "---|" * (len(sizes) + 1))
    for network, w, mode in cases:
        per = [1e3 * C.med(t[network, w, b]) / n for b in sizes]
        label = f"{network} {w}"
        print(f"| {label} | " + " | ".join(f"{v:.2f}" for v in per) + f" | {per[-1] / min(per):.2f}× |")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--parts", default="convs,grouped,branches,flags,last,batch")
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--rcan-groups", type=int, default=2)
    parser.add_argument("--flags-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.flags_child:
        rows = branch_rows(args.reps, args.batch, args.rcan_groups, padded=False)
        print("RESULT " + json.dumps({k: [v[0], v[1]] for k, v in rows.items()}))
        return
    print(f"machine: {C.machine_line()}; load average: {C.load_average()}", flush=True)
    parts = args.parts.split(",")
    if "convs" in parts:
        part_convs(args.reps, args.batch)
    if "grouped" in parts:
        part_grouped(args.reps, args.batch)
    if "branches" in parts:
        rows = branch_rows(args.reps, args.batch, args.rcan_groups)
        print_branches(rows, args.batch, f"Whole ×4 branches at batch {args.batch} (RCAN with {args.rcan_groups} of "
                                         f"10 residual groups), padded widths computed with zero-padded weights")
    if "flags" in parts:
        part_flags(max(3, args.reps - 2), args.batch, args.rcan_groups)
    if "last" in parts:
        part_last(args.reps)
    if "batch" in parts:
        part_batch(args.reps)


if __name__ == "__main__":
    main()
