"""The benchmark scripts that tests can afford, run in their smoke modes so that they cannot rot."""

import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data

from benchmarks import f2f_common, f2f_original, original_way
from classsr_jax.checkpointing import load_model
from classsr_jax.data.bicubic import bicubic_degrade
from classsr_jax.inference.upscaler import Upscaler

pytestmark = pytest.mark.slow  # the benchmarks' smoke runs: out of the quick loop

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_module(module, *args):
    env = {**os.environ, "XLA_FLAGS": "--xla_backend_optimization_level=0"}  # one CPU device, as on a one-GPU machine
    env["JAX_PLATFORMS"] = "cpu"
    return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=900)


def test_gpu_suite_smoke_mode_prints_every_section():
    run = run_module("benchmarks.gpu_suite", "--smoke")
    assert run.returncode == 0, run.stderr[-3000:]
    table = run.stdout.split("\n\n")[-1]
    rows = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith("| case")]
    labels = [row.split(" | ")[0][2:] for row in rows]
    assert labels == [
        "A. 8K ClassSR-fsrcnn, float32",
        "A. 8K ClassSR-fsrcnn, bfloat16",
        "B. fsrcnn b3/b1 (bf16)",
        "C. fsrcnn tile loop vs bucketed (bf16)",
        "D. 8K ClassSR-fsrcnn bf16, buckets 8/2",
        "E. file to file, 288×160 ClassSR-fsrcnn bf16, PNG",
    ]
    # Every timing is a number of seconds, and the host share a percentage.
    assert all(re.match(r"\| [^|]+ \| \d+\.\d+ (s|ms/tile|/ \d+\.\d+ s)", row) or "b3/b1" in row for row in rows[:-1])
    assert re.match(r"\| E\. [^|]+ \| read \d+\.\d\d s \| inference \d+\.\d+ s \| write \d+\.\d\d s \(photo-like\) \| "
                    r"host: \d+ cores \|", rows[-1])
    assert re.search(r"host \d+\.\d %", rows[0])
    assert "suite:" in run.stdout and "nproc=" in run.stdout


def markdown_tables(stdout: str) -> dict[str, list[dict[str, str]]]:
    """Each '### title' section's table as rows of {header: cell}."""
    tables = {}
    for section in stdout.split("\n### ")[1:]:
        title, _, body = section.partition("\n")
        lines = [line for line in body.splitlines() if line.startswith("|")]
        heads = [h.strip() for h in lines[0].strip("|").split("|")]
        tables[title] = [dict(zip(heads, (c.strip() for c in line.strip("|").split("|")))) for line in lines[2:]]
    return tables


def seconds(cell: str) -> float:
    """The median of a time cell: '12.3 ms', '1.23 s', or either followed by ' (min–max)'."""
    value, unit = cell.split()[:2]
    return float(value) * (1e-3 if unit == "ms" else 1.0)


def test_bench_routing_both_parts_on_fsrcnn():
    run = run_module("benchmarks.bench_routing", "efficiency", "tile-loop", "--networks", "fsrcnn", "--size", "64",
                     "--reps", "1")
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.startswith("nproc=")
    tables = markdown_tables(run.stdout)
    assert list(tables) == [
        "Routing efficiency, 64×64 LR image (9 tiles), medians",
        "Bucketed routing against the tile-at-a-time loop, 64×64 LR image (9 tiles), median (min–max)",
    ]
    (eff,), (loop,) = tables.values()
    assert eff["network"] == "fsrcnn (1 reps)"
    # FSRCNN's FLOPs ratio of branch 3 to branch 1 at widths 16/56: 3.31 counting the deconv on the HR grid
    # (the paper's convention), 2.28 on the LR grid.
    assert eff["b3/b1 FLOPs (paper)"] == "3.31 (true 2.28)"
    forced1, forced3, mixed, own = (seconds(eff[k]) for k in ("forced 1", "forced 3", "mixed", "Σ own"))
    classifier = seconds(eff["classifier"])
    # Cells are rounded to 0.1 ms, so the ratios computed from them agree to a few percent.
    assert abs(float(eff["mixed / Σ own"]) - mixed / own) < 0.05 * mixed / own + 0.01
    assert abs(float(eff["(mixed − classifier) / Σ own"]) - (mixed - classifier) / own) < 0.05 * mixed / own + 0.01
    assert abs(float(eff["b3/b1 time"]) - forced3 / forced1) < 0.05 * forced3 / forced1 + 0.01
    assert re.fullmatch(r"\d+ % \(true FLOPs: \d+ %\)", eff["b3/b1 as % of FLOPs ratio"])
    assert seconds(eff["upscale"]) > 0
    # The thirds classifier splits the 9 tiles 3/3/3; the tile loop and Upscaler agreed on every class
    # (the script asserts it) and the speed-up is the ratio of the two medians.
    assert loop["network"] == "fsrcnn (1 reps)" and loop["tiles per branch"] == "3/3/3"
    looped, bucketed = seconds(loop["tile loop (batch 1)"]), seconds(loop["Upscaler (default)"])
    assert abs(float(loop["speed-up"].rstrip("×")) - looped / bucketed) < 0.05 * looped / bucketed + 0.05
    best = seconds(loop["best compute"])
    assert 0 < best <= seconds(loop["Σ own"]) * 1.001 + 1e-4  # one call of all n_k tiles is among the candidates
    bound = float(loop["loop / best compute: bound on any speed-up"].rstrip("×"))
    assert abs(bound - looped / best) < 0.05 * looped / best + 0.05


