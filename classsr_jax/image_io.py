"""Reading and writing images.

* ``read_image`` reads PNG, JPEG, TIFF and BMP (8 and 16 bit; gray, gray+alpha, RGB, RGBA) upright, keeping the
  integer samples (``LoadedImage.pixels``) and the ICC colour profile; every failure is a one-line ``ImageError``
  naming the file. ``image_size`` reads only the header.
* ``write_image`` writes integer samples as they are, or floats in [0, 1], in the input's layout, bit depth and
  colour profile, through ``fileio.atomic_write``.

Decisions:
* TIFF goes through tifffile (full 16-bit support); everything else, and TIFFs tifffile cannot decode (LZW or JPEG
  without imagecodecs), through Pillow. 16-bit colour PNGs are read and written by ``png16``.
* The EXIF orientation is applied when reading, as browsers and ``PIL.ImageOps.exif_transpose`` do (EXIF or XMP in
  JPEG and PNG, tag 274 in TIFF). Outputs carry no EXIF, so nothing turns them again. A PNG eXIf chunk after the
  image data is ignored: the PNG format places it before, and only the header is read for it.
* Every decoder has a pixel limit, checked from the header before decoding: Pillow's ``Image.MAX_IMAGE_PIXELS``
  (about 89.5 MP) unless ``max_pixels`` says otherwise. Pillow's own decompression-bomb warning and error would
  contradict it, so PNG, JPEG and BMP are opened through their plugin classes (``Image.open`` runs the check), and
  other formats with Pillow's check briefly off, under a lock.
* The ICC profile travels from input to output. A profile whose colour space does not describe the decoded samples
  (a CMYK profile after Pillow's CMYK to RGB conversion) is dropped: it would misdescribe the output. Pillow cannot
  write one into a BMP, so BMP outputs have none.
* A gray input is saved back as gray using the plain mean of the three SR channels (for integer samples rounded to
  the nearest integer; a third is never half-way): the network saw the same gray value in all three, so they are
  three estimates of one signal (luma weights are for genuinely coloured content).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import threading
from collections.abc import Iterator
from typing import BinaryIO, Literal, NamedTuple

import numpy as np
import tifffile
from PIL import BmpImagePlugin, Image, JpegImagePlugin, PngImagePlugin, TiffImagePlugin

from classsr_jax import png16
from classsr_jax.errors import ImageError, WriteError, one_line, reason
from classsr_jax.fileio import atomic_write
from classsr_jax.pixels import quantise, to_float01, to_uint8  # noqa: F401  (to_uint8 is part of this module's API)

ImageMode = Literal["rgb", "gray", "rgba", "gray_alpha"]

IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")

_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".tif": "TIFF",
            ".tiff": "TIFF", ".bmp": "BMP"}
_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
_EXTENSION_LIST = ", ".join(e[1:] for e in IMAGE_EXTENSIONS)
_ORIENTATION_TAG = 274
_ICC_PROFILE_TAG = 34675


# --------------------------------------------------------------------------- listing

def list_images(folder: str | os.PathLike, *, recursive: bool = False, allow_empty: bool = False) -> list[str]:
    """Sorted paths of the image files (by extension, any case) in ``folder`` (and below it, if recursive),
    ordered by their path relative to ``folder`` so that the order is reproducible.

    Hidden files (names starting with '.') are skipped; they are typically macOS metadata or our own temporary
    files. This is the one listing of image files: the commands and the dataset builders both use it.

    Raises:
      ImageError: if the folder does not exist, or holds no images (unless ``allow_empty``).
    """
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        raise ImageError(f"no such folder: {folder}")
    if recursive:
        found = [os.path.join(root, name) for root, _, names in os.walk(folder) for name in names]
    else:
        found = [os.path.join(folder, name) for name in os.listdir(folder)]
    paths = sorted(
        (path for path in found
         if not os.path.basename(path).startswith(".")
         and os.path.splitext(path)[1].lower() in IMAGE_EXTENSIONS
         and os.path.isfile(path)),
        key=lambda path: os.path.relpath(path, folder).replace(os.sep, "/"),
    )
    if not paths and not allow_empty:
        raise ImageError(f"no images ({_EXTENSION_LIST}) in {folder}")
    return paths


# --------------------------------------------------------------------------- reading

@dataclasses.dataclass(eq=False)
class LoadedImage:
    """A decoded image, upright, with its integer samples.

    Attributes:
      colour_pixels: the stored colour samples, uint8 or uint16 (bit_depth), (H, W, 1) for gray, else (H, W, 3).
      alpha_pixels: (H, W) samples of the same dtype, or None without alpha.
      bit_depth: 8 or 16, the stored sample depth.
      mode: 'rgb', 'gray', 'rgba' or 'gray_alpha', the stored channel layout.
      path: the file it came from.
      icc_profile: the embedded ICC colour profile (raw bytes), or None.
    """

    colour_pixels: np.ndarray
    alpha_pixels: np.ndarray | None
    bit_depth: int
    mode: ImageMode
    path: str
    icc_profile: bytes | None = None

    @property
    def height(self) -> int:
        return int(self.colour_pixels.shape[0])

    @property
    def width(self) -> int:
        return int(self.colour_pixels.shape[1])

    @property
    def pixels(self) -> np.ndarray:
        """(H, W, 3) integer RGB samples; for gray images a read-only view repeating the one channel (no copy)."""
        if self.colour_pixels.shape[2] == 3:
            return self.colour_pixels
        return np.broadcast_to(self.colour_pixels, (self.height, self.width, 3))

    @property
    def rgb(self) -> np.ndarray:
        """float32 (H, W, 3) in [0, 1]; a new array on every access."""
        values = to_float01(self.colour_pixels)
        return values if values.shape[2] == 3 else np.repeat(values, 3, axis=2)

    @property
    def alpha(self) -> np.ndarray | None:
        """float32 (H, W) in [0, 1], or None; a new array on every access."""
        return None if self.alpha_pixels is None else to_float01(self.alpha_pixels)


class _Refused(Exception):
    """A readable file we deliberately do not decode; the message is the reason."""


class _Decoded(NamedTuple):
    height: int  # as the header gives them, before the orientation is applied
    width: int
    orientation: int  # EXIF/TIFF orientation, 1 (upright) to 8
    icc_profile: bytes | None
    samples: np.ndarray | None = None  # (H, W, C), C in 1..4; None when only the header was read
    bit_depth: int = 8


def pixel_limit(max_pixels: int | None = None) -> int | None:
    """The pixel limit in force: Pillow's ``Image.MAX_IMAGE_PIXELS`` for None, no limit (None) for 0 or less."""
    if max_pixels is None:
        return Image.MAX_IMAGE_PIXELS or None
    return int(max_pixels) if max_pixels > 0 else None


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


