"""Whole-image inference as device programs: bands, carries and the on-device merge against the numpy
reference (reference.TileMerger), on 8 simulated devices and on 1."""

import jax
import numpy as np
import pytest
from routing_fixtures import SPEC, spread_classifier, textured_image

from classsr_jax.inference import band_plan, reference, tiling
from classsr_jax.inference.upscaler import Upscaler
from classsr_jax.models import ModelSpec, interpolation_init
from classsr_jax.parallel import create_mesh


@pytest.fixture(scope="module")
def variables():
    return spread_classifier(SPEC.init(seed=1))


def host_merge(variables, lr_uint8, protocol, overlap=8):
    """Tiles cut and merged on the host (inference/reference.py), each branch applied to its own tiles."""
    model = SPEC.build()
    grid = tiling.make_grid(lr_uint8.shape[0], lr_uint8.shape[1], protocol, overlap=overlap)
    tiles = reference.extract_tiles(lr_uint8.astype(np.float32) / 255.0, grid)
    classes = np.asarray(model.apply(variables, tiles, method=model.classify)).argmax(-1)
    sr = np.zeros((len(tiles), 128, 128, 3), np.float32)
    for k in range(3):
        picked = np.flatnonzero(classes == k)
        if picked.size:
            sr[picked] = np.asarray(model.apply(variables, tiles[picked], k, method=model.branch))
    merger = reference.TileMerger(grid, 4)
    merger.add(np.arange(len(tiles)), sr)
    return merger, classes


def as_uint8(image01):
    return np.rint(image01 * 255).astype(np.uint8)


@pytest.mark.parametrize("devices", [3, 8])
@pytest.mark.parametrize("protocol,sizes", [("full", [(1, 1), (20, 33), (130, 200), (300, 105)]),
                                            ("paper", [(70, 90), (130, 200)])])
def test_bands_equal_the_host_merge(variables, protocol, sizes, devices):
    # 32 tiles per device. On 3 devices the 300-px-tall image's 13 tile rows come in bands of 6 (carries), its 5
    # columns in blocks of 2, 1 and 2 (the last one flush, with the one left of it), so strips cross both block
    # and band edges; the 200-px-wide images' 8 columns go 3, 3, 2. On 8 devices blocks are a column or empty.
    mesh = create_mesh(jax.local_devices()[:devices])
    up = Upscaler(SPEC, variables, protocol=protocol, band_tiles=32, mesh=mesh)
    for h, w in sizes:
        lr = as_uint8(textured_image(h, w, seed=h))
        result = up.upscale(lr)
        merger, classes = host_merge(variables, lr, protocol)
        np.testing.assert_array_equal(result.classes, classes)
        expected = np.rint(merger.result() * 255).astype(np.uint8)
        assert result.sr.dtype == np.uint8 and result.sr.shape == expected.shape
        assert np.abs(result.sr.astype(int) - expected).max() <= 1
        assert np.mean(result.sr != expected) < 1e-3
        if protocol == "paper":
            np.testing.assert_allclose(result.sr_255, merger.result_255(), atol=1e-3)
    assert up.num_compilations <= 2  # a short band for images of a few tile rows, a tall one for the rest


def test_an_overlap_over_half_a_tile_runs_on_one_device(variables):
    # Tiles 12 px apart overlap by 20: a block's strip could need what the block to its left hands it, so the
    # band's columns are not split (band_plan.multi_device_ok).
    up = Upscaler(SPEC, variables, overlap=20, band_tiles=32)
    assert up.routed.num_devices == 1
    lr = as_uint8(textured_image(100, 50, seed=3))  # 7 tile rows, the last one flush: 4 bands of 1 or 2 rows
    result = up.upscale(lr)
    merger, classes = host_merge(variables, lr, "full", overlap=20)
    np.testing.assert_array_equal(result.classes, classes)
    expected = np.rint(merger.result() * 255).astype(np.uint8)
    assert np.abs(result.sr.astype(int) - expected).max() <= 1 and np.mean(result.sr != expected) < 1e-3
    with pytest.raises(ValueError, match=r"^an overlap of 20 px, over half the 32-px tile, needs a one-device mesh$"):
        Upscaler(SPEC, variables, overlap=20, mesh=create_mesh(jax.local_devices()[:2]))


def test_one_device_gives_the_output_of_eight(variables):
    lr = as_uint8(textured_image(150, 170, seed=7))
    eight = Upscaler(SPEC, variables, band_tiles=64).upscale(lr)
    one = Upscaler(SPEC, variables, band_tiles=64, mesh=create_mesh(jax.local_devices()[:1])).upscale(lr)
    np.testing.assert_array_equal(one.classes, eight.classes)
    assert one.class_counts == eight.class_counts
    assert np.abs(one.sr.astype(int) - eight.sr).max() <= 1 and np.mean(one.sr != eight.sr) < 1e-3


