"""Tests for classsr_jax.inference.tiling: grids, tile extraction and merging."""

import numpy as np
import pytest

from classsr_jax.inference.reference import TileMerger, blend_window, extract_tiles
from classsr_jax.inference.tiling import (
    full_grid,
    make_grid,
    paper_grid,
)

# --------------------------------------------------------------------------- grids

@pytest.mark.parametrize(
    "hw, grid_shape, covered",
    [((1080, 1920), (38, 68), (1068, 1908)), ((540, 960), (19, 34), (536, 956))],
)
def test_paper_grid_matches_original_examples(hw, grid_shape, covered):
    grid = paper_grid(*hw)
    assert grid.grid_shape == grid_shape
    assert grid.num_tiles == grid_shape[0] * grid_shape[1]
    assert grid.covered_hw == covered
    assert grid.padded_hw == hw and grid.image_hw == hw
    assert grid.protocol == "paper" and grid.tile == 32 and grid.overlap == 4
    # Corners 0, 28, 56, ...; row-major order.
    assert grid.positions[:3].tolist() == [[0, 0], [0, 28], [0, 56]]
    assert grid.positions[grid_shape[1]].tolist() == [28, 0]
    assert grid.positions[-1].tolist() == [covered[0] - 32, covered[1] - 32]


def test_paper_grid_exact_fit_and_no_border_tile():
    # 60 = 28 + 32 fits exactly; along 87 the corner 56 would need 88 px, so the
    # last 27 columns are dropped.
    grid = paper_grid(60, 87)
    assert grid.grid_shape == (2, 2)
    assert grid.covered_hw == (60, 60)
    assert paper_grid(32, 32).num_tiles == 1


def test_paper_grid_rejects_small_images_with_one_line_message():
    with pytest.raises(ValueError) as info:
        paper_grid(31, 500)
    message = str(info.value)
    assert "500x31" in message and "'full'" in message  # width x height and "\n" not in message


@pytest.mark.parametrize(
    "hw, ys, xs, padded",
    [
        ((1, 1), [0], [0], (32, 32)),
        ((5, 40), [0], [0, 8], (32, 40)),
        ((32, 32), [0], [0], (32, 32)),
        ((33, 33), [0, 1], [0, 1], (33, 33)),
        # step 24: 0, 24, 48, then flush 100 - 32 = 68; 0, 24, then flush 77 - 32 = 45.
        ((100, 77), [0, 24, 48, 68], [0, 24, 45], (100, 77)),
    ],
)
def test_full_grid_positions_by_hand(hw, ys, xs, padded):
    grid = full_grid(*hw)
    assert grid.padded_hw == padded
    assert grid.covered_hw == hw and grid.image_hw == hw
    assert grid.grid_shape == (len(ys), len(xs))
    assert grid.num_tiles == len(ys) * len(xs)
    expected = [[y, x] for y in ys for x in xs]
    assert grid.positions.tolist() == expected
    # Border tiles are flush with the (padded) bottom/right edges.
    assert grid.positions[:, 0].max() + 32 == padded[0]
    assert grid.positions[:, 1].max() + 32 == padded[1]
    # Every padded pixel is covered at least once.
    coverage = np.zeros(padded, dtype=int)
    for y, x in grid.positions:
        coverage[y:y + 32, x:x + 32] += 1
    assert coverage.min() >= 1


def test_make_grid_dispatches_and_rejects_unknown_protocol():
    assert make_grid(100, 77, "full").positions.tolist() == full_grid(100, 77).positions.tolist()
    assert make_grid(100, 77, "paper").covered_hw == (88, 60)
    with pytest.raises(ValueError, match="protocol"):
        make_grid(100, 77, "fancy")


def test_hr_boxes():
    grid = full_grid(5, 40)
    assert grid.hr_boxes(4).tolist() == [[0, 0, 128, 128], [0, 32, 128, 160]]


# ------------------------------------------------------------------ extraction

def test_extract_tiles_padded_1x1_image():
    image = np.array([[[10, 20, 30]]], dtype=np.uint8)
    grid = full_grid(1, 1)
    tiles = extract_tiles(image, grid)
    assert tiles.shape == (1, 32, 32, 3) and tiles.dtype == np.uint8
    assert (tiles == np.array([10, 20, 30], dtype=np.uint8)).all()


