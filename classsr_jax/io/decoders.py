"""Decoding image files into integer samples: PNG, JPEG and BMP through Pillow, TIFF through tifffile (Pillow
for the TIFFs tifffile cannot decode), with the pixel limit checked from the header before any decoding.

`image_io` is the public side (`read_image`, `image_size`); the decisions are described there.
"""

from __future__ import annotations

import contextlib
import os
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


class _Refused(Exception):
    """A readable file we deliberately do not decode; the message is the reason."""


class Decoded(NamedTuple):
    height: int  # as the header gives them, before the orientation is applied
    width: int
    orientation: int  # EXIF/TIFF orientation, 1 (upright) to 8
    icc_profile: bytes | None
    samples: np.ndarray | None = None  # (H, W, C), C in 1..4; None when only the header was read
    bit_depth: int = 8


def _amount(pixels: int, exact: bool) -> str:
    return f"{pixels / 1e6:.1f} MP" if pixels >= 100_000 and not exact else f"{pixels} pixels"


def _check_size(height: int, width: int, limit: int | None) -> None:
    if limit is None or height * width <= limit:
        return
    exact = _amount(height * width, False) == _amount(limit, False)  # 89.5 MP vs 89.5 MP says nothing
    raise _Refused(f"{width}x{height} = {_amount(height * width, exact)} is over the "
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


# Opened through the plugin class, these formats see no decompression-bomb check (``Image.open`` runs it); only
# Pillow's TIFF decoder runs it again.
_PLUGINS = ((b"\x89PNG\r\n\x1a\n", PngImagePlugin.PngImageFile), (b"\xff\xd8\xff", JpegImagePlugin.JpegImageFile),
            (b"BM", BmpImagePlugin.BmpImageFile), *((magic, TiffImagePlugin.TiffImageFile) for magic in _TIFF_MAGIC))


def _open_pillow(path: str, head: bytes) -> Image.Image:
    for magic, plugin in _PLUGINS:
        if head.startswith(magic):
            return plugin(path)
    with _pillow_check_off():
        return Image.open(path)


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
            raise _Refused("unsupported 32-bit integer samples (only 8 and 16 bit)")
        return values.astype(np.uint16)[..., None], 16
    if im.mode == "F":
        raise _Refused("unsupported floating-point samples (only 8 and 16 bit)")
    if im.mode in ("P", "L", "RGB") and im.has_transparency_data:
        im = im.convert("LA" if im.mode == "L" else "RGBA")
    elif im.mode == "P":
        im = im.convert("RGB")
    elif im.mode in _PIL_CONVERSIONS:
        im = im.convert(_PIL_CONVERSIONS[im.mode])
    if im.mode not in ("L", "LA", "RGB", "RGBA"):
        raise _Refused(f"unsupported image mode {im.mode}")
    samples = np.asarray(im)
    return (samples[..., None] if samples.ndim == 2 else samples), 8


def _read_pillow(path: str, head: bytes, limit: int | None, header_only: bool) -> Decoded:
    with _open_pillow(path, head) as im:
        width, height = im.size
        _check_size(height, width, limit)
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
        raise _Refused(f"unsupported TIFF layout {axes}")
    if data.dtype == np.bool_:
        data = data.astype(np.uint8) * 255
    if data.dtype not in (np.uint8, np.uint16):
        raise _Refused(f"unsupported {data.dtype} samples (only 8- and 16-bit unsigned integers)")
    bit_depth = 16 if data.dtype == np.uint16 else 8
    if photometric == 3:  # palette: colormap (3, 2**bits) of 16-bit values
        if page.colormap is None or data.shape[2] != 1:
            raise _Refused("unsupported palette TIFF without a colour map")
        rgb = page.colormap[:, data[..., 0]].transpose(1, 2, 0).astype(np.uint16)
        if np.all(rgb % 257 == 0):  # an 8-bit palette stored as v * 257
            return (rgb // 257).astype(np.uint8), 8
        return rgb, 16
    if photometric == 0:  # min-is-white
        data = data.copy()
        data[..., :1] = np.iinfo(data.dtype).max - data[..., :1]
    elif photometric not in (1, 2):  # min-is-black, RGB
        raise _Refused(f"unsupported TIFF photometric interpretation {photometric}")
    if data.shape[2] > 4:
        raise _Refused(f"unsupported {data.shape[2]} samples per pixel")
    return data, bit_depth


def _read_tiff(path: str, limit: int | None, header_only: bool) -> Decoded:
    """The first page of a TIFF through tifffile; the header (and the size check) comes before any decoding."""
    with tifffile.TiffFile(path) as tif:
        page = tif.pages.first
        height, width = int(page.imagelength), int(page.imagewidth)
        _check_size(height, width, limit)
        orientation = page.tags.valueof(_ORIENTATION_TAG, default=1)
        profile = page.tags.valueof(_ICC_PROFILE_TAG, default=None)
        header = Decoded(height, width, orientation, bytes(profile) if profile is not None else None)
        if header_only:
            return header
        samples, bit_depth = _tiff_samples(page)
    return header._replace(samples=samples, bit_depth=bit_depth)


def decode(path: str, limit: int | None, header_only: bool) -> Decoded:
    """Header (and, unless ``header_only``, samples) of ``path``; every failure is an ImageError naming it."""
    def fail(why: str) -> ImageError:
        return ImageError(f"cannot read image {path}: {one_line(why)}")

    if not os.path.exists(path):
        raise fail("no such file")
    if os.path.isdir(path):
        raise fail("it is a folder")
    try:
        decoded = _decode_any(path, limit, header_only)
    except _Refused as exc:
        raise fail(str(exc)) from None
    except Image.UnidentifiedImageError:
        raise fail("not a recognised image file") from None
    except MemoryError:
        raise
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
    except (_Refused, MemoryError):
        raise
    except Exception as tiff_exc:
        # tifffile lacks some codecs (LZW, JPEG) without imagecodecs;
        # Pillow reads most such 8-bit files.
        try:
            return _read_pillow(path, head, limit, header_only)
        except _Refused:
            raise
        except Exception:
            raise tiff_exc from None


def upright(samples: np.ndarray, orientation: object) -> np.ndarray:
    """A view of (H, W, ...) samples turned as the EXIF orientation says (as ``ImageOps.exif_transpose``; values
    other than 1..8 leave them as stored)."""
    if orientation in (5, 6, 7, 8):
        samples = np.swapaxes(samples, 0, 1)  # 5 is the plain transpose
        orientation = {5: 1, 6: 2, 7: 3, 8: 4}[orientation]  # then flip as 1..4 do
    if orientation in (2, 3):
        samples = samples[:, ::-1]
    if orientation in (3, 4):
        samples = samples[::-1]
    return samples
