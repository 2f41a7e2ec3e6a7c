"""File to file on photo content: the upscale command as a user runs it, this checkout against an older commit.

  python -m benchmarks.bench_file_to_file files    [--against REV] [--rounds 2] [--sizes 2K,4K,8K] [--quick]
  python -m benchmarks.bench_file_to_file folder   [--against REV] [--rounds 2] [--images 8] [--quick]
  python -m benchmarks.bench_file_to_file cores    [--against REV] [--rounds 2] [--networks srresnet,carn] [--quick]
  python -m benchmarks.bench_file_to_file original [--rounds 2] [--networks fsrcnn,carn,srresnet] [--quick]

files: for each output size (2K, 4K, 8K from LR 480×270, 960×540, 1920×1080 of photo content, see
`f2f_common`), `python -m classsr_jax.upscale ... --report R.json --overwrite` to PNG with the trained quickstart
ClassSR-FSRCNN ×4, in this checkout and in REV (a temporary git worktree), interleaved for --rounds rounds: the
report's read_s, compile_s, inference_s, write_s, the child's wall time and peak RSS, and the start-up (wall
minus the report's parts). Medians, ratios now/before, and the targets.

folder: one command on a folder of --images photo-content LR images of 480×270 (2K outputs), per tree: its wall
time against the sum of the images' inference_s. The start-up (from a one-image command of the same tree in the
same round) and the compile time are taken off the wall before the target's ratio.

cores: `f2f_cores`. original: `f2f_original`. --quick: the smallest size, 1 round (the smoke test's mode).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile

from benchmarks import f2f_common, f2f_cores, f2f_original, harness
from benchmarks.f2f_common import CommandRun, image_timing, interleaved_commands, met, report_parts

BEFORE_SESSION = "abb5d2c"  # the last commit before this session's file-to-file work
SIZES = {"2K": (270, 480), "4K": (540, 960), "8K": (1080, 1920)}  # output name: LR (h, w)
WRITE_SHARE = 0.2  # target: write_s <= 0.2 × inference_s
WHOLE_SHARE = 1.3  # target: wall − start-up <= 1.3 × (compile + inference + read)
RSS_8K_GIB = 1.2  # target: peak RSS at 8K
FOLDER_SHARE = 1.15  # target: folder wall (start-up and compile aside) <= 1.15 × Σ inference_s
TREES = ("before", "now")


def file_stats(runs: list[CommandRun]) -> dict[str, float]:
    """Medians over rounds of the report's parts, the wall time, the start-up and the peak RSS."""
    timings = [image_timing(run) for run in runs]
    stats = {key: harness.median([t[key] for t in timings]) for key in ("read_s", "compile_s", "inference_s",
                                                                       "write_s")}
    stats["wall_s"] = harness.median([run.wall_s for run in runs])
    stats["startup_s"] = harness.median([run.wall_s - report_parts(t) for run, t in zip(runs, timings)])
    stats["rss_gib"] = harness.median([run.peak_rss_gib for run in runs])
    # Per run, then the median: the median wall less the median start-up mixes different rounds.
    stats["whole_share"] = harness.median([report_parts(t) / (t["compile_s"] + t["inference_s"] + t["read_s"])
                                           for t in timings])
    return stats


FILE_COLUMNS = ("read_s", "compile_s", "inference_s", "write_s", "wall_s", "startup_s")


def file_rows(size: str, against: str, stats: dict[str, dict[str, float]]) -> list[list[str]]:
    """Rows before, now and now/before of one size."""
    rows = []
    for tree, label in (("before", f"before ({against})"), ("now", "now")):
        s = stats[tree]
        rows.append([size, label, *(harness.seconds(s[c]) for c in FILE_COLUMNS), f"{s['rss_gib']:.2f} GiB"])
    ratio = [f"{stats['now'][c] / stats['before'][c]:.2f}×" if stats["before"][c] else "–" for c in FILE_COLUMNS]
    rows.append([size, "now / before", *ratio, f"{stats['now']['rss_gib'] / stats['before']['rss_gib']:.2f}×"])
    return rows


def file_targets(size: str, s: dict[str, float]) -> list[list[str]]:
    """This checkout's targets at one size: [target, measured, met]."""
    write = s["write_s"] / s["inference_s"]
    whole = s["whole_share"]
    rows = [[f"{size}: write_s ≤ {WRITE_SHARE} × inference_s", f"{write:.2f} ×", met(write <= WRITE_SHARE)],
            [f"{size}: wall − start-up ≤ {WHOLE_SHARE} × (compile + inference + read)", f"{whole:.2f} ×",
             met(whole <= WHOLE_SHARE)]]
    if size == "8K":
        rows.append([f"8K: peak RSS < {RSS_8K_GIB} GiB", f"{s['rss_gib']:.2f} GiB", met(s["rss_gib"] < RSS_8K_GIB)])
    return rows


FILE_HEADERS = ["output", "tree", "read", "compile", "inference", "write", "wall", "start-up", "peak RSS"]
TARGET_HEADERS = ["target (this checkout)", "measured", "met"]


