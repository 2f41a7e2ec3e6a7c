"""Tests for classsr_jax.io.images and png16: round trips, orientation, colour profiles, the pixel limit, integer
samples, error handling, atomic writes."""

import errno
import io
import os
import struct
import threading
import warnings
import zlib

import imagecodecs
import numpy as np
import pytest
import tifffile
from PIL import EpsImagePlugin, Image, ImageCms, ImageFile, ImageOps, PngImagePlugin

from classsr_jax.data.files import read_rgb_uint8
from classsr_jax.errors import UnreadableImageError
from classsr_jax.io import images, png16
from classsr_jax.io.images import (
    ImageError,
    LoadedImage,
    image_size,
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
@pytest.mark.parametrize("png_filter", [None, *imagecodecs.PNG.FILTER])
def test_png_16bit_reader_all_filters_and_layouts(tmp_path, channels, png_filter):
    samples = _u16((9, 11, channels))
    samples[3:6] = samples[3:6] // 1000  # some smooth-ish rows too
    path = tmp_path / "f.png"
    path.write_bytes(imagecodecs.png_encode(samples, filter=png_filter))  # libpng, independent of our reader
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
    full = imagecodecs.png_encode(_u16((40, 40, 3)))
    path = tmp_path / "broken16.png"
    path.write_bytes(full[:200])
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


# ------------------------------------------------------------------ what decoding may cost

@pytest.fixture
def no_decoding(monkeypatch):
    """Makes any pixel decoding fail loudly: the refusals below must come from the header alone."""
    def decoded(*args, **kwargs):
        raise AssertionError("pixels were decoded")
    monkeypatch.setattr(tifffile.TiffPage, "asarray", decoded)
    monkeypatch.setattr(ImageFile.ImageFile, "load", decoded)


def assert_refused(path, message, **kwargs):
    for read in (read_image, image_size):
        with pytest.raises(ImageError) as info:
            read(path, **kwargs)
        assert str(info.value) == f"cannot read image {path}: {message}"


def test_tiff_with_1000_samples_per_pixel_is_refused_from_the_header(tmp_path, no_decoding):
    path = tmp_path / "wide.tif"
    tifffile.imwrite(path, np.zeros((2, 2, 1000), np.uint8), photometric="minisblack", planarconfig="contig",
                     metadata=None)
    assert_refused(path, "1000 samples per pixel (at most 4: gray, gray+alpha, RGB, RGBA)")


def test_multi_page_tiff_and_volume_are_refused(tmp_path, no_decoding):
    pages = tmp_path / "pages.tif"
    tifffile.imwrite(pages, np.zeros((3, 8, 8), np.uint8), photometric="minisblack", metadata=None)
    assert_refused(pages, "3 pages; only single images are read (save the one you want as its own file)")
    volume = tmp_path / "volume.tif"
    tifffile.imwrite(volume, np.zeros((2, 16, 16), np.uint8), photometric="minisblack", volumetric=True,
                     tile=(16, 16), metadata=None)
    assert_refused(volume, "2 slices (a volume); only single images are read (save the one you want as its own file)")


def test_animated_png_and_gif_are_refused(tmp_path, no_decoding):
    frames = [Image.new("RGB", (8, 8)), Image.new("RGB", (8, 8), (255, 0, 0))]
    for name in ("anim.png", "anim.gif"):
        frames[0].save(tmp_path / name, save_all=True, append_images=frames[1:])
        assert_refused(tmp_path / name, "2 frames or pages; only single images are read (save the one you want as its "
                                  "own file)")


def test_decoded_size_limit_from_the_header(tmp_path, no_decoding):
    path = tmp_path / "float.tif"  # 10x10 = 100 pixels, within the pixel limit, but 8-byte samples
    tifffile.imwrite(path, np.zeros((10, 10, 3), np.float64), photometric="rgb", metadata=None)
    assert_refused(path, "decoded size 2400 bytes (10x10, 3 samples of 8 bytes) is over the 800 bytes limit (8 bytes "
                   "per pixel of the pixel limit; --max-pixels raises it)", max_pixels=100)


def test_fifo_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    outcome = []

    def read():
        try:
            read_image(fifo)
        except ImageError as exc:
            outcome.append(str(exc))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(30)  # a guard against hanging the suite, not a timing: the refusal comes before any open
    if reader.is_alive():  # unblock the reader, then fail
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        pytest.fail("read_image blocked on a FIFO")
    assert outcome == [f"cannot read image {fifo}: not a regular file (a FIFO, socket or device); only files are "
                       "read"]
    with pytest.raises(UnreadableImageError, match="not a regular file"):
        read_rgb_uint8(fifo)  # would block too: the dataset reader checks the same way


EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n%%EOF\n"


def test_eps_renamed_png_never_reaches_pillows_eps_plugin(tmp_path, monkeypatch):
    path = tmp_path / "drawing.png"
    path.write_bytes(EPS)
    with Image.open(path) as im:
        assert im.format == "EPS"  # an unrestricted open would hand it to the Ghostscript plugin
    monkeypatch.setattr(EpsImagePlugin.EpsImageFile, "_open", lambda self: pytest.fail("EPS plugin reached"))
    assert_refused(path, "not a recognised image file (only PNG, JPEG, BMP, TIFF, WEBP, QOI, GIF)")
    with pytest.raises(UnreadableImageError, match="not an image Pillow can identify"):
        read_rgb_uint8(path)


def test_memory_error_while_decoding_is_an_image_error(tmp_path, monkeypatch):
    path = tmp_path / "big.png"
    Image.fromarray(_u8((8, 8, 3))).save(path)

    def out_of_memory(self):
        raise MemoryError()
    monkeypatch.setattr(PngImagePlugin.PngImageFile, "load", out_of_memory)
    with pytest.raises(ImageError) as info:
        read_image(path)
    assert str(info.value) == f"cannot read image {path}: not enough memory to decode it"


def test_unknown_extension_on_write(tmp_path):
    with pytest.raises(ImageError, match="unknown extension"):
        write_image(tmp_path / "x.gif", np.zeros((2, 2, 3)))


def test_atomic_write_leaves_existing_file_untouched(tmp_path, monkeypatch):
    path = tmp_path / "out.png"
    write_image(path, np.full((6, 6, 3), 0.5))
    before = path.read_bytes()

    def failing_write(f, *args):
        f.write(b"\x89PNG partial garbage")  # half-written output, then a crash
        raise OSError("disk full")

    monkeypatch.setattr(images, "_encode", failing_write)
    with pytest.raises(ImageError) as info:
        write_image(path, np.zeros((6, 6, 3)))
    _assert_one_line_naming(info, "out.png")
    assert "disk full" in str(info.value)
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["out.png"]  # no temporary file left


def test_atomic_write_16bit_encoder_failure(tmp_path, monkeypatch):
    def failing_png(samples, **kwargs):
        raise RuntimeError("encoder exploded")

    monkeypatch.setattr(imagecodecs, "png_encode", failing_png)
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
    assert str(info.value).startswith("no images (png, jpg, jpeg, tif, tiff, bmp, webp, qoi) in ")
    _assert_one_line_naming(info, str(empty))
    with pytest.raises(ImageError, match="no such folder"):
        list_images(tmp_path / "missing")


# ------------------------------------------------------------------ orientation

def _exif(orientation):
    exif = Image.Exif()
    exif[274] = orientation
    return exif


def _numbered(h, w):
    """A non-square image whose every pixel differs (rows and columns recoverable)."""
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([y * 10, x * 10, (y + x) * 3], axis=-1).astype(np.uint8)


# What each orientation means, as the EXIF standard words it ("mirror horizontally and rotate 90° clockwise"),
# written out independently of Pillow and of image_io: the operation that turns the stored pixels upright.
UPRIGHT = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],                   # mirror horizontally
    3: lambda a: np.rot90(a, 2),               # rotate 180°
    4: lambda a: a[::-1],                      # mirror vertically
    5: lambda a: np.rot90(a[:, ::-1], 1),      # mirror horizontally, rotate 90° anticlockwise
    6: lambda a: np.rot90(a, -1),              # rotate 90° clockwise
    7: lambda a: np.rot90(a[:, ::-1], -1),     # mirror horizontally, rotate 90° clockwise
    8: lambda a: np.rot90(a, 1),               # rotate 90° anticlockwise
}


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_rotated_jpeg_reads_upright(tmp_path, orientation):
    path = tmp_path / "photo.jpg"
    Image.fromarray(_numbered(12, 20)).save(path, quality=95, exif=_exif(orientation))
    img = read_image(path)
    with Image.open(path) as im:
        stored = np.asarray(im)
        reference = np.asarray(ImageOps.exif_transpose(im))
    expected_shape = (20, 12, 3) if orientation >= 5 else (12, 20, 3)
    assert img.pixels.shape == reference.shape == expected_shape
    assert np.array_equal(img.pixels, reference)
    assert np.array_equal(img.pixels, UPRIGHT[orientation](stored))
    assert image_size(path) == expected_shape[:2]


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_png_with_exif_orientation_reads_upright(tmp_path, orientation):
    pixels = _numbered(9, 14)
    path = tmp_path / "turned.png"
    Image.fromarray(pixels).save(path, exif=_exif(orientation))
    img = read_image(path)
    assert np.array_equal(img.pixels, UPRIGHT[orientation](pixels))
    with Image.open(path) as im:
        assert np.array_equal(img.pixels, np.asarray(ImageOps.exif_transpose(im)))
    assert image_size(path) == img.pixels.shape[:2]