def _checked_profile(profile: bytes | None, colour_channels: int) -> bytes | None:
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


def _read_pillow(path: str, head: bytes, limit: int | None, header_only: bool) -> _Decoded:
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
        header = _Decoded(height, width, orientation, im.info.get("icc_profile") or None)
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


def _read_tiff(path: str, limit: int | None, header_only: bool) -> _Decoded:
    """The first page of a TIFF through tifffile; the header (and the size check) comes before any decoding."""
    with tifffile.TiffFile(path) as tif:
        page = tif.pages.first
        height, width = int(page.imagelength), int(page.imagewidth)
        _check_size(height, width, limit)
        orientation = page.tags.valueof(_ORIENTATION_TAG, default=1)
        profile = page.tags.valueof(_ICC_PROFILE_TAG, default=None)
        header = _Decoded(height, width, orientation, bytes(profile) if profile is not None else None)
        if header_only:
            return header
        samples, bit_depth = _tiff_samples(page)
    return header._replace(samples=samples, bit_depth=bit_depth)


def _decode(path: str, limit: int | None, header_only: bool) -> _Decoded:
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
        raise fail(f"zero-size image ({decoded.height}x{decoded.width})")
    return decoded


def _decode_any(path: str, limit: int | None, header_only: bool) -> _Decoded:
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


