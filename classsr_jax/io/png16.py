"""16-bit PNG samples read exactly (Pillow truncates them to 8 bits), and the PNG chunks `encode` splices in.

Pillow's PNG decoder inflates and un-filters 16-bit colour PNGs correctly but keeps only the high byte of each
sample. Decoding twice with raw modes that pick the high and then the low byte recovers every sample
(`read_png16_colour`). Writing goes through imagecodecs (`encode`), which writes 16-bit PNGs exactly.

The files are opened through Pillow's PNG plugin class rather than `Image.open`, which would apply Pillow's
decompression-bomb check; the caller has already checked the pixel count against its own limit.
"""

from __future__ import annotations

import struct
import zlib

import numpy as np
from PIL import PngImagePlugin

# The raw modes Pillow reports for the 16-bit PNG layouts it would otherwise truncate.
COLOUR_RAWMODES = ("RGB;16B", "RGBA;16B", "LA;16B")


def _decode_with_rawmode(path: str, rawmode: str) -> np.ndarray:
    """Decode a PNG with Pillow, overriding the raw mode its unpacker uses.

    Pillow's decoder does the inflating and un-filtering (with the bytes per pixel taken from the raw mode's bit
    count) and then unpacks every pixel with `rawmode`; a raw mode that picks other bytes of each pixel is how the
    16-bit samples are recovered exactly.
    """
    with PngImagePlugin.PngImageFile(path) as im:
        im.tile = [t._replace(args=rawmode) for t in im.tile]
        im.load()
        return np.asarray(im)


def read_png16_colour(path: str, rawmode: str) -> np.ndarray:
    """Exact samples (H, W, C) uint16 of a 16-bit RGB, RGBA or gray+alpha PNG (`rawmode` in COLOUR_RAWMODES)."""
    if rawmode == "LA;16B":
        # 16-bit gray+alpha has 4 bytes per pixel, like 8-bit RGBA: read the bytes
        # (gray_hi, gray_lo, alpha_hi, alpha_lo) as they are.
        b = _decode_with_rawmode(path, "RGBA").astype(np.uint16)
        return np.stack([b[..., 0] << 8 | b[..., 1], b[..., 2] << 8 | b[..., 3]], axis=-1)
    # "RGB;16B"/"RGBA;16B" keep the high byte (big-endian first byte); the
    # little-endian raw modes keep the second byte, i.e. the low byte.
    high = _decode_with_rawmode(path, rawmode).astype(np.uint16)
    low = _decode_with_rawmode(path, rawmode.replace("16B", "16L")).astype(np.uint16)
    return high << 8 | low


def chunk(kind: bytes, data: bytes) -> bytes:
    """One PNG chunk: length, type, data, CRC of type and data."""
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))


def iccp_chunk(profile: bytes) -> bytes:
    """The `iCCP` chunk: profile name, NUL, compression method 0 (zlib), the compressed profile."""
    return chunk(b"iCCP", b"ICC Profile\0\0" + zlib.compress(profile))
