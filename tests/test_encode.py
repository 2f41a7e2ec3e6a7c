"""Tests for classsr_jax.io.encode (the output formats, through write_image) and io.background's writer threads.

Every lossless output is decoded by a reader other than the encoder (Pillow, imagecodecs or our own reader) and
compared sample for sample."""

import io
import struct
import threading
import zlib

import imagecodecs
import numpy as np
import pytest
import skimage.data
from PIL import Image, ImageCms

from classsr_jax.io import background, encode
from classsr_jax.io.images import IMAGE_EXTENSIONS, ImageError, LoadedImage, list_images, read_image, write_image

RNG = np.random.default_rng(7)
SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
GRAY_PROFILE = SRGB[:16] + b"GRAY" + SRGB[20:]  # only the colour-space field matters to the writer


def _like(mode, bit_depth, icc_profile=None):
    channels = 1 if mode.startswith("gray") else 3
    dtype = np.uint8 if bit_depth == 8 else np.uint16
    return LoadedImage(np.zeros((2, 2, channels), dtype), None, bit_depth, mode, "like.png", icc_profile)


def _chunk_types(png):
    types, pos = [], 8
    while pos < len(png):
        (length,) = struct.unpack(">I", png[pos:pos + 4])
        kind, payload = png[pos + 4:pos + 8], png[pos + 8:pos + 8 + length]
        assert struct.unpack(">I", png[pos + 8 + length:pos + 12 + length])[0] == zlib.crc32(kind + payload)
        types.append(kind)
        pos += 12 + length
    return types


def _pillow(path):
    with Image.open(path) as im:
        return im.mode, np.asarray(im), im.info.get("icc_profile")


def _photo():
    return np.ascontiguousarray(skimage.data.astronaut()[:96, :128])


# ------------------------------------------------------------------ lossless formats, exact

@pytest.mark.parametrize("suffix", [".png", ".tif", ".webp", ".bmp", ".qoi"])
def test_8bit_rgb_and_rgba_are_exact_in_every_lossless_format(tmp_path, suffix):
    rgb, alpha = _photo(), RNG.integers(0, 256, (96, 128), dtype=np.uint8)
    write_image(tmp_path / f"rgb{suffix}", rgb)
    write_image(tmp_path / f"rgba{suffix}", rgb, alpha=alpha)
    mode, stored, _ = _pillow(tmp_path / f"rgb{suffix}")
    assert mode == "RGB" and np.array_equal(stored, rgb)
    mode, stored, _ = _pillow(tmp_path / f"rgba{suffix}")
    if suffix == ".bmp":  # Pillow reads BMP's fourth byte as padding; ours is in the file
        assert mode == "RGB" and np.array_equal(stored, rgb)
    else:
        assert mode == "RGBA" and np.array_equal(stored, np.dstack([rgb, alpha]))
    back = read_image(tmp_path / f"rgba{suffix}")
    assert np.array_equal(back.pixels, rgb)


@pytest.mark.parametrize("channels", [1, 2, 3, 4])
@pytest.mark.parametrize("png_compression", [None, 0, 6])
def test_16bit_png_is_exact_in_every_layout(tmp_path, channels, png_compression):
    samples = RNG.integers(0, 65536, (9, 11, channels), dtype=np.uint16)
    mode = {1: "gray", 2: "gray_alpha", 3: "rgb", 4: "rgba"}[channels]
    colour = np.repeat(samples[..., :1], 3, 2) if channels <= 2 else samples[..., :3]
    alpha = samples[..., -1] if channels in (2, 4) else None
    path = tmp_path / "deep.png"
    write_image(path, colour, like=_like(mode, 16), alpha=alpha, png_compression=png_compression)
    decoded = imagecodecs.png_decode(path.read_bytes())  # libpng, not our reader
    assert decoded.dtype == np.uint16 and np.array_equal(decoded.reshape(samples.shape), samples)


def test_gray_png_is_one_channel_and_exact(tmp_path):
    gray = RNG.integers(0, 256, (10, 12, 1), dtype=np.uint8)
    write_image(tmp_path / "g.png", np.repeat(gray, 3, 2), like=_like("gray", 8))
    mode, stored, _ = _pillow(tmp_path / "g.png")
    assert mode == "L" and np.array_equal(stored, gray[..., 0])


