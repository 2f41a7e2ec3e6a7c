"""Reading and writing images, and the class-map overlay of the ClassSR test.

* ``read_image`` reads PNG, JPEG, TIFF and BMP (8 and 16 bit; gray, gray+alpha,
  RGB, RGBA) into float32 RGB in [0, 1] plus a separate alpha channel, and turns
  every failure into a one-line ``ImageError`` naming the file.
* ``write_image`` writes float RGB in [0, 1] back in the input's mode and bit
  depth, atomically (temporary file + ``os.replace``).
* ``class_map_overlay`` is the original ``add_mask`` (spec §5 step 8).

Decisions:
* TIFF goes through tifffile (full 16-bit support); everything else through
  Pillow. Pillow decodes 16-bit colour PNGs to 8 bits only, so those are decoded
  twice through Pillow's own PNG decoder with a raw mode that keeps the high and
  then the low byte of every sample (``_read_png16_colour``), and written by a
  small PNG encoder here (Pillow cannot write them; imageio and skimage.io go
  through Pillow and truncate too).
* EXIF orientation is ignored, like ``cv2.imread(..., IMREAD_UNCHANGED)`` in the
  original, so SR output and GT are aligned with the stored pixel grid.
* A gray input is saved back as gray using the plain mean of the three SR
  channels: the network saw the same gray value in all three, so the channels are
  three estimates of one signal (luma weights are for genuinely coloured content).
"""

from __future__ import annotations

import dataclasses
import os
import secrets
import struct
import zlib
from typing import BinaryIO, Callable, Literal

import numpy as np
import tifffile
from PIL import Image

from classsr_jax.errors import ImageError
from classsr_jax.pixels import quantise, to_uint8  # noqa: F401  (to_uint8 is part of this module's API)

ImageMode = Literal["rgb", "gray", "rgba", "gray_alpha"]

IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")

_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".tif": "TIFF",
            ".tiff": "TIFF", ".bmp": "BMP"}
_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
_EXTENSION_LIST = ", ".join(e[1:] for e in IMAGE_EXTENSIONS)


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def _reason(exc: BaseException) -> str:
    return _one_line(exc) or type(exc).__name__


# --------------------------------------------------------------------------- listing

def list_images(folder: str | os.PathLike) -> list[str]:
    """Sorted paths of the image files (by extension, any case) directly in ``folder``.

    Hidden files (names starting with '.') are skipped; they are typically macOS
    metadata or our own temporary files.

    Raises:
      ImageError: if the folder does not exist or holds no images.
    """
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        raise ImageError(f"no such folder: {folder}")
    paths = sorted(
        os.path.join(folder, name)
        for name in os.listdir(folder)
        if not name.startswith(".")
        and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS
        and os.path.isfile(os.path.join(folder, name))
    )
    if not paths:
        raise ImageError(f"no images ({_EXTENSION_LIST}) in {folder}")
    return paths


# --------------------------------------------------------------------------- reading

@dataclasses.dataclass
class LoadedImage:
    """A decoded image.

    Attributes:
      rgb: float32 (H, W, 3) in [0, 1]; gray images are replicated to 3 channels.
      alpha: float32 (H, W) in [0, 1], or None without an alpha channel.
      bit_depth: 8 or 16, the stored sample depth.
      mode: 'rgb', 'gray', 'rgba' or 'gray_alpha', the stored channel layout.
      path: the file it came from.
    """

    rgb: np.ndarray
    alpha: np.ndarray | None
    bit_depth: int
    mode: ImageMode
    path: str

    @property
    def height(self) -> int:
        return int(self.rgb.shape[0])

    @property
    def width(self) -> int:
        return int(self.rgb.shape[1])


class _Unsupported(Exception):
    """A readable file whose content we deliberately do not handle."""


def _decode_png_with_rawmode(path: str, rawmode: str) -> np.ndarray:
    """Decode a PNG with Pillow, overriding the raw mode its unpacker uses.

    Pillow's PNG decoder does the inflating and un-filtering (with the correct
    bytes per pixel, taken from the raw mode's bit count) and then unpacks every
    pixel with ``rawmode``; choosing a raw mode that picks other bytes of each
    pixel is how the 16-bit samples are recovered exactly.
    """
    with Image.open(path) as im:
        im.tile = [t._replace(args=rawmode) for t in im.tile]
        im.load()
        return np.asarray(im)


