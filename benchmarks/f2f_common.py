"""What the file-to-file benchmarks share: photo content at the LR sizes, the model to use, one run of a command
with its wall time and its own peak RSS, interleaved rounds, and the targets' verdicts.

Photo content: the LR frame is a grid of cells of at most 480×270, each a 16:9 centre crop of one of
scikit-image's bundled colour photos, PIL-bicubic upscaled to 4× the cell (the HR) and MATLAB-bicubic
downscaled ×1/4 with `classsr_jax.data.bicubic.bicubic_degrade` (the paper's LR). Each cell thus has the
detail of a photo near its native resolution, at every frame size; an 8K frame's 16 cells reuse the 8 photos,
the second time mirrored. Only the driver (this checkout) makes the content; every tree reads the same PNGs.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import skimage.data
from PIL import Image

from benchmarks import fixtures, harness
from classsr_jax.checkpointing import save_model
from classsr_jax.data.bicubic import bicubic_degrade

SCALE = 4
CELL_HW = (270, 480)  # the largest cell: one photo per 2K-output frame
# scikit-image's colour photos that ship with it (no download): name, or (name, index) for a tuple result.
BUNDLED_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry", "retina",
                  ("stereo_motorcycle", 0))
# The trained quickstart ClassSR-FSRCNN ×4: moved into the package by this session, in tests/data before.
CHECKPOINTS = ("classsr_jax/pretrained/quickstart", "tests/data/quickstart/export/classsr")


def bundled_photo(index: int) -> np.ndarray:
    """The index-th bundled colour photo (cycling), uint8 (h, w, 3); mirrored on every second pass."""
    entry = BUNDLED_PHOTOS[index % len(BUNDLED_PHOTOS)]
    name, part = entry if isinstance(entry, tuple) else (entry, None)
    photo = getattr(skimage.data, name)()
    photo = np.asarray(photo[part] if part is not None else photo)[..., :3]
    return photo[:, ::-1] if (index // len(BUNDLED_PHOTOS)) % 2 else photo


def photo_cell(photo: np.ndarray, lr_hw: tuple[int, int]) -> np.ndarray:
    """A 16:9-ish centre crop of `photo` as an LR cell of `lr_hw`: PIL bicubic to the HR, MATLAB bicubic ×1/4."""
    h, w = photo.shape[:2]
    aspect = lr_hw[1] / lr_hw[0]
    crop_h, crop_w = (h, min(w, round(h * aspect))) if w / h >= aspect else (min(h, round(w / aspect)), w)
    y0, x0 = (h - crop_h) // 2, (w - crop_w) // 2
    crop = Image.fromarray(np.ascontiguousarray(photo[y0:y0 + crop_h, x0:x0 + crop_w]))
    hr = np.asarray(crop.resize((SCALE * lr_hw[1], SCALE * lr_hw[0]), Image.BICUBIC))
    return bicubic_degrade(hr, SCALE)


def photo_frame(lr_hw: tuple[int, int], first_photo: int = 0) -> np.ndarray:
    """An LR frame of `lr_hw` tiled with photo cells of at most CELL_HW, row by row from `first_photo`."""
    rows, cols = -(-lr_hw[0] // CELL_HW[0]), -(-lr_hw[1] // CELL_HW[1])
    ys = np.linspace(0, lr_hw[0], rows + 1).round().astype(int)
    xs = np.linspace(0, lr_hw[1], cols + 1).round().astype(int)
    frame = np.empty((*lr_hw, 3), np.uint8)
    for r in range(rows):
        for c in range(cols):
            cell_hw = (ys[r + 1] - ys[r], xs[c + 1] - xs[c])
            frame[ys[r]:ys[r + 1], xs[c]:xs[c + 1]] = photo_cell(bundled_photo(first_photo + r * cols + c), cell_hw)
    return frame


def write_png(path: str, image: np.ndarray) -> str:
    Image.fromarray(image).save(path)
    return path


def default_checkpoint() -> str:
    """The quickstart export of this checkout, wherever this tree keeps it."""
    for relative in CHECKPOINTS:
        path = os.path.join(harness.REPO, relative)
        if os.path.isdir(path):
            return path
    raise FileNotFoundError(f"no quickstart model in this checkout (looked for {', '.join(CHECKPOINTS)})")


def save_thirds_model(directory: str, network: str, lr_image: np.ndarray) -> str:
    """A random thirds-routing ClassSR (`fixtures.thirds_classsr`) on this LR uint8 image, saved where both
    trees' commands read it; returns its directory."""
    spec, variables = fixtures.thirds_classsr(network, lr_image.astype(np.float32) / 255)
    path = os.path.join(directory, f"thirds_{network}")
    if not os.path.exists(path):
        save_model(path, spec, variables)
    return path


