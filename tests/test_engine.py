"""Whole-image inference as device programs: bands, carries and the on-device merge against the numpy
reference (reference.TileMerger), on 8 simulated devices and on 1."""

import jax
import numpy as np
import pytest
from routing_fixtures import SPEC, spread_classifier, textured_image

from classsr_jax.inference import bands, reference, tiling
from classsr_jax.inference.upscaler import Upscaler
from classsr_jax.models import ModelSpec, interpolation_init
from classsr_jax.parallel import create_mesh


@pytest.fixture(scope="module")
def variables():
    return spread_classifier(SPEC.init(seed=1))


def host_merge(variables, lr_uint8, protocol):
    """Tiles cut and merged on the host (inference/reference.py), each branch applied to its own tiles."""
    model = SPEC.build()
    grid = tiling.make_grid(lr_uint8.shape[0], lr_uint8.shape[1], protocol)
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


@pytest.mark.parametrize("protocol,sizes", [("full", [(1, 1), (20, 33), (130, 200), (300, 41)]),
                                            ("paper", [(70, 90), (130, 200)])])
def test_bands_equal_the_host_merge(variables, protocol, sizes):
    # 32 tiles per band: 2 tile rows, so every image of more than 2 tile rows crosses bands and carries.
    up = Upscaler(SPEC, variables, protocol=protocol, band_tiles=32)
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
    assert [bands.column_bucket(c) for c in columns] == [16, 16, 23, 23, 32, 91, 91, 128, 724]


def test_band_plan_covers_every_tile_row_once():
    grid = tiling.full_grid(300, 50)  # tile rows at 0, 24, …, 264 and the flush one at 268
    plan = bands.plan_bands(grid, 4)
    rows = np.unique(grid.positions[:, 0])
    assert [(b.first_row, b.stop_row) for b in plan] == [(0, 4), (4, 8), (8, 12), (12, 13)]
    assert [b.base for b in plan] == [0, 96, 192, 288 if rows.size > 13 else int(rows[12])]
    # Each band finishes the rows up to the next band's first tile row; the last one finishes the image.
    assert [b.finished for b in plan] == [96, 96, int(rows[12]) - 192, 300 - int(rows[12])]
    assert sum(b.finished for b in plan) == 300


def test_band_inputs_deal_tiles_evenly_with_valid_prefixes():
    grid = tiling.full_grid(80, 210)  # 3 tile rows x 9 columns
    shape = bands.band_shape(9, 3, tile=32, step=24, scale=4, band_tiles=64, max_rows=32, devices=8)
    assert (shape.rows, shape.cols, shape.slots) == (4, 16, 64)
    # Images of a few tile rows get a band a quarter as tall.
    short = bands.band_shape(9, 1, tile=32, step=24, scale=4, band_tiles=256, max_rows=32, devices=8)
    assert (short.rows, short.cols, short.slots) == (4, 16, 64)
    tall = bands.band_shape(9, 5, tile=32, step=24, scale=4, band_tiles=256, max_rows=32, devices=8)
    assert (tall.rows, tall.slots) == (16, 256)
    band = bands.plan_bands(grid, shape.rows)[0]
    image = np.arange(80 * 210 * 3, dtype=np.uint16).reshape(80, 210, 3)
    inputs = bands.band_inputs(image, grid, band, shape, devices=8)
    assert inputs.lr.shape == (*shape.lr_hw, 3)
    assert (inputs.lr[:80, :210] == image).all() and (inputs.lr[80:] == 0).all()
    per_device = inputs.valid.reshape(8, 8)
    counts = per_device.sum(1)
    assert counts.tolist() == [4, 4, 4, 3, 3, 3, 3, 3]  # 27 tiles over 8 devices
    for row, n in zip(per_device, counts):  # each device's share starts with its valid tiles
        assert row[:n].all() and not row[n:].any()
    np.testing.assert_array_equal(inputs.positions[inputs.slot_of_tile], grid.positions)


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
    """An image shorter than a tile is mirrored after its last row (`bands.padded_image`): it upscales as the
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