@pytest.mark.parametrize("suffix", [".webp", ".qoi"])
def test_gray_in_formats_without_gray_is_stored_as_rgb(tmp_path, suffix):
    rgb = np.zeros((4, 6, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 10, 20, 61  # mean 30.33 -> 30
    write_image(tmp_path / f"g{suffix}", rgb, like=_like("gray", 16))  # 16-bit input: these formats are 8-bit
    mode, stored, _ = _pillow(tmp_path / f"g{suffix}")
    assert mode == "RGB" and (stored == 30).all()


def test_default_png_for_8bit_colour_is_fpngs_and_others_are_libpngs(tmp_path):
    write_image(tmp_path / "rgb.png", _photo())
    write_image(tmp_path / "gray.png", _photo(), like=_like("gray", 8))
    write_image(tmp_path / "level.png", _photo(), png_compression=6)
    assert b"fdEC" in _chunk_types((tmp_path / "rgb.png").read_bytes())  # fpng's marker chunk
    assert b"fdEC" not in _chunk_types((tmp_path / "gray.png").read_bytes())
    assert b"fdEC" not in _chunk_types((tmp_path / "level.png").read_bytes())


def test_png_compression_trades_size_for_time(tmp_path):
    photo = np.asarray(Image.fromarray(skimage.data.astronaut()).resize((1024, 1024), Image.Resampling.BICUBIC))
    sizes = {}
    for level in (0, 1, 9):
        path = tmp_path / f"l{level}.png"
        write_image(path, photo, png_compression=level)
        sizes[level] = path.stat().st_size
        assert np.array_equal(_pillow(path)[1], photo)
    assert sizes[0] > photo.nbytes  # stored: the raw rows plus a filter byte each
    assert sizes[9] < sizes[1] < sizes[0]


@pytest.mark.parametrize("options, message", [
    (dict(png_compression=10), "png_compression must be 0 to 9, got 10"),
    (dict(png_compression=-1), "png_compression must be 0 to 9, got -1"),
    (dict(quality=0), "quality must be 1 to 100, got 0"),
    (dict(quality=101), "quality must be 1 to 100, got 101"),
])
def test_options_out_of_range(tmp_path, options, message):
    with pytest.raises(ValueError) as info:
        write_image(tmp_path / "x.png", _photo(), **options)
    assert str(info.value) == message
    assert not (tmp_path / "x.png").exists()


def test_options_a_format_lacks_are_ignored(tmp_path):
    write_image(tmp_path / "x.bmp", _photo(), png_compression=9, quality=10)  # one set of flags for a folder
    assert np.array_equal(_pillow(tmp_path / "x.bmp")[1], _photo())


# ------------------------------------------------------------------ lossy settings

def test_jpeg_quality(tmp_path):
    photo = _photo()
    write_image(tmp_path / "default.jpg", photo)
    write_image(tmp_path / "q95.jpg", photo, quality=95)
    write_image(tmp_path / "q30.jpg", photo, quality=30)
    assert (tmp_path / "default.jpg").read_bytes() == (tmp_path / "q95.jpg").read_bytes()
    assert (tmp_path / "q30.jpg").stat().st_size < (tmp_path / "q95.jpg").stat().st_size / 2


def test_webp_is_lossless_unless_quality_is_given(tmp_path):
    photo = _photo()
    write_image(tmp_path / "lossless.webp", photo)
    write_image(tmp_path / "lossy.webp", photo, quality=80)
    assert np.array_equal(_pillow(tmp_path / "lossless.webp")[1], photo)
    lossy = _pillow(tmp_path / "lossy.webp")[1].astype(int)
    assert not np.array_equal(lossy, photo) and np.abs(lossy - photo).mean() < 6


def test_webp_keeps_colour_under_transparent_pixels(tmp_path):
    rgb, alpha = _photo(), np.zeros((96, 128), np.uint8)
    write_image(tmp_path / "clear.webp", rgb, alpha=alpha)
    assert np.array_equal(_pillow(tmp_path / "clear.webp")[1][..., :3], rgb)


# ------------------------------------------------------------------ colour profiles

@pytest.mark.parametrize("suffix, mode", [(".png", "rgb"), (".png", "rgba"), (".webp", "rgb"), (".tif", "rgb"),
                                          (".jpg", "rgb")])
def test_profile_is_embedded(tmp_path, suffix, mode):
    alpha = np.full((96, 128), 200, np.uint8) if mode == "rgba" else None
    path = tmp_path / f"p{suffix}"
    write_image(path, _photo(), like=_like(mode, 8, SRGB), alpha=alpha)
    assert read_image(path).icc_profile == SRGB
    if suffix == ".png":  # spliced after the header, before the image data
        assert _chunk_types(path.read_bytes())[:2] == [b"IHDR", b"iCCP"]


def test_gray_16bit_png_keeps_its_gray_profile(tmp_path):
    path = tmp_path / "g16.png"
    write_image(path, np.zeros((4, 4, 3), np.uint16), like=_like("gray", 16, GRAY_PROFILE))
    assert _pillow(path)[2] == GRAY_PROFILE


def test_gray_profile_is_left_out_where_gray_becomes_rgb(tmp_path):
    write_image(tmp_path / "g.webp", np.zeros((4, 4, 3), np.uint8), like=_like("gray", 8, GRAY_PROFILE))
    assert _pillow(tmp_path / "g.webp")[2] is None


@pytest.mark.parametrize("suffix, name", [(".bmp", "BMP"), (".qoi", "QOI")])
def test_explicit_profile_a_format_cannot_hold_is_an_error(tmp_path, suffix, name):
    path = tmp_path / f"x{suffix}"
    with pytest.raises(ImageError) as info:
        write_image(path, _photo(), icc_profile=SRGB)
    assert str(info.value) == f"cannot write image {path}: {name} cannot hold a colour profile"
    write_image(path, _photo(), like=_like("rgb", 8, SRGB))  # an inherited one is left out
    assert read_image(path).icc_profile is None


def test_webp_side_limit_is_an_error_naming_the_file(tmp_path):
    path = tmp_path / "long.webp"
    with pytest.raises(ImageError) as info:
        write_image(path, np.zeros((1, 16384, 3), np.uint8))
    assert str(info.value) == f"cannot write image {path}: WebP holds at most 16383 pixels a side, the image is 16384x1"


def test_with_iccp_refuses_what_is_not_png():
    with pytest.raises(ValueError, match="no IHDR chunk first"):
        encode.with_iccp(b"GIF89a" + bytes(40), SRGB)


# ------------------------------------------------------------------ listing and reading the new formats

def test_new_formats_are_listed_and_read(tmp_path):
    assert {".webp", ".qoi"} <= set(IMAGE_EXTENSIONS)
    photo = _photo()
    (tmp_path / "a.webp").write_bytes(imagecodecs.webp_encode(photo, lossless=True))
    (tmp_path / "b.qoi").write_bytes(imagecodecs.qoi_encode(photo))
    paths = list_images(tmp_path)
    assert [p.rsplit("/", 1)[1] for p in paths] == ["a.webp", "b.qoi"]
    for path in paths:
        assert np.array_equal(read_image(path).pixels, photo)


# ------------------------------------------------------------------ the writer threads

def test_default_encoders_follow_the_cores(monkeypatch):
    for cores, expected in ((None, 1), (1, 1), (2, 2), (16, 4)):
        monkeypatch.setattr(background.os, "cpu_count", lambda cores=cores: cores)
        assert background.default_encoders() == expected
        assert background.BackgroundWriter().encoders == expected


def test_jobs_finish_in_any_order_and_all_reach_on_done():
    gates = [threading.Event() for _ in range(3)]
    finished = []

    def done(result, error, seconds):
        finished.append((result, error))
        if result > 0:
            gates[result - 1].set()  # each finished job lets the one submitted before it finish

    with background.BackgroundWriter(pending=0, encoders=3) as writer:
        for i in range(3):
            writer.submit(lambda i=i: gates[i].wait(60) and i, done)
        gates[2].set()  # the last submitted finishes first, then 1, then 0: only encoders side by side can do that
    assert finished == [(2, None), (1, None), (0, None)]


def test_items_in_flight_are_bounded():
    encoders, pending, total = 2, 1, 8
    bound = encoders + pending
    release = [threading.Event() for _ in range(total)]
    lock = threading.Lock()
    counts = {"submitted": 0, "finished": 0, "most": 0}

    def done(result, error, seconds):
        assert error is None
        with lock:
            counts["finished"] += 1

    with background.BackgroundWriter(pending=pending, encoders=encoders) as writer:
        for k in range(total):
            if k >= bound:
                release[k - bound].set()  # frees one slot; submit must wait for it
            writer.submit(lambda k=k: release[k].wait(60), done)
            with lock:
                counts["submitted"] += 1
                counts["most"] = max(counts["most"], counts["submitted"] - counts["finished"])
        for event in release:
            event.set()
    assert counts["most"] == bound and counts["finished"] == total


def test_errors_are_never_lost():
    outcomes = []

    def failing():
        raise OSError("disk full")

    writer = background.BackgroundWriter(encoders=2)
    writer.submit(failing, lambda result, error, seconds: outcomes.append(repr(error)))
    writer.submit(lambda: "ok", lambda result, error, seconds: outcomes.append(result))
    writer.close()
    assert sorted(outcomes) == ["OSError('disk full')", "ok"]

    def broken_on_done(result, error, seconds):
        raise KeyError("bug in on_done")

    writer = background.BackgroundWriter(encoders=2)
    writer.submit(lambda: 1, broken_on_done)
    writer.submit(lambda: 2, lambda result, error, seconds: outcomes.append(result))
    with pytest.raises(KeyError, match="bug in on_done"):
        writer.close()
    assert outcomes[-1] == 2  # the other job still finished


def test_writer_rejects_no_encoders():
    with pytest.raises(ValueError, match="need at least one encoder"):
        background.BackgroundWriter(encoders=0)


def test_encoded_bytes_are_what_write_image_stores(tmp_path):
    """The fast default PNG path is an encoder of bytes; write_image stores exactly those bytes."""
    photo = _photo()
    write_image(tmp_path / "x.png", photo)
    expected = encode.BY_EXTENSION[".png"].encode(photo, encode.Options(), None)
    assert (tmp_path / "x.png").read_bytes() == expected
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(expected))), photo)


