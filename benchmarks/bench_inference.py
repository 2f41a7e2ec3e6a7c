"""Whole-image inference against the code of another commit, side by side in one run.

  python -m benchmarks.bench_inference speed  [--against REV] [--rounds 3]    # warm upscale, CPU targets
  python -m benchmarks.bench_inference memory [--against REV] [--sizes 8k,12mp] # peak RSS of the command
  python -m benchmarks.bench_inference bf16                                    # bfloat16 loss vs float32
  python -m benchmarks.bench_inference folder [--images 8]                     # I/O beside the device

speed: for each case, one worker process per code tree (this checkout, and REV in a temporary git worktree,
default: the commit before the device engine) builds the same thirds-routing random ClassSR and photo-like
image, compiles, and then the workers time one warm upscale each in turn (from the decoded image to the uint8
output in host memory: the old code merged on the host and quantised afterwards). Reports the median wall
times, their ratio, the ratio of the CPU time each process spent (user + system, all threads; less sensitive
to other jobs on a shared machine), and this checkout's host share (`timing.host_s` / `timing.inference_s`).

memory: the `upscale` command of each tree on the same LR PNG under `/usr/bin/time -v` (peak RSS = maximum
resident set size), one tree after the other.

folder: the `upscale` command (in this process, after a warm-up that compiles) on a folder of photo-like LR
images: its wall time against the sum of the device path (`inference_s`) and of decoding and encoding
(`read_s`, `write_s`) of every image from its report. With I/O beside the device, the wall time approaches the
larger of the two sums instead of their total.

bf16: PSNR of bfloat16 against float32 outputs, on random-weight networks of all four kinds at the paper's
widths, converted through a PyTorch-layout state_dict round trip (the converter's path), and on the
quickstart's models bundled with the package (classsr_jax/pretrained).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile

import numpy as np

from benchmarks import fixtures, harness

BEFORE_DEVICE_ENGINE = "6687774"
SPEED_CASES = {  # name: (network, LR (h, w))
    "8K ClassSR-FSRCNN": ("fsrcnn", (1080, 1920)),
    "2K ClassSR-SRResNet": ("srresnet", (270, 480)),
    "2K ClassSR-RCAN": ("rcan", (270, 480)),
}
MEMORY_SIZES = {"8k": (1080, 1920), "12mp": (3000, 4000)}
WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "upscale_worker.py")


def speed_headers(args) -> list[str]:
    return ["case", f"before ({args.against})", "now", "speed-up (wall)", "speed-up (CPU time)", "host share (now)",
            "tiles per branch"]


def speed(args) -> None:
    print(harness.machine_line())
    rows = []
    with harness.worktree(args.against) as old:
        for name, (network, lr_hw) in SPEED_CASES.items():
            if args.cases and not any(c in name for c in args.cases.split(",")):
                continue
            with harness.Workers(WORKER, {"before": old, "now": harness.REPO}) as workers:
                for tree in workers.procs:
                    workers.ask(tree, {"cmd": "setup", "network": network, "lr_hw": list(lr_hw)})
                answers = workers.interleave({"cmd": "run"}, args.rounds)
            before = [a["seconds"] for a in answers["before"]]
            now = [a["seconds"] for a in answers["now"]]
            host = np.median([a["host_s"] / a["inference_s"] for a in answers["now"]])
            cpu = {tree: harness.median([a["cpu_s"] for a in answers[tree]]) for tree in answers}
            rows.append([name, harness.spread(before), harness.spread(now),
                         f"{harness.median(before) / harness.median(now):.2f}×",
                         f"{cpu['before'] / cpu['now']:.2f}×", f"{100 * host:.1f} %",
                         "/".join(map(str, answers["now"][0]["class_counts"]))])
            print(harness.table(speed_headers(args), rows[-1:]), flush=True)
    print(harness.table(speed_headers(args), rows))
    print("load average at the end:", harness.load_average())


def _make_inputs(workdir: str, lr_hw) -> tuple[str, str]:
    """A photo-like LR PNG and a thirds-routing ClassSR-FSRCNN checkpoint in the format both trees read."""
    from classsr_jax.checkpointing import save_model
    from classsr_jax.io.images import write_image

    image = fixtures.photo_like(*lr_hw, seed=0)
    spec, variables = fixtures.thirds_classsr("fsrcnn", image)
    png = os.path.join(workdir, f"lr_{lr_hw[1]}x{lr_hw[0]}.png")
    write_image(png, image)
    ckpt = os.path.join(workdir, "classsr_fsrcnn")
    if not os.path.exists(ckpt):
        save_model(ckpt, spec, variables)
    return png, ckpt


def _peak_rss(tree: str, png: str, ckpt: str, out: str) -> tuple[float, float]:
    """(peak RSS in GiB, wall seconds) of `python -m classsr_jax.upscale` of `tree`."""
    cmd = ["/usr/bin/time", "-v", sys.executable, "-m", "classsr_jax.upscale", "--checkpoint", ckpt, "--input", png,
           "--output", out]
    env = {**os.environ, "PYTHONPATH": tree}
    run = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True)
    if run.returncode != 0:
        raise RuntimeError(f"upscale failed in {tree}: {run.stderr[-2000:]}")
    rss_kib = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", run.stderr).group(1))
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (\S+)", run.stderr).group(1)
    parts = [float(p) for p in wall.split(":")]
    return rss_kib / 2**20, sum(p * 60**i for i, p in enumerate(reversed(parts)))


def memory(args) -> None:
    print(harness.machine_line())
    rows = []
    with tempfile.TemporaryDirectory() as tmp, harness.worktree(args.against) as old:
        for size in args.sizes.split(","):
            lr_hw = MEMORY_SIZES[size]
            png, ckpt = _make_inputs(tmp, lr_hw)
            result = {}
            for tree_name, tree in (("before", old), ("now", harness.REPO)):
                out = os.path.join(tmp, f"out_{tree_name}_{size}.png")
                result[tree_name] = _peak_rss(tree, png, ckpt, out)
                os.unlink(out)
            out_hw = (4 * lr_hw[0], 4 * lr_hw[1])
            rows.append([f"{lr_hw[1]}×{lr_hw[0]} → {out_hw[1]}×{out_hw[0]}",
                         f"{result['before'][0]:.2f} GiB ({result['before'][1]:.0f} s)",
                         f"{result['now'][0]:.2f} GiB ({result['now'][1]:.0f} s)"])
            print(harness.table(["ClassSR-FSRCNN ×4, upscale command", f"before ({args.against})", "now"], rows[-1:]),
                  flush=True)
    headers = ["ClassSR-FSRCNN ×4, upscale command", f"peak RSS before ({args.against})", "peak RSS now"]
    print(harness.table(headers, rows))


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 10 * np.log10(255.0**2 / max(mse, 1e-12))


def bf16(args) -> None:
    from classsr_jax.checkpointing import bundled_model_dir, load_model
    from classsr_jax.inference.upscaler import Upscaler
    from classsr_jax.models import conversion
    from classsr_jax.models.torch_names import variables_to_state_dict

    print(harness.machine_line())
    image = np.rint(fixtures.photo_like(120, 160, seed=1) * 255).astype(np.uint8)
    rows = []
    for network in ("fsrcnn", "carn", "srresnet", "rcan"):
        spec, variables = fixtures.thirds_classsr(network, image.astype(np.float32) / 255)
        # Through the converter, as an official checkpoint would come.
        state_dict = variables_to_state_dict(variables, spec)
        spec, variables = conversion.convert_state_dict(network, state_dict, f"random {network}")
        full = Upscaler(spec, variables).upscale(image, float_merge=True)
        half = Upscaler(spec, variables, dtype="bfloat16").upscale(image, float_merge=True)
        same = float(np.mean(full.classes == half.classes))
        rows.append(
            [
                f"ClassSR-{network} (random, converted)",
                f"{_psnr(full.sr_255, half.sr_255):.1f} dB",
                f"{100 * same:.1f} %",
            ]
        )
    for name, bundled in (("original", "quickstart-original"), ("classsr", "quickstart")):
        path = bundled_model_dir(bundled)
        if os.path.isdir(path):
            loaded = load_model(path)
            full = Upscaler(loaded.spec, loaded.variables).upscale(image, float_merge=True)
            half = Upscaler(loaded.spec, loaded.variables, dtype="bfloat16").upscale(image, float_merge=True)
            rows.append(
                [
                    f"quickstart {name}",
                    f"{_psnr(full.sr_255, half.sr_255):.1f} dB",
                    f"{100 * float(np.mean(full.classes == half.classes)):.1f} %",
                ]
            )
    print(harness.table(["model", "PSNR of bf16 against float32", "tiles routed alike"], rows))


def folder(args) -> None:
    import time

    from classsr_jax.checkpointing import save_model
    from classsr_jax.cli import upscale
    from classsr_jax.io.images import write_image

    print(harness.machine_line())
    with tempfile.TemporaryDirectory() as tmp:
        src, out = os.path.join(tmp, "in"), os.path.join(tmp, "out")
        os.makedirs(src)
        for i in range(args.images):
            write_image(os.path.join(src, f"{i:03d}.png"), fixtures.photo_like(270, 480, seed=i))
        spec, variables = fixtures.thirds_classsr("fsrcnn", fixtures.photo_like(270, 480, seed=0))
        ckpt = save_model(os.path.join(tmp, "model"), spec, variables)
        warm = [f"--checkpoint={ckpt}", f"--input={os.path.join(src, '000.png')}", f"--output={tmp}/warm.png"]
        assert upscale.main(warm) == 0  # compiles
        report = os.path.join(tmp, "r.json")
        t0 = time.perf_counter()
        assert upscale.main([f"--checkpoint={ckpt}", f"--input={src}", f"--output={out}", f"--report={report}"]) == 0
        wall = time.perf_counter() - t0
        with open(report) as f:
            images = json.load(f)["images"]
    device = sum(i["timing"]["inference_s"] for i in images)
    io = sum(i["timing"]["read_s"] + i["timing"]["write_s"] for i in images)
    print(
        harness.table(
            [
                "images (480×270 → 1920×1080, ClassSR-FSRCNN)",
                "wall",
                "Σ device path",
                "Σ decode + encode",
                "serial would be",
                "wall / max(device, I/O)",
            ],
            [
                [
                    len(images),
                    harness.seconds(wall),
                    harness.seconds(device),
                    harness.seconds(io),
                    harness.seconds(device + io),
                    f"{wall / max(device, io):.2f}",
                ]
            ],
        )
    )


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=("speed", "memory", "bf16", "folder"))
    parser.add_argument("--against", default=BEFORE_DEVICE_ENGINE, help="the commit to compare with")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cases", default="", help="comma list of substrings of the speed cases to run")
    parser.add_argument("--sizes", default="8k,12mp")
    parser.add_argument("--images", type=int, default=8)
    args = parser.parse_args(argv)
    {"speed": speed, "memory": memory, "bf16": bf16, "folder": folder}[args.what](args)


if __name__ == "__main__":
    main()
