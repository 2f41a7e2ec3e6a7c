"""Tests for classsr_jax.image_io: round trips, error handling, atomic writes, overlay."""

import io
import os
import struct
import zlib

import numpy as np
import pytest
import tifffile
from PIL import Image

from classsr_jax import image_io, png16
from classsr_jax.image_io import (
    ImageError,
    LoadedImage,
    class_colours,
    class_map_overlay,
    list_images,
    read_image,
    to_uint8,
    write_image,
)

RNG = np.random.default_rng(1234)


def _u8(shape):
    return RNG.integers(0, 256, shape).astype(np.uint8)


def _u16(shape):
    return RNG.integers(0, 65536, shape).astype(np.uint16)


def _like(mode, bit_depth, h=4, w=4):
    channels = 1 if mode.startswith("gray") else 3
    return LoadedImage(colour_pixels=np.zeros((h, w, channels), np.uint8 if bit_depth == 8 else np.uint16),
                       alpha_pixels=None, bit_depth=bit_depth, mode=mode, path="like")


# ------------------------------------------------------------------ round trips

def test_png_8bit_rgb_round_trip(tmp_path):
    pixels = _u8((21, 34, 3))
    path = tmp_path / "rgb.png"
    write_image(path, pixels / 255.0)
    assert np.array_equal(np.asarray(Image.open(path)), pixels)  # independent decoder
    img = read_image(path)
    assert (img.mode, img.bit_depth, img.alpha, img.path) == ("rgb", 8, None, str(path))
    assert img.rgb.dtype == np.float32 and img.rgb.shape == (21, 34, 3)
    assert np.array_equal(to_uint8(img.rgb), pixels)


def test_png_16bit_gray_round_trip(tmp_path):
    values = _u16((19, 23))
    src = tmp_path / "gray16_pillow.png"
    Image.fromarray(values).save(src)  # Pillow's own 16-bit gray encoder
    img = read_image(src)
    assert (img.mode, img.bit_depth) == ("gray", 16)
    assert np.array_equal(img.rgb[..., 0], img.rgb[..., 2])
    assert np.array_equal(np.rint(img.rgb[..., 0] * 65535).astype(np.uint16), values)
    out = tmp_path / "gray16.png"
    write_image(out, img.rgb, like=img)
    with Image.open(out) as check:
        assert check.mode == "I;16"
        assert np.array_equal(np.asarray(check), values)


def test_png_16bit_rgb_round_trip(tmp_path):
    values = _u16((17, 29, 3))
    path = tmp_path / "rgb16.png"
    write_image(path, values / 65535.0, like=_like("rgb", 16))
    with Image.open(path) as check:  # Pillow decodes it, truncated to the high bytes
        assert check.mode == "RGB"
        assert np.array_equal(np.asarray(check), (values >> 8).astype(np.uint8))
    img = read_image(path)
    assert (img.mode, img.bit_depth) == ("rgb", 16)
    assert np.array_equal(np.rint(img.rgb * 65535).astype(np.uint16), values)


@pytest.mark.parametrize("channels", [1, 2, 3, 4])
@pytest.mark.parametrize("filter_type", [None, 0, 1, 2, 3, 4])
def test_png_16bit_encoder_all_filters_and_layouts(tmp_path, channels, filter_type):
    samples = _u16((9, 11, channels))
    samples[3:6] = samples[3:6] // 1000  # some smooth-ish rows too
    path = tmp_path / "f.png"
    with open(path, "wb") as f:
        png16.write_png(f, samples, filter_type)
    if channels == 1:  # Pillow's decoder is independent of ours
        assert np.array_equal(np.asarray(Image.open(path)), samples[..., 0])
    img = read_image(path)
    colour = img.rgb[..., :1] if channels <= 2 else img.rgb
    stored = colour if img.alpha is None else np.concatenate([colour, img.alpha[..., None]], 2)
    assert np.array_equal(np.rint(stored * 65535).astype(np.uint16), samples)


def test_png_16bit_rgba_round_trip_keeps_alpha(tmp_path):
    rgb, alpha = _u16((8, 10, 3)), _u16((8, 10))
    path = tmp_path / "rgba16.png"
    write_image(path, rgb / 65535, like=_like("rgba", 16), alpha=alpha / 65535)
    img = read_image(path)
    assert (img.mode, img.bit_depth) == ("rgba", 16)
    assert np.array_equal(np.rint(img.rgb * 65535).astype(np.uint16), rgb)
    assert np.array_equal(np.rint(img.alpha * 65535).astype(np.uint16), alpha)