def _insert_chunk_after_ihdr(png_bytes, chunk):
    ihdr_end = 8 + 8 + 13 + 4
    return png_bytes[:ihdr_end] + chunk + png_bytes[ihdr_end:]


def test_16bit_png_with_exif_orientation_reads_upright(tmp_path):
    samples = _u16((7, 11, 3))
    out = imagecodecs.png_encode(samples)
    path = tmp_path / "turned16.png"
    path.write_bytes(_insert_chunk_after_ihdr(out, png16.chunk(b"eXIf", _exif(8).tobytes())))
    img = read_image(path)
    assert (img.mode, img.bit_depth) == ("rgb", 16)
    assert np.array_equal(img.pixels, np.rot90(samples, 1))


def test_tiff_orientation_tag_through_tifffile(tmp_path):
    samples = _u16((6, 10, 3))
    path = tmp_path / "turned.tif"
    tifffile.imwrite(path, samples, photometric="rgb", metadata=None, extratags=[(274, "H", 1, 6, True)])
    img = read_image(path)
    assert img.bit_depth == 16 and np.array_equal(img.pixels, np.rot90(samples, -1))
    assert image_size(path) == (10, 6)


def test_tiff_orientation_tag_through_pillow(tmp_path):
    pixels = _numbered(6, 10)
    path = tmp_path / "lzw.tif"
    # LZW needs imagecodecs in tifffile, so this file is decoded by Pillow.
    Image.fromarray(pixels).save(path, compression="tiff_lzw", tiffinfo={274: 8})
    img = read_image(path)
    assert np.array_equal(img.pixels, np.rot90(pixels, 1))
    with Image.open(path) as im:
        assert np.array_equal(img.pixels, np.asarray(ImageOps.exif_transpose(im)))


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".tif"])
def test_output_of_rotated_input_is_upright_without_orientation(tmp_path, suffix):
    src = tmp_path / "photo.jpg"
    Image.fromarray(_numbered(12, 20)).save(src, quality=95, exif=_exif(6))
    img = read_image(src)
    out = tmp_path / f"out{suffix}"
    write_image(out, img.pixels, like=img)
    with Image.open(out) as im:
        assert im.size == (12, 20)  # (width, height): upright
        assert 274 not in im.getexif()
        reread = np.asarray(ImageOps.exif_transpose(im))
    if suffix != ".jpg":
        assert np.array_equal(reread, img.pixels)
    assert read_image(out).pixels.shape == (20, 12, 3)