# ------------------------------------------------------------------ the upscale command's flags

def test_upscale_output_format_flags(tmp_path, capsys):
    from classsr_jax.checkpointing import save_model
    from classsr_jax.cli import upscale
    from classsr_jax.models import ModelSpec

    spec = ModelSpec("classsr", "fsrcnn", (16, 36, 56))
    checkpoint = str(tmp_path / "classsr_fsrcnn")
    save_model(checkpoint, spec, spec.init(seed=3))
    src = tmp_path / "in"
    src.mkdir()
    write_image(src / "a.png", _photo()[:40, :48])
    write_image(src / "b.jpg", _photo()[40:80, :48])
    runs = {}
    for name, extra in (("default", []), ("small", ["--png-compression", "0", "--quality", "20", "--encoders", "2"])):
        out = tmp_path / name
        assert upscale.main(["--checkpoint", checkpoint, "--input", str(src), "--output", str(out), *extra]) == 0
        runs[name] = {n: (out / n).stat().st_size for n in ("a.png", "b.jpg")}
    assert np.array_equal(read_image(tmp_path / "small" / "a.png").pixels,
                          read_image(tmp_path / "default" / "a.png").pixels)  # lossless either way
    assert runs["small"]["a.png"] > 160 * 192 * 3  # zlib level 0 stores the rows
    tables = {}
    for name in runs:
        with Image.open(tmp_path / name / "b.jpg") as im:  # random weights give flat outputs: compare the tables
            tables[name] = sum(sum(table) for table in im.quantization.values())
    assert tables["small"] > 4 * tables["default"]  # quality 20 against 95
    assert upscale.main(["--checkpoint", checkpoint, "--input", str(src), "--output", str(tmp_path / "x"),
                         "--png-compression", "10"]) == 2
    assert "png-compression" in capsys.readouterr().err
