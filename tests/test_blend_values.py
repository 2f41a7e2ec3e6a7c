"""The blending window by value: raised-cosine numbers written out by hand, the device merge of two overlapping
tiles against w1·a + w2·b, and a whole two-tile Upscaler run against a merge written here from the formula."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from classsr_jax.inference import bands, tiling
from classsr_jax.inference.upscaler import Upscaler
from classsr_jax.models import ModelSpec
from classsr_jax.models.interpolation_init import interpolating_params

# 0.5 − 0.5·cos(π·(i + 0.5)/4) for i = 0..3: the rising ramp of a 4-pixel overlap, sampled at pixel centres.
RAMP_4 = [0.038060233744356624, 0.30865828381745514, 0.6913417161825449, 0.9619397662556434]


def test_blend_profile_values_by_hand():
    np.testing.assert_allclose(tiling.blend_profile(8, 4), RAMP_4 + RAMP_4[::-1], rtol=0, atol=1e-15)
    np.testing.assert_allclose(tiling.blend_profile(12, 4), RAMP_4 + [1.0] * 4 + RAMP_4[::-1], rtol=0, atol=1e-15)
    # A ramp wider than half the tile is cut to size // 2: 0.5 − 0.5·cos(π·(i + 0.5)/2) = 0.1464…, 0.8535…
    half = [0.14644660940672624, 0.8535533905932737]
    np.testing.assert_allclose(tiling.blend_profile(4, 6), half + half[::-1], rtol=0, atol=1e-15)
    np.testing.assert_array_equal(tiling.blend_profile(5, 0), np.ones(5))


@pytest.mark.parametrize("bit_depth", [8, 16])
def test_the_device_merge_of_two_overlapping_tiles_is_the_cosine_weighted_mean(bit_depth):
    """Two 8x8 tiles of constants a and b, the second 4 px to the right: in the overlap, pixel x gets
    w1·a + w2·b with w1 the first tile's falling ramp and w2 = 1 − w1 the second's rising one."""
    a, b = 0.2, 0.8
    profile = tiling.blend_profile(8, 4)
    sr = np.stack([np.full((8, 8, 3), a), np.full((8, 8, 3), b)]).astype(np.float32)
    corners = np.array([[0, 0], [0, 4]], np.int32)
    canvas = bands.merge_tiles(jnp.zeros((8, 12, 3), jnp.float32), jnp.asarray(sr), jnp.asarray(corners), 2, profile)
    row_weights = tiling.weight_sums(np.array([0]), profile, 8).astype(np.float32)
    col_weights = tiling.weight_sums(np.array([0, 4]), profile, 12).astype(np.float32)
    fmt = bands.OutputFormat("blend", 4, bit_depth, True)
    quantised, merged = jax.jit(bands.finish_rows, static_argnums=3)(canvas, row_weights, col_weights, fmt)
    w1 = np.array(RAMP_4[::-1])  # the first tile's columns 4..7
    expected_row = np.concatenate([[a] * 4, w1 * a + (1 - w1) * b, [b] * 4])  # 0.2228…, 0.3852…, 0.6148…, 0.7772…
    np.testing.assert_allclose(np.asarray(merged)[5, :, 1], 255 * expected_row, rtol=0, atol=2e-4)
    peak = 2**bit_depth - 1
    np.testing.assert_array_equal(np.asarray(quantised)[3, :, 0], np.round(expected_row * peak))


def raised_cosine(size, ramp):
    """The blending weights from the formula (not from tiling.py)."""
    i = np.arange(size)
    up = 0.5 - 0.5 * np.cos(np.pi * (i + 0.5) / ramp)
    down = 0.5 - 0.5 * np.cos(np.pi * (size - i - 0.5) / ramp)
    return np.where(i < ramp, up, np.where(i >= size - ramp, down, 1.0))


def test_a_two_tile_upscale_blends_the_tiles_with_raised_cosine_weights():
    """32x56 LR: tiles at x = 0 and 24 (overlap 8 LR = 32 HR px). The network (cubic interpolation, its zero
    padding visible at the tile edges) is applied to each tile here and the tiles merged by the formula."""
    spec = ModelSpec("network", "fsrcnn", (16,))
    variables = spec.init(seed=0)
    variables = {**variables, "params": interpolating_params("fsrcnn", variables["params"], 4)}
    rng = np.random.default_rng(7)
    lr = (0.3 + 0.4 * rng.random((32, 56, 3))).astype(np.float32)
    result = Upscaler(spec, variables).upscale(lr, float_merge=True)
    tiles = np.stack([lr[:, :32], lr[:, 24:]])
    sr = np.clip(np.asarray(spec.build().apply(variables, tiles), np.float64), 0.0, 1.0)
    weight = raised_cosine(128, 32)
    total = np.zeros((128, 224, 3))
    norm = np.zeros(224)
    for tile, x0 in zip(sr, (0, 96)):
        total[:, x0 : x0 + 128] += tile * weight[None, :, None]
        norm[x0 : x0 + 128] += weight
    expected = total / norm[None, :, None]  # the rows have one tile each: their weight cancels
    np.testing.assert_allclose(result.sr_255, 255 * expected, rtol=0, atol=2e-3)
    # The test can tell the window: linear ramps instead would be visibly off where the tiles disagree.
    linear = np.where(np.arange(128) < 32, (np.arange(128) + 0.5) / 32, 1.0)
    linear = np.minimum(linear, linear[::-1])
    blended_linear = (sr[0, :, 96:] * linear[None, 96:, None] + sr[1, :, :32] * linear[None, :32, None])
    assert np.abs(255 * blended_linear - result.sr_255[:, 96:128]).max() > 0.5
