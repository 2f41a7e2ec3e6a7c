"""Evaluation folders: Test2K/Test4K/Test8K from DIV8K, val_10 from DIV2K, and the bundled validation photos.

Layout (what the evaluate command reads; names as in the original's test ymls):

    OUT/Test2K/HR/X4/1201.png   OUT/Test2K/LR/X4/1201.png   (same file name in HR and LR)

What "downsampled to 2K / 4K" means here (the paper leaves it open; the authors answered in the ClassSR
GitHub issues #5, #18 and #20 that Test2K is DIV8K downsampled ×4 with generate_mod_LR_bic.py):
  * Test2K: DIV8K 1201–1300, each modcropped to a multiple of 4, MATLAB-bicubic ×1/4, rounded to uint8;
  * Test4K: DIV8K 1301–1400, modcropped to a multiple of 2, MATLAB-bicubic ×1/2, rounded to uint8;
  * Test8K: DIV8K 1401–1500 as they are.
So "2K" and "4K" are 8K divided by 4 and by 2 (a ~7680-px-wide photo becomes ~1920 and ~3840 px), not a fixed
long side; this matches the ~123 LR patches per Test2K image in third-party training logs. Then, for
every set, HR = modcrop(·, scale) and LR = bicubic_degrade(HR, scale), so HR is exactly scale × LR.
val_10 is DIV2K 0801–0810 treated the same way (no downsampling).
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from tqdm import tqdm

from classsr_jax.data.bicubic import bicubic_degrade, imresize, modcrop
from classsr_jax.data.bundled import bundled_photos
from classsr_jax.data.files import (
    check_folder,
    numbered_images,
    read_rgb_uint8,
    write_png_atomic,
)
from classsr_jax.errors import DataError, UnreadableImageError
from classsr_jax.io.pixels import to_uint8

# name -> (first DIV8K index, last index, downscale factor applied to the 8K photo)
DIV8K_TEST_SETS: dict[str, tuple[int, int, int]] = {
    "Test2K": (1201, 1300, 4),
    "Test4K": (1301, 1400, 2),
    "Test8K": (1401, 1500, 1),
}
VAL10_RANGE = (801, 810)
VAL10_NAME = "val_10"
BUNDLED_NAME = "bundled"


@dataclasses.dataclass
class SetReport:
    """What one set's preparation did; `line()` is the one-line summary the CLI prints."""

    name: str
    folder: Path
    written: list[str] = dataclasses.field(default_factory=list)
    skipped: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    missing: list[str] = dataclasses.field(default_factory=list)

    def line(self) -> str:
        text = f"{self.name}: wrote {len(self.written)} HR/LR pairs under {self.folder}"
        if self.skipped:
            text += f"; skipped {len(self.skipped)}: " + "; ".join(f"{n} ({r})" for n, r in self.skipped)
        if self.missing:
            shown = ", ".join(self.missing[:5]) + (", …" if len(self.missing) > 5 else "")
            text += f"; {len(self.missing)} source files missing ({shown})"
        return text


