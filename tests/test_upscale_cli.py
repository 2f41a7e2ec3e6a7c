"""The upscale and evaluate commands: the contract of their flags, reports, formats and errors."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from command_fixtures import SPEC, photo
from PIL import Image
from routing_fixtures import spread_classifier

from classsr_jax.checkpointing import save_model
from classsr_jax.cli import evaluate, upscale
from classsr_jax.io.images import read_image, write_image
from classsr_jax.models.flops import model_flops

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXTENSIONS = "png, jpg, jpeg, tif, tiff, bmp, webp, qoi"
UPSCALE_KEYS = {"input_hw", "output_hw", "tiles", "class_counts", "flops", "flops_percent", "executed_flops", "timing"}


def test_file_mode_writes_image_mask_and_report(checkpoint, tmp_path):
    src = tmp_path / "in.png"
    write_image(str(src), photo(40, 50))
    out, mask, report = tmp_path / "out.png", tmp_path / "mask.png", tmp_path / "r.json"
    rc = upscale.main(["--checkpoint", checkpoint, "--input", str(src), "--output", str(out),
                       "--mask", str(mask), "--report", str(report)])
    assert rc == 0
    assert read_image(str(out)).rgb.shape == (160, 200, 3)
    assert read_image(str(mask)).rgb.shape == (160, 200, 3)
    r = json.loads(report.read_text())
    assert UPSCALE_KEYS <= set(r)
    assert r["input_hw"] == [40, 50] and r["output_hw"] == [160, 200]
    assert set(r["timing"]) == {"compile_s", "inference_s", "host_s", "read_s", "write_s"}
    assert sum(r["class_counts"]) == r["tiles"] == 4  # full grid: 2 x 2 tiles
    assert 0 < r["flops_percent"] <= 101.7


def test_force_class_and_budget_flags(checkpoint, tmp_path):
    src = tmp_path / "in.png"
    write_image(str(src), photo(64, 64))
    report = tmp_path / "r.json"
    assert upscale.main(["--checkpoint", checkpoint, "--input", str(src), "--output", str(tmp_path / "o.png"),
                         "--force-class", "1", "--report", str(report)]) == 0
    r = json.loads(report.read_text())
    assert r["class_counts"] == [r["tiles"], 0, 0]
    assert upscale.main(["--checkpoint", checkpoint, "--input", str(src), "--output", str(tmp_path / "o.png"),
                         "--force-class", "4"]) == 1


def test_gray16_and_rgba_keep_their_mode(checkpoint, tmp_path):
    gray = (np.linspace(0, 65535, 30 * 20).reshape(30, 20)).astype(np.uint16)
    Image.fromarray(gray).save(tmp_path / "g16.png")
    rgba = np.zeros((20, 25, 4), np.uint8)
    rgba[..., :3] = 120
    rgba[..., 3] = np.linspace(0, 255, 25)[None, :].astype(np.uint8)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    for name in ("g16.png", "a.png"):
        assert upscale.main(["--checkpoint", checkpoint, "--input", str(tmp_path / name),
                             "--output", str(tmp_path / f"out_{name}")]) == 0
    g = read_image(str(tmp_path / "out_g16.png"))
    assert (g.mode, g.bit_depth, g.rgb.shape) == ("gray", 16, (120, 80, 3))
    a = read_image(str(tmp_path / "out_a.png"))
    assert a.mode == "rgba" and a.alpha.shape == (80, 100)
    # Alpha is a horizontal ramp; its bicubic upscale keeps it increasing left to right.
    assert a.alpha[40, 4] < a.alpha[40, 50] < a.alpha[40, 95]


def test_one_pixel_image(checkpoint, tmp_path):
    write_image(str(tmp_path / "p.png"), np.full((1, 1, 3), 0.5, np.float32))
    assert upscale.main(["--checkpoint", checkpoint, "--input", str(tmp_path / "p.png"),
                         "--output", str(tmp_path / "p4.png")]) == 0
    assert read_image(str(tmp_path / "p4.png")).rgb.shape == (4, 4, 3)


def test_folder_mode_skips_bad_files_and_fails_at_the_end(checkpoint, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    write_image(str(src / "a.png"), photo(33, 40, 1))
    write_image(str(src / "b.jpg"), photo(20, 36, 2))
    (src / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    report = tmp_path / "r.json"
    rc = upscale.main(["--checkpoint", checkpoint, "--input", str(src), "--output", str(tmp_path / "out"),
                       "--mask", str(tmp_path / "masks"), "--report", str(report)])
    assert rc == 1
    assert sorted(os.listdir(tmp_path / "out")) == ["a.png", "b.jpg"]
    assert sorted(os.listdir(tmp_path / "masks")) == ["a_mask.png", "b_mask.png"]
    r = json.loads(report.read_text())
    assert [os.path.basename(i["input"]) for i in r["images"]] == ["a.png", "b.jpg"]
    assert len(r["failed"]) == 1 and "broken.png" in r["failed"][0]["error"]


def run_cli(module, *args):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, cwd=REPO, env=env)


def test_the_command_process_ends_with_its_outputs_and_lines_complete(checkpoint, tmp_path):
    # `python -m classsr_jax.upscale` leaves without the interpreter's teardown (launcher.end_process): its
    # buffered stdout (a pipe here), its report and its image must all be there, and the exit code its own.
    src, out, report = tmp_path / "in.png", tmp_path / "out.png", tmp_path / "r.json"
    write_image(str(src), photo(40, 50))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # stdout block-buffered, as usual
    r = subprocess.run([sys.executable, "-m", "classsr_jax.upscale", "--checkpoint", checkpoint, "--input", str(src),
                        "--output", str(out), "--report", str(report)], capture_output=True, text=True, cwd=REPO,
                       env={**env, "JAX_PLATFORMS": "cpu"})
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"{src} → {out}: 200x160, 4 tiles [") and r.stdout.endswith("s)\n")
    assert read_image(str(out)).rgb.shape == (160, 200, 3)
    assert json.loads(report.read_text())["output_hw"] == [160, 200]


def test_bad_checkpoint_and_empty_folder_are_one_line_errors(checkpoint, tmp_path):
    (tmp_path / "empty").mkdir()
    r = run_cli("classsr_jax.upscale", "--checkpoint", str(tmp_path / "empty"), "--input", str(tmp_path / "empty"),
                "--output", str(tmp_path / "out"))
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == [f"error: no images ({EXTENSIONS}) in {tmp_path / 'empty'}"]
    write_image(str(tmp_path / "x.png"), photo(8, 8))
    r = run_cli("classsr_jax.upscale", "--checkpoint", str(tmp_path / "empty"), "--input", str(tmp_path / "x.png"),
                "--output", str(tmp_path / "y.png"))
    assert r.returncode == 1
    assert r.stderr.strip() == (
        f"error: {tmp_path / 'empty'} is not a classsr_jax checkpoint "
        "(no model/ and variables/ inside, and no export/classsr)"
    )
    assert not (tmp_path / "y.png").exists()


def test_corrupt_input_leaves_no_partial_output(checkpoint, tmp_path):
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    write_image(str(tmp_path / "keep.png"), photo(4, 4))
    before = (tmp_path / "keep.png").read_bytes()
    rc = upscale.main(["--checkpoint", checkpoint, "--input", str(tmp_path / "bad.png"),
                       "--output", str(tmp_path / "keep.png")])
    assert rc == 1
    assert (tmp_path / "keep.png").read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["bad.png", "keep.png"]


def test_evaluate_reports_the_paper_table(checkpoint, tmp_path, capsys):
    lr_dir, hr_dir = tmp_path / "LR", tmp_path / "HR"
    lr_dir.mkdir(), hr_dir.mkdir()
    for i in range(2):
        hr = photo(160, 192, seed=i)
        write_image(str(hr_dir / f"080{i}.png"), hr)
        lr = hr.reshape(40, 4, 48, 4, 3).mean(axis=(1, 3))
        write_image(str(lr_dir / f"080{i}x4.png"), lr)
    report = tmp_path / "eval.json"
    rc = evaluate.main(["--checkpoint", checkpoint, "--lr-dir", str(lr_dir), "--hr-dir", str(hr_dir),
                        "--report", str(report), "--with-original"])
    assert rc == 0
    r = json.loads(report.read_text())
    assert [i["name"] for i in r["images"]] == ["0800", "0801"]
    avg = r["average"]
    assert {"psnr", "psnr_y", "ssim_y", "flops", "flops_percent", "class_ratio", "inference_s"} <= set(avg)
    assert 0 <= avg["flops_percent"] <= 100 + 1.7 and abs(sum(avg["class_ratio"]) - 1) < 1e-9
    # The -O network alone: one branch, no Class-Module, exactly 100% of its own FLOPs.
    assert r["original"]["average"]["class_ratio"] == [1.0] and r["original"]["average"]["flops_percent"] == 100.0
    # Paper protocol on 40x48 LR: one tile per axis (28 + 32 > 48), so the output covers 32x32 LR pixels.
    assert r["images"][0]["output_hw"] == [128, 128]
    out = capsys.readouterr().out
    assert "| ClassSR-fsrcnn |" in out and "| fsrcnn-O |" in out and "% of -O" in out
    assert np.mean([i["psnr"] for i in r["images"]]) == pytest.approx(avg["psnr"])


def test_evaluate_unmatched_names(checkpoint, tmp_path):
    (tmp_path / "LR").mkdir(), (tmp_path / "HR").mkdir()
    write_image(str(tmp_path / "LR" / "a.png"), photo(32, 32))
    write_image(str(tmp_path / "HR" / "b.png"), photo(128, 128))
    rc = evaluate.main(["--checkpoint", checkpoint, "--lr-dir", str(tmp_path / "LR"), "--hr-dir", str(tmp_path / "HR")])
    assert rc == 1


# ------------------------------------------------------------------------------- inputs are never written


def test_an_output_that_is_the_input_is_refused_before_any_work(checkpoint, tmp_path):
    src = tmp_path / "in.png"
    write_image(str(src), photo(20, 24))
    before = src.read_bytes()
    os.symlink(src, tmp_path / "link.png")
    os.link(src, tmp_path / "hard.png")
    for output in (src, tmp_path / "link.png", tmp_path / "hard.png"):
        r = run_cli("classsr_jax.upscale", "--checkpoint", checkpoint, "--input", str(src), "--output", str(output),
                    "--overwrite")
        assert r.returncode == 1
        assert r.stderr.strip() == (
            f"error: output {output} is the input {src}; inputs are never written, choose another path"
        )
    assert src.read_bytes() == before
    # Folder mode: the input folder as output folder would replace every photo.
    rc = upscale.main(["--checkpoint", checkpoint, "--input", str(tmp_path), "--output", str(tmp_path), "--overwrite"])
    assert rc == 1 and src.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["hard.png", "in.png", "link.png"]


def test_existing_outputs_are_kept_unless_overwrite(checkpoint, tmp_path, capsys):
    src = tmp_path / "in"
    src.mkdir()
    write_image(str(src / "a.png"), photo(20, 24, 1))
    write_image(str(src / "b.png"), photo(20, 24, 2))
    out = tmp_path / "out"
    out.mkdir()
    (out / "a.png").write_bytes(b"mine")
    assert upscale.main(["--checkpoint", checkpoint, "--input", str(src), "--output", str(out)]) == 0
    assert (out / "a.png").read_bytes() == b"mine" and read_image(str(out / "b.png")).pixels.shape == (80, 96, 3)
    assert "upscaled 1 of 2 images" in capsys.readouterr().out
    # A rerun (as after a crash) continues where it stopped: nothing is left to do.
    assert upscale.main(["--checkpoint", checkpoint, "--input", str(src), "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "upscaled 0 of 2 images" in printed and "2 kept because their outputs exist" in printed
    assert upscale.main(["--checkpoint", checkpoint, "--input", str(src), "--output", str(out), "--overwrite"]) == 0
    assert read_image(str(out / "a.png")).pixels.shape == (80, 96, 3)
    # A single file: an existing output is an error unless --overwrite.
    before = (out / "b.png").read_bytes()
    assert upscale.main(["--checkpoint", checkpoint, "--input", str(src / "b.png"),
                         "--output", str(out / "b.png")]) == 1
    assert (out / "b.png").read_bytes() == before


def test_output_file_in_folder_mode_and_report_under_a_file_fail_before_any_work(checkpoint, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    write_image(str(src / "a.png"), photo(20, 24))
    taken = tmp_path / "taken.png"
    taken.write_bytes(b"x")
    r = run_cli("classsr_jax.upscale", "--checkpoint", checkpoint, "--input", str(src), "--output", str(taken))
    assert r.returncode == 2
    assert r.stderr.strip() == f"error: --output {taken} is a file, but --input {src} is a folder: give a folder"
    r = run_cli("classsr_jax.upscale", "--checkpoint", checkpoint, "--input", str(src / "a.png"), "--output",
                str(tmp_path / "a4.png"), "--report", str(taken / "r.json"))
    assert r.returncode == 1
    assert r.stderr.strip() == f"error: cannot create folder {taken}: {taken} is a file"
    assert not (tmp_path / "a4.png").exists() and taken.read_bytes() == b"x"


def test_a_write_that_fails_half_way_leaves_nothing(checkpoint, tmp_path, monkeypatch):
    import errno

    from classsr_jax.io import images

    def half_then_full(f, *args, **kwargs):
        f.write(b"\x89PNG\r\n\x1a\n" + b"\0" * 1000)
        raise OSError(errno.ENOSPC, "No space left on device")

    write_image(str(tmp_path / "in.png"), photo(20, 24))
    monkeypatch.setattr(images, "_encode", half_then_full)
    rc = upscale.main(["--checkpoint", checkpoint, "--input", str(tmp_path / "in.png"),
                       "--output", str(tmp_path / "o.png")])
    assert rc == 1
    assert sorted(os.listdir(tmp_path)) == ["in.png"]


def test_upright_and_colour_profile_through_upscale(checkpoint, tmp_path):
    from PIL import ImageCms

    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    stored = (photo(24, 40) * 255).astype(np.uint8)  # stored 24 high, 40 wide; orientation 6 turns it upright
    exif = Image.Exif()
    exif[274] = 6
    Image.fromarray(stored).save(tmp_path / "cam.jpg", quality=95, exif=exif, icc_profile=icc)
    assert upscale.main(["--checkpoint", checkpoint, "--input", str(tmp_path / "cam.jpg"),
                         "--output", str(tmp_path / "cam4.png")]) == 0
    with Image.open(tmp_path / "cam4.png") as out:
        assert out.size == (4 * 24, 4 * 40)  # (width, height): upright, 40 high
        assert out.info.get("icc_profile") == icc
        assert 274 not in out.getexif()


def assert_budget_met(flops_percent, class_counts, budget):
    """The reported share is the paper's figure of these class counts (mean branch FLOPs per tile plus the
    Class-Module's, for FSRCNN), at most the budget, and short of it by less than one tile moved from -O to
    the cheapest branch (the routing takes the most FLOPs that fit)."""
    cost = model_flops(SPEC)
    tiles = sum(class_counts)
    figure = sum(n * f for n, f in zip(class_counts, cost.branches)) / tiles + cost.classifier
    assert flops_percent == pytest.approx(100 * figure / cost.branches[-1], rel=1e-12)
    one_tile = 100 * (cost.branches[-1] - cost.branches[0]) / cost.branches[-1] / tiles
    assert 100 * budget - one_tile < flops_percent <= 100 * budget, (budget, flops_percent, class_counts)


def check_cap(flops_percent, class_counts, budget, free_percent, free_counts):
    """A budget is a cap: free routing when it fits (left as it is), else held to the cap within one tile."""
    if free_percent <= 100 * budget:
        assert (flops_percent, class_counts) == (free_percent, free_counts)
    else:
        assert_budget_met(flops_percent, class_counts, budget)


def test_budget_through_the_commands(tmp_path):
    # A Class-Module whose logits differ from tile to tile (a random one scores every tile alike), so the
    # routing can move one tile at a time.
    checkpoint = str(tmp_path / "spread")
    save_model(checkpoint, SPEC, spread_classifier(SPEC.init(seed=3)))
    src = tmp_path / "in.png"
    write_image(str(src), photo(120, 120, seed=5))
    reports = {}
    for budget in (None, "0.45", "0.99"):
        report = tmp_path / f"r{budget}.json"
        args = ["--checkpoint", checkpoint, "--input", str(src), "--output", str(tmp_path / f"o{budget}.png"),
                "--report", str(report)]
        assert upscale.main(args + (["--budget", budget] if budget else [])) == 0
        reports[budget] = json.loads(report.read_text())
    free = reports.pop(None)
    assert 45 < free["flops_percent"] < 99, free["flops_percent"]  # one cap under free routing, one over it
    for budget, r in reports.items():
        check_cap(r["flops_percent"], r["class_counts"], float(budget), free["flops_percent"], free["class_counts"])
        assert any(o != 0 for o in r["logit_offsets"]) == (budget == "0.45") and r["budget_met"]
    lr_dir, hr_dir = tmp_path / "LR", tmp_path / "HR"
    lr_dir.mkdir(), hr_dir.mkdir()
    hr = photo(400, 400, seed=6)
    write_image(str(hr_dir / "x.png"), hr)
    write_image(str(lr_dir / "x.png"), hr.reshape(100, 4, 100, 4, 3).mean(axis=(1, 3)))
    averages = {}
    for budget in (None, "0.45", "0.99"):
        report = tmp_path / f"e{budget}.json"
        args = ["--checkpoint", checkpoint, "--lr-dir", str(lr_dir), "--hr-dir", str(hr_dir), "--protocol", "full",
                "--report", str(report)]
        assert evaluate.main(args + (["--budget", budget] if budget else [])) == 0
        averages[budget] = json.loads(report.read_text())["average"]
    free = averages.pop(None)
    for budget, average in averages.items():
        check_cap(average["flops_percent"], average["class_counts"], float(budget), free["flops_percent"],
                  free["class_counts"])


def test_evaluate_names_and_skips_bad_pairs(checkpoint, tmp_path, capsys):
    lr_dir, hr_dir = tmp_path / "LR", tmp_path / "HR"
    lr_dir.mkdir(), hr_dir.mkdir()
    for name in ("a", "b", "c", "d", "0801"):
        write_image(str(lr_dir / f"{name}.png"), photo(40, 40, seed=len(name)))
    write_image(str(hr_dir / "a.png"), photo(160, 160))  # good
    write_image(str(hr_dir / "b.png"), photo(100, 100))  # too small
    write_image(str(hr_dir / "c.png"), photo(400, 400))  # not 4 x the LR
    write_image(str(hr_dir / "0801.png"), photo(160, 160))  # two HR files for one name
    write_image(str(hr_dir / "0801.jpg"), photo(160, 160))
    report = tmp_path / "r.json"
    rc = evaluate.main(["--checkpoint", checkpoint, "--lr-dir", str(lr_dir), "--hr-dir", str(hr_dir),
                        "--report", str(report)])
    assert rc == 1
    r = json.loads(report.read_text())
    assert [i["name"] for i in r["images"]] == ["a"]
    failed = {f["name"]: f["error"] for f in r["failed"]}
    assert set(failed) == {"0801", "b", "c", "d"}
    assert failed["0801"] == f"0801: several HR files could be the partner of {lr_dir / '0801.png'}: 0801.jpg, 0801.png"
    assert failed["b"] == "b (b.png, b.png): HR is 100x100, smaller than 4 × its 40x40 LR (160x160)"
    assert failed["c"] == (
        "c (c.png, c.png): HR is 400x400, not 4 × its 40x40 LR (160x160 after cropping the HR to a multiple of 4): "
        "wrong scale or a mismatched pair"
    )
    assert failed["d"] == f"d: no HR image in {hr_dir} for {lr_dir / 'd.png'} (looked for d and d)"
    err = capsys.readouterr().err
    for message in failed.values():
        assert f"error: {message}\n" in err


def test_upscale_and_evaluate_refuse_a_model_with_non_finite_parameters(tmp_path):
    from test_checkpointing import with_value, write_model_with_orbax

    variables = with_value(SPEC.init(seed=3), "params/net1/head_conv/kernel", np.nan)
    path = str(tmp_path / "diverged")
    write_model_with_orbax(path, SPEC, variables)
    write_image(str(tmp_path / "in.png"), photo(20, 24))
    message = (f"error: checkpoint {path} has non-finite values (NaN or infinity) in params/net1/head_conv/kernel; "
               "it cannot be used")
    r = run_cli("classsr_jax.upscale", "--checkpoint", path, "--input", str(tmp_path / "in.png"),
                "--output", str(tmp_path / "out.png"))
    assert (r.returncode, r.stderr.strip()) == (1, message)
    assert not (tmp_path / "out.png").exists()
    r = run_cli("classsr_jax.evaluate", "--checkpoint", path, "--lr-dir", str(tmp_path), "--hr-dir", str(tmp_path))
    assert (r.returncode, r.stderr.strip()) == (1, message)
