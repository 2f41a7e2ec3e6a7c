"""Reading and writing images.

* `read_image` reads PNG, JPEG, TIFF, WebP, BMP and QOI (and GIF; 8 and 16 bit; gray, gray+alpha, RGB, RGBA)
  upright, keeping the integer samples (`LoadedImage.pixels`) and the ICC colour profile; every failure is a
  one-line `ImageError` naming the file. `image_size` reads only the header.
* `write_image` writes integer samples as they are, or floats in [0, 1], in the input's layout, bit depth and
  colour profile, through `atomic.atomic_write`; `encode` holds the formats and their encoders.

Decisions:
* TIFF goes through tifffile (full 16-bit support); everything else, and TIFFs tifffile cannot decode, through
  Pillow. 16-bit colour PNGs are read by `png16`. What decoding may cost is checked first (`decoders`).
* The EXIF orientation is applied when reading, as browsers and `PIL.ImageOps.exif_transpose` do (EXIF or XMP in
  JPEG and PNG, tag 274 in TIFF). Outputs carry no EXIF, so nothing turns them again. A PNG eXIf chunk after the
  image data is ignored: the PNG format places it before, and only the header is read for it.
* Every decoder has a pixel limit, checked from the header before decoding: Pillow's `Image.MAX_IMAGE_PIXELS`
  (about 89.5 MP) unless `max_pixels` says otherwise. Pillow's own decompression-bomb warning and error would
  contradict it, so PNG, JPEG and BMP are opened through their plugin classes (`Image.open` runs the check), and
  other formats with Pillow's check briefly off, under a lock.
* The ICC profile travels from input to output. A profile whose colour space does not describe the decoded samples
  (a CMYK profile after Pillow's CMYK to RGB conversion) is dropped: it would misdescribe the output. Pillow cannot
  write one into a BMP, nor QOI hold one, so those outputs have none.
* A gray input is saved back as gray using the plain mean of the three SR channels (for integer samples rounded to
  the nearest integer; a third is never half-way): the network saw the same gray value in all three, so they are
  three estimates of one signal (luma weights are for genuinely coloured content).
"""

from __future__ import annotations

import dataclasses
import os
from typing import BinaryIO, Literal

import numpy as np
from PIL import Image

from classsr_jax.errors import ImageError, WriteError
from classsr_jax.io import decoders, encode
from classsr_jax.io.atomic import atomic_write
from classsr_jax.io.pixels import quantise, to_float01, to_uint8  # noqa: F401  (to_uint8 is part of this module's API)

ImageMode = Literal["rgb", "gray", "rgba", "gray_alpha"]

# What is listed, read and written: every format `encode` writes, and `decoders` reads.
IMAGE_EXTENSIONS: tuple[str, ...] = tuple(extension for fmt in encode.FORMATS for extension in fmt.extensions)
_EXTENSION_LIST = ", ".join(e[1:] for e in IMAGE_EXTENSIONS)


# --------------------------------------------------------------------------- listing

def list_images(folder: str | os.PathLike, *, recursive: bool = False, allow_empty: bool = False) -> list[str]:
    """Sorted paths of the image files (by extension, any case) in `folder` (and below it, if recursive),
    ordered by their path relative to `folder` so that the order is reproducible.

    Hidden files (names starting with '.') are skipped; they are typically macOS metadata or our own temporary
    files. This is the one listing of image files: the commands and the dataset builders both use it.

    Raises:
      ImageError: if the folder does not exist, or holds no images (unless `allow_empty`).
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


def pixel_limit(max_pixels: int | None = None) -> int | None:
    """The pixel limit in force: Pillow's `Image.MAX_IMAGE_PIXELS` for None, no limit (None) for 0 or less."""
    if max_pixels is None:
        return Image.MAX_IMAGE_PIXELS or None
    return int(max_pixels) if max_pixels > 0 else None