@dataclasses.dataclass
class CommandRun:
    """One command: wall seconds, its own peak RSS and its JSON report (when it wrote one)."""

    wall_s: float
    peak_rss_gib: float
    report: dict | None


# Runs argv[2:] and writes its wall seconds, peak RSS and exit code to argv[1]. A child's ru_maxrss counts the
# process it was forked from (Linux keeps the pre-exec high-water mark), so the command is forked from this
# small launcher rather than from the benchmark's process, which may hold JAX, PyTorch and models.
LAUNCHER = """import json, resource, subprocess, sys, time
t0 = time.perf_counter()
code = subprocess.call(sys.argv[2:])
wall = time.perf_counter() - t0
rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
with open(sys.argv[1], "w") as f:
    json.dump({"wall_s": wall, "maxrss_kib": rss, "returncode": code}, f)
"""


def run_child(argv: list[str], cwd: str, env: dict[str, str], what: str) -> tuple[float, float, str]:
    """(wall seconds, peak RSS in GiB, stdout) of one child process; its stderr tail on failure."""
    with tempfile.TemporaryDirectory() as tmp:
        measured = os.path.join(tmp, "measured.json")
        run = subprocess.run([sys.executable, "-c", LAUNCHER, measured, *argv], cwd=cwd, env=env,
                             stdin=subprocess.DEVNULL, capture_output=True, text=True)
        if run.returncode != 0 or not os.path.exists(measured):
            raise RuntimeError(f"{what} failed to start: {run.stderr[-2000:]}")
        with open(measured) as f:
            result = json.load(f)
    if result["returncode"] != 0:
        raise RuntimeError(f"{what} failed (exit code {result['returncode']}): {run.stderr[-2000:]}")
    return result["wall_s"], result["maxrss_kib"] / 2**20, run.stdout  # ru_maxrss is in KiB on Linux


def upscale_command(tree: str, checkpoint: str, src: str, dst: str, report: str, *extra: str) -> CommandRun:
    """`python -m classsr_jax.upscale` of `tree`, as a user runs it, with its report read back."""
    argv = [sys.executable, "-m", "classsr_jax.upscale", f"--checkpoint={checkpoint}", f"--input={src}",
            f"--output={dst}", f"--report={report}", "--overwrite", *extra]
    env = {**os.environ, "PYTHONPATH": tree}
    wall, rss, _ = run_child(argv, tree, env, f"the upscale command of {tree}")
    with open(report) as f:
        return CommandRun(wall, rss, json.load(f))


def image_timing(run: CommandRun) -> dict:
    """The timing of a one-image report (a folder-style report's first image, should the format change)."""
    report = run.report["images"][0] if "images" in run.report else run.report
    return report["timing"]


def report_parts(timing: dict) -> float:
    """The seconds a report accounts for: read + compile + inference + write."""
    return timing["read_s"] + timing["compile_s"] + timing["inference_s"] + timing["write_s"]


def interleaved_commands(trees: dict[str, str], rounds: int, command) -> dict[str, list]:
    """command(tree_name, tree_path) for each tree once per round, the order rotating (as `harness.Workers`), so
    that a shared machine's load falls on every tree alike."""
    names = list(trees)
    results: dict[str, list] = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:
            results[name].append(command(name, trees[name]))
    return results


def met(ok: bool) -> str:
    """A target's verdict cell."""
    return "yes" if ok else "**no**"


def print_results(title: str, headers: list[str], rows: list[list], targets: list[list]) -> None:
    """A benchmark's closing output: its results table under a title, the targets table, and the load."""
    print(f"\n### {title}\n")
    print(harness.table(headers, rows))
    print("\n### Targets\n")
    print(harness.table(["target", "measured", "met"], targets))
    print("load average at the end:", harness.load_average())