def _read_png16_colour(path: str, rawmode: str) -> np.ndarray:
    """Exact samples (H, W, C) uint16 of a 16-bit RGB, RGBA or gray+alpha PNG."""
    if rawmode == "LA;16B":
        # 16-bit gray+alpha has 4 bytes per pixel, like 8-bit RGBA: read the bytes
        # (gray_hi, gray_lo, alpha_hi, alpha_lo) as they are.
        b = _decode_png_with_rawmode(path, "RGBA").astype(np.uint16)
        return np.stack([b[..., 0] << 8 | b[..., 1], b[..., 2] << 8 | b[..., 3]], axis=-1)
    # "RGB;16B"/"RGBA;16B" keep the high byte (big-endian first byte); the
    # little-endian raw modes keep the second byte, i.e. the low byte.
    high = _decode_png_with_rawmode(path, rawmode).astype(np.uint16)
    low = _decode_png_with_rawmode(path, rawmode.replace("16B", "16L")).astype(np.uint16)
    return high << 8 | low


_PIL_CONVERSIONS = {"1": "L", "La": "LA", "RGBa": "RGBA", "RGBX": "RGB", "CMYK": "RGB",
                    "YCbCr": "RGB", "LAB": "RGB", "HSV": "RGB", "PA": "RGBA"}


def _read_pillow(path: str) -> tuple[np.ndarray, int]:
    """Samples (H, W, C), C in 1..4 (gray, gray+alpha, RGB, RGBA), and bit depth."""
    with Image.open(path) as im:
        rawmode = im.tile[0].args if im.format == "PNG" and im.tile else None
        if rawmode in ("RGB;16B", "RGBA;16B", "LA;16B"):
            return _read_png16_colour(path, rawmode), 16
        im.load()
        if im.mode in ("I;16", "I;16B", "I;16L", "I;16N"):
            return np.asarray(im).astype(np.uint16)[..., None], 16
        if im.mode == "I":
            values = np.asarray(im)
            if values.size and (values.min() < 0 or values.max() > 65535):
                raise _Unsupported("32-bit integer samples (only 8 and 16 bit)")
            return values.astype(np.uint16)[..., None], 16
        if im.mode == "F":
            raise _Unsupported("floating-point samples (only 8 and 16 bit)")
        if im.mode in ("P", "L", "RGB") and im.has_transparency_data:
            im = im.convert("LA" if im.mode == "L" else "RGBA")
        elif im.mode == "P":
            im = im.convert("RGB")
        elif im.mode in _PIL_CONVERSIONS:
            im = im.convert(_PIL_CONVERSIONS[im.mode])
        if im.mode not in ("L", "LA", "RGB", "RGBA"):
            raise _Unsupported(f"image mode {im.mode}")
        samples = np.asarray(im)
    if samples.ndim == 2:
        samples = samples[..., None]
    return samples, 8