def _upright(samples: np.ndarray, orientation: object) -> np.ndarray:
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


def image_size(path: str | os.PathLike, max_pixels: int | None = None) -> tuple[int, int]:
    """(height, width) of the upright image, from the header only (no decoding).

    Raises:
      ImageError: as ``read_image``, including an image over the pixel limit.
    """
    path = os.fspath(path)
    header = _decode(path, pixel_limit(max_pixels), header_only=True)
    height, width = _upright(np.empty((header.height, header.width, 0)), header.orientation).shape[:2]  # no data
    return height, width


def read_image(path: str | os.PathLike, max_pixels: int | None = None) -> LoadedImage:
    """Read a PNG, JPEG, TIFF or BMP file (8 or 16 bit), upright.

    The format is detected from the content, not the extension. Alpha is split off and gray stays one channel
    (``LoadedImage.mode`` records the stored layout so ``write_image`` can restore it).

    Args:
      max_pixels: the largest width x height to decode; None for Pillow's default limit
        (``Image.MAX_IMAGE_PIXELS``, about 89.5 MP), 0 or less for none.

    Raises:
      ImageError: for a missing, unreadable, truncated, corrupt, unsupported, zero-size or too large file; the
        message is one line naming the file.
    """
    path = os.fspath(path)
    decoded = _decode(path, pixel_limit(max_pixels), header_only=False)
    channels = decoded.samples.shape[2]
    samples = _upright(decoded.samples, decoded.orientation)
    has_alpha = channels in (2, 4)
    colour = np.ascontiguousarray(samples[..., : channels - 1] if has_alpha else samples)
    alpha = np.ascontiguousarray(samples[..., -1]) if has_alpha else None
    if colour.shape[2] == 1:
        mode: ImageMode = "gray_alpha" if has_alpha else "gray"
    else:
        mode = "rgba" if has_alpha else "rgb"
    return LoadedImage(colour_pixels=colour, alpha_pixels=alpha, bit_depth=decoded.bit_depth, mode=mode,
                       path=path, icc_profile=_checked_profile(decoded.icc_profile, colour.shape[2]))


# --------------------------------------------------------------------------- writing

def _pil_image(samples: np.ndarray) -> Image.Image:
    mode = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}[samples.shape[2]]
    return Image.fromarray(samples[..., 0] if samples.shape[2] == 1 else samples, mode=mode)


def _encode(f: BinaryIO, samples: np.ndarray, fmt: str, icc_profile: bytes | None) -> None:
    """Encode (H, W, C) samples into the open file ``f`` in format ``fmt``."""
    profile = {"icc_profile": icc_profile} if icc_profile else {}
    if fmt == "PNG":
        if samples.dtype == np.uint16:
            png16.write_png(f, samples, icc_profile=icc_profile)
        else:
            _pil_image(samples).save(f, format="PNG", **profile)
    elif fmt == "TIFF":
        channels = samples.shape[2]
        tifffile.imwrite(
            f, samples[..., 0] if channels == 1 else samples,
            photometric="minisblack" if channels <= 2 else "rgb",
            extrasamples=("unassalpha",) if channels in (2, 4) else None,
            compression="zlib", predictor=True, metadata=None, iccprofile=icc_profile or None,
        )
    elif fmt == "JPEG":
        # High quality and no chroma subsampling: SR detail is the point.
        _pil_image(samples).save(f, format="JPEG", quality=95, subsampling=0, **profile)
    else:  # Pillow's BMP writer cannot embed a profile
        _pil_image(samples).save(f, format="BMP")


