"""Class division: the paper's tile grid, tile PSNR, thresholds and the saved division files."""

import json
import math

import numpy as np
import pytest

from classsr_jax.data.bicubic import imresize
from classsr_jax.data.division import (
    PAPER_THRESHOLDS,
    Division,
    bicubic_sr_fn,
    classify,
    divide,
    grid_positions,
    load_division,
    save_division,
    tertile_thresholds,
    tile_grid,
    tile_psnr,
)
from classsr_jax.errors import DataError

SCALE = 2


@pytest.mark.parametrize(
    ("length", "expected"),
    [
        (70, [0, 16, 32]),  # leftover 70 - (32 + 32) = 6 <= 12: no extra tile
        (93, [0, 16, 32, 48, 61]),  # leftover 93 - 80 = 13 > 12: extra tile flush with the end
        (92, [0, 16, 32, 48]),  # leftover exactly 12: not more than the threshold
        (45, [0, 13]),  # leftover 13 after the first tile
        (64, [0, 16, 32]),  # exact fit
        (32, [0]),
        (31, []),
    ],
)
def test_grid_positions_by_hand(length, expected):
    assert grid_positions(length) == expected


def test_tile_grid_is_row_major():
    grid = tile_grid(45, 70)
    assert grid.tolist() == [[0, 0], [0, 16], [0, 32], [13, 0], [13, 16], [13, 32]]
    assert tile_grid(31, 100).shape == (0, 2)


def test_tile_psnr_rounds_crops_the_border_and_caps_at_80():
    hr = np.full((4, 8, 8, 3), 100, np.uint8)
    sr = np.full((4, 8, 8, 3), 100 / 255)
    sr[1] += 0.4 / 255  # rounds back to 100: zero error
    sr[2] += 4 / 255  # every pixel off by 4 grey levels
    sr[3, :2] += 50 / 255  # only the 2-px border is wrong: cropped away
    sr[3, :, -2:] = 2.0  # clipped to 1.0 = 255, still only in the border
    psnr = tile_psnr(sr, hr, border=2)
    np.testing.assert_allclose(psnr, [80.0, 80.0, 20 * math.log10(255 / 4), 80.0], rtol=0, atol=1e-12)
    # Half-to-even rounding of x.5 values, as numpy's round in the original's tensor2img.
    hr_one = np.zeros((1, 4, 4, 3), np.uint8)
    sr_half = np.full((1, 4, 4, 3), 0.5 / 255)  # rounds to 0
    sr_one_half = np.full((1, 4, 4, 3), 1.5 / 255)  # rounds to 2
    assert tile_psnr(sr_half, hr_one, border=0)[0] == 80.0
    np.testing.assert_allclose(tile_psnr(sr_one_half, hr_one, border=0), [20 * math.log10(255 / 2)])


def test_paper_thresholds_map_boundaries_to_the_upper_class():
    t1, t2 = PAPER_THRESHOLDS
    psnr = np.array([t2 + 1, t2, np.nextafter(t2, 0), t1, np.nextafter(t1, 0), 10.0, 27.168819, 35.149762])
    np.testing.assert_array_equal(classify(psnr, PAPER_THRESHOLDS), [0, 0, 1, 1, 2, 2, 2, 0])
    assert classify(psnr, PAPER_THRESHOLDS).dtype == np.int8
    with pytest.raises(ValueError) as info:
        classify(psnr, (30.0, 20.0))
    assert str(info.value) == "thresholds must satisfy t1 <= t2, got (30.0, 20.0)"


@pytest.mark.parametrize("n", [3, 10, 11, 12, 100, 1001])
def test_tertiles_balance_the_classes_within_one(n):
    psnr = np.random.default_rng(n).normal(30, 5, size=n)
    counts = np.bincount(classify(psnr, tertile_thresholds(psnr)), minlength=3)
    assert counts.sum() == n and counts.max() - counts.min() <= 1


def test_tertiles_need_three_tiles():
    with pytest.raises(DataError) as info:
        tertile_thresholds(np.array([30.0, 31.0]))
    assert str(info.value) == "tertile thresholds need at least 3 tiles, got 2"


# Synthetic set: HR is LR repeated (nearest x2), the fake SR repeats LR and adds the image's offset to every pixel,
# so every tile of image i has PSNR 20·log10(255/offset_i) exactly (80 dB for offset 0).
OFFSETS = {"flat": 0, "one": 1, "four": 4, "sixteen": 16}
LR_SIZES = {"flat": (32, 48), "one": (45, 32), "four": (48, 48), "sixteen": (32, 32)}
# Blue channel carries the image's id (0..3) so the fake SR function can tell images apart from a tile alone.
IDS = {name: i for i, name in enumerate(OFFSETS)}