def files(args) -> None:
    print(harness.machine_line(), flush=True)
    checkpoint = args.checkpoint or f2f_common.default_checkpoint()
    sizes = ["2K"] if args.quick else args.sizes.split(",")
    rows, targets = [], []
    with tempfile.TemporaryDirectory() as tmp, harness.worktree(args.against) as old:
        trees = {"before": old, "now": harness.REPO}
        for size in sizes:
            lr_hw = SIZES[size]
            src = f2f_common.write_png(os.path.join(tmp, f"lr_{size}.png"), f2f_common.photo_frame(lr_hw))

            def command(name, tree, src=src):
                dst, report = os.path.join(tmp, f"sr_{name}.png"), os.path.join(tmp, f"report_{name}.json")
                run = f2f_common.upscale_command(tree, checkpoint, src, dst, report)
                os.unlink(dst)  # an 8K PNG is large: only one on disk at a time
                return run

            runs = interleaved_commands(trees, args.rounds, command)
            stats = {tree: file_stats(runs[tree]) for tree in TREES}
            rows += file_rows(size, args.against, stats)
            targets += file_targets(size, stats["now"])
            print(harness.table(FILE_HEADERS, rows[-3:]), flush=True)
    print(f"\n### Photo content to PNG, quickstart ClassSR-FSRCNN ×4, median of {args.rounds} round(s)\n")
    print(harness.table(FILE_HEADERS, rows))
    print("\n### Targets\n")
    print(harness.table(TARGET_HEADERS, targets))
    print("load average at the end:", harness.load_average())


def folder_command(tmp: str, checkpoint: str, sources: list[str], images: str):
    """command(name, tree) for `interleaved_commands`: a one-image run (for the start-up), then the folder."""

    def command(name: str, tree: str) -> tuple[CommandRun, CommandRun]:
        single = f2f_common.upscale_command(tree, checkpoint, sources[0], os.path.join(tmp, f"one_{name}.png"),
                                            os.path.join(tmp, f"one_{name}.json"))
        out = os.path.join(tmp, f"out_{name}")
        shutil.rmtree(out, ignore_errors=True)
        run = f2f_common.upscale_command(tree, checkpoint, images, out, os.path.join(tmp, f"folder_{name}.json"))
        return single, run

    return command


def folder_row(label: str, runs: list[tuple[CommandRun, CommandRun]]) -> tuple[list[str], float]:
    """One tree's row (medians over rounds) and its ratio (wall − start-up − Σ compile) / Σ inference."""
    per_round = []
    for single, run in runs:
        timings = [image["timing"] for image in run.report["images"]]
        startup = single.wall_s - report_parts(image_timing(single))
        sums = {key: sum(t[key] for t in timings) for key in ("read_s", "compile_s", "inference_s", "write_s")}
        per_round.append({"wall": run.wall_s, "startup": startup, **sums, "images": len(timings),
                          "pipelined": run.wall_s - startup - sums["compile_s"]})
    m = {key: harness.median([r[key] for r in per_round]) for key in per_round[0]}
    ratio = m["pipelined"] / m["inference_s"]
    cells = [harness.seconds(m[key]) for key in ("wall", "startup", "compile_s", "pipelined", "inference_s",
                                                 "read_s", "write_s")]
    return [label, str(int(m["images"])), *cells, f"{m['wall'] / m['inference_s']:.2f}", f"{ratio:.2f}"], ratio


FOLDER_HEADERS = ["tree", "images", "wall", "start-up", "Σ compile", "wall − start-up − compile", "Σ inference",
                  "Σ read", "Σ write", "wall / Σ inference", "(wall − start-up − compile) / Σ inference"]


def folder(args) -> None:
    print(harness.machine_line(), flush=True)
    checkpoint = args.checkpoint or f2f_common.default_checkpoint()
    count = 2 if args.quick else args.images
    with tempfile.TemporaryDirectory() as tmp, harness.worktree(args.against) as old:
        images = os.path.join(tmp, "lr")
        os.makedirs(images)
        sources = [f2f_common.write_png(os.path.join(images, f"{i:03d}.png"),
                                        f2f_common.photo_frame(SIZES["2K"], first_photo=i)) for i in range(count)]
        runs = interleaved_commands({"before": old, "now": harness.REPO}, args.rounds,
                                    folder_command(tmp, checkpoint, sources, images))
    before, _ = folder_row(f"before ({args.against})", runs["before"])
    now, ratio = folder_row("now", runs["now"])
    print(f"\n### A folder of 480×270 photo-content images to 2K PNGs, quickstart ClassSR-FSRCNN ×4, "
          f"median of {args.rounds} round(s)\n")
    print(harness.table(FOLDER_HEADERS, [before, now]))
    print("\n### Targets\n")
    print(harness.table(TARGET_HEADERS, [[f"folder: wall − start-up − compile ≤ {FOLDER_SHARE} × Σ inference_s",
                                          f"{ratio:.2f} ×", met(ratio <= FOLDER_SHARE)]]))
    print("load average at the end:", harness.load_average())


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=("files", "folder", "cores", "original"))
    parser.add_argument("--against", default=BEFORE_SESSION, help="the commit to compare with")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="the smallest size, one round (a smoke test)")
    parser.add_argument("--checkpoint", default=None, help="the trained model (default: the quickstart export)")
    parser.add_argument("--sizes", default=",".join(SIZES), help="files: comma list of 2K, 4K, 8K")
    parser.add_argument("--images", type=int, default=8, help="folder: how many images")
    parser.add_argument("--networks", default=None, help="cores, original: comma list of networks")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds = 1
    run = {"files": files, "folder": folder, "cores": f2f_cores.cores, "original": f2f_original.original}
    run[args.what](args)


if __name__ == "__main__":
    main()