def _at_depth(values: np.ndarray, bit_depth: int) -> np.ndarray:
    """Samples of ``bit_depth`` bits: integers as they are (the other depth converted exactly: x 257, or / 257
    rounded), floats in [0, 1] through the one quantiser."""
    dtype = np.uint8 if bit_depth == 8 else np.uint16
    if values.dtype == dtype:
        return values
    if values.dtype == np.uint8:  # v / 255 * 65535 exactly
        return values.astype(np.uint16) * np.uint16(257)
    if values.dtype == np.uint16:  # v * 255 / 65535 rounded; never half-way
        return ((values.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    if values.dtype.kind != "f":
        raise ValueError(f"expected uint8, uint16 or float samples, got {values.dtype}")
    return quantise(values, bit_depth)


def _gray(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 1): the mean of the three channels; for integers rounded to the nearest."""
    if rgb.dtype.kind == "f":
        return rgb.astype(np.float32, copy=False).mean(axis=2, keepdims=True)
    if rgb.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"expected uint8, uint16 or float samples, got {rgb.dtype}")
    total = rgb.sum(axis=2, keepdims=True, dtype=np.uint32)
    return ((total + 1) // 3).astype(rgb.dtype)


def write_image(path: str | os.PathLike, rgb: np.ndarray, like: LoadedImage | None = None,
                alpha: np.ndarray | None = None, icc_profile: bytes | None = None) -> None:
    """Save RGB samples (H, W, 3), atomically; the format comes from the extension.

    ``rgb`` and ``alpha`` (H, W) are uint8 or uint16 samples, written as they are when their depth is the file's (8
    for JPEG and BMP and without ``like``, else ``like.bit_depth``) and converted exactly otherwise, or floats in
    [0, 1], clipped and rounded half to even (``pixels.quantise``).

    Without ``like`` the file is 8-bit RGB (RGBA with ``alpha``). With ``like`` (the input's LoadedImage) its
    layout, bit depth and ICC profile are kept: gray inputs are saved gray (the mean of the three channels, rounded
    for integers), 16-bit stays 16-bit. ``alpha`` is written when given (the caller upsamples the input's alpha);
    without it the file has no alpha channel. ``icc_profile`` (raw bytes) replaces ``like``'s; ``b""`` writes none.

    Format limits: JPEG and BMP are 8-bit only; JPEG drops alpha; BMP stores gray+alpha as RGBA, its alpha in a
    fourth byte that many readers (Pillow among them) ignore, and carries no colour profile.

    Raises:
      ValueError: for arrays of the wrong shape or type.
      ImageError: for an unknown extension or any failure while writing.
    """
    path = os.fspath(path)
    fmt = _FORMATS.get(os.path.splitext(path)[1].lower())
    if fmt is None:
        raise ImageError(
            f"cannot write image {path}: unknown extension (use one of {_EXTENSION_LIST})"
        )
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise ValueError(f"expected a non-empty (H, W, 3) RGB array, got shape {rgb.shape}")
    if alpha is not None:
        alpha = np.asarray(alpha)
        if alpha.shape != rgb.shape[:2]:
            raise ValueError(f"alpha has shape {alpha.shape}, expected {rgb.shape[:2]}")
    gray = like is not None and like.mode in ("gray", "gray_alpha")
    bit_depth = like.bit_depth if like is not None and fmt not in ("JPEG", "BMP") else 8
    if icc_profile is None and like is not None:
        icc_profile = like.icc_profile
    if fmt == "JPEG":
        alpha = None

    samples = _at_depth(_gray(rgb) if gray else rgb, bit_depth)
    if alpha is not None:
        if fmt == "BMP" and gray:
            samples = np.repeat(samples, 3, axis=2)
        samples = np.concatenate([samples, _at_depth(alpha, bit_depth)[..., None]], axis=2)
    try:
        atomic_write(path, lambda f: _encode(f, samples, fmt, icc_profile or None))
    except WriteError as exc:
        why = str(exc).removeprefix(f"cannot write {path}: ")
        raise ImageError(f"cannot write image {path}: {why}") from exc