def test_extract_tiles_matches_numpy_symmetric_padding():
    rng = np.random.default_rng(0)
    image = rng.random((3, 40, 2)).astype(np.float32)
    grid = full_grid(3, 40)
    padded = np.pad(image, ((0, 29), (0, 0), (0, 0)), mode="symmetric")
    tiles = extract_tiles(image, grid)
    for tile, (y, x) in zip(tiles, grid.positions):
        np.testing.assert_array_equal(tile, padded[y:y + 32, x:x + 32])


def test_extract_tiles_subset_equals_slices():
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (100, 77, 3), dtype=np.uint8)
    grid = full_grid(100, 77)
    subset = [11, 0, 5]
    tiles = extract_tiles(image, grid, subset)
    assert tiles.shape == (3, 32, 32, 3)
    for tile, index in zip(tiles, subset):
        y, x = grid.positions[index]
        np.testing.assert_array_equal(tile, image[y:y + 32, x:x + 32])


def test_extract_tiles_rejects_wrong_image_size():
    with pytest.raises(ValueError, match="40x40"):
        extract_tiles(np.zeros((41, 40, 3)), full_grid(40, 40))


# ------------------------------------------------------------------ blend window

def test_blend_window_shape_positivity_and_complementary_ramps():
    window = blend_window(128, 32)
    assert window.shape == (128, 128) and window.dtype == np.float32
    assert window.min() > 0
    np.testing.assert_array_equal(window, window.T)
    profile = window[64]  # middle row: the 1-D profile times 1
    np.testing.assert_allclose(profile[32:96], 1.0)
    assert np.all(np.diff(profile[:32]) > 0)
    # A ramp plus its neighbour's mirrored ramp (offset by the overlap) sums to 1.
    np.testing.assert_allclose(profile[:32] + profile[96:], 1.0, atol=1e-6)
    np.testing.assert_allclose(blend_window(8, 0), 1.0)


# ------------------------------------------------------------------ merging

def _merge(grid, tiles, scale, mode=None, chunks=None):
    merger = TileMerger(grid, scale, channels=tiles.shape[-1], mode=mode)
    order = np.arange(grid.num_tiles)
    for chunk in (chunks if chunks is not None else [order]):
        merger.add(chunk, tiles[chunk])
    return merger


@pytest.mark.parametrize("hw", [(1, 1), (5, 40), (32, 32), (33, 33), (100, 77)])
def test_blend_weights_sum_to_one(hw):
    grid = full_grid(*hw)
    tiles = np.ones((grid.num_tiles, 64, 64, 3), dtype=np.float32)
    out = _merge(grid, tiles, scale=2).result()
    assert out.shape == (2 * hw[0], 2 * hw[1], 3)
    np.testing.assert_allclose(out, 1.0, atol=1e-6, rtol=0)


def test_constant_image_stays_constant_through_extract_and_merge():
    for hw in [(1, 1), (33, 70)]:
        image = np.full(hw + (3,), 0.3, dtype=np.float32)
        grid = full_grid(*hw)
        lr_tiles = extract_tiles(image, grid)
        sr_tiles = np.repeat(np.repeat(lr_tiles, 4, axis=1), 4, axis=2)
        out = _merge(grid, sr_tiles, scale=4).result()
        assert out.shape == (4 * hw[0], 4 * hw[1], 3)
        np.testing.assert_allclose(out, 0.3, atol=1e-6, rtol=0)


def _linear_sr(lr_tiles, scale):
    """Fake SR that is exact on linear ramps: evaluate the plane through the tile.

    HR pixel i of a tile sits at LR coordinate (i + 0.5) / scale - 0.5.
    """
    lr_tiles = lr_tiles[..., 0]
    base = lr_tiles[:, 0, 0]
    dy = lr_tiles[:, 1, 0] - base
    dx = lr_tiles[:, 0, 1] - base
    u = (np.arange(lr_tiles.shape[1] * scale) + 0.5) / scale - 0.5
    return (base[:, None, None] + dy[:, None, None] * u[None, :, None]
            + dx[:, None, None] * u[None, None, :])[..., None]


@pytest.mark.parametrize("protocol", ["full", "paper"])
def test_ramp_stays_a_ramp(protocol):
    h, w, scale = 100, 77, 4
    y, x = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    lr = (0.1 + 0.5 * y / h + 0.3 * x / w)[..., None]
    grid = make_grid(h, w, protocol)
    sr_tiles = _linear_sr(extract_tiles(lr, grid), scale)
    merger = _merge(grid, sr_tiles, scale, mode="blend")
    out = merger.result()
    yy, xx = np.meshgrid(np.arange(out.shape[0]), np.arange(out.shape[1]), indexing="ij")
    expected = 0.1 + 0.5 * ((yy + 0.5) / scale - 0.5) / h + 0.3 * ((xx + 0.5) / scale - 0.5) / w
    assert out.shape == (scale * grid.covered_hw[0], scale * grid.covered_hw[1], 1)
    np.testing.assert_allclose(out[..., 0], expected, atol=2e-6, rtol=0)


