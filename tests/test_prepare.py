"""`python -m classsr_jax.prepare`: Test2K/4K/8K, val_10 and bundled folders on tiny synthetic inputs, and its
one-line errors (exit code 1 for bad input, 2 for bad flags)."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from classsr_jax.cli import prepare
from classsr_jax.data.bicubic import bicubic_degrade, imresize, modcrop
from classsr_jax.data.bundled import bundled_photos
from classsr_jax.io.pixels import to_uint8

REPO = Path(__file__).resolve().parents[1]


def save(path: Path, array: np.ndarray) -> np.ndarray:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return array


def load(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


def run(argv, capsys):
    code = prepare.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def files_under(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


@pytest.fixture()
def div8k(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "DIV8K"
    photos = {
        "1201": save(folder / "1201.png", rng.integers(0, 256, (70, 101, 3), dtype=np.uint8)),
        "1300": save(folder / "sub/1300.png", rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)),
        "1301": save(folder / "1301.png", rng.integers(0, 256, (50, 37, 3), dtype=np.uint8)),
        "1401": save(folder / "1401.png", rng.integers(0, 256, (22, 30, 3), dtype=np.uint8)),
        "1200": save(folder / "1200.png", rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)),  # not a test image
    }
    (folder / "1250.png").write_bytes(b"broken")
    return folder, photos


def test_testsets_builds_three_sets_with_exact_pairs(div8k, tmp_path, capsys):
    folder, photos = div8k
    out = tmp_path / "out"
    code, stdout, stderr = run(["testsets", "--div8k", str(folder), "--output", str(out), "--no-progress"], capsys)
    # Incomplete sets are built, but the exit code and one line say so: 1 skipped; 97 + 99 + 99 missing.
    assert code == 1
    assert stderr.splitlines()[-1] == ("error: the sets are incomplete: 1 source images skipped and 295 missing "
                                       "(listed above)")
    assert files_under(out) == [
        "Test2K/HR/X4/1201.png", "Test2K/HR/X4/1300.png", "Test2K/LR/X4/1201.png", "Test2K/LR/X4/1300.png",
        "Test4K/HR/X4/1301.png", "Test4K/LR/X4/1301.png",
        "Test8K/HR/X4/1401.png", "Test8K/LR/X4/1401.png",
    ]
    # Test2K: modcrop 4 -> 68x100, x1/4 -> 17x25, modcrop 4 -> 16x24, LR 4x6.
    hr_2k = modcrop(to_uint8(imresize(photos["1201"][:68, :100], 0.25), 255.0), 4)
    # Test4K: modcrop 2 -> 50x36, x1/2 -> 25x18, modcrop 4 -> 24x16, LR 6x4.
    hr_4k = modcrop(to_uint8(imresize(photos["1301"][:50, :36], 0.5), 255.0), 4)
    expected_hr = {"Test2K/1201": hr_2k, "Test4K/1301": hr_4k, "Test8K/1401": photos["1401"][:20, :28]}
    for key, hr_want in expected_hr.items():
        set_name, name = key.split("/")
        hr = load(out / set_name / "HR/X4" / f"{name}.png")
        lr = load(out / set_name / "LR/X4" / f"{name}.png")
        np.testing.assert_array_equal(hr, hr_want)
        assert hr.shape == (4 * lr.shape[0], 4 * lr.shape[1], 3)
        np.testing.assert_array_equal(lr, bicubic_degrade(hr, 4))
    assert load(out / "Test2K/HR/X4/1201.png").shape == (16, 24, 3)
    assert stdout.splitlines() == [
        f"Test2K: wrote 2 HR/LR pairs under {out / 'Test2K'}; skipped 1: 1250 (not an image Pillow can identify); "
        "97 source files missing (1202, 1203, 1204, 1205, 1206, …)",
        f"Test4K: wrote 1 HR/LR pairs under {out / 'Test4K'}; "
        "99 source files missing (1302, 1303, 1304, 1305, 1306, …)",
        f"Test8K: wrote 1 HR/LR pairs under {out / 'Test8K'}; "
        "99 source files missing (1402, 1403, 1404, 1405, 1406, …)",
    ]


def test_testsets_factor_override_and_scale_two(div8k, tmp_path, capsys):
    folder, photos = div8k
    out = tmp_path / "out"
    code, _, _ = run(
        ["testsets", "--div8k", str(folder), "--output", str(out), "--scale", "2", "--factor-2k", "2", "--no-progress"],
        capsys,
    )
    assert code == 1  # the test sets are incomplete
    hr = load(out / "Test2K/HR/X2/1201.png")
    np.testing.assert_array_equal(hr, modcrop(to_uint8(imresize(photos["1201"][:70, :100], 0.5), 255.0), 2))
    np.testing.assert_array_equal(load(out / "Test2K/LR/X2/1201.png"), bicubic_degrade(hr, 2))


def test_val10_takes_div2k_0801_to_0810(tmp_path, capsys):
    rng = np.random.default_rng(1)
    photos = {i: save(tmp_path / f"DIV2K/{i:04d}.png", rng.integers(0, 256, (30, 45, 3), dtype=np.uint8))
              for i in (800, 801, 810, 811)}
    code, stdout, stderr = run(["val10", "--div2k", str(tmp_path / "DIV2K"), "--output", str(tmp_path / "out"),
                                "--no-progress"], capsys)
    assert code == 1
    incomplete = "error: the sets are incomplete: 0 source images skipped and 8 missing (listed above)"
    assert stderr.splitlines()[-1] == incomplete
    assert files_under(tmp_path / "out") == [
        "val_10/HR/X4/0801.png", "val_10/HR/X4/0810.png", "val_10/LR/X4/0801.png", "val_10/LR/X4/0810.png"
    ]
    hr = load(tmp_path / "out/val_10/HR/X4/0810.png")
    np.testing.assert_array_equal(hr, photos[810][:28, :44])
    np.testing.assert_array_equal(load(tmp_path / "out/val_10/LR/X4/0810.png"), bicubic_degrade(hr, 4))
    assert "8 source files missing (0802, 0803, 0804, 0805, 0806, …)" in stdout


def test_bundled_writes_the_validation_photos(tmp_path, capsys):
    code, stdout, _ = run(["bundled", "--output", str(tmp_path), "--no-progress"], capsys)
    assert code == 0
    assert files_under(tmp_path) == [
        "bundled/HR/X4/chelsea.png", "bundled/HR/X4/coffee.png", "bundled/LR/X4/chelsea.png", "bundled/LR/X4/coffee.png"
    ]
    chelsea = dict(bundled_photos("validation"))["chelsea"]
    hr = load(tmp_path / "bundled/HR/X4/chelsea.png")
    np.testing.assert_array_equal(hr, modcrop(chelsea, 4))
    np.testing.assert_array_equal(load(tmp_path / "bundled/LR/X4/chelsea.png"), bicubic_degrade(hr, 4))
    assert stdout == f"bundled: wrote 2 HR/LR pairs under {tmp_path / 'bundled'}\n"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["testsets", "--div8k", "{tmp}/missing", "--output", "{tmp}/out"],
            "error: --div8k directory '{tmp}/missing' does not exist; "
            "it should hold the DIV8K HR images 1201.png … 1500.png",
        ),
        (
            ["testsets", "--div8k", "{tmp}/empty", "--output", "{tmp}/out"],
            "error: no DIV8K images numbered 1201–1500 (e.g. 1201.png) under {tmp}/empty",
        ),
        (
            ["val10", "--div2k", "{tmp}/empty", "--output", "{tmp}/out"],
            "error: no DIV2K images numbered 0801–0810 (e.g. 0801.png) under {tmp}/empty",
        ),
    ],
)
def test_missing_inputs_exit_1_with_one_line(argv, message, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    code, stdout, stderr = run([a.format(tmp=tmp_path) for a in argv], capsys)
    assert code == 1 and stdout == ""
    assert stderr == message.format(tmp=tmp_path) + "\n"
    assert not (tmp_path / "out").exists()  # nothing half-written


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["val10", "--output", "x"], "error: --div2k is required"),
        (["bundled", "--output", "x", "--scale", "5"], "error: flag --scale=5: value should be one of <2|3|4>"),
        (
            ["testsets", "--div8k", "d", "--output", "x", "--factor-2k", "0"],
            "error: flag --factor-2k=0: 0 is not a positive integer",
        ),
        (["bundled", "--output", "x", "--div2k", "d"], "error: --div2k is not a flag of prepare bundled"),
        (["val11", "--output", "x"], "error: unknown set 'val11': use prepare {testsets,val10,bundled} [flags]"),
        (["--output", "x"], "error: no set given: use prepare {testsets,val10,bundled} [flags]"),
        (["bundled", "--output", "x", "extra"], "error: unexpected arguments: extra"),
    ],
)
def test_usage_errors_are_one_line_with_exit_code_2(argv, message, capsys):
    code, stdout, stderr = run(argv, capsys)
    assert code == 2 and stdout == ""
    assert stderr == message + "\n"


def test_module_entry_point_exits_1_on_missing_input(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "classsr_jax.prepare", "val10", "--div2k", str(tmp_path / "nope"),
         "--output", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]  # TensorFlow may log its own start-up lines before ours
    assert last == (f"error: --div2k directory '{tmp_path / 'nope'}' does not exist; "
                    "it should hold the DIV2K HR images 0801.png … 0810.png")