# ------------------------------------------------------------------ colour profiles

SRGB_PROFILE = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def _png_chunks(data):
    """(type, payload) of every chunk, parsed here independently of Pillow and png16."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    chunks, pos = [], 8
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind, payload = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        assert struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])[0] == zlib.crc32(kind + payload)
        chunks.append((kind, payload))
        pos += 12 + length
    return chunks


def _decode_png16_rgb(data):
    """A minimal independent PNG decoder for 16-bit RGB (colour type 2), non-interlaced: inflate and un-filter."""
    chunks = _png_chunks(data)
    w, h, depth, colour_type, _, _, interlace = struct.unpack(">IIBBBBB", chunks[0][1])
    assert (depth, colour_type, interlace) == (16, 2, 0)
    raw = zlib.decompress(b"".join(p for k, p in chunks if k == b"IDAT"))
    bpp, stride = 6, w * 6
    prev = [0] * stride
    rows = []
    for y in range(h):
        ftype, line = raw[y * (stride + 1)], list(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b, c = prev[i], prev[i - bpp] if i >= bpp else 0
            if ftype == 1:
                line[i] = (line[i] + a) & 255
            elif ftype == 2:
                line[i] = (line[i] + b) & 255
            elif ftype == 3:
                line[i] = (line[i] + (a + b) // 2) & 255
            elif ftype == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        rows.append(line)
        prev = line
    return np.frombuffer(bytes(sum(rows, [])), ">u2").reshape(h, w, 3).astype(np.uint16)


def test_icc_profile_round_trip_8bit_png_and_jpeg(tmp_path):
    pixels = _u8((10, 14, 3))
    for name in ("in.png", "in.jpg"):
        src = tmp_path / name
        Image.fromarray(pixels).save(src, icc_profile=SRGB_PROFILE)
        img = read_image(src)
        assert img.icc_profile == SRGB_PROFILE
        for out_name in ("out.png", "out.jpg", "out.tif"):
            out = tmp_path / out_name
            write_image(out, img.pixels, like=img)
            with Image.open(out) as check:
                assert check.info.get("icc_profile") == SRGB_PROFILE, (name, out_name)
            assert read_image(out).icc_profile == SRGB_PROFILE
        # BMP cannot carry a profile through Pillow: written without one.
        write_image(tmp_path / "out.bmp", img.pixels, like=img)
        assert read_image(tmp_path / "out.bmp").icc_profile is None


def test_icc_profile_round_trip_16bit_png(tmp_path):
    samples = _u16((9, 13, 3))
    src = tmp_path / "in16.png"
    write_image(src, samples, like=_like("rgb", 16), icc_profile=SRGB_PROFILE)
    data = src.read_bytes()
    chunks = _png_chunks(data)
    kinds = [k for k, _ in chunks]
    assert kinds.index(b"iCCP") < kinds.index(b"IDAT")
    name, rest = dict(chunks)[b"iCCP"].split(b"\0", 1)
    assert name == b"ICC Profile" and rest[0] == 0 and zlib.decompress(rest[1:]) == SRGB_PROFILE
    assert np.array_equal(_decode_png16_rgb(data), samples)
    with Image.open(src) as check:
        assert check.info["icc_profile"] == SRGB_PROFILE
    img = read_image(src)
    assert (img.bit_depth, img.icc_profile) == (16, SRGB_PROFILE)
    assert np.array_equal(img.pixels, samples)
    out = tmp_path / "out16.png"
    write_image(out, img.pixels, like=img)
    assert zlib.decompress(dict(_png_chunks(out.read_bytes()))[b"iCCP"][13:]) == SRGB_PROFILE
    assert np.array_equal(_decode_png16_rgb(out.read_bytes()), samples)


def test_icc_profile_round_trip_tiff(tmp_path):
    samples = _u16((8, 12, 3))
    src = tmp_path / "in.tif"
    tifffile.imwrite(src, samples, photometric="rgb", metadata=None, iccprofile=SRGB_PROFILE)
    img = read_image(src)
    assert (img.bit_depth, img.icc_profile) == (16, SRGB_PROFILE)
    for name in ("out.tif", "out.png"):
        out = tmp_path / name
        write_image(out, img.pixels, like=img)
        assert read_image(out).icc_profile == SRGB_PROFILE
        assert np.array_equal(read_image(out).pixels, samples)
    with tifffile.TiffFile(tmp_path / "out.tif") as tif:
        assert tif.pages.first.iccprofile == SRGB_PROFILE
    # Through Pillow (an LZW TIFF tifffile cannot decode here) too.
    lzw = tmp_path / "lzw.tif"
    Image.fromarray(_u8((5, 6, 3))).save(lzw, compression="tiff_lzw", icc_profile=SRGB_PROFILE)
    assert read_image(lzw).icc_profile == SRGB_PROFILE


def test_explicit_icc_profile_overrides_like(tmp_path):
    src = tmp_path / "in.png"
    Image.fromarray(_u8((4, 5, 3))).save(src, icc_profile=SRGB_PROFILE)
    img = read_image(src)
    write_image(tmp_path / "none.png", img.pixels, like=img, icc_profile=b"")
    assert "icc_profile" not in Image.open(tmp_path / "none.png").info
    other = SRGB_PROFILE[:-4] + b"\x01\x02\x03\x04"
    write_image(tmp_path / "other.jpg", img.pixels, like=img, icc_profile=other)
    assert Image.open(tmp_path / "other.jpg").info["icc_profile"] == other
    write_image(tmp_path / "plain.png", img.pixels)  # no like, no profile
    assert "icc_profile" not in Image.open(tmp_path / "plain.png").info


def test_profile_of_another_colour_space_is_dropped(tmp_path):
    cmyk_profile = SRGB_PROFILE[:16] + b"CMYK" + SRGB_PROFILE[20:]
    src = tmp_path / "in.jpg"
    Image.fromarray(_u8((4, 5, 3))).save(src, icc_profile=cmyk_profile)
    assert read_image(src).icc_profile is None
    gray = tmp_path / "gray.png"  # an RGB profile does not describe gray samples
    Image.fromarray(_u8((4, 5)), mode="L").save(gray, icc_profile=SRGB_PROFILE)
    assert read_image(gray).icc_profile is None


# ------------------------------------------------------------------ pixel limit

def _write_each_format(folder, h, w):
    """The same (h, w) image in every decoder path: Pillow PNG/JPEG/BMP, 16-bit PNG, tifffile, Pillow TIFF, and a
    format beyond the four (GIF, named .png as browsers' downloads sometimes are) through ``Image.open``."""
    pixels = _u8((h, w, 3))
    paths = {}
    for name in ("a.png", "a.jpg", "a.bmp"):
        Image.fromarray(pixels).save(folder / name)
        paths[name] = folder / name
    paths["a16.png"] = folder / "a16.png"
    write_image(paths["a16.png"], _u16((h, w, 3)), like=_like("rgb", 16))
    paths["a.tif"] = folder / "a.tif"
    tifffile.imwrite(paths["a.tif"], pixels, photometric="rgb", metadata=None)
    paths["lzw.tif"] = folder / "lzw.tif"
    Image.fromarray(pixels).save(paths["lzw.tif"], compression="tiff_lzw")
    paths["gif.png"] = folder / "gif.png"
    Image.fromarray(pixels).save(paths["gif.png"], format="GIF")
    return paths


def test_pixel_limit_is_one_line_naming_the_file(tmp_path):
    paths = _write_each_format(tmp_path, 10, 12)
    for path in paths.values():
        with pytest.raises(ImageError) as info:
            read_image(path, max_pixels=119)
        assert str(info.value) == (f"cannot read image {path}: 12x10 = 120 pixels is over the 119 pixels limit "
                                   "(--max-pixels raises it)")
        with pytest.raises(ImageError) as info:
            image_size(path, max_pixels=119)
        assert "12x10 = 120 pixels is over" in str(info.value)
        assert read_image(path, max_pixels=120).pixels.shape == (10, 12, 3)
        assert image_size(path, max_pixels=120) == (10, 12)


def test_pixel_limit_in_megapixels(tmp_path):
    path = tmp_path / "big.png"
    Image.new("L", (4000, 3000)).save(path)
    with pytest.raises(ImageError) as info:
        image_size(path, max_pixels=11_500_000)
    assert str(info.value) == (f"cannot read image {path}: 4000x3000 = 12.0 MP is over the 11.5 MP limit "
                               "(--max-pixels raises it)")
    with pytest.raises(ImageError, match=r"= 12000000 pixels is over the 11999999 pixels limit"):
        image_size(path, max_pixels=11_999_999)  # 12.0 MP over 12.0 MP would say nothing


@pytest.mark.parametrize("h, w", [(10, 12), (15, 14)])  # 1x to 2x, and over 2x, Pillow's limit of 100
def test_pillow_decompression_bomb_check_does_not_leak(tmp_path, monkeypatch, h, w):
    paths = _write_each_format(tmp_path, h, w)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a DecompressionBombWarning would fail the test
        for path in paths.values():
            with pytest.raises(ImageError) as info:
                read_image(path)  # the default limit is Pillow's
            assert str(info.value) == (f"cannot read image {path}: {w}x{h} = {h * w} pixels is over the "
                                       "100 pixels limit (--max-pixels raises it)")
            assert read_image(path, max_pixels=0).pixels.shape == (h, w, 3)  # no limit
            assert read_image(path, max_pixels=-1).pixels.shape == (h, w, 3)
            assert read_image(path, max_pixels=h * w).pixels.shape == (h, w, 3)
            assert image_size(path, max_pixels=0) == (h, w)
    assert Image.MAX_IMAGE_PIXELS == 100  # restored after each read


def test_image_size_reads_only_the_header(tmp_path):
    for name in ("cut.png", "cut.jpg", "cut.tif"):
        full = tmp_path / f"full_{name}"
        if name.endswith(".tif"):
            tifffile.imwrite(full, _u8((30, 40, 3)), photometric="rgb", metadata=None)
        else:
            Image.fromarray(_u8((30, 40, 3))).save(full)
        data = full.read_bytes()
        cut = tmp_path / name
        if name.endswith(".tif"):  # tifffile puts the header (IFD) first, the pixels after it
            cut.write_bytes(data[:400])
        elif name.endswith(".jpg"):  # the header ends with the start-of-scan segment
            cut.write_bytes(data[:data.index(b"\xff\xda") + 20])
        else:
            cut.write_bytes(data[:data.index(b"IDAT") + 20])
        assert image_size(cut) == (30, 40)
        with pytest.raises(ImageError, match=f"cannot read image {cut}"):
            read_image(cut)
    with pytest.raises(ImageError, match="no such file"):
        image_size(tmp_path / "missing.png")


# ------------------------------------------------------------------ integer samples

def test_loaded_image_keeps_integer_samples(tmp_path):
    values = _u16((6, 9))
    src = tmp_path / "gray16.png"
    Image.fromarray(values).save(src)
    img = read_image(src)
    assert img.colour_pixels.dtype == np.uint16 and img.colour_pixels.shape == (6, 9, 1)
    assert img.pixels.shape == (6, 9, 3) and img.pixels.dtype == np.uint16
    assert all(np.array_equal(img.pixels[..., c], values) for c in range(3))
    assert not img.pixels.flags.writeable  # a view repeating the one channel, not a copy
    assert np.shares_memory(img.pixels, img.colour_pixels)
    assert (img.height, img.width, img.alpha_pixels, img.alpha) == (6, 9, None, None)
    assert img.rgb.dtype == np.float32 and img.rgb.shape == (6, 9, 3)
    assert np.array_equal(img.rgb[..., 1], values.astype(np.float32) / np.float32(65535))

    rgba = _u8((5, 7, 4))
    src = tmp_path / "rgba.png"
    Image.fromarray(rgba, mode="RGBA").save(src)
    img = read_image(src)
    assert np.array_equal(img.pixels, rgba[..., :3]) and np.array_equal(img.alpha_pixels, rgba[..., 3])
    assert img.pixels.flags.writeable and img.alpha_pixels.dtype == np.uint8
    assert np.array_equal(img.alpha, rgba[..., 3].astype(np.float32) / np.float32(255))


@pytest.mark.parametrize("suffix", [".png", ".bmp", ".tif"])
def test_uint8_samples_written_exactly(tmp_path, suffix):
    pixels, alpha = _u8((7, 9, 3)), _u8((7, 9))
    kept = pixels.copy()
    path = tmp_path / f"u8{suffix}"
    write_image(path, pixels, alpha=alpha)
    assert np.array_equal(pixels, kept)  # the caller's array is not touched
    rgba = np.concatenate([pixels, alpha[..., None]], axis=2)
    if suffix == ".bmp":  # 32-bit BGRA rows, bottom-up, after a 54-byte header; Pillow reads back only BGR
        data = path.read_bytes()
        assert np.array_equal(np.frombuffer(data[54:], np.uint8).reshape(7, 9, 4)[::-1][..., [2, 1, 0, 3]], rgba)
        return
    with Image.open(path) as check:
        assert check.mode == "RGBA" and np.array_equal(np.asarray(check), rgba)


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_uint16_samples_written_exactly(tmp_path, suffix):
    samples, alpha = _u16((7, 9, 3)), _u16((7, 9))
    path = tmp_path / f"u16{suffix}"
    write_image(path, samples, like=_like("rgba", 16), alpha=alpha)
    img = read_image(path)
    assert (img.mode, img.bit_depth) == ("rgba", 16)
    assert np.array_equal(img.pixels, samples) and np.array_equal(img.alpha_pixels, alpha)
    if suffix == ".tif":
        assert np.array_equal(tifffile.imread(path), np.concatenate([samples, alpha[..., None]], axis=2))


def test_integer_samples_of_the_other_depth_convert_exactly(tmp_path):
    wide = np.array([[[0, 128, 129], [385, 386, 65535], [257, 32767, 32768]]], np.uint16)
    # round(v / 257): 128 -> 0.498 -> 0, 129 -> 0.502 -> 1, 385 -> 1.498 -> 1, 386 -> 1.502 -> 2
    expected = np.array([[[0, 0, 1], [1, 2, 255], [1, 127, 128]]], np.uint8)
    path = tmp_path / "narrow.png"
    write_image(path, wide)  # no like: 8-bit
    assert np.array_equal(np.asarray(Image.open(path)), expected)
    assert np.array_equal(expected, to_uint8(wide / 65535.0))  # the float path agrees
    write_image(tmp_path / "narrow.bmp", wide, like=_like("rgb", 16))  # BMP is 8-bit only
    assert np.array_equal(np.asarray(Image.open(tmp_path / "narrow.bmp")), expected)
    narrow = _u8((3, 4, 3))
    write_image(tmp_path / "wide.png", narrow, like=_like("rgb", 16))
    assert np.array_equal(read_image(tmp_path / "wide.png").pixels, narrow.astype(np.uint16) * 257)
    with pytest.raises(ValueError, match="int32"):
        write_image(tmp_path / "bad.png", narrow.astype(np.int32))


def test_gray_target_from_integer_samples_is_the_rounded_mean(tmp_path):
    rgb = np.array([[[1, 2, 2], [1, 1, 2], [255, 255, 254], [0, 255, 0]]], np.uint8)
    path = tmp_path / "gray.png"
    write_image(path, rgb, like=_like("gray", 8, 1, 4))
    with Image.open(path) as check:  # 5/3 -> 2, 4/3 -> 1, 764/3 -> 255, 255/3 = 85
        assert check.mode == "L" and np.asarray(check).tolist() == [[2, 1, 255, 85]]
    wide = np.array([[[65535, 65535, 65535], [65535, 65535, 65534]]], np.uint16)  # no overflow
    write_image(path, wide, like=_like("gray", 16, 1, 2))
    with Image.open(path) as check:
        assert np.asarray(check).tolist() == [[65535, 65535]]
    write_image(path, rgb, like=_like("gray_alpha", 8, 1, 4), alpha=np.array([[0, 1, 2, 3]], np.uint8))
    img = read_image(path)
    assert img.mode == "gray_alpha" and img.colour_pixels[..., 0].tolist() == [[2, 1, 255, 85]]
    assert img.alpha_pixels.tolist() == [[0, 1, 2, 3]]


# ------------------------------------------------------------------ failures while writing

def _enospc(f):
    f.write(b"\x89PNG\r\n\x1a\n half an image")
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.parametrize("suffix, bit_depth", [(".png", 8), (".png", 16), (".tif", 8), (".jpg", 8)])
def test_disk_full_half_way_keeps_the_old_output(tmp_path, monkeypatch, suffix, bit_depth):
    path = tmp_path / f"out{suffix}"
    write_image(path, np.full((6, 6, 3), 0.5), like=_like("rgb", bit_depth))
    before = path.read_bytes()
    monkeypatch.setattr(images, "_encode", lambda f, *a: _enospc(f))
    with pytest.raises(ImageError) as info:
        write_image(path, np.zeros((6, 6, 3)), like=_like("rgb", bit_depth))
    assert str(info.value) == f"cannot write image {path}: [Errno 28] No space left on device"
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == [path.name]  # no temporary file left


def test_write_into_missing_folder(tmp_path):
    path = tmp_path / "nope" / "x.png"
    with pytest.raises(ImageError) as info:
        write_image(path, np.zeros((2, 2, 3)))
    assert str(info.value) == f"cannot write image {path}: folder {tmp_path / 'nope'} does not exist"
