"""Decoding image files into integer samples: PNG, JPEG, BMP, WebP, QOI (and GIF) through Pillow, TIFF through
tifffile (Pillow for the TIFFs tifffile cannot decode).

Nothing is decoded before its cost is known from the header: the pixel limit, at most 4 samples per pixel, one
page or frame (never a volume), and a decoded size of at most 8 bytes per pixel of the pixel limit (4 samples of
16 bits). Only regular files are opened (a FIFO would block the reader), and Pillow only ever sees its plugins for
the formats listed here, chosen by content (an EPS file renamed .png never reaches Pillow's Ghostscript plugin).

`images` is the public side (`read_image`, `image_size`); the other decisions are described there.
"""

from __future__ import annotations

import contextlib
import os
import stat
import threading
from collections.abc import Iterator
from typing import NamedTuple

import numpy as np
import tifffile
from PIL import BmpImagePlugin, Image, JpegImagePlugin, PngImagePlugin, TiffImagePlugin

from classsr_jax.errors import ImageError, one_line, reason
from classsr_jax.io import png16

_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
_ORIENTATION_TAG = 274
_ICC_PROFILE_TAG = 34675


# The Pillow formats we decode (by content: `Image.open(formats=...)`); GIF is read but never written.
PILLOW_FORMATS = ("PNG", "JPEG", "BMP", "TIFF", "WEBP", "QOI", "GIF")
MAX_SAMPLES_PER_PIXEL = 4  # gray, gray+alpha, RGB, RGBA
BYTES_PER_LIMIT_PIXEL = 8  # the decoded-size limit per pixel of the pixel limit: 4 samples of 16 bits


class Refused(Exception):
    """A file we deliberately do not decode; the message is the reason."""


class Decoded(NamedTuple):
    height: int  # as the header gives them, before the orientation is applied
    width: int
    orientation: int  # EXIF/TIFF orientation, 1 (upright) to 8
    icc_profile: bytes | None
    samples: np.ndarray | None = None  # (H, W, C), C in 1..4; None when only the header was read
    bit_depth: int = 8


def _amount(pixels: int, exact: bool) -> str:
    return f"{pixels / 1e6:.1f} MP" if pixels >= 100_000 and not exact else f"{pixels} pixels"


def _megabytes(size: int) -> str:
    return f"{size / 1e6:.1f} MB" if size >= 100_000 else f"{size} bytes"


def _check_cost(height: int, width: int, samples: int, sample_bytes: int, limit: int | None) -> None:
    """Refuses, from header values, more than 4 samples per pixel or a decoded size over the byte limit."""
    if samples > MAX_SAMPLES_PER_PIXEL:
        raise Refused(f"{samples} samples per pixel (at most {MAX_SAMPLES_PER_PIXEL}: gray, gray+alpha, RGB, RGBA)")
    size = height * width * samples * sample_bytes
    if limit is not None and size > limit * BYTES_PER_LIMIT_PIXEL:
        raise Refused(f"decoded size {_megabytes(size)} ({width}x{height}, {samples} samples of {sample_bytes} "
                      f"bytes) is over the {_megabytes(limit * BYTES_PER_LIMIT_PIXEL)} limit "
                      f"({BYTES_PER_LIMIT_PIXEL} bytes per pixel of the pixel limit; --max-pixels raises it)")


def _check_single(count: int, what: str) -> None:
    if count > 1:
        raise Refused(f"{count} {what}; only single images are read (save the one you want as its own file)")