def test_blend_overlap_is_smooth_between_two_constants():
    # 1 row of 2 tiles (positions x = 0, 8) with constants 0.2 and 0.8.
    grid = full_grid(32, 40)
    tiles = np.empty((2, 32, 32, 1), dtype=np.float32)
    tiles[0], tiles[1] = 0.2, 0.8
    row = _merge(grid, tiles, scale=1).result()[16, :, 0]
    np.testing.assert_allclose(row[:8], 0.2, atol=1e-6)    # only tile 0
    np.testing.assert_allclose(row[32:], 0.8, atol=1e-6)   # only tile 1
    assert np.all(np.diff(row) >= -1e-7)                   # monotone in between
    assert 0.2 < row[20] < 0.8


def test_paper_merge_is_mean_of_rounded_tiles():
    # 60x60 LR -> 2x2 tiles at 0 and 28; HR overlap strips are [112, 128).
    grid = paper_grid(60, 60)
    assert grid.positions.tolist() == [[0, 0], [0, 28], [28, 0], [28, 28]]
    values = np.array([10.4, 20.6, 30.5, 41.5]) / 255  # round to 10, 21, 30, 42
    tiles = np.broadcast_to(values[:, None, None, None], (4, 128, 128, 3)).astype(np.float32)
    merger = _merge(grid, tiles, scale=4)
    assert merger.mode == "paper"
    out = merger.result_255()
    assert out.shape == (240, 240, 3) and out.dtype == np.float32
    a, b, c, d = 10, 21, 30, 42
    assert (out[:112, :112] == a).all() and (out[:112, 128:] == b).all()
    assert (out[128:, :112] == c).all() and (out[128:, 128:] == d).all()
    assert (out[:112, 112:128] == (a + b) / 2).all()      # vertical strip, top
    assert (out[128:, 112:128] == (c + d) / 2).all()
    assert (out[112:128, :112] == (a + c) / 2).all()      # horizontal strip, left
    assert (out[112:128, 128:] == (b + d) / 2).all()
    assert (out[112:128, 112:128] == (a + b + c + d) / 4).all()  # 25.75: not re-quantised
    np.testing.assert_allclose(merger.result(), out / 255, rtol=1e-6)


def test_paper_merge_rounds_half_to_even_and_clamps():
    grid = paper_grid(32, 32)
    tile = np.zeros((1, 32, 32, 3), dtype=np.float32)
    tile[0, 0, 0] = [0.5 / 255, 1.5 / 255, 2.5 / 255]
    tile[0, 0, 1] = [-0.3, 1.7, 254.5 / 255]
    out = _merge(grid, tile, scale=1).result_255()
    assert out[0, 0].tolist() == [0.0, 2.0, 2.0]
    assert out[0, 1].tolist() == [0.0, 255.0, 254.0]


def test_chunked_add_equals_single_add():
    rng = np.random.default_rng(2)
    grid = full_grid(70, 50)
    tiles = rng.random((grid.num_tiles, 64, 64, 3)).astype(np.float32)
    for mode in ["blend", "paper"]:
        whole = _merge(grid, tiles, 2, mode).result()
        in_order = _merge(grid, tiles, 2, mode, chunks=np.array_split(np.arange(grid.num_tiles), 3))
        np.testing.assert_array_equal(in_order.result(), whole)
        shuffled = np.array_split(rng.permutation(grid.num_tiles), 4)
        np.testing.assert_allclose(_merge(grid, tiles, 2, mode, chunks=shuffled).result(),
                                   whole, atol=1e-6, rtol=0)


def test_merger_guards_against_missing_and_duplicate_tiles():
    grid = full_grid(40, 40)
    merger = TileMerger(grid, 2)
    tiles = np.zeros((grid.num_tiles, 64, 64, 3), dtype=np.float32)
    merger.add([0, 1], tiles[:2])
    with pytest.raises(RuntimeError, match="2 of 4"):
        merger.result()
    with pytest.raises(ValueError, match="twice"):
        merger.add([1], tiles[:1])
    with pytest.raises(ValueError, match="shape"):
        merger.add([2], tiles[:1, :32])