def _read_tiff(path: str) -> tuple[np.ndarray, int]:
    """Samples (H, W, C) and bit depth of the first page of a TIFF, via tifffile."""
    with tifffile.TiffFile(path) as tif:
        page = tif.pages.first
        data = page.asarray()
        photometric = int(page.photometric)
        axes = page.axes
        colormap = page.colormap
    if axes == "SYX":  # planar configuration 'separate'
        data = np.moveaxis(data, 0, -1)
    elif axes == "YX":
        data = data[..., None]
    elif axes != "YXS":
        raise _Unsupported(f"TIFF layout {axes}")
    if data.dtype == np.bool_:
        data = data.astype(np.uint8) * 255
    if data.dtype not in (np.uint8, np.uint16):
        raise _Unsupported(f"{data.dtype} samples (only 8- and 16-bit unsigned integers)")
    bit_depth = 16 if data.dtype == np.uint16 else 8
    if photometric == 3:  # palette: colormap (3, 2**bits) of 16-bit values
        if colormap is None or data.shape[2] != 1:
            raise _Unsupported("palette TIFF without a colour map")
        rgb = colormap[:, data[..., 0]].transpose(1, 2, 0).astype(np.uint16)
        if np.all(rgb % 257 == 0):  # an 8-bit palette stored as v * 257
            return (rgb // 257).astype(np.uint8), 8
        return rgb, 16
    if photometric == 0:  # min-is-white
        data = data.copy()
        data[..., :1] = np.iinfo(data.dtype).max - data[..., :1]
    elif photometric not in (1, 2):  # min-is-black, RGB
        raise _Unsupported(f"TIFF photometric interpretation {photometric}")
    if data.shape[2] > 4:
        raise _Unsupported(f"{data.shape[2]} samples per pixel")
    return data, bit_depth


def read_image(path: str | os.PathLike) -> LoadedImage:
    """Read a PNG, JPEG, TIFF or BMP file (8 or 16 bit).

    The format is detected from the content, not the extension. Gray images are
    replicated to RGB and alpha is split off (``LoadedImage.mode`` records the
    stored layout so ``write_image`` can restore it).

    Raises:
      ImageError: for a missing, unreadable, truncated, corrupt, unsupported or
        zero-size file; the message is one line naming the file.
    """
    path = os.fspath(path)

    def fail(reason: str) -> ImageError:
        return ImageError(f"cannot read image {path}: {_one_line(reason)}")

    if not os.path.exists(path):
        raise fail("no such file")
    if os.path.isdir(path):
        raise fail("it is a folder")
    try:
        with open(path, "rb") as f:
            head = f.read(4)
        if head in _TIFF_MAGIC:
            try:
                samples, bit_depth = _read_tiff(path)
            except _Unsupported:
                raise
            except Exception as tiff_exc:
                # tifffile lacks some codecs (LZW, JPEG) without imagecodecs;
                # Pillow reads most such 8-bit files.
                try:
                    samples, bit_depth = _read_pillow(path)
                except Exception:
                    raise tiff_exc from None
        else:
            samples, bit_depth = _read_pillow(path)
    except _Unsupported as exc:
        raise fail(f"unsupported {exc}") from None
    except Image.UnidentifiedImageError:
        raise fail("not a recognised image file") from None
    except MemoryError:
        raise
    except Exception as exc:
        raise fail(_reason(exc)) from exc

    h, w, channels = samples.shape
    if h == 0 or w == 0:
        raise fail(f"zero-size image ({h}x{w})")
    scale = np.float32(2 ** bit_depth - 1)
    values = samples.astype(np.float32) / scale
    has_alpha = channels in (2, 4)
    colour = values[..., : channels - 1] if has_alpha else values
    mode: ImageMode
    if colour.shape[2] == 1:
        rgb = np.repeat(colour, 3, axis=2)
        mode = "gray_alpha" if has_alpha else "gray"
    else:
        rgb = np.ascontiguousarray(colour)
        mode = "rgba" if has_alpha else "rgb"
    alpha = np.ascontiguousarray(values[..., -1]) if has_alpha else None
    return LoadedImage(rgb=rgb, alpha=alpha, bit_depth=bit_depth, mode=mode, path=path)


# --------------------------------------------------------------------------- writing

def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))


def _png_filter_rows(cur: np.ndarray, up: np.ndarray, bpp: int,
                     filter_type: int | None) -> np.ndarray:
    """PNG-filter a block of rows (int16 (n, rowbytes)); returns (n, 1 + rowbytes) uint8.

    With ``filter_type=None`` each row gets the filter with the smallest sum of
    absolute signed residuals (the usual libpng heuristic).
    """
    left = np.zeros_like(cur)
    left[:, bpp:] = cur[:, :-bpp]
    up_left = np.zeros_like(up)
    up_left[:, bpp:] = up[:, :-bpp]
    p = left + up - up_left
    pa, pb, pc = np.abs(p - left), np.abs(p - up), np.abs(p - up_left)
    paeth = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, up, up_left))
    predictions = [0, left, up, (left + up) >> 1, paeth]
    types = range(5) if filter_type is None else [filter_type]
    residuals = np.stack([(cur - predictions[t]) & 0xFF for t in types]).astype(np.uint8)
    if filter_type is None:
        cost = np.abs(residuals.view(np.int8).astype(np.int32)).sum(axis=2)  # (5, n)
        choice = np.argmin(cost, axis=0)
    else:
        choice = np.zeros(cur.shape[0], dtype=np.int64)
    rows = residuals[choice, np.arange(cur.shape[0])]
    type_bytes = np.asarray(list(types), dtype=np.uint8)[choice]
    return np.concatenate([type_bytes[:, None], rows], axis=1)