def image_size(path: str | os.PathLike, max_pixels: int | None = None) -> tuple[int, int]:
    """(height, width) of the upright image, from the header only (no decoding).

    Raises:
      ImageError: as `read_image`, including an image over the pixel limit.
    """
    path = os.fspath(path)
    header = decoders.decode(path, pixel_limit(max_pixels), header_only=True)
    no_data = np.empty((header.height, header.width, 0))
    height, width = decoders.upright(no_data, header.orientation).shape[:2]
    return height, width


def read_image(path: str | os.PathLike, max_pixels: int | None = None) -> LoadedImage:
    """Read a PNG, JPEG, TIFF, WebP, BMP or QOI file (8 or 16 bit), upright.

    The format is detected from the content, not the extension. Alpha is split off and gray stays one channel
    (`LoadedImage.mode` records the stored layout so `write_image` can restore it).

    Args:
      max_pixels: the largest width x height to decode; None for Pillow's default limit
        (`Image.MAX_IMAGE_PIXELS`, about 89.5 MP), 0 or less for none.

    Raises:
      ImageError: for a missing, unreadable, truncated, corrupt, unsupported, zero-size or too large file, a
        multi-page file or one that is not a regular file; the message is one line naming the file.
    """
    path = os.fspath(path)
    decoded = decoders.decode(path, pixel_limit(max_pixels), header_only=False)
    channels = decoded.samples.shape[2]
    samples = decoders.upright(decoded.samples, decoded.orientation)
    has_alpha = channels in (2, 4)
    colour = np.ascontiguousarray(samples[..., : channels - 1] if has_alpha else samples)
    alpha = np.ascontiguousarray(samples[..., -1]) if has_alpha else None
    if colour.shape[2] == 1:
        mode: ImageMode = "gray_alpha" if has_alpha else "gray"
    else:
        mode = "rgba" if has_alpha else "rgb"
    return LoadedImage(colour_pixels=colour, alpha_pixels=alpha, bit_depth=decoded.bit_depth, mode=mode,
                       path=path, icc_profile=decoders.checked_profile(decoded.icc_profile, colour.shape[2]))


# --------------------------------------------------------------------------- writing

def _encode(f: BinaryIO, fmt: encode.Format, samples: np.ndarray, options: encode.Options,
                 icc_profile: bytes | None) -> None:
    """Encodes into memory, then writes the bytes into `f` (the one place a test can fail the write)."""
    f.write(fmt.encode(samples, options, icc_profile))