def test_jpeg_round_trip_is_close(tmp_path):
    y, x = np.mgrid[0:48, 0:64]
    rgb = np.stack([y / 47, x / 63, (x + y) / 110], axis=-1).astype(np.float32)
    path = tmp_path / "smooth.JPG"
    write_image(path, rgb)
    img = read_image(path)
    assert (img.mode, img.bit_depth) == ("rgb", 8)
    assert np.abs(img.rgb - rgb).mean() < 2 / 255
    assert np.abs(img.rgb - rgb).max() < 12 / 255


def test_tiff_16bit_rgb_round_trip(tmp_path):
    values = _u16((15, 26, 3))
    path = tmp_path / "rgb16.tif"
    write_image(path, values / 65535.0, like=_like("rgb", 16))
    stored = tifffile.imread(path)
    assert stored.dtype == np.uint16 and np.array_equal(stored, values)
    img = read_image(path)
    assert (img.mode, img.bit_depth) == ("rgb", 16)
    assert np.array_equal(np.rint(img.rgb * 65535).astype(np.uint16), values)


@pytest.mark.parametrize(
    "data, kwargs, mode, bit_depth",
    [
        (_u16((12, 14)), {}, "gray", 16),
        (_u8((12, 14, 2)), dict(photometric="minisblack", extrasamples=["unassalpha"]), "gray_alpha", 8),
        (_u16((3, 12, 14)), dict(photometric="rgb", planarconfig="separate"), "rgb", 16),
        (_u8((12, 14, 4)), dict(photometric="rgb", extrasamples=["unassalpha"]), "rgba", 8),
    ],
)
def test_tiff_layouts_written_by_tifffile(tmp_path, data, kwargs, mode, bit_depth):
    path = tmp_path / "in.tiff"
    tifffile.imwrite(path, data, metadata=None, **kwargs)
    img = read_image(path)
    assert (img.mode, img.bit_depth) == (mode, bit_depth)
    peak = 2 ** bit_depth - 1
    samples = np.moveaxis(data, 0, -1) if kwargs.get("planarconfig") == "separate" else data
    samples = samples.reshape(12, 14, -1)
    assert np.array_equal(np.rint(img.rgb[..., 0] * peak), samples[..., 0])
    if img.alpha is not None:
        assert np.array_equal(np.rint(img.alpha * peak), samples[..., -1])


def test_bmp_round_trip(tmp_path):
    pixels = _u8((13, 7, 3))
    path = tmp_path / "x.bmp"
    write_image(path, pixels / 255.0)
    img = read_image(path)
    assert (img.mode, img.bit_depth) == ("rgb", 8)
    assert np.array_equal(to_uint8(img.rgb), pixels)


def test_gray_png_saved_back_as_gray(tmp_path):
    values = _u8((10, 12))
    src = tmp_path / "gray.png"
    Image.fromarray(values, mode="L").save(src)
    img = read_image(src)
    assert (img.mode, img.bit_depth) == ("gray", 8)
    out = tmp_path / "gray_out.png"
    write_image(out, img.rgb, like=img)
    with Image.open(out) as check:
        assert check.mode == "L" and np.array_equal(np.asarray(check), values)
    # Coloured SR output of a gray input is saved as the channel mean: (0.2+0.9+0.1)/3
    # = 0.4 -> 102 (BT.601 luma would give 153).
    rgb = np.empty((10, 12, 3), np.float32)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 0.2, 0.9, 0.1
    write_image(out, rgb, like=img)
    assert (np.asarray(Image.open(out)) == 102).all()


def test_rgba_png_keeps_alpha(tmp_path):
    pixels = _u8((9, 8, 4))
    src = tmp_path / "rgba.png"
    Image.fromarray(pixels, mode="RGBA").save(src)
    img = read_image(src)
    assert (img.mode, img.bit_depth) == ("rgba", 8)
    assert np.array_equal(to_uint8(img.alpha), pixels[..., 3])
    assert np.array_equal(to_uint8(img.rgb), pixels[..., :3])
    out = tmp_path / "rgba_out.png"
    write_image(out, img.rgb, like=img, alpha=img.alpha)
    with Image.open(out) as check:
        assert check.mode == "RGBA" and np.array_equal(np.asarray(check), pixels)
    # Without an alpha the layout falls back to RGB.
    write_image(out, img.rgb, like=img)
    assert Image.open(out).mode == "RGB"