def _write_png(f: BinaryIO, samples: np.ndarray, filter_type: int | None = None) -> None:
    """Write (H, W, C) uint8/uint16 samples, C in 1..4, as a PNG (any bit depth/layout).

    Pillow cannot write 16-bit colour PNGs, so this small encoder writes all
    16-bit PNGs: big-endian samples, per-row adaptive filtering, zlib level 6.
    """
    h, w, channels = samples.shape
    depth = 16 if samples.dtype == np.uint16 else 8
    colour_type = {1: 0, 2: 4, 3: 2, 4: 6}[channels]
    raw = np.ascontiguousarray(samples.astype(">u2" if depth == 16 else np.uint8))
    rows = raw.reshape(h, -1).view(np.uint8)
    bpp = channels * depth // 8
    f.write(b"\x89PNG\r\n\x1a\n")
    f.write(_png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, depth, colour_type, 0, 0, 0)))
    compressor = zlib.compressobj(6)
    block = max(1, (4 << 20) // max(rows.shape[1], 1))  # ~4 MiB of rows at a time
    pending = bytearray()
    for start in range(0, h, block):
        cur = rows[start:start + block].astype(np.int16)
        up = np.empty_like(cur)
        up[1:] = cur[:-1]
        up[0] = rows[start - 1] if start > 0 else 0
        pending += compressor.compress(_png_filter_rows(cur, up, bpp, filter_type).tobytes())
        if len(pending) >= 1 << 20:
            f.write(_png_chunk(b"IDAT", bytes(pending)))
            pending.clear()
    pending += compressor.flush()
    f.write(_png_chunk(b"IDAT", bytes(pending)))
    f.write(_png_chunk(b"IEND", b""))


def _pil_image(samples: np.ndarray) -> Image.Image:
    mode = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}[samples.shape[2]]
    return Image.fromarray(samples[..., 0] if samples.shape[2] == 1 else samples, mode=mode)


def _encode(f: BinaryIO, samples: np.ndarray, fmt: str) -> None:
    """Encode (H, W, C) samples into the open file ``f`` in format ``fmt``."""
    if fmt == "PNG":
        if samples.dtype == np.uint16:
            _write_png(f, samples)
        else:
            _pil_image(samples).save(f, format="PNG")
    elif fmt == "TIFF":
        channels = samples.shape[2]
        tifffile.imwrite(
            f, samples[..., 0] if channels == 1 else samples,
            photometric="minisblack" if channels <= 2 else "rgb",
            extrasamples=("unassalpha",) if channels in (2, 4) else None,
            compression="zlib", predictor=True, metadata=None,
        )
    elif fmt == "JPEG":
        # High quality and no chroma subsampling: SR detail is the point.
        _pil_image(samples).save(f, format="JPEG", quality=95, subsampling=0)
    else:
        _pil_image(samples).save(f, format="BMP")


def _atomic_write(path: str, write: Callable[[BinaryIO], None]) -> None:
    """Write via a temporary file in the same folder, then ``os.replace``.

    On any failure the temporary file is removed and an existing ``path`` is left
    untouched.
    """
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise ImageError(f"cannot write image {path}: folder {folder} does not exist")
    temp = os.path.join(folder, f".{os.path.basename(path)}.{secrets.token_hex(6)}.tmp")
    try:
        # 'x' (O_EXCL): never clobber anything; permissions follow the umask as usual.
        f = open(temp, "xb")
    except OSError as exc:
        raise ImageError(f"cannot write image {path}: {_reason(exc)}") from exc
    try:
        with f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, path)
    except BaseException as exc:
        try:
            os.unlink(temp)
        except FileNotFoundError:
            pass
        if isinstance(exc, Exception):
            raise ImageError(f"cannot write image {path}: {_reason(exc)}") from exc
        raise