@pytest.mark.parametrize("protocol", ["full", "paper"])
def test_a_constant_image_stays_constant(protocol):
    # With zero convs SRResNet is its bilinear base, exact on constants: every tile is the constant, and so
    # is every weighted mean of tiles.
    spec = ModelSpec("network", "srresnet", (8,), 4, {"nb": 1})
    variables = jax.tree_util.tree_map(np.zeros_like, spec.init())
    up = Upscaler(spec, variables, protocol=protocol, band_tiles=32)
    for colour in ((30, 80, 40), (20, 40, 160), (255, 0, 255)):
        lr = np.broadcast_to(np.array(colour, np.uint8), (100, 77, 3))
        result = up.upscale(lr)
        assert (result.sr == np.array(colour, np.uint8)).all(), colour


def test_sixteen_bit_in_and_out(variables):
    lr8 = as_uint8(textured_image(50, 60, seed=2))
    lr16 = lr8.astype(np.uint16) * 257
    up = Upscaler(SPEC, variables)
    out8, out16 = up.upscale(lr8), up.upscale(lr16, bit_depth=16)
    assert out16.sr.dtype == np.uint16 and out16.sr.shape == out8.sr.shape
    # The same input on two scales: the 16-bit output, rounded to 8 bits, is the 8-bit output (±1 at ties).
    assert np.abs(np.rint(out16.sr / 257.0) - out8.sr).max() <= 1


def test_column_buckets_grow_by_root_two():
    columns = (1, 16, 17, 23, 24, 80, 91, 92, 667)
    assert [band_plan.column_bucket(c) for c in columns] == [16, 16, 23, 23, 32, 91, 91, 128, 724]
    # A device's share: the same widths over the device count.
    assert [band_plan.column_bucket(c, 2) for c in (1, 9, 12, 34)] == [8, 11, 16, 45]
    assert [band_plan.column_bucket(c, 8) for c in (1, 2, 3, 5)] == [2, 2, 3, 6]


def test_band_plan_covers_every_tile_row_once():
    grid = tiling.full_grid(300, 50)  # tile rows at 0, 24, …, 264 and the flush one at 268
    rows = np.unique(grid.positions[:, 0])
    assert rows.size == 13 and rows[-1] == 268
    plan = band_plan.plan_bands(grid, 4)
    assert [(b.first_row, b.stop_row) for b in plan] == [(0, 4), (4, 8), (8, 12), (12, 13)]
    assert [b.base for b in plan] == [0, 96, 192, 268]
    # Each band finishes the rows up to the next band's first tile row; the last one finishes the image.
    assert [b.finished for b in plan] == [96, 96, 76, 32]
    assert sum(b.finished for b in plan) == 300


@pytest.mark.parametrize("count,devices,flush,expected", [
    (20, 2, False, [10, 10]),
    (13, 8, False, [2, 2, 2, 2, 2, 1, 1, 1]),
    (3, 8, False, [1, 1, 1, 0, 0, 0, 0, 0]),
    (3, 2, True, [1, 2]),  # the block to the left gives up its last column
    (5, 4, True, [2, 1, 2, 0]),  # the block to the left has one column: the flush column joins it
    (2, 2, True, [2, 0]),
    (13, 8, True, [2, 2, 2, 2, 2, 1, 2, 0]),
    (21, 2, True, [11, 10]),  # the flush column already has the column left of it in its block
])
def test_deal_keeps_the_flush_column_with_the_one_left_of_it(count, devices, flush, expected):
    assert band_plan.deal(count, devices, flush).tolist() == expected


def test_band_shape_blocks_per_device():
    shape = band_plan.band_shape(9, 40, tile=32, step=24, scale=4, band_tiles=64, max_rows=32, devices=8)
    # 9 columns over 8 devices: blocks of 2 (a 16-column band); 64 tiles per device: 32 rows (the most).
    assert (shape.rows, shape.device_cols, shape.cols, shape.slots) == (32, 2, 16, 512)
    short = band_plan.band_shape(9, 3, tile=32, step=24, scale=4, band_tiles=64, max_rows=32, devices=8)
    assert short.rows == 8  # an image of a few tile rows gets a band a quarter as tall
    wide = band_plan.band_shape(68, 40, tile=32, step=28, scale=4, band_tiles=256, max_rows=32, devices=2)
    assert (wide.rows, wide.device_cols, wide.cols) == (5, 45, 90)  # 34 columns a device: 45 (90 over 2)
    assert (wide.carry_lr_rows, wide.strip_lr_cols, wide.block_lr_cols, wide.canvas_lr_hw) == (32, 4, 1264, (172, 1292))
    one = band_plan.band_shape(68, 40, tile=32, step=28, scale=4, band_tiles=256, max_rows=32, devices=1)
    assert (one.rows, one.device_cols, one.cols) == (2, 91, 91)  # one device: the whole width in one block


