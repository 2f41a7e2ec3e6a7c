"""The commands as users expect them: --help (usage line, examples, flags by purpose, required ones marked),
--version, -i/-o, the bundled model by default, --suffix, --recursive, one line per image with sizes as
width x height, and evaluate's bicubic row."""

import json
import os

import numpy as np
import pytest
from PIL import Image

import classsr_jax
from classsr_jax.cli import convert, evaluate, prepare, train, upscale
from classsr_jax.data.bicubic import bicubic_degrade
from classsr_jax.evaluation.scoring import bicubic_average

COMMANDS = {"classsr-upscale": upscale, "classsr-evaluate": evaluate, "classsr-convert": convert,
            "classsr-prepare": prepare, "classsr-train": train}
H, W = 15, 20  # a non-square LR image: its x4 output is 80x60 (width x height)
NOTE = ("note: no --checkpoint: using the bundled model quickstart (a small ClassSR-FSRCNN x4 trained on a few "
        "photos, a demonstration; --checkpoint picks another)")


def photo(seed=0, h=H, w=W):
    rng = np.random.default_rng(seed)
    return np.clip(128 + np.cumsum(rng.integers(-12, 13, (h, w, 3)), axis=1), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("program", COMMANDS)
def test_help_opens_with_usage_and_examples_and_lists_every_flag_once_in_its_group(program, capsys):
    module = COMMANDS[program]
    argv = ["--help"] if program != "classsr-prepare" else ["bundled", "--help"]
    assert module.main(argv) == 0
    text = capsys.readouterr().out
    lines = text.splitlines()
    assert lines[0] == f"usage: {module.HELP.usage}" and lines[0].startswith(f"usage: {program} ")
    assert lines[lines.index("examples:") + 1] == f"  {module.HELP.examples[0]}"
    flag_values = module.define_flags() if program == "classsr-train" else module.FLAGS  # train's are new per call
    names = [n for n in flag_values if flag_values[n].name == n]
    grouped = [m for _, members in module.HELP.groups for m in members]
    assert set(grouped) <= set(names), "every grouped name is a flag of the command"
    for name in names:
        flag = flag_values[name]
        spelled = f"--[no]{name}" if flag.boolean else f"--{name}="
        assert sum(line.lstrip().startswith((spelled, f"-{flag.short_name}, {spelled}")) for line in lines) == 1, name
    for name in module.HELP.required:
        assert any(line.endswith("(required)") and f"--{name}=" in line for line in lines), name
    for heading, _ in module.HELP.groups:
        assert f"{heading}:" in lines


def test_upscale_help_in_detail_and_helpfull_is_absls(capsys):
    upscale.main(["-h"])
    text = capsys.readouterr().out
    assert "\n\nInput and output:\n  -i, --input=TEXT  (required)\n      An image file or a folder of images.\n" in text
    assert "  --protocol={full,paper}  (default: full)\n      full: every pixel" in text
    assert text.index("Input and output:") < text.index("Model:") < text.index("Routing:") < text.index("Limits:")
    upscale.main(["--helpfull"])
    assert "classsr_jax.cli.upscale:\n" in capsys.readouterr().out  # absl's listing, by module


@pytest.mark.parametrize("program", COMMANDS)
def test_version(program, capsys):
    assert COMMANDS[program].main(["--version"]) == 0
    assert capsys.readouterr().out == f"{program} {classsr_jax.__version__}\n"


def test_short_flags_and_the_bundled_model_by_default(tmp_path, capsys):
    pixels = photo()
    Image.fromarray(pixels).save(tmp_path / "photo.png")
    out = tmp_path / "photo_x4.png"
    assert upscale.main(["-i", str(tmp_path / "photo.png"), "-o", str(out)]) == 0
    captured = capsys.readouterr()
    assert captured.err.splitlines() == [NOTE]
    assert captured.out.startswith(f"{tmp_path / 'photo.png'} → {out}: 80x60, ")  # width x height
    expected = classsr_jax.load("quickstart").upscale(pixels)
    np.testing.assert_array_equal(np.asarray(Image.open(out)), expected)


def test_folder_mode_suffix_recursive_and_skipped_subfolders(tmp_path, capsys):
    source, target = tmp_path / "in", tmp_path / "out"
    (source / "sub").mkdir(parents=True)
    Image.fromarray(photo(1)).save(source / "a.png")
    Image.fromarray(photo(2)).save(source / "sub" / "b.png")
    assert upscale.main(["-i", str(source), "-o", str(target), "--suffix", "_x4", "--checkpoint", "quickstart"]) == 0
    captured = capsys.readouterr()
    assert sorted(os.listdir(target)) == ["a_x4.png"]
    assert f"note: skipped 1 subfolder(s) of {source} (sub); --recursive upscales them too" in captured.err.splitlines()
    assert f"{source / 'a.png'} → {target / 'a_x4.png'}: 80x60, " in captured.out
    assert captured.out.splitlines()[-1] == f"upscaled 1 of 1 images into {target}"

    assert upscale.main(["-i", str(source), "-o", str(target), "--suffix", "_x4", "--recursive",
                         "--checkpoint", "quickstart"]) == 0
    captured = capsys.readouterr()
    assert os.path.isfile(target / "sub" / "b_x4.png")
    assert "skipped" not in captured.err
    assert f"{source / 'sub' / 'b.png'} → {target / 'sub' / 'b_x4.png'}: 80x60, " in captured.out
    assert captured.out.splitlines()[-1] == (f"upscaled 1 of 2 images into {target}; 1 kept because their outputs "
                                             "exist (--overwrite replaces them)")


def test_evaluate_prints_a_bicubic_row_computed_on_the_same_pixels(tmp_path, capsys):
    lr_dir, hr_dir = tmp_path / "LR", tmp_path / "HR"
    lr_dir.mkdir(), hr_dir.mkdir()
    hr = photo(3, 64, 96)
    lr = bicubic_degrade(hr, 4)
    Image.fromarray(hr).save(hr_dir / "p.png")
    Image.fromarray(lr).save(lr_dir / "p.png")
    report = tmp_path / "r.json"
    assert evaluate.main(["--checkpoint", "quickstart", "--lr-dir", str(lr_dir), "--hr-dir", str(hr_dir),
                          "--protocol", "full", "--report", str(report)]) == 0
    out = capsys.readouterr().out
    expected = bicubic_average([("p", lr, hr)], 4, "full", 32)
    row = next(line for line in out.splitlines() if line.startswith("| Bicubic |"))
    assert (
        row
        == f"| Bicubic | {expected['psnr']:.2f} | {expected['psnr_y']:.2f} | {expected['ssim_y']:.4f} | — | — | — | — |"
    )
    assert json.loads(report.read_text())["bicubic"] == pytest.approx(expected)
    assert (
        evaluate.main(
            [
                "--checkpoint",
                "quickstart",
                "--lr-dir",
                str(lr_dir),
                "--hr-dir",
                str(hr_dir),
                "--protocol",
                "full",
                "--nobicubic",
            ]
        )
        == 0
    )
    assert "Bicubic" not in capsys.readouterr().out