def synthetic_examples():
    rng = np.random.default_rng(0)
    examples = []
    for name, (h, w) in LR_SIZES.items():
        lr = rng.integers(20, 200, size=(h, w, 3), dtype=np.uint8)
        lr[:, :, 2] = IDS[name]
        hr = np.repeat(np.repeat(lr, SCALE, axis=0), SCALE, axis=1)
        examples.append({"name": name, "hr": hr, "lr": lr})
    examples.insert(2, {"name": "tiny", "hr": np.zeros((40, 80, 3), np.uint8), "lr": np.zeros((20, 40, 3), np.uint8)})
    return examples


class FakeSR:
    def __init__(self):
        self.shapes = []

    def __call__(self, lr_tiles):
        self.shapes.append(lr_tiles.shape)
        up = np.repeat(np.repeat(lr_tiles, SCALE, axis=1), SCALE, axis=2) * 255.0
        ids = np.rint(lr_tiles[:, 0, 0, 2] * 255).astype(int)
        offsets = np.array([list(OFFSETS.values())[i] if i < 4 else 0 for i in ids], np.float64)
        return ((up + offsets[:, None, None, None]) / 255.0).astype(np.float32)


def expected_psnr(offset):
    return 80.0 if offset == 0 else 20 * math.log10(255 / offset)


def test_divide_scores_every_grid_tile_with_known_psnr():
    sr = FakeSR()
    division = divide(synthetic_examples(), sr, SCALE, thresholds="tertiles", batch_size=4)
    assert division.names == ("flat", "one", "tiny", "four", "sixteen")
    assert division.skipped == (("tiny", "LR 20x40 px holds no 32 px tile"),)
    # Grids: flat 32x48 -> 1x2, one 45x32 -> 2x1 (0, 13), four 48x48 -> 2x2, sixteen 32x32 -> 1x1.
    np.testing.assert_array_equal(division.image_index, [0, 0, 1, 1, 3, 3, 3, 3, 4])
    np.testing.assert_array_equal(division.y, [0, 0, 0, 13, 0, 0, 16, 16, 0])
    np.testing.assert_array_equal(division.x, [0, 16, 0, 0, 0, 16, 0, 16, 0])
    by_image = {0: "flat", 1: "one", 3: "four", 4: "sixteen"}
    want = [expected_psnr(OFFSETS[by_image[i]]) for i in division.image_index]
    np.testing.assert_allclose(division.psnr, np.float32(want), rtol=0, atol=1e-5)
    assert division.psnr.dtype == np.float32 and division.label.dtype == np.int8
    # 9 tiles sorted: 24.05 (x1), 36.09 (x4), 48.13 (x2), 80 (x2); t1 = p[3], t2 = p[6].
    assert division.thresholds == pytest.approx((expected_psnr(4), expected_psnr(1)))
    np.testing.assert_array_equal(division.label, [0, 0, 0, 0, 1, 1, 1, 1, 2])
    assert division.counts() == (4, 4, 1)
    # Fixed-size batches only: 9 tiles -> 3 calls of 4 (the last padded).
    assert sr.shapes == [(4, 32, 32, 3)] * 3


def test_divide_with_paper_and_given_thresholds():
    paper = divide(synthetic_examples(), FakeSR(), SCALE, thresholds="paper", batch_size=16)
    # 24.05 dB < 27.17 -> hard; 36.09 and above >= 35.15 -> simple.
    np.testing.assert_array_equal(paper.label, [0, 0, 0, 0, 0, 0, 0, 0, 2])
    assert paper.thresholds == PAPER_THRESHOLDS and paper.threshold_rule == "paper"
    given = divide(synthetic_examples(), FakeSR(), SCALE, thresholds=(40.0, 60.0), batch_size=16)
    np.testing.assert_array_equal(given.label, [0, 0, 1, 1, 2, 2, 2, 2, 2])


def test_divide_rejects_bad_pairs_and_bad_sr_outputs():
    bad = [{"name": "odd", "hr": np.zeros((64, 60, 3), np.uint8), "lr": np.zeros((32, 32, 3), np.uint8)}]
    with pytest.raises(DataError) as info:
        divide(bad, FakeSR(), SCALE)
    assert str(info.value) == "example odd: hr (64, 60) is not 2 x lr (32, 32)"
    with pytest.raises(ValueError) as info:
        divide(synthetic_examples(), lambda x: x, SCALE, batch_size=8)
    assert str(info.value) == "sr_fn returned shape (8, 32, 32, 3), expected (8, 64, 64, 3)"
    with pytest.raises(ValueError) as info:
        divide(synthetic_examples(), FakeSR(), SCALE, thresholds="median")
    assert str(info.value) == "thresholds must be 'tertiles', 'paper' or (t1, t2), got 'median'"