def test_write_clips_and_rounds_half_to_even(tmp_path):
    rgb = np.array([[[-0.5, 1.5, np.nan], [0.5 / 255, 1.5 / 255, 2.5 / 255]]], np.float32)
    path = tmp_path / "clip.png"
    write_image(path, rgb)
    assert np.asarray(Image.open(path)).tolist() == [[[0, 255, 0], [0, 2, 2]]]
    assert to_uint8(rgb).tolist() == [[[0, 255, 0], [0, 2, 2]]]


# ------------------------------------------------------------------ errors

def _assert_one_line_naming(exc_info, name):
    message = str(exc_info.value)
    assert name in message and "\n" not in message, message


def test_truncated_png_raises_image_error(tmp_path):
    good = io.BytesIO()
    Image.fromarray(_u8((64, 64, 3))).save(good, format="PNG")
    path = tmp_path / "broken.png"
    path.write_bytes(good.getvalue()[: len(good.getvalue()) // 2])
    with pytest.raises(ImageError) as info:
        read_image(path)
    _assert_one_line_naming(info, "broken.png")
    assert "cannot read image" in str(info.value)


def test_truncated_16bit_png_raises_image_error(tmp_path):
    full = io.BytesIO()
    png16.write_png(full, _u16((40, 40, 3)))
    path = tmp_path / "broken16.png"
    path.write_bytes(full.getvalue()[:200])
    with pytest.raises(ImageError) as info:
        read_image(path)
    _assert_one_line_naming(info, "broken16.png")


def test_text_file_named_png_raises_image_error(tmp_path):
    path = tmp_path / "x.png"
    path.write_text("this is not an image\nat all\n")
    with pytest.raises(ImageError) as info:
        read_image(path)
    _assert_one_line_naming(info, "x.png")


def test_missing_file_and_folder_raise_image_error(tmp_path):
    with pytest.raises(ImageError, match="no such file"):
        read_image(tmp_path / "nope.png")
    with pytest.raises(ImageError, match="folder"):
        read_image(tmp_path)


def test_zero_size_png_raises_image_error(tmp_path):
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    data = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 0, 5, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))
    path = tmp_path / "empty.png"
    path.write_bytes(data)
    with pytest.raises(ImageError) as info:
        read_image(path)
    _assert_one_line_naming(info, "empty.png")


def test_unknown_extension_on_write(tmp_path):
    with pytest.raises(ImageError, match="unknown extension"):
        write_image(tmp_path / "x.gif", np.zeros((2, 2, 3)))


def test_atomic_write_leaves_existing_file_untouched(tmp_path, monkeypatch):
    path = tmp_path / "out.png"
    write_image(path, np.full((6, 6, 3), 0.5))
    before = path.read_bytes()

    def failing_save(self, fp, *args, **kwargs):
        fp.write(b"\x89PNG partial garbage")  # half-written output, then a crash
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", failing_save)
    with pytest.raises(ImageError) as info:
        write_image(path, np.zeros((6, 6, 3)))
    _assert_one_line_naming(info, "out.png")
    assert "disk full" in str(info.value)
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["out.png"]  # no temporary file left


def test_atomic_write_16bit_encoder_failure(tmp_path, monkeypatch):
    def failing_png(f, samples, filter_type=None, icc_profile=None):
        f.write(b"\x89PNG")
        raise RuntimeError("encoder exploded")

    monkeypatch.setattr(png16, "write_png", failing_png)
    with pytest.raises(ImageError, match="encoder exploded"):
        write_image(tmp_path / "new.png", np.zeros((4, 4, 3)), like=_like("rgb", 16))
    assert os.listdir(tmp_path) == []


def test_list_images(tmp_path):
    for name in ["b.PNG", "a.jpg", "c.TiFF", "d.bmp", "e.jpeg", "f.tif", "notes.txt", ".hidden.png"]:
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "sub.png").mkdir()
    names = [os.path.basename(p) for p in list_images(tmp_path)]
    assert names == ["a.jpg", "b.PNG", "c.TiFF", "d.bmp", "e.jpeg", "f.tif"]
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ImageError) as info:
        list_images(empty)
    assert str(info.value).startswith("no images (png, jpg, jpeg, tif, tiff, bmp) in ")
    _assert_one_line_naming(info, str(empty))
    with pytest.raises(ImageError, match="no such folder"):
        list_images(tmp_path / "missing")


# ------------------------------------------------------------------ overlay

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
