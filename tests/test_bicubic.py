"""MATLAB-compatible bicubic: hand-computed cases, kernel properties, and an independent re-derivation."""

import math

import numpy as np
import pytest

from classsr_jax.data.bicubic import (
    bicubic_degrade,
    candidate_weights,
    contributions,
    cubic,
    imresize,
    modcrop,
    rescale_uint8,
)
from classsr_jax.io.pixels import to_uint8 as quantise_01


def to_uint8(values):
    """The quantiser on the 0–255 scale, as the bicubic's outputs are."""
    return quantise_01(values, 255.0)


def resize_1d(signal, scale, antialias=True):
    """Resizes a 1-D signal along H (an Hx1 image; W is kept by scale 1, which is the identity)."""
    column = np.asarray(signal, np.float64)[:, None]
    return imresize(column, scale=(scale, 1.0), antialias=antialias)[:, 0]


def test_cubic_kernel_values_by_hand():
    # Keys a = -0.5: 1.5|x|^3 - 2.5|x|^2 + 1 on |x| <= 1; -0.5|x|^3 + 2.5|x|^2 - 4|x| + 2 on 1 < |x| <= 2.
    x = np.array([0.0, 0.25, 0.75, 1.0, 1.25, 1.75, 2.0, 2.5, -0.25, -1.75])
    expected = np.array([1.0, 111 / 128, 29 / 128, 0.0, -9 / 128, -3 / 128, 0.0, 0.0, 111 / 128, -3 / 128])
    np.testing.assert_allclose(cubic(x), expected, rtol=0, atol=1e-15)


def test_upscale_x2_of_three_pixels_by_hand():
    # x2, length 3 -> 6. Output x (1-based) sits at u = x/2 + 1/4: 0.75, 1.25, ..., 3.25, so its four taps are
    # 0.25 or 0.75 px away. Phase 1/4: weights (-3, 29, 111, -9)/128 on pixels (k-2, k-1, k, k+1) for u = k - 1/4,
    # mirrored for u = k + 1/4. Pixels outside mirror symmetrically: 0-based -1 -> 0, -2 -> 1, 3 -> 2, 4 -> 1.
    s0, s1, s2 = 10.0, 50.0, 20.0
    expected = np.array(
        [
            (-3 * s1 + 29 * s0 + 111 * s0 - 9 * s1) / 128,  # u=0.75: taps at 0-based -2,-1,0,1
            (-9 * s0 + 111 * s0 + 29 * s1 - 3 * s2) / 128,  # u=1.25: taps -1,0,1,2
            (-3 * s0 + 29 * s0 + 111 * s1 - 9 * s2) / 128,  # u=1.75: taps -1,0,1,2
            (-9 * s0 + 111 * s1 + 29 * s2 - 3 * s2) / 128,  # u=2.25: taps 0,1,2,3
            (-3 * s0 + 29 * s1 + 111 * s2 - 9 * s2) / 128,  # u=2.75: taps 0,1,2,3
            (-9 * s1 + 111 * s2 + 29 * s2 - 3 * s1) / 128,  # u=3.25: taps 1,2,3,4
        ]
    )
    np.testing.assert_allclose(expected, [6.25, 18.828125, 43.984375, 46.71875, 27.03125, 17.1875])
    np.testing.assert_allclose(resize_1d([s0, s1, s2], 2.0), expected, rtol=0, atol=1e-12)


def test_antialiased_downscale_by_half_of_four_pixels_by_hand():
    # x1/2, length 4 -> 2, kernel stretched to width 8: weights 0.5*cubic(d/2) at d = u - j. Output 1 sits at
    # u = 1.5 (1-based), so d/2 = ±0.25, ±0.75, ±1.25, ±1.75 -> (-3, -9, 29, 111, 111, 29, -9, -3)/256 on 0-based
    # pixels -3..4, i.e. mirrored onto (2, 1, 0, 0, 1, 2, 3, 3). Output 2 is the mirror image.
    s = np.array([10.0, 50.0, 20.0, 40.0])
    first = (140 * s[0] + 102 * s[1] + 26 * s[2] - 12 * s[3]) / 256
    second = (-12 * s[0] + 26 * s[1] + 102 * s[2] + 140 * s[3]) / 256
    np.testing.assert_allclose([first, second], [25.546875, 34.453125])
    np.testing.assert_allclose(resize_1d(s, 0.5), [first, second], rtol=0, atol=1e-12)