def downscale(photo: np.ndarray, factor: int) -> np.ndarray:
    """modcrop to a multiple of `factor`, then MATLAB bicubic ×1/factor rounded to uint8 (factor 1: unchanged)."""
    if factor == 1:
        return photo
    cropped = modcrop(photo, factor)
    out_shape = (cropped.shape[0] // factor, cropped.shape[1] // factor)
    return to_uint8(imresize(cropped, scale=1.0 / factor, output_shape=out_shape), 255.0)


def pair_folders(output: str | os.PathLike[str], set_name: str, scale: int) -> tuple[Path, Path]:
    """(HR folder, LR folder) of a set: OUT/<set>/HR/X<scale>, OUT/<set>/LR/X<scale>."""
    root = Path(output) / set_name
    return root / "HR" / f"X{scale}", root / "LR" / f"X{scale}"


def write_set(
    set_name: str,
    photos: Iterable[tuple[str, Path | np.ndarray]],
    output: str | os.PathLike[str],
    scale: int,
    factor: int = 1,
    total: int | None = None,
    progress: bool = True,
) -> SetReport:
    """Writes OUT/<set>/{HR,LR}/X<scale>/<name>.png for each (name, file or uint8 photo); bad files are skipped."""
    hr_dir, lr_dir = pair_folders(output, set_name, scale)
    report = SetReport(set_name, Path(output) / set_name)
    for name, source in tqdm(photos, total=total, desc=set_name, unit="img", file=sys.stderr, disable=not progress):
        try:
            photo = read_rgb_uint8(source) if isinstance(source, Path) else source
        except UnreadableImageError as err:
            report.skipped.append((name, err.reason))
            continue
        hr = modcrop(downscale(photo, factor), scale)
        if hr.shape[0] < scale or hr.shape[1] < scale:
            report.skipped.append((name, f"{photo.shape[0]}x{photo.shape[1]} px is too small"))
            continue
        lr = bicubic_degrade(hr, scale)
        # LR first: a set whose HR file exists always has its LR too, even after an interruption.
        write_png_atomic(lr_dir / f"{name}.png", lr)
        write_png_atomic(hr_dir / f"{name}.png", hr)
        report.written.append(name)
    return report


def _numbered_sources(folder: Path, first: int, last: int) -> tuple[list[tuple[str, Path]], list[str]]:
    found = numbered_images(folder)
    present = [(found[i].stem, found[i]) for i in range(first, last + 1) if i in found]
    missing = [f"{i:04d}" for i in range(first, last + 1) if i not in found]
    return present, missing


def build_div8k_test_sets(
    div8k_dir: str | os.PathLike[str],
    output: str | os.PathLike[str],
    scale: int = 4,
    factors: dict[str, int] | None = None,
    progress: bool = True,
) -> list[SetReport]:
    """Test2K, Test4K and Test8K from a folder of DIV8K HR images (1201.png … 1500.png, any subfolders).

    Args:
      factors: overrides of the downscale factor per set name (defaults in DIV8K_TEST_SETS).
    """
    folder = check_folder(div8k_dir, "--div8k", "the DIV8K HR images 1201.png … 1500.png")
    factors = {**{name: spec[2] for name, spec in DIV8K_TEST_SETS.items()}, **(factors or {})}
    plans = []
    for name, (first, last, _) in DIV8K_TEST_SETS.items():
        present, missing = _numbered_sources(folder, first, last)
        plans.append((name, present, missing))
    if not any(present for _, present, _ in plans):
        raise DataError(f"no DIV8K images numbered 1201–1500 (e.g. 1201.png) under {folder}")
    reports = []
    for name, present, missing in plans:
        report = write_set(name, present, output, scale, factors[name], total=len(present), progress=progress)
        report.missing = missing
        reports.append(report)
    return reports


def build_val10(
    div2k_dir: str | os.PathLike[str], output: str | os.PathLike[str], scale: int = 4, progress: bool = True
) -> SetReport:
    """val_10 (the original's validation set during joint training): DIV2K 0801–0810 as HR/LR folders."""
    folder = check_folder(div2k_dir, "--div2k", "the DIV2K HR images 0801.png … 0810.png")
    present, missing = _numbered_sources(folder, *VAL10_RANGE)
    if not present:
        raise DataError(f"no DIV2K images numbered 0801–0810 (e.g. 0801.png) under {folder}")
    report = write_set(VAL10_NAME, present, output, scale, total=len(present), progress=progress)
    report.missing = missing
    return report


def build_bundled(output: str | os.PathLike[str], scale: int = 4, progress: bool = True) -> SetReport:
    """The bundled validation photos (scikit-image's chelsea and coffee) as OUT/bundled/{HR,LR}/X<scale>."""
    photos: list[tuple[str, np.ndarray]] = bundled_photos("validation")
    return write_set(BUNDLED_NAME, photos, output, scale, total=len(photos), progress=progress)
