"""Lossless image writers on photo content: time, size and exactness of each candidate library.

  python -m benchmarks.bench_writer [--sizes 2k,4k,8k] [--rounds 3] [--only NAME,...]

Content: the bundled scikit-image photos tiled into a low-resolution mosaic and upscaled x4 with Pillow's
bicubic filter, which is what an SR output of real photos looks like to an encoder (random-weight network
outputs are flat and compress instantly, so they say nothing). 2K is 2048x1080, 4K 3840x2160, 8K 7680x4320; the
16-bit case is the 4K image times 257 plus a little deterministic noise in the low byte, as a 16-bit SR output
has.

Each candidate encodes into memory (no disk: the atomic rename and fsync cost the same for all), except the
"write_image (project)" row: the project's whole write into a file (encode, atomic write, fsync), which is what
is left of write time for one image that no computing overlaps. The time is
the fastest of ``--rounds`` runs (one at 8K). "exact" decodes the bytes with a decoder other than the encoder's
where one exists (Pillow for 8-bit PNG, the project's reader for 16-bit) and compares every sample. Prints a
Markdown table; the size reference is Pillow's default (compress_level 6), for 16 bit zlib level 6
through imagecodecs (what the hand-written 16-bit writer used; Pillow cannot write 16-bit colour).
"""

from __future__ import annotations

import argparse
import datetime
import io
import os
import platform
import tempfile
import time
from collections.abc import Callable

import numpy as np
from PIL import Image

SIZES = {"2k": (1080, 2048), "4k": (2160, 3840), "8k": (4320, 7680)}


def photo_content(height: int, width: int) -> np.ndarray:
    """(height, width, 3) uint8: a mosaic of the bundled photos at 1/4 size, upscaled x4 (bicubic)."""
    import skimage.data

    photos = [skimage.data.astronaut(), skimage.data.coffee(), skimage.data.chelsea(), skimage.data.rocket(),
              skimage.data.hubble_deep_field(), skimage.data.immunohistochemistry(), skimage.data.retina()]
    lr_h, lr_w = -(-height // 4), -(-width // 4)
    mosaic = np.zeros((lr_h, lr_w, 3), np.uint8)
    y = index = 0
    while y < lr_h:  # rows of photos, each row as tall as its first photo
        x, row_h = 0, 0
        while x < lr_w:
            photo = photos[index % len(photos)]
            index += 1
            piece = photo[: lr_h - y, : lr_w - x]
            mosaic[y:y + piece.shape[0], x:x + piece.shape[1]] = piece
            x += piece.shape[1]
            row_h = row_h or piece.shape[0]
        y += row_h
    big = Image.fromarray(mosaic).resize((lr_w * 4, lr_h * 4), Image.Resampling.BICUBIC)
    return np.ascontiguousarray(np.asarray(big)[:height, :width])


def sixteen_bit(rgb8: np.ndarray) -> np.ndarray:
    """uint16 samples with the 8-bit image's content and a low byte that is not all zero (as SR outputs)."""
    noise = np.random.default_rng(0).integers(0, 257, rgb8.shape, dtype=np.uint16)
    return rgb8.astype(np.uint16) * np.uint16(257) - np.minimum(noise, rgb8.astype(np.uint16) * np.uint16(257))


# --------------------------------------------------------------------------- candidates

def _pillow(level: int) -> Callable[[np.ndarray], bytes]:
    def encode(samples: np.ndarray) -> bytes:
        buf = io.BytesIO()
        Image.fromarray(samples).save(buf, format="PNG", compress_level=level)
        return buf.getvalue()
    return encode


def _opencv(level: int | None) -> Callable[[np.ndarray], bytes]:
    def encode(samples: np.ndarray) -> bytes:
        import cv2

        params = [] if level is None else [cv2.IMWRITE_PNG_COMPRESSION, level]
        ok, buf = cv2.imencode(".png", samples[..., ::-1], params)  # OpenCV's channel order is BGR
        assert ok
        return buf.tobytes()
    return encode


def _imagecodecs(**options) -> Callable[[np.ndarray], bytes]:
    def encode(samples: np.ndarray) -> bytes:
        import imagecodecs

        return bytes(imagecodecs.png_encode(samples, **options))
    return encode


def _fpng(samples: np.ndarray) -> bytes:
    import fpng

    return bytes(fpng.from_ndarray(np.ascontiguousarray(samples)))


def _spng(samples: np.ndarray) -> bytes:
    import imagecodecs

    return bytes(imagecodecs.spng_encode(samples))


def _project(samples: np.ndarray) -> bytes:
    """The project's own write_image (the chosen library behind it), through a file."""
    from classsr_jax.io.images import LoadedImage, write_image

    like = LoadedImage(samples[:1, :1], None, 16 if samples.dtype == np.uint16 else 8, "rgb", "input.png")
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "out.png")
        write_image(path, samples, like=like)
        with open(path, "rb") as f:
            return f.read()