def test_downscale_without_antialias_uses_the_narrow_kernel():
    # x1/2 with antialias off: u = 1.5 for output 1, taps at d = ±0.5, ±1.5: cubic = (-1/16, 9/16, 9/16, -1/16).
    s = np.array([10.0, 50.0, 20.0, 40.0])
    expected = [(-s[0] + 9 * s[0] + 9 * s[1] - s[2]) / 16, (-s[1] + 9 * s[2] + 9 * s[3] - s[3]) / 16]
    np.testing.assert_allclose(resize_1d(s, 0.5, antialias=False), expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("scale", [4.0, 2.0, 1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 1 / 3, 0.25])
def test_constant_image_stays_constant(scale):
    img = np.full((37, 29, 3), 123.0)
    out = imresize(img, scale)
    assert out.shape == (math.ceil(37 * scale), math.ceil(29 * scale), 3)
    np.testing.assert_allclose(out, 123.0, rtol=0, atol=1e-9)


def test_linear_ramp_stays_linear_away_from_the_border_on_upscaling():
    ramp = 3.0 * np.arange(20) + 7.0
    out = resize_1d(ramp, 4.0)
    # Output x (1-based) samples the input at u = x/4 + 3/8 (1-based), i.e. 0-based position u - 1.
    u = np.arange(1, 81) / 4 + 3 / 8
    expected = 3.0 * (u - 1) + 7.0
    # The live taps of position p are floor(p)-1 … floor(p)+2; the ramp is reproduced exactly (a = -0.5 keeps
    # linear functions) wherever they all lie in [0, 19], and bent by the mirror everywhere else.
    p = u - 1
    interior = (np.floor(p) - 1 >= 0) & (np.floor(p) + 2 <= 19)
    assert interior.sum() == 68
    np.testing.assert_allclose(out[interior], expected[interior], rtol=0, atol=1e-11)
    assert np.all(np.abs(out[~interior] - expected[~interior]) > 1e-3)


def test_antialias_support_at_quarter_scale_is_16_taps_plus_two_empty_candidates():
    weights, indices = candidate_weights(200, 50, 0.25)
    # MATLAB's window: ceil(4 / 0.25) + 2 = 18 candidates; the half-pixel offset keeps u - left at 8.5, so the
    # outermost candidates sit exactly 8.5 px away, beyond the 8 px half-width, and are always zero.
    assert weights.shape == (50, 18)
    assert np.all(weights[:, 0] == 0) and np.all(weights[:, -1] == 0)
    assert np.all(weights[:, 1:-1] != 0)
    trimmed, trimmed_indices = contributions(200, 50, 0.25)
    assert trimmed.shape == (50, 16)
    np.testing.assert_array_equal(trimmed_indices, indices[:, 1:-1] - 1)  # 0-based, the 16 live taps
    np.testing.assert_array_equal(trimmed_indices[0], np.arange(-6, 10))
    np.testing.assert_allclose(trimmed.sum(axis=1), 1.0, rtol=0, atol=1e-12)


@pytest.mark.parametrize(
    ("scale", "taps"), [(4.0, 4), (2.0, 4), (1.0, 4), (0.9, 5), (0.8, 5), (0.7, 6), (0.6, 7), (0.5, 8), (1 / 3, 12)]
)
def test_number_of_taps_is_ceil_of_the_kernel_width(scale, taps):
    weights, _ = contributions(120, math.ceil(120 * scale), scale)
    assert weights.shape[1] == taps


def independent_imresize(img, scale):
    """Re-derivation from the definition, one output pixel at a time: 0-based centre c = (o + 0.5)/scale - 0.5,
    weight of input j = k(c - j) with k = cubic (stretched by 1/scale and scaled by scale when downscaling),
    normalised; pixels beyond the edge come from the symmetric mirror."""
    img = np.asarray(img, np.float64)
    for axis in (0, 1):
        img = np.moveaxis(img, axis, 0)
        length = img.shape[0]
        out_length = math.ceil(length * scale)
        stretch = min(scale, 1.0)
        radius = 2.0 / stretch
        rows = []
        for o in range(out_length):
            c = (o + 0.5) / scale - 0.5
            js = np.arange(math.floor(c - radius) - 1, math.ceil(c + radius) + 2)
            w = np.array([stretch * cubic(np.array((c - j) * stretch)) for j in js], np.float64)
            w = w / w.sum()
            mirrored = [j if 0 <= j < length else (-j - 1 if j < 0 else 2 * length - 1 - j) for j in js]
            rows.append(np.tensordot(w, img[mirrored], axes=(0, 0)))
        img = np.moveaxis(np.stack(rows), 0, axis)
    return img


@pytest.mark.parametrize("scale", [0.25, 1 / 3, 0.5, 0.6, 0.7, 0.8, 0.9, 2.0, 3.0])
def test_matches_an_independent_rederivation(scale):
    rng = np.random.default_rng(7)
    img = rng.uniform(0, 255, size=(23, 18, 2))
    np.testing.assert_allclose(imresize(img, scale), independent_imresize(img, scale), rtol=0, atol=1e-9)


def test_channels_are_resized_independently_and_uint8_input_keeps_its_range():
    rng = np.random.default_rng(3)
    img = rng.integers(0, 256, size=(16, 12, 3), dtype=np.uint8)
    full = imresize(img, 0.5)
    for c in range(3):
        np.testing.assert_allclose(full[:, :, c], imresize(img[:, :, c], 0.5), rtol=0, atol=0)
    assert full.dtype == np.float64 and full.shape == (8, 6, 3)
    assert full.max() > 1.0  # 0–255 scale, unrounded


def test_output_shape_alone_sets_the_scale_per_axis():
    rng = np.random.default_rng(4)
    img = rng.uniform(0, 1, size=(20, 12))
    np.testing.assert_allclose(imresize(img, output_shape=(5, 6)), imresize(img, scale=(0.25, 0.5)), atol=1e-12)


def test_to_uint8_rounds_half_to_even_and_saturates():
    values = np.array([0.5, 1.5, 2.5, 2.5000001, -3.0, 254.5, 255.49, 300.2])
    np.testing.assert_array_equal(to_uint8(values), [0, 2, 2, 3, 0, 254, 255, 255])


def test_modcrop_cuts_bottom_and_right():
    img = np.arange(13 * 10 * 3).reshape(13, 10, 3)
    out = modcrop(img, 4)
    assert out.shape == (12, 8, 3)
    np.testing.assert_array_equal(out, img[:12, :8])
    assert modcrop(img[:, :, 0], 3).shape == (12, 9)


def test_bicubic_degrade_is_modcrop_resize_round():
    rng = np.random.default_rng(5)
    hr = rng.integers(0, 256, size=(35, 26, 3), dtype=np.uint8)
    for scale in (2, 3, 4):
        lr = bicubic_degrade(hr, scale)
        assert lr.dtype == np.uint8
        assert lr.shape == (35 // scale, 26 // scale, 3)
        cropped = hr[: 35 // scale * scale, : 26 // scale * scale]
        expected = np.clip(np.rint(independent_imresize(cropped, 1 / scale)), 0, 255).astype(np.uint8)
        np.testing.assert_array_equal(lr, expected)


def test_bicubic_degrade_of_a_flat_image_is_flat():
    assert np.all(bicubic_degrade(np.full((16, 16, 3), 77, np.uint8), 4) == 77)


def test_augmentation_scales_give_ceil_sizes_and_scale_one_is_a_copy():
    rng = np.random.default_rng(6)
    img = rng.integers(0, 256, size=(101, 64, 3), dtype=np.uint8)
    sizes = {f: rescale_uint8(img, f).shape[:2] for f in (1, 0.9, 0.8, 0.7, 0.6)}
    assert sizes == {1: (101, 64), 0.9: (91, 58), 0.8: (81, 52), 0.7: (71, 45), 0.6: (61, 39)}
    np.testing.assert_array_equal(rescale_uint8(img, 1), img)
    np.testing.assert_array_equal(rescale_uint8(img, 0.7), to_uint8(independent_imresize(img, 0.7)))


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: imresize(np.zeros((2, 3, 4, 5)), 0.5),
         "imresize expects an HxW or HxWxC array, got shape (2, 3, 4, 5)"),
        (lambda: imresize(np.zeros((4, 4)), -1.0), "scale must be positive, got -1.0"),
        (lambda: imresize(np.zeros((4, 4))), "imresize needs scale or output_shape"),
        (lambda: modcrop(np.zeros((4, 4)), 0), "modcrop scale must be a positive integer, got 0"),
        (lambda: bicubic_degrade(np.zeros((3, 3, 3), np.uint8), 4),
         "image of shape (0, 0, 3) is smaller than the scale 4"),
    ],
)
def test_bad_arguments_raise_one_line_errors(call, message):
    with pytest.raises(ValueError) as info:
        call()
    assert str(info.value) == message