def regular_file(path: str) -> None:
    """Raises Refused unless `path` is a regular file (checked with os.stat before anything opens it)."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise Refused("no such file") from None
    except OSError as exc:
        raise Refused(reason(exc)) from None
    if stat.S_ISDIR(mode):
        raise Refused("it is a folder")
    if not stat.S_ISREG(mode):
        raise Refused("not a regular file (a FIFO, socket or device); only files are read")


def open_restricted(path: str) -> Image.Image:
    """`Image.open` of a regular file, with Pillow's plugins limited to PILLOW_FORMATS (the dataset reader's
    open too). Raises Refused for anything but a regular file, UnidentifiedImageError for other formats."""
    regular_file(path)
    return Image.open(path, formats=list(PILLOW_FORMATS))


def _check_size(height: int, width: int, limit: int | None) -> None:
    if limit is None or height * width <= limit:
        return
    exact = _amount(height * width, False) == _amount(limit, False)  # 89.5 MP vs 89.5 MP says nothing
    raise Refused(f"{width}x{height} = {_amount(height * width, exact)} is over the "
                  f"{_amount(limit, exact)} limit (--max-pixels raises it)")


_PILLOW_CHECK_LOCK = threading.Lock()


@contextlib.contextmanager
def _pillow_check_off() -> Iterator[None]:
    """Pillow's decompression-bomb check off (ours replaces it): a module-wide setting, so under a lock and only
    for the formats that need it."""
    with _PILLOW_CHECK_LOCK:
        saved = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = saved


# Opened through the plugin class, these formats see no decompression-bomb check (`Image.open` runs it); only
# Pillow's TIFF decoder runs it again.
_PLUGINS = ((b"\x89PNG\r\n\x1a\n", PngImagePlugin.PngImageFile), (b"\xff\xd8\xff", JpegImagePlugin.JpegImageFile),
            (b"BM", BmpImagePlugin.BmpImageFile), *((magic, TiffImagePlugin.TiffImageFile) for magic in _TIFF_MAGIC))


def _open_pillow(path: str, head: bytes) -> Image.Image:
    for magic, plugin in _PLUGINS:
        if head.startswith(magic):
            return plugin(path)
    with _pillow_check_off():
        return open_restricted(path)


def checked_profile(profile: bytes | None, colour_channels: int) -> bytes | None:
    """The profile if its colour space (header bytes 16..19) matches the decoded samples, else None."""
    if not profile or len(profile) < 128:
        return None
    return profile if profile[16:20] == (b"GRAY" if colour_channels == 1 else b"RGB ") else None


_PIL_CONVERSIONS = {"1": "L", "La": "LA", "RGBa": "RGBA", "RGBX": "RGB", "CMYK": "RGB",
                    "YCbCr": "RGB", "LAB": "RGB", "HSV": "RGB", "PA": "RGBA"}


def _pillow_samples(im: Image.Image, path: str) -> tuple[np.ndarray, int]:
    """Samples (H, W, C), C in 1..4 (gray, gray+alpha, RGB, RGBA), and bit depth of an opened image."""
    rawmode = im.tile[0].args if im.format == "PNG" and im.tile else None
    if rawmode in png16.COLOUR_RAWMODES:
        return png16.read_png16_colour(path, rawmode), 16
    if isinstance(im, (PngImagePlugin.PngImageFile, JpegImagePlugin.JpegImageFile, BmpImagePlugin.BmpImageFile)):
        im.load()
    else:  # TIFF and other decoders run the bomb check again while loading
        with _pillow_check_off():
            im.load()
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        return np.asarray(im).astype(np.uint16)[..., None], 16
    if im.mode == "I":
        values = np.asarray(im)
        if values.size and (values.min() < 0 or values.max() > 65535):
            raise Refused("unsupported 32-bit integer samples (only 8 and 16 bit)")
        return values.astype(np.uint16)[..., None], 16
    if im.mode == "F":
        raise Refused("unsupported floating-point samples (only 8 and 16 bit)")
    if im.mode in ("P", "L", "RGB") and im.has_transparency_data:
        im = im.convert("LA" if im.mode == "L" else "RGBA")
    elif im.mode == "P":
        im = im.convert("RGB")
    elif im.mode in _PIL_CONVERSIONS:
        im = im.convert(_PIL_CONVERSIONS[im.mode])
    if im.mode not in ("L", "LA", "RGB", "RGBA"):
        raise Refused(f"unsupported image mode {im.mode}")
    samples = np.asarray(im)
    return (samples[..., None] if samples.ndim == 2 else samples), 8


def _pillow_cost(im: Image.Image) -> tuple[int, int]:
    """(samples per pixel, bytes per sample) that decoding `im` yields, from its header."""
    if im.format == "PNG" and im.tile and im.tile[0].args in png16.COLOUR_RAWMODES:
        return len(im.getbands()), 2
    if im.mode in ("P", "PA"):  # palette indices become RGB(A)
        return 4, 1
    return len(im.getbands()), {"I": 4, "F": 4}.get(im.mode, 2 if im.mode.startswith("I;16") else 1)


def _read_pillow(path: str, head: bytes, limit: int | None, header_only: bool) -> Decoded:
    with _open_pillow(path, head) as im:
        width, height = im.size
        _check_size(height, width, limit)
        _check_single(getattr(im, "n_frames", 1), "frames or pages")
        _check_cost(height, width, *_pillow_cost(im), limit)
        # The base class's getexif reads EXIF (or XMP) from what the header parse found; the PNG plugin's own
        # would decode the image to look further. Pillow turns TIFFs upright itself (below).
        tiff = isinstance(im, TiffImagePlugin.TiffImageFile)
        try:
            orientation = 1 if tiff else Image.Image.getexif(im).get(_ORIENTATION_TAG, 1)
        except Exception:  # broken EXIF: the pixels are still fine, and viewers show them as stored
            orientation = 1
        header = Decoded(height, width, orientation, im.info.get("icc_profile") or None)
        if header_only:
            return header
        samples, bit_depth = _pillow_samples(im, path)
        if tiff:  # Pillow turned it upright while loading (its size is the upright one) and dropped the tag
            header = header._replace(orientation=im.tag_v2.get(_ORIENTATION_TAG, 1))
    return header._replace(samples=samples, bit_depth=bit_depth)


def _tiff_samples(page: tifffile.TiffPage) -> tuple[np.ndarray, int]:
    """Samples (H, W, C) and bit depth of one TIFF page."""
    data = page.asarray()
    photometric, axes = int(page.photometric), page.axes
    if axes == "SYX":  # planar configuration 'separate'
        data = np.moveaxis(data, 0, -1)
    elif axes == "YX":
        data = data[..., None]
    elif axes != "YXS":
        raise Refused(f"unsupported TIFF layout {axes}")
    if data.dtype == np.bool_:
        data = data.astype(np.uint8) * 255
    if data.dtype not in (np.uint8, np.uint16):
        raise Refused(f"unsupported {data.dtype} samples (only 8- and 16-bit unsigned integers)")
    bit_depth = 16 if data.dtype == np.uint16 else 8
    if photometric == 3:  # palette: colormap (3, 2**bits) of 16-bit values
        if page.colormap is None or data.shape[2] != 1:
            raise Refused("unsupported palette TIFF without a colour map")
        rgb = page.colormap[:, data[..., 0]].transpose(1, 2, 0).astype(np.uint16)
        if np.all(rgb % 257 == 0):  # an 8-bit palette stored as v * 257
            return (rgb // 257).astype(np.uint8), 8
        return rgb, 16
    if photometric == 0:  # min-is-white
        data = data.copy()
        data[..., :1] = np.iinfo(data.dtype).max - data[..., :1]
    elif photometric not in (1, 2):  # min-is-black, RGB
        raise Refused(f"unsupported TIFF photometric interpretation {photometric}")
    if data.shape[2] > 4:
        raise Refused(f"unsupported {data.shape[2]} samples per pixel")
    return data, bit_depth


def _read_tiff(path: str, limit: int | None, header_only: bool) -> Decoded:
    """The first page of a TIFF through tifffile; the header (and the size check) comes before any decoding."""
    with tifffile.TiffFile(path) as tif:
        page = tif.pages.first
        height, width = int(page.imagelength), int(page.imagewidth)
        _check_size(height, width, limit)
        _check_single(len(tif.pages), "pages")
        _check_single(int(page.imagedepth), "slices (a volume)")
        sample_bytes = page.dtype.itemsize if page.dtype is not None else -(-int(page.bitspersample) // 8)
        _check_cost(height, width, int(page.samplesperpixel), sample_bytes, limit)
        orientation = page.tags.valueof(_ORIENTATION_TAG, default=1)
        profile = page.tags.valueof(_ICC_PROFILE_TAG, default=None)
        header = Decoded(height, width, orientation, bytes(profile) if profile is not None else None)
        if header_only:
            return header
        samples, bit_depth = _tiff_samples(page)
    return header._replace(samples=samples, bit_depth=bit_depth)


def decode(path: str, limit: int | None, header_only: bool) -> Decoded:
    """Header (and, unless `header_only`, samples) of `path`; every failure is an ImageError naming it."""
    def fail(why: str) -> ImageError:
        return ImageError(f"cannot read image {path}: {one_line(why)}")

    try:
        regular_file(path)
        decoded = _decode_any(path, limit, header_only)
    except Refused as exc:
        raise fail(str(exc)) from None
    except Image.UnidentifiedImageError:
        raise fail(f"not a recognised image file (only {', '.join(PILLOW_FORMATS)})") from None
    except MemoryError:
        raise fail("not enough memory to decode it") from None
    except Exception as exc:
        raise fail(reason(exc)) from exc
    if decoded.height == 0 or decoded.width == 0:
        raise fail(f"zero-size image ({decoded.width}x{decoded.height})")
    return decoded


def _decode_any(path: str, limit: int | None, header_only: bool) -> Decoded:
    with open(path, "rb") as f:
        head = f.read(8)
    if not head.startswith(_TIFF_MAGIC):
        return _read_pillow(path, head, limit, header_only)
    try:
        return _read_tiff(path, limit, header_only)
    except (Refused, MemoryError):
        raise
    except Exception as tiff_exc:
        # tifffile lacks some codecs (LZW, JPEG) without imagecodecs;
        # Pillow reads most such 8-bit files.
        try:
            return _read_pillow(path, head, limit, header_only)
        except Refused:
            raise
        except Exception:
            raise tiff_exc from None


def upright(samples: np.ndarray, orientation: object) -> np.ndarray:
    """A view of (H, W, ...) samples turned as the EXIF orientation says (as `ImageOps.exif_transpose`; values
    other than 1..8 leave them as stored)."""
    if orientation in (5, 6, 7, 8):
        samples = np.swapaxes(samples, 0, 1)  # 5 is the plain transpose
        orientation = {5: 1, 6: 2, 7: 3, 8: 4}[orientation]  # then flip as 1..4 do
    if orientation in (2, 3):
        samples = samples[:, ::-1]
    if orientation in (3, 4):
        samples = samples[::-1]
    return samples
