"""The class-map picture: the original's colours, inset and blending."""

import numpy as np

from classsr_jax.inference.class_map import class_colours, class_map_overlay


def test_class_colours():
    assert class_colours(3).tolist() == [[0, 255, 0], [255, 255, 0], [255, 0, 0]]
    assert class_colours(5).tolist() == [[0, 255, 0], [128, 255, 0], [255, 255, 0],
                                         [255, 128, 0], [255, 0, 0]]
    assert class_colours(2).tolist() == [[0, 255, 0], [255, 0, 0]]


def test_class_map_overlay_two_tiles():
    sr = np.full((130, 240, 3), 100, dtype=np.uint8)
    sr[50, 112] = [230, 230, 230]  # inside both insets: saturates
    # Tile 0 (green) fills rows/cols 9..118; tile 1 (yellow) starts at x0 = 100 and
    # fills cols 109..218, so columns 109..118 are tinted twice.
    boxes = np.array([[0, 0, 128, 128], [0, 100, 128, 228]])
    out = class_map_overlay(sr, boxes, [0, 1])
    assert out.dtype == np.uint8 and np.array_equal(sr[0, 0], [100, 100, 100])  # input untouched
    expected = sr.astype(int)
    expected[9:119, 9:119, 1] += 51          # green
    expected[9:119, 109:219, 0] += 51        # yellow = red + green
    expected[9:119, 109:219, 1] += 51
    expected = np.minimum(expected, 255)
    assert np.array_equal(out, expected)
    assert out[50, 112].tolist() == [255, 255, 230]   # 230+51 and 230+102 saturate
    assert out[50, 60].tolist() == [100, 151, 100]    # green only
    assert out[50, 115].tolist() == [151, 202, 100]   # overlap: +51 twice on green
    assert out[50, 200].tolist() == [151, 151, 100]   # yellow only
    assert out[8, 60].tolist() == [100, 100, 100] and out[119, 60].tolist() == [100, 100, 100]
    assert out[60, 219].tolist() == [100, 100, 100] and out[129, 239].tolist() == [100, 100, 100]


def test_class_map_overlay_rounding_scaling_and_clipping():
    sr = np.zeros((40, 40, 3), dtype=np.uint8)
    sr[..., 0] = np.arange(40, dtype=np.uint8)[None, :] % 2 + 100   # 100, 101, ...
    # 32-px tiles: inset 9*32//128 = 2; red at alpha 0.5 adds 127.5, rounded half to
    # even: 227.5 -> 228, 228.5 -> 228. The second box reaches past the image.
    out = class_map_overlay(sr, [[0, 0, 32, 32], [20, 20, 52, 52]], [2, 2], alpha=0.5)
    assert out[2, 2, 0] == 228 and out[2, 3, 0] == 228
    assert out[1, 5, 0] == sr[1, 5, 0] and out[5, 1, 0] == sr[5, 1, 0]
    assert out[30, 5, 0] == sr[30, 5, 0]
    # Second box fills rows/cols 22..49, clipped to 22..39; (29, 29) is in both.
    assert out[39, 39, 0] == 228 and out[21, 39, 0] == sr[21, 39, 0]
    assert out[29, 29, 0] == 255  # 101 -> 228.5 -> 228 -> 355.5, saturated
    assert (out[..., 1:] == 0).all()