def test_jax_and_pil_differ_from_matlab_only_as_documented():
    """Pins the module docstring: same kernel inside, different edge handling (and PIL uint8 rounding)."""
    jax = pytest.importorskip("jax")
    from PIL import Image

    rng = np.random.default_rng(0)
    img = rng.uniform(0, 255, size=(96, 128))
    for scale, edge in ((0.25, 2), (0.5, 2), (2.0, 6)):
        ours = imresize(img, scale)
        theirs = np.asarray(jax.image.resize(img.astype(np.float32), ours.shape, "bicubic", antialias=True), np.float64)
        pil = np.asarray(Image.fromarray(img.astype(np.float32), "F").resize(ours.shape[::-1], Image.BICUBIC),
                         np.float64)
        inner = (slice(edge, -edge), slice(edge, -edge))
        assert np.abs(theirs - ours)[inner].max() < 2e-3
        assert np.abs(pil - ours)[inner].max() < 1e-3
        assert np.abs(theirs - ours).max() > 1.0  # The edges differ by whole grey levels.
        assert np.abs(pil - ours).max() > 1.0
    smooth = to_uint8(127 + 100 * np.sin(np.arange(96)[:, None] / 7.0) * np.cos(np.arange(128)[None, :] / 9.0))
    ours_u8 = to_uint8(imresize(smooth, 0.5)).astype(int)
    pil_u8 = np.asarray(Image.fromarray(smooth).resize((64, 48), Image.BICUBIC), int)
    interior = np.abs(pil_u8 - ours_u8)[4:-4, 4:-4]
    assert interior.max() == 1 and 0.05 < np.mean(interior != 0) < 0.5