def write_image(path: str | os.PathLike, rgb: np.ndarray, like: LoadedImage | None = None,
                alpha: np.ndarray | None = None) -> None:
    """Save float RGB in [0, 1] (H, W, 3), atomically; the format comes from the extension.

    Without ``like`` the file is 8-bit RGB (RGBA with ``alpha``). With ``like`` (the
    input's LoadedImage) its layout and bit depth are kept: gray inputs are saved
    gray (mean of the three channels), 16-bit stays 16-bit. ``alpha`` (H, W) in
    [0, 1] is written when given (the caller upsamples the input's alpha); without
    it the file has no alpha channel. Values are clipped to [0, 1] and rounded half
    to even.

    Format limits: JPEG and BMP are 8-bit only; JPEG drops alpha; BMP stores
    gray+alpha as RGBA.

    Raises:
      ValueError: for arrays of the wrong shape.
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
    bit_depth = like.bit_depth if like is not None else 8
    if fmt in ("JPEG", "BMP"):
        bit_depth = 8
    if fmt == "JPEG":
        alpha = None

    colour = np.asarray(rgb, dtype=np.float32)
    if gray:
        colour = colour.mean(axis=2, keepdims=True)
    parts = [quantise(colour, bit_depth)]
    if alpha is not None:
        if fmt == "BMP" and gray:
            parts[0] = np.repeat(parts[0], 3, axis=2)
        parts.append(quantise(alpha, bit_depth)[..., None])
    samples = np.concatenate(parts, axis=2) if len(parts) > 1 else parts[0]
    _atomic_write(path, lambda f: _encode(f, samples, fmt))


# --------------------------------------------------------------------------- overlay

def class_colours(num_classes: int = 3) -> np.ndarray:
    """RGB uint8 colours (K, 3) per class: green -> yellow -> red.

    For 3 classes exactly the original's green (0,255,0), yellow (255,255,0) and
    red (255,0,0); other counts interpolate along the same green-yellow-red path.
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    t = np.arange(num_classes) / max(num_classes - 1, 1)
    red = np.minimum(1.0, 2.0 * t)
    green = np.minimum(1.0, 2.0 - 2.0 * t)
    colours = np.stack([red, green, np.zeros_like(t)], axis=1) * 255
    return np.rint(colours).astype(np.uint8)


def class_map_overlay(sr_uint8: np.ndarray, boxes_hr: np.ndarray, classes: np.ndarray,
                      alpha: float = 0.2, num_classes: int | None = None) -> np.ndarray:
    """Tint every tile by its predicted class (the original ``add_mask``).

    For each tile, a rectangle inset from its HR box by ``9 * size // 128`` px on
    each side (pixels x0+9 .. x0+118 of a 128-px tile) is blended as
    ``cv2.addWeighted(img, 1.0, mask, alpha, 0)``: float32 ``img + alpha * colour``,
    rounded half to even and saturated, one tile at a time, so with alpha 0.2 the
    coloured channels gain 51 per covering tile.

    Args:
      sr_uint8: (H, W, 3) uint8 RGB image (not modified).
      boxes_hr: (N, 4) HR boxes (y0, x0, y1, x1), end exclusive; clipped to the image.
      classes: (N,) class index per tile.
      alpha: mask weight.
      num_classes: colour count; default max(3, max(classes) + 1).
    """
    image = np.asarray(sr_uint8)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) uint8 image, got {image.dtype} {image.shape}")
    boxes = np.asarray(boxes_hr, dtype=np.int64).reshape(-1, 4)
    classes = np.asarray(classes, dtype=np.int64).reshape(-1)
    if classes.size != boxes.shape[0]:
        raise ValueError(f"{boxes.shape[0]} boxes but {classes.size} classes")
    if num_classes is None:
        num_classes = max(3, int(classes.max()) + 1 if classes.size else 3)
    if classes.size and (classes.min() < 0 or classes.max() >= num_classes):
        raise ValueError(f"class indices must lie in [0, {num_classes})")
    tint = class_colours(num_classes).astype(np.float32) * np.float32(alpha)
    out = image.copy()
    h, w = image.shape[:2]
    for (y0, x0, y1, x1), k in zip(boxes, classes):
        inset_y, inset_x = 9 * (y1 - y0) // 128, 9 * (x1 - x0) // 128
        ys = slice(min(max(y0 + inset_y, 0), h), min(max(y1 - inset_y, 0), h))
        xs = slice(min(max(x0 + inset_x, 0), w), min(max(x1 - inset_x, 0), w))
        region = out[ys, xs].astype(np.float32) + tint[k]
        out[ys, xs] = np.clip(np.rint(region), 0, 255).astype(np.uint8)
    return out
