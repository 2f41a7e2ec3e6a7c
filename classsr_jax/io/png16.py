"""16-bit PNG samples, read and written exactly (Pillow truncates them to 8 bits).

* Reading: Pillow's PNG decoder inflates and un-filters 16-bit colour PNGs correctly but keeps only the high byte
  of each sample. Decoding twice with raw modes that pick the high and then the low byte recovers every sample
  (``read_png16_colour``).
* Writing: Pillow cannot write 16-bit colour PNGs (imageio and skimage.io go through Pillow and truncate too), so
  ``write_png`` is a small encoder: big-endian samples, per-row adaptive filtering, zlib level 6, and an ``iCCP``
  chunk when a colour profile is given.

The files are opened through Pillow's PNG plugin class rather than ``Image.open``, which would apply Pillow's
decompression-bomb check; the caller has already checked the pixel count against its own limit.
"""

from __future__ import annotations

import struct
import zlib
from typing import BinaryIO

import numpy as np
from PIL import PngImagePlugin

# The raw modes Pillow reports for the 16-bit PNG layouts it would otherwise truncate.
COLOUR_RAWMODES = ("RGB;16B", "RGBA;16B", "LA;16B")


def _decode_with_rawmode(path: str, rawmode: str) -> np.ndarray:
    """Decode a PNG with Pillow, overriding the raw mode its unpacker uses.

    Pillow's decoder does the inflating and un-filtering (with the bytes per pixel taken from the raw mode's bit
    count) and then unpacks every pixel with ``rawmode``; a raw mode that picks other bytes of each pixel is how the
    16-bit samples are recovered exactly.
    """
    with PngImagePlugin.PngImageFile(path) as im:
        im.tile = [t._replace(args=rawmode) for t in im.tile]
        im.load()
        return np.asarray(im)


def read_png16_colour(path: str, rawmode: str) -> np.ndarray:
    """Exact samples (H, W, C) uint16 of a 16-bit RGB, RGBA or gray+alpha PNG (``rawmode`` in COLOUR_RAWMODES)."""
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
    """The ``iCCP`` chunk: profile name, NUL, compression method 0 (zlib), the compressed profile."""
    return chunk(b"iCCP", b"ICC Profile\0\0" + zlib.compress(profile))


def _filter_rows(cur: np.ndarray, up: np.ndarray, bpp: int, filter_type: int | None) -> np.ndarray:
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


def write_png(f: BinaryIO, samples: np.ndarray, filter_type: int | None = None,
              icc_profile: bytes | None = None) -> None:
    """Write (H, W, C) uint8/uint16 samples, C in 1..4 (gray, gray+alpha, RGB, RGBA), as a PNG.

    ``icc_profile`` (raw ICC bytes) goes into an ``iCCP`` chunk before the image data, as the PNG format requires.
    """
    h, w, channels = samples.shape
    depth = 16 if samples.dtype == np.uint16 else 8
    colour_type = {1: 0, 2: 4, 3: 2, 4: 6}[channels]
    raw = np.ascontiguousarray(samples.astype(">u2" if depth == 16 else np.uint8, copy=False))
    rows = raw.reshape(h, -1).view(np.uint8)
    bpp = channels * depth // 8
    f.write(b"\x89PNG\r\n\x1a\n")
    f.write(chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, depth, colour_type, 0, 0, 0)))
    if icc_profile:
        f.write(iccp_chunk(icc_profile))
    compressor = zlib.compressobj(6)
    block = max(1, (4 << 20) // max(rows.shape[1], 1))  # ~4 MiB of rows at a time
    pending = bytearray()
    for start in range(0, h, block):
        cur = rows[start:start + block].astype(np.int16)
        up = np.empty_like(cur)
        up[1:] = cur[:-1]
        up[0] = rows[start - 1] if start > 0 else 0
        pending += compressor.compress(_filter_rows(cur, up, bpp, filter_type).tobytes())
        if len(pending) >= 1 << 20:
            f.write(chunk(b"IDAT", bytes(pending)))
            pending.clear()
    pending += compressor.flush()
    f.write(chunk(b"IDAT", bytes(pending)))
    f.write(chunk(b"IEND", b""))
