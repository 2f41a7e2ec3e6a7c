"""Encoding integer samples into the bytes of an image file, the format chosen by the output's extension.

What each format holds (`Format`), and how it is written, measured on photo content in
`benchmarks/bench_writer.py` (docs/performance.md, "Writing the output"):

* PNG: 8-bit RGB and RGBA through fpng by default (0.3 s for an 8K photo against 15 s for Pillow's default, files
  1.3x as large); gray, gray+alpha and 16-bit through imagecodecs (libpng) at zlib level 1 with the RLE strategy
  and the Sub filter (OpenCV's default). `png_compression` 0-9 writes every layout through imagecodecs at that
  zlib level instead (6 is Pillow's default size). Neither library embeds a colour profile, so the `iCCP`
  chunk is spliced in after the header.
* TIFF: tifffile, zlib with the horizontal predictor; 8 and 16 bit, alpha, profile.
* JPEG: Pillow, quality 95 unless `quality` says otherwise, no chroma subsampling; 8-bit, no alpha.
* WebP: Pillow, lossless (and exact under transparent pixels) at the fastest effort unless `quality` asks for
  lossy; 8-bit RGB or RGBA (gray is stored as RGB), profile, at most 16383 pixels a side.
* BMP: Pillow; 8-bit, gray as a palette, alpha in a fourth byte; no profile.
* QOI: imagecodecs; 8-bit RGB or RGBA (gray is stored as RGB); no profile.

Every output is lossless and exact except JPEG and lossy WebP.
"""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Callable

import fpng
import imagecodecs
import numpy as np
import tifffile
from PIL import Image

from classsr_jax.io import png16

DEFAULT_JPEG_QUALITY = 95  # high quality: SR detail is the point


@dataclasses.dataclass(frozen=True)
class Options:
    """Encoder settings; each format reads the ones it has and ignores the others."""

    png_compression: int | None = None  # zlib level 0-9 for PNG; None: the fast default
    quality: int | None = None  # 1-100: JPEG quality, or lossy WebP; None: the format's default


def _pil_image(samples: np.ndarray) -> Image.Image:
    mode = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}[samples.shape[2]]
    return Image.fromarray(samples[..., 0] if samples.shape[2] == 1 else samples, mode=mode)


def _pillow_bytes(samples: np.ndarray, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    _pil_image(samples).save(buffer, format=fmt, **{k: v for k, v in kwargs.items() if v is not None})
    return buffer.getvalue()


def with_iccp(png: bytes, profile: bytes) -> bytes:
    """`png` with an `iCCP` chunk right after its header (the chunk must come before the image data)."""
    header_end = 8 + 4 + 4 + 13 + 4  # signature, then IHDR's length, type, 13 data bytes and CRC
    if png[12:16] != b"IHDR":
        raise ValueError("not a PNG stream: no IHDR chunk first")
    return png[:header_end] + png16.iccp_chunk(profile) + png[header_end:]


def _png(samples: np.ndarray, options: Options, icc_profile: bytes | None) -> bytes:
    samples = np.ascontiguousarray(samples)
    if options.png_compression is None and samples.dtype == np.uint8 and samples.shape[2] in (3, 4):
        data = bytes(fpng.from_ndarray(samples))
    elif options.png_compression is None:  # fpng writes 8-bit RGB(A) only
        data = bytes(imagecodecs.png_encode(samples, level=1, strategy=3, filter=16))
    else:
        data = bytes(imagecodecs.png_encode(samples, level=options.png_compression))
    return with_iccp(data, icc_profile) if icc_profile else data


def _tiff(samples: np.ndarray, options: Options, icc_profile: bytes | None) -> bytes:
    channels = samples.shape[2]
    buffer = io.BytesIO()
    tifffile.imwrite(
        buffer, samples[..., 0] if channels == 1 else samples,
        photometric="minisblack" if channels <= 2 else "rgb",
        extrasamples=("unassalpha",) if channels in (2, 4) else None,
        compression="zlib", predictor=True, metadata=None, iccprofile=icc_profile or None,
    )
    return buffer.getvalue()


def _jpeg(samples: np.ndarray, options: Options, icc_profile: bytes | None) -> bytes:
    quality = DEFAULT_JPEG_QUALITY if options.quality is None else options.quality
    return _pillow_bytes(samples, "JPEG", quality=quality, subsampling=0, icc_profile=icc_profile)


def _webp(samples: np.ndarray, options: Options, icc_profile: bytes | None) -> bytes:
    if options.quality is None:  # lossless at the fastest effort: measured smaller than PNG level 6 anyway
        return _pillow_bytes(samples, "WEBP", lossless=True, quality=0, method=0, exact=True,
                             icc_profile=icc_profile)
    return _pillow_bytes(samples, "WEBP", quality=options.quality, method=4, icc_profile=icc_profile)


def _bmp(samples: np.ndarray, options: Options, icc_profile: bytes | None) -> bytes:
    return _pillow_bytes(samples, "BMP")


def _qoi(samples: np.ndarray, options: Options, icc_profile: bytes | None) -> bytes:
    return bytes(imagecodecs.qoi_encode(np.ascontiguousarray(samples)))


@dataclasses.dataclass(frozen=True)
class Format:
    """What a file format holds, and its encoder `encode(samples, options, icc_profile) -> bytes`."""

    name: str
    extensions: tuple[str, ...]
    encode: Callable[[np.ndarray, Options, bytes | None], bytes]
    sixteen_bit: bool = False
    alpha: bool = True
    gray: bool = True  # stores one channel; else gray samples are written as RGB
    icc: bool = True
    max_side: int = 2**31 - 1


FORMATS = (  # in the order messages list them: the original four first
    Format("PNG", (".png",), _png, sixteen_bit=True),
    Format("JPEG", (".jpg", ".jpeg"), _jpeg, alpha=False, max_side=65535),
    Format("TIFF", (".tif", ".tiff"), _tiff, sixteen_bit=True),
    Format("BMP", (".bmp",), _bmp, icc=False),
    Format("WebP", (".webp",), _webp, gray=False, max_side=16383),
    Format("QOI", (".qoi",), _qoi, gray=False, icc=False),
)
BY_EXTENSION = {extension: fmt for fmt in FORMATS for extension in fmt.extensions}


def check_options(options: Options) -> None:
    """Raises ValueError for settings out of range."""
    if options.png_compression is not None and not 0 <= options.png_compression <= 9:
        raise ValueError(f"png_compression must be 0 to 9, got {options.png_compression}")
    if options.quality is not None and not 1 <= options.quality <= 100:
        raise ValueError(f"quality must be 1 to 100, got {options.quality}")