def test_bench_routing_refuses_an_unknown_variant_before_any_work():
    run = run_module("benchmarks.bench_routing", "efficiency", "--variants", "chunks:64/128")
    assert run.returncode == 1
    assert run.stderr.strip().splitlines()[-1] == (
        "unknown variant 'chunks:64/128': use accelerator, buckets:B/S, widths:A/B/C")
    assert run.stdout == ""


# --- bench_file_to_file -------------------------------------------------------------------------------------


def test_child_peak_rss_is_the_commands_own_not_the_benchmarks():
    held = np.ones(400 * 2**20 // 8)  # this process holds 400 MiB, which a forked child's ru_maxrss would count
    env = dict(os.environ)
    _, small, out = f2f_common.run_child([sys.executable, "-c", "print('ok')"], REPO, env, "a small child")
    alloc = "import numpy as np; a = np.ones(300 * 2**20 // 8); print(int(a.sum()))"
    _, big, out_big = f2f_common.run_child([sys.executable, "-c", alloc], REPO, env, "a 300 MiB child")
    assert held.sum() > 0 and out == "ok\n" and out_big == f"{300 * 2**20 // 8}\n"
    assert small < 0.1  # a bare Python: tens of MiB, not the 400 MiB of its grand-parent
    assert 300 / 1024 < big < 0.5
    with pytest.raises(RuntimeError, match=r"^a failing child failed \(exit code 3\): boom"):
        f2f_common.run_child([sys.executable, "-c", "import sys; sys.stderr.write('boom'); sys.exit(3)"], REPO, env,
                             "a failing child")


def test_photo_frame_tiles_bundled_photos_at_the_lr_size():
    frame = f2f_common.photo_frame((300, 500))
    assert frame.shape == (300, 500, 3) and frame.dtype == np.uint8
    np.testing.assert_array_equal(frame, f2f_common.photo_frame((300, 500)))  # deterministic
    # 2 × 2 cells of 150 × 250: the first is the astronaut, cropped to 5:3, PIL-bicubic to ×4, MATLAB-bicubic ×1/4.
    astronaut = data.astronaut()[102:409]  # 307 rows: the centre crop of a 512 × 512 photo at 250:150
    hr = np.asarray(Image.fromarray(astronaut).resize((1000, 600), Image.BICUBIC))
    np.testing.assert_array_equal(frame[:150, :250], bicubic_degrade(hr, 4))
    # Every cell is photo content (detail everywhere), and the second pass of the photos is mirrored.
    assert all(frame[y:y + 150, x:x + 250].std() > 20 for y in (0, 150) for x in (0, 250))
    wide = f2f_common.photo_frame((270, 480 * 9))  # nine cells: the ninth is the astronaut again, mirrored
    mirrored = np.abs(wide[:, 8 * 480:].astype(int) - wide[:, :480][:, ::-1]).mean()
    assert mirrored < 0.5 < np.abs(wide[:, 8 * 480:].astype(int) - wide[:, :480]).mean()


def test_original_way_matches_the_paper_protocol_on_the_quickstart_model(tmp_path):
    """The original's tile loop (PyTorch) and Upscaler(protocol='paper') route every tile alike and agree to a
    rounding step (the halved overlap strips' .5 levels)."""
    checkpoint = f2f_common.default_checkpoint()
    widths = f2f_original.torch_state_dict(checkpoint, str(tmp_path / "sd.pt"))
    assert widths == "16,36,56"
    model = original_way.build_model("fsrcnn", (16, 36, 56), 4, str(tmp_path / "sd.pt"))
    torch.set_num_threads(1)
    lr = f2f_common.photo_frame((70, 100))
    canvas, counts = original_way.upscale_tiles(model, lr.astype(np.float32) / np.float32(255.0), 4)
    loaded = load_model(checkpoint)
    result = Upscaler(loaded.spec, loaded.variables, protocol="paper").upscale(lr)
    assert original_way.tile_corners(100) == [0, 28, 56] and canvas.shape == (4 * 60, 4 * 88, 3)
    assert list(result.class_counts) == counts and sum(counts) == 6
    diff = np.abs(np.asarray(result.sr, np.float64) - np.rint(canvas))
    assert diff.max() <= 1 and (diff > 0).mean() < 0.1


@pytest.mark.slow
def test_bench_file_to_file_files_quick_adds_up():
    run = run_module("benchmarks.bench_file_to_file", "files", "--quick")
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.startswith("nproc=")
    tables = markdown_tables(run.stdout)
    assert list(tables) == ["Photo content to PNG, quickstart ClassSR-FSRCNN ×4, median of 1 round(s)", "Targets"]
    before, now, ratio = tables["Photo content to PNG, quickstart ClassSR-FSRCNN ×4, median of 1 round(s)"]
    assert (before["tree"], now["tree"], ratio["tree"]) == ("before (abb5d2c)", "now", "now / before")
    parts = ("read", "compile", "inference", "write")
    for row in (before, now):
        assert row["output"] == "2K" and re.fullmatch(r"\d+\.\d\d GiB", row["peak RSS"])
        # One round: the start-up is the wall time less the report's parts (cells rounded to 10 ms at most).
        assert abs(seconds(row["wall"]) - sum(seconds(row[p]) for p in parts) - seconds(row["start-up"])) < 0.03
        assert seconds(row["inference"]) > 0 and seconds(row["start-up"]) > 0
    for column in (*parts, "wall", "start-up"):
        expected = seconds(now[column]) / seconds(before[column])
        assert abs(float(ratio[column].rstrip("×")) - expected) < 0.02 * expected + 0.02
    write_target, whole_target = tables["Targets"]
    share = float(write_target["measured"].split()[0])
    assert abs(share - seconds(now["write"]) / seconds(now["inference"])) < 0.02 * share + 0.01
    assert write_target["met"] == ("yes" if share <= 0.2 else "**no**")
    assert whole_target["target (this checkout)"].startswith("2K: wall − start-up ≤ 1.3 ×")


@pytest.mark.slow
def test_bench_file_to_file_original_quick_on_the_quickstart():
    run = run_module("benchmarks.bench_file_to_file", "original", "--quick", "--networks", "fsrcnn")
    assert run.returncode == 0, run.stderr[-3000:]
    title = ("The original's way (PyTorch, tile by tile, cv2) against `upscale --protocol paper`, photo content, "
             "median of 1 round(s)")
    tables = markdown_tables(run.stdout)
    assert list(tables) == [title, "Targets"]
    (row,), (target,) = tables[title], tables["Targets"]
    assert row["case"] == "640×360 ClassSR-fsrcnn (quickstart)"
    # Same weights, same routing: the tile counts agree and the pixels to a rounding step.
    ours = row["tiles per branch: ours"]
    assert row["tiles per branch: original"] == ours and sum(map(int, ours.split("/"))) == 3 * 5  # LR 160 × 90
    assert re.fullmatch(r"[01] \(\d+\.\d{3} %\)", row["outputs: largest difference (share differing)"])
    speedup = float(row["speed-up"].rstrip("×"))
    expected = seconds(row["original: wall"]) / seconds(row["ours: wall"])
    assert abs(speedup - expected) < 0.02 * expected + 0.01
    assert target["measured"] == row["speed-up"] and target["met"] == ("yes" if speedup >= 3 else "**no**")


@pytest.mark.slow
def test_bench_file_to_file_folder_quick_adds_up():
    run = run_module("benchmarks.bench_file_to_file", "folder", "--quick")
    assert run.returncode == 0, run.stderr[-3000:]
    title = "A folder of 480×270 photo-content images to 2K PNGs, quickstart ClassSR-FSRCNN ×4, median of 1 round(s)"
    tables = markdown_tables(run.stdout)
    assert list(tables) == [title, "Targets"]
    before, now = tables[title]
    assert (before["tree"], now["tree"]) == ("before (abb5d2c)", "now")
    for row in (before, now):
        assert row["images"] == "2"
        wall, startup, compile_s = (seconds(row[k]) for k in ("wall", "start-up", "Σ compile"))
        assert abs(seconds(row["wall − start-up − compile"]) - (wall - startup - compile_s)) < 0.03
        inference = seconds(row["Σ inference"])
        assert abs(float(row["wall / Σ inference"]) - wall / inference) < 0.02 * wall / inference + 0.01
    (target,) = tables["Targets"]
    ratio = float(now["(wall − start-up − compile) / Σ inference"])
    assert target["measured"] == f"{ratio:.2f} ×" and target["met"] == ("yes" if ratio <= 1.15 else "**no**")