def _at_depth(values: np.ndarray, bit_depth: int) -> np.ndarray:
    """Samples of `bit_depth` bits: integers as they are (the other depth converted exactly: x 257, or / 257
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


def gray_mean(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 1): the mean of the three channels; for integers rounded to the nearest."""
    if rgb.dtype.kind == "f":
        return rgb.astype(np.float32, copy=False).mean(axis=2, keepdims=True)
    if rgb.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"expected uint8, uint16 or float samples, got {rgb.dtype}")
    total = rgb.sum(axis=2, keepdims=True, dtype=np.uint32)
    return ((total + 1) // 3).astype(rgb.dtype)


def _target(fmt: encode.Format, path: str, rgb: np.ndarray, like: LoadedImage | None,
            icc_profile: bytes | None) -> tuple[bool, int, bytes | None]:
    """(gray, bit depth, profile) of the file: `like`'s where the format holds them; an explicit profile the
    format cannot hold is an ImageError."""
    height, width = rgb.shape[:2]
    if max(height, width) > fmt.max_side:
        raise ImageError(f"cannot write image {path}: {fmt.name} holds at most {fmt.max_side} pixels a side, "
                         f"the image is {width}x{height}")
    if icc_profile and not fmt.icc:
        raise ImageError(f"cannot write image {path}: {fmt.name} cannot hold a colour profile")
    gray = like is not None and like.mode in ("gray", "gray_alpha")
    bit_depth = like.bit_depth if like is not None and fmt.sixteen_bit else 8
    if icc_profile is None and like is not None and fmt.icc:
        # A gray profile would misdescribe the RGB samples of a format that stores no gray.
        icc_profile = decoders.checked_profile(like.icc_profile, 1 if gray and fmt.gray else 3)
    return gray, bit_depth, icc_profile or None


def output_bit_depth(image: LoadedImage, output: str | os.PathLike) -> int:
    """16 for a 16-bit input written to a format that holds 16 bits (`encode.Format.sixteen_bit`), else 8."""
    fmt = encode.BY_EXTENSION.get(os.path.splitext(os.fspath(output))[1].lower())
    return 16 if image.bit_depth == 16 and fmt is not None and fmt.sixteen_bit else 8


def write_image(path: str | os.PathLike, rgb: np.ndarray, like: LoadedImage | None = None,
                alpha: np.ndarray | None = None, icc_profile: bytes | None = None, *,
                png_compression: int | None = None, quality: int | None = None) -> None:
    """Save RGB samples (H, W, 3), atomically; the format comes from the extension (`encode.FORMATS`).

    `rgb` and `alpha` (H, W) are uint8 or uint16 samples, written as they are when their depth is the file's (8
    for 8-bit formats and without `like`, else `like.bit_depth`) and converted exactly otherwise, or floats in
    [0, 1], clipped and rounded half to even (`pixels.quantise`).

    Without `like` the file is 8-bit RGB (RGBA with `alpha`). With `like` (the input's LoadedImage) its
    layout, bit depth and ICC profile are kept where the format holds them: gray inputs are saved gray (the mean of
    the three channels, rounded for integers; as RGB in WebP and QOI), 16-bit stays 16-bit in PNG and TIFF.
    `alpha` is written when given (the caller upsamples the input's alpha); without it the file has no alpha
    channel. `icc_profile` (raw bytes) replaces `like`'s; `b""` writes none.

    Args:
      png_compression: zlib level 0-9 for PNG (6 is Pillow's default size); None for the fast default.
      quality: 1-100, JPEG quality (default 95), or lossy WebP (default lossless).
      Formats without the setting ignore it, so one set of options serves a folder of mixed outputs.

    Format limits: PNG and TIFF hold everything; JPEG, WebP, BMP and QOI are 8-bit; JPEG drops alpha; BMP stores
    gray+alpha as RGBA, its alpha in a fourth byte that many readers (Pillow among them) ignore; BMP and QOI
    carry no colour profile (an explicit one is an ImageError, `like`'s is left out).

    Raises:
      ValueError: for arrays of the wrong shape or type, or options out of range.
      ImageError: for an unknown extension, what the format cannot hold, or any failure while writing.
    """
    path = os.fspath(path)
    fmt = encode.BY_EXTENSION.get(os.path.splitext(path)[1].lower())
    if fmt is None:
        raise ImageError(f"cannot write image {path}: unknown extension (use one of {_EXTENSION_LIST})")
    options = encode.Options(png_compression=png_compression, quality=quality)
    encode.check_options(options)
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise ValueError(f"expected a non-empty (H, W, 3) RGB array, got shape {rgb.shape}")
    if alpha is not None:
        alpha = np.asarray(alpha)
        if alpha.shape != rgb.shape[:2]:
            raise ValueError(f"alpha has shape {alpha.shape}, expected {rgb.shape[:2]}")
    gray, bit_depth, icc_profile = _target(fmt, path, rgb, like, icc_profile)
    alpha = alpha if fmt.alpha else None

    samples = _at_depth(gray_mean(rgb) if gray else rgb, bit_depth)
    if samples.shape[2] == 1 and not (fmt.gray and (alpha is None or fmt.name != "BMP")):
        samples = np.repeat(samples, 3, axis=2)  # the format stores no gray (BMP: no gray+alpha)
    if alpha is not None:
        samples = np.concatenate([samples, _at_depth(alpha, bit_depth)[..., None]], axis=2)
    try:
        atomic_write(path, lambda f: _encode(f, fmt, samples, options, icc_profile))
    except WriteError as exc:
        why = str(exc).removeprefix(f"cannot write {path}: ")
        raise ImageError(f"cannot write image {path}: {why}") from exc
