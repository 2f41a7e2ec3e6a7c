"""Reading photos from folders for the dataset builders: Pillow only, bad files skipped and reported.

Kept private to `datasets/` on purpose (the project's general image reader lives elsewhere) so that the builders
and the test-set preparation do not depend on it.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from classsr_jax.errors import DataError, UnreadableImageError
from classsr_jax.io import atomic, decoders
from classsr_jax.io.images import list_images

logger = logging.getLogger(__name__)



@dataclasses.dataclass
class SkipReport:
    """Files left out of a dataset and why; the builders log it and store it in the dataset's metadata."""

    skipped: list[tuple[str, str]] = dataclasses.field(default_factory=list)

    def add(self, name: str, reason: str) -> None:
        self.skipped.append((name, reason))
        logger.warning("skipped %s: %s", name, reason)

    def __len__(self) -> int:
        return len(self.skipped)

    def summary(self, what: str = "files") -> str:
        """One line: count and every skipped file with its reason."""
        if not self.skipped:
            return f"0 {what} skipped"
        listed = "; ".join(f"{name} ({reason})" for name, reason in self.skipped)
        return f"{len(self.skipped)} {what} skipped: {listed}"


def to_rgb_uint8(image: Image.Image, name: str) -> np.ndarray:
    """Converts any Pillow image to uint8 HxWx3: gray is replicated, alpha dropped, 16-bit scaled by 1/257.

    Alpha is dropped rather than composited because the original reads with cv2 and keeps the first three
    channels.
    """
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I"):
        values = np.asarray(image, dtype=np.float64)
        gray = np.clip(np.rint(values / 257.0), 0, 255).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if mode == "F":
        raise UnreadableImageError(name, "floating-point images are not supported")
    if mode in ("RGBA", "RGBa", "RGBX"):
        return np.ascontiguousarray(np.asarray(image)[:, :, :3])
    if mode == "LA":
        image = image.convert("L")
    if mode == "PA" or (mode == "P" and "transparency" in image.info):
        return np.ascontiguousarray(np.asarray(image.convert("RGBA"))[:, :, :3])
    if image.mode != "RGB":
        image = image.convert("RGB")
    return np.asarray(image, dtype=np.uint8).copy()


def read_rgb_uint8(path: str | os.PathLike[str]) -> np.ndarray:
    """Reads an image file fully into uint8 HxWx3; any decoding problem becomes a one-line DataError.

    Opened as the project's reader opens files: regular files only, Pillow limited to the formats it decodes.
    """
    path = Path(path)
    try:
        with decoders.open_restricted(str(path)) as image:
            image.load()  # Decode now so truncated files fail here, not later.
            return to_rgb_uint8(image, str(path))
    except DataError:
        raise
    except decoders.Refused as refused:
        raise UnreadableImageError(path, str(refused)) from None
    except UnidentifiedImageError:
        raise UnreadableImageError(path, "not an image Pillow can identify") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        message = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise UnreadableImageError(path, message) from None


_INDEX_RE = re.compile(r"^([0-9]+)$")


def numbered_images(folder: str | os.PathLike[str]) -> dict[int, Path]:
    """DIV2K/DIV8K-style files named by their index ("0801.png" → 801), searched recursively.

    When the same index appears twice (e.g. a .png and a .jpg), the first by sorted path wins.
    """
    found: dict[int, Path] = {}
    for path in map(Path, list_images(folder, recursive=True, allow_empty=True)):
        match = _INDEX_RE.match(path.stem)
        if match:
            found.setdefault(int(match.group(1)), path)
    return found


def check_folder(folder: str | os.PathLike[str] | None, flag: str, what: str) -> Path:
    """Returns the folder as a Path, or raises a one-line DataError saying what should be there."""
    if folder is None or not Path(folder).is_dir():
        raise DataError(f"{flag} directory {str(folder)!r} does not exist; it should hold {what}")
    return Path(folder)


def write_png_atomic(path: str | os.PathLike[str], image: np.ndarray, compress_level: int = 3) -> None:
    """Writes a uint8 HxW(x3) PNG through `atomic.atomic_write` (no half files), creating its folder.

    compress_level 3 is what the original's sub-image extraction uses (cv2.IMWRITE_PNG_COMPRESSION 3).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = Image.fromarray(np.asarray(image, dtype=np.uint8))
    atomic.atomic_write(path, lambda handle: pixels.save(handle, format="PNG", compress_level=compress_level))