def test_bicubic_sr_fn_is_matlab_bicubic_per_tile():
    tiles = np.random.default_rng(1).uniform(0, 1, size=(3, 8, 8, 3)).astype(np.float32)
    out = bicubic_sr_fn(4)(tiles)
    assert out.shape == (3, 32, 32, 3) and out.dtype == np.float32
    for k in range(3):
        np.testing.assert_allclose(out[k], imresize(tiles[k].astype(np.float64), 4.0), rtol=0, atol=1e-6)


def test_save_and_load_round_trip(tmp_path):
    division = divide(synthetic_examples(), FakeSR(), SCALE, batch_size=4)
    npz, summary_path, png = save_division(division, tmp_path / "div" / "x2.npz")
    assert (npz, summary_path, png) == (tmp_path / "div/x2.npz", tmp_path / "div/x2.json", tmp_path / "div/x2_hist.png")
    assert sorted(p.name for p in (tmp_path / "div").iterdir()) == ["x2.json", "x2.npz", "x2_hist.png"]  # no temp files
    loaded = load_division(npz)
    for field in ("image_index", "y", "x", "psnr", "label"):
        np.testing.assert_array_equal(getattr(loaded, field), getattr(division, field))
        assert getattr(loaded, field).dtype == getattr(division, field).dtype
    assert loaded.names == division.names and loaded.thresholds == division.thresholds
    assert (loaded.scale, loaded.lr_tile, loaded.step, loaded.max_uncovered) == (2, 32, 16, 12)
    assert loaded.skipped == division.skipped and loaded.threshold_rule == "tertiles"
    summary = json.loads(summary_path.read_text())
    assert summary["counts"] == {"simple": 4, "medium": 4, "hard": 1}
    assert summary["num_tiles"] == 9 and summary["num_images"] == 5 and summary["zero_error_tiles"] == 2
    assert summary["thresholds"] == list(division.thresholds)
    assert summary["skipped"] == [["tiny", "LR 20x40 px holds no 32 px tile"]]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000


def test_positions_of_class_groups_tiles_by_image():
    division = divide(synthetic_examples(), FakeSR(), SCALE, batch_size=4)
    simple = division.positions_of_class(0)
    assert sorted(simple) == [0, 1]
    np.testing.assert_array_equal(simple[1], [[0, 0], [13, 0]])
    assert sorted(division.positions_of_class(2)) == [4]


def test_load_division_errors_are_one_line(tmp_path):
    with pytest.raises(DataError) as info:
        load_division(tmp_path / "none.npz")
    assert str(info.value) == f"division file {tmp_path / 'none.npz'} does not exist"
    np.savez(tmp_path / "other.npz", psnr=np.zeros(3))
    with pytest.raises(DataError) as info:
        load_division(tmp_path / "other.npz")
    assert str(info.value) == (f"{tmp_path / 'other.npz'} is not a division file "
                               "(missing names, image_index, y, x, label, thresholds, grid)")
    (tmp_path / "junk.npz").write_bytes(b"junk")
    with pytest.raises(DataError) as info:
        load_division(tmp_path / "junk.npz")
    assert str(info.value).startswith(f"cannot read division file {tmp_path / 'junk.npz'}: ")
    with pytest.raises(ValueError) as info:
        save_division(Division((), *(np.zeros(0),) * 5, (1.0, 2.0), 4), tmp_path / "x.bin")
    assert str(info.value) == f"a division file must end in .npz, got {tmp_path / 'x.bin'}"


def test_summary_counts_only_exact_80_db_as_zero_error():
    # A 64x64 tile with one pixel off by one grey level measures 88.4 dB: a real measurement, not the 80 dB stand-in.
    hr = np.zeros((1, 64, 64, 3), np.uint8)
    sr = np.zeros((1, 64, 64, 3))
    sr[0, 10, 10, 0] = 1 / 255
    near_perfect = tile_psnr(sr, hr, border=2)[0]
    assert near_perfect == pytest.approx(20 * math.log10(255 * math.sqrt(60 * 60 * 3)))
    psnr = np.array([80.0, near_perfect, 30.0], np.float32)
    division = Division(("a",), np.zeros(3, np.int32), np.zeros(3, np.int32), np.zeros(3, np.int32), psnr,
                        classify(psnr, (31.0, 85.0)), (31.0, 85.0), 2)
    summary = division.summary()
    assert summary["zero_error_tiles"] == 1
    assert summary["psnr_mean_of_nonzero_error"] == pytest.approx((float(near_perfect) + 30.0) / 2, rel=1e-6)
    assert summary["counts"] == {"simple": 1, "medium": 1, "hard": 1}