def test_blocks_and_band_inputs_deal_tile_columns():
    grid = tiling.full_grid(80, 300)  # 3 tile rows x 13 tile columns (the last one flush, at 268)
    blocks = band_plan.deal_blocks(grid, 4)
    # 13 columns over 4 devices: 4, 3, 3, 3.
    assert blocks.per_device.tolist() == [4, 3, 3, 3] and blocks.first.tolist() == [0, 4, 7, 10]
    assert blocks.x.tolist() == [0, 96, 168, 240]
    assert blocks.finished.tolist() == [96, 72, 72, 60]  # up to the next block; the last to the right edge
    shape = band_plan.band_shape(13, 3, tile=32, step=24, scale=4, band_tiles=8, max_rows=32, devices=4)
    assert (shape.rows, shape.device_cols) == (2, 4)
    band = band_plan.plan_bands(grid, shape.rows)[1]  # the third tile row, at 48
    image = np.arange(80 * 300 * 3, dtype=np.uint16).reshape(80, 300, 3)
    inputs = band_plan.band_inputs(image, grid, band, shape, blocks)
    assert inputs.lr.shape == (*shape.lr_hw, 3)
    assert (inputs.lr[: 80 - 48, :300] == image[48:]).all() and (inputs.lr[80 - 48 :] == 0).all()
    per_device = inputs.valid.reshape(4, 2 * 4)
    assert per_device.sum(1).tolist() == [4, 3, 3, 3]
    for block, n in zip(per_device, per_device.sum(1)):  # each block's tiles come first
        assert block[:n].all() and not block[n:].any()
    np.testing.assert_array_equal(inputs.positions[inputs.slot_of_tile] + [48, 0], grid.positions[26:])
    flush = band_plan.deal_blocks(tiling.full_grid(80, 100), 4)  # columns 0, 24, 48 and 68 (flush): 1, 1, 2, 0
    assert flush.per_device.tolist() == [1, 1, 2, 0] and flush.finished.tolist() == [24, 24, 52, 0]


ONE_DEVICE = None  # set lazily: a mesh over the first device only


def one_device():
    global ONE_DEVICE
    ONE_DEVICE = ONE_DEVICE or create_mesh(jax.local_devices()[:1])
    return ONE_DEVICE


@pytest.mark.slow  # every network
@pytest.mark.parametrize("network,extra", [("fsrcnn", {}), ("carn", {}), ("srresnet", {"nb": 4}),
                                           ("rcan", {"n_resgroups": 2, "n_resblocks": 2})])
def test_bfloat16_stays_close_to_float32(network, extra):
    """bfloat16 parameters and activations against float32 on the same random-weight network: the loss is
    measured in benchmarks/JOURNAL.md ("bfloat16"); this bounds it with a margin."""
    spec = ModelSpec("network", network, (16,), 4, extra)
    variables = spec.init(seed=3)
    lr = as_uint8(textured_image(40, 52, seed=4))
    full = Upscaler(spec, variables, mesh=one_device()).upscale(lr, float_merge=True)
    half = Upscaler(spec, variables, dtype="bfloat16", mesh=one_device()).upscale(lr, float_merge=True)
    mse = np.mean((full.sr_255.astype(np.float64) - half.sr_255) ** 2)
    psnr = 10 * np.log10(255.0**2 / max(mse, 1e-12))
    assert psnr > 40.0, psnr
    assert not np.array_equal(full.sr_255, half.sr_255)  # bfloat16 really ran


def test_an_image_smaller_than_a_tile_is_padded_after_its_last_row():
    """An image shorter than a tile is mirrored after its last row (`band_plan.padded_image`): it upscales as the
    same image padded by hand. The network starts as cubic interpolation, so its output is the image's content
    (a random network's near-constant output would hide a shifted image)."""
    spec = ModelSpec("network", "fsrcnn", (56,), 4)
    variables = spec.init(seed=0)
    variables = {**variables, "params": interpolation_init.interpolating_params("fsrcnn", variables["params"], 4)}
    up = Upscaler(spec, variables)
    lr = as_uint8(textured_image(20, 33, seed=2))
    small = up.upscale(lr).sr.astype(int)
    by_hand = up.upscale(np.pad(lr, ((0, 12), (0, 0), (0, 0)), mode="symmetric")).sr[:80].astype(int)
    assert small.shape == by_hand.shape == (80, 132, 3)
    assert np.abs(small - by_hand).max() <= 1
    assert np.abs(small - np.roll(small, 12 * 4, axis=0)).mean() > 5  # the test image has content to shift