def _qoi(samples: np.ndarray) -> bytes:
    import imagecodecs

    return bytes(imagecodecs.qoi_encode(samples))


def _webp_lossless(samples: np.ndarray) -> bytes:
    import imagecodecs

    return bytes(imagecodecs.webp_encode(samples, lossless=True))


def _webp_fastest(samples: np.ndarray) -> bytes:
    """What write_image writes for .webp: lossless at the fastest effort (Pillow)."""
    buf = io.BytesIO()
    Image.fromarray(samples).save(buf, format="WEBP", lossless=True, quality=0, method=0, exact=True)
    return buf.getvalue()


CANDIDATES_8BIT = {
    "pillow-6 (default)": _pillow(6),
    "pillow-1": _pillow(1),
    "opencv (default)": _opencv(None),
    "opencv-1": _opencv(1),
    "opencv-3": _opencv(3),
    "imagecodecs (default)": _imagecodecs(),
    "imagecodecs-1": _imagecodecs(level=1),
    "imagecodecs-1-rle-sub": _imagecodecs(level=1, strategy=3, filter=16),
    "imagecodecs-3": _imagecodecs(level=3),
    "spng (imagecodecs)": _spng,
    "fpng": _fpng,
    "write_image (project)": _project,
    "qoi (imagecodecs, not PNG)": _qoi,
    "webp lossless (not PNG)": _webp_lossless,
    "webp lossless fastest (not PNG)": _webp_fastest,
}
CANDIDATES_16BIT = {  # the size reference: zlib level 6, as the hand-written writer this replaced
    "imagecodecs-6 (zlib 6)": _imagecodecs(level=6),
    "opencv (default)": _opencv(None),
    "opencv-1": _opencv(1),
    "imagecodecs-1": _imagecodecs(level=1),
    "imagecodecs-1-rle-sub": _imagecodecs(level=1, strategy=3, filter=16),
    "write_image (project)": _project,
}


def decoded(name: str, data: bytes) -> np.ndarray:
    """The samples in ``data``, through a decoder independent of the encoder where one exists."""
    if name.startswith("qoi"):
        import imagecodecs

        return imagecodecs.qoi_decode(data)
    if name.startswith("webp"):  # Pillow's WebP decoder
        return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    from classsr_jax.io.images import read_image

    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "x.png")
        with open(path, "wb") as f:
            f.write(data)
        return read_image(path, max_pixels=0).pixels.copy()


def measure(name: str, encode: Callable[[np.ndarray], bytes], samples: np.ndarray, rounds: int) -> dict:
    best, data = float("inf"), b""
    for _ in range(rounds):
        t0 = time.perf_counter()
        data = encode(samples)
        best = min(best, time.perf_counter() - t0)
    return {"name": name, "seconds": best, "bytes": len(data), "exact": bool(np.array_equal(decoded(name, data),
                                                                                              samples))}


def table(rows: list[dict]) -> str:
    lines = ["| size | writer | time s | MB | size / reference | exact |", "|---|---|---:|---:|---:|---|"]
    for row in rows:
        ratio = f"{row['ratio']:.2f}" if row.get("ratio") else "-"
        lines.append(f"| {row['case']} | {row['name']} | {row['seconds']:.2f} | {row['bytes'] / 1e6:.1f} | "
                     f"{ratio} | {'yes' if row['exact'] else 'NO'} |")
    return "\n".join(lines)


def machine() -> str:
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{model}, nproc {os.cpu_count()}, Python {platform.python_version()}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="2k,4k,8k", help="comma-separated, of 2k, 4k, 8k; empty for none")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", default="", help="comma-separated writer names (prefixes) to run")
    parser.add_argument("--no-16bit", action="store_true")
    args = parser.parse_args(argv)
    only = [n for n in args.only.split(",") if n]
    rows = []
    cases = [(size, photo_content(*SIZES[size]), CANDIDATES_8BIT) for size in args.sizes.split(",") if size]
    if not args.no_16bit:
        cases.append(("4k 16-bit", sixteen_bit(photo_content(*SIZES["4k"])), CANDIDATES_16BIT))
    for case, samples, candidates in cases:
        rounds = 1 if samples.size >= 4320 * 7680 * 3 else args.rounds
        reference = None
        for name, encode in candidates.items():
            if only and not any(name.startswith(prefix) for prefix in only):
                continue
            try:
                row = measure(name, encode, samples, rounds)
            except ImportError as exc:
                print(f"skipped {name}: {exc}")
                continue
            if reference is None and name.startswith(("pillow-6", "imagecodecs-6")):
                reference = row["bytes"]
            rows.append({"case": case, **row, "ratio": reference and row["bytes"] / reference})
            print(f"{case:10s} {name:32s} {row['seconds']:6.2f} s {row['bytes'] / 1e6:7.1f} MB exact {row['exact']}",
                  flush=True)
    print(f"\n{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, {machine()}\n")
    print(table(rows))


if __name__ == "__main__":
    main()
