"""TFDS builders for ClassSR training data, registered when `classsr_jax.data` is imported.

Every builder turns HR photos into examples `{'name': str, 'hr': uint8 HxWx3 (modcropped to the scale),
'lr': uint8 (H/s)x(W/s)x3 = bicubic_degrade(hr, s)}` exactly as the original's `generate_mod_LR_bic.py` would.

Configs: `x2`, `x3`, `x4` (default) and `x2_aug`, `x3_aug`, `x4_aug`. The `_aug` configs add the paper's scale
augmentation to the train split (docs/original.md#data-preparation): every HR photo is also
MATLAB-bicubic-resized by 0.9, 0.8, 0.7 and 0.6 (rounded to uint8 as `cv2.imwrite` stores it), and every copy
is named `{factor}_{name}`, including the unchanged copy `1_{name}` (commit a06008a's naming). Validation is
never augmented.

Bad data never stops a build: unreadable or truncated files, and photos (or augmented copies) smaller than one
HR tile (32·scale px) on either side, are skipped, logged, and listed in the dataset's metadata under
`skipped` ({split: [[name, reason], …]}).

Usage:
    import classsr_jax.data  # registers the builders
    ds = tfds.load('classsr_div2k/x4', split='train', data_dir=DATA,
                   download_and_prepare_kwargs={'download_config':
                                                tfds.download.DownloadConfig(manual_dir=DIV2K_HR_DIR)})
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds

from classsr_jax.data.bicubic import bicubic_degrade, modcrop, rescale_uint8
from classsr_jax.data.bundled import SPLITS as BUNDLED_SPLIT_NAMES
from classsr_jax.data.bundled import bundled_photos
from classsr_jax.data.files import (
    SkipReport,
    read_rgb_uint8,
)
from classsr_jax.errors import DataError, UnreadableImageError
from classsr_jax.io.images import list_images

logger = logging.getLogger(__name__)

LR_TILE = 32  # The paper's LR training tile; an image must hold at least one.
# docs/original.md#data-preparation, in the original's order.
AUGMENT_FACTORS: tuple[float, ...] = (1, 0.9, 0.8, 0.7, 0.6)
SCALES = (2, 3, 4)
VALIDATION_FOLDER = "validation"  # Generic folders: files under this top-level subfolder form the validation split.


@dataclasses.dataclass(eq=False)
class ClassSRConfig(tfds.core.BuilderConfig):
    """One SR scale, with or without the paper's scale augmentation of the train split."""

    scale: int = 4
    augment_factors: tuple[float, ...] = (1,)


def make_configs() -> list[ClassSRConfig]:
    configs = []
    for scale in SCALES:
        configs.append(ClassSRConfig(name=f"x{scale}", scale=scale, description=f"x{scale} bicubic pairs."))
        configs.append(
            ClassSRConfig(
                name=f"x{scale}_aug",
                scale=scale,
                augment_factors=AUGMENT_FACTORS,
                description=f"x{scale} bicubic pairs; train split also holds the 0.9/0.8/0.7/0.6 downscaled HR copies.",
            )
        )
    return configs


def factor_prefix(factor: float) -> str:
    """The original's name prefix for an augmentation factor: 1 → '1', 0.9 → '0.9' (Python's str of the value)."""
    return str(int(factor)) if float(factor).is_integer() else str(factor)


def examples_from_photo(
    name: str, photo: np.ndarray, scale: int, augment_factors: tuple[float, ...], report: SkipReport
) -> Iterator[tuple[str, dict[str, object]]]:
    """(key, example) pairs for one HR photo: one per augmentation factor that leaves a usable image."""
    augmenting = tuple(augment_factors) != (1,)
    for factor in augment_factors:
        copy_name = f"{factor_prefix(factor)}_{name}" if augmenting else name
        hr = modcrop(rescale_uint8(photo, factor), scale)
        min_side = LR_TILE * scale
        if hr.shape[0] < min_side or hr.shape[1] < min_side:
            report.add(copy_name, f"{hr.shape[0]}x{hr.shape[1]} px is smaller than one HR tile ({min_side} px)")
            continue
        yield copy_name, {"name": copy_name, "hr": hr, "lr": bicubic_degrade(hr, scale)}


def _manual_dir_or_error(dl_manager: tfds.download.DownloadManager, dataset: str, expected: str) -> Path:
    """The manual dir, or a one-line DataError that says what to put where (TFDS' own message spans lines)."""
    try:
        return Path(dl_manager.manual_dir)
    except (AssertionError, ValueError) as err:
        match = re.search(r"Manual directory (.*?) does not exist", str(err))
        where = match.group(1) if match else "(none given)"
        raise DataError(
            f"{dataset}: manual dir {where} is missing or empty; put {expected} in it and pass "
            f"download_and_prepare_kwargs={{'download_config': tfds.download.DownloadConfig(manual_dir=DIR)}}"
        ) from None


class _ClassSRBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Shared features, configs, augmentation and skip accounting; subclasses say which files go to which split."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release."}
    BUILDER_CONFIGS = make_configs()
    DEFAULT_BUILDER_CONFIG_NAME = "x4"
    # What the user must place in the manual dir, for the one-line error.
    EXPECTED_FILES = "HR photos"
    # These builders download nothing, so there are no URL checksums to look up. Saying so here also skips TFDS'
    # search for a checksums file beside this module, which imports `importlib_resources`, a package that
    # tensorflow-datasets 4.9.10 uses but does not declare.
    url_infos = None

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=(self.__doc__ or "").strip().splitlines()[0],
            features=tfds.features.FeaturesDict(
                {
                    "name": tfds.features.Text(),
                    "hr": tfds.features.Image(shape=(None, None, 3), dtype=np.uint8),
                    "lr": tfds.features.Image(shape=(None, None, 3), dtype=np.uint8),
                }
            ),
            supervised_keys=("lr", "hr"),
            # Keep file order so a saved class division (by example index) lines up with the dataset.
            disable_shuffling=True,
            metadata=tfds.core.MetadataDict(skipped={}),
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        root = _manual_dir_or_error(dl_manager, self.name, self.EXPECTED_FILES)
        report = SkipReport()
        sources = self._split_sources(root, report)
        if not any(sources.values()):
            raise DataError(f"{self.name}: no usable images under {root}; expected {self.EXPECTED_FILES}")
        self._record_skips("files", report)
        return {split: self._generate_examples(split, named) for split, named in sources.items()}

    def _split_sources(self, root: Path, report: SkipReport) -> dict[str, list[tuple[str, Path]]]:
        """{split: [(example name, file)]} for the photos under `root`; files left out go to `report`."""
        raise NotImplementedError

    def _record_skips(self, split: str, report: SkipReport) -> None:
        if report.skipped:
            self.info.metadata["skipped"].setdefault(split, []).extend([list(item) for item in report.skipped])
            logger.warning("%s/%s %s: %s", self.name, self.builder_config.name, split, report.summary())

    def _augment_factors(self, split: str) -> tuple[float, ...]:
        return tuple(self.builder_config.augment_factors) if split == "train" else (1,)

    def _generate_examples(self, split: str, sources: list[tuple[str, Path]]):
        report = SkipReport()
        for name, path in sources:
            try:
                photo = read_rgb_uint8(path)
            except UnreadableImageError as err:
                report.add(name, err.reason)
                continue
            yield from examples_from_photo(name, photo, self.builder_config.scale, self._augment_factors(split), report)
        self._record_skips(split, report)


class _NumberedBuilder(_ClassSRBuilder, skip_registration=True):
    """Datasets whose files are named by index (DIV2K "0801.png"); the index decides the split.

    Examples are named by the file stem ("0801"), whatever subfolder the file is in, as in the original.
    """

    SPLIT_RANGES: dict[str, tuple[int, int]] = {}

    def _split_sources(self, root: Path, report: SkipReport) -> dict[str, list[tuple[str, Path]]]:
        by_split: dict[str, list[tuple[int, Path]]] = {split: [] for split in self.SPLIT_RANGES}
        seen: dict[int, Path] = {}
        for path in map(Path, list_images(root, recursive=True, allow_empty=True)):
            relative = path.relative_to(root).as_posix()
            if not re.fullmatch(r"[0-9]+", path.stem):
                report.add(relative, "not named by an index like 0801.png")
                continue
            index = int(path.stem)
            if index in seen:
                report.add(relative, f"index {index} already taken by {seen[index].relative_to(root).as_posix()}")
                continue
            seen[index] = path
            for split, (first, last) in self.SPLIT_RANGES.items():
                if first <= index <= last:
                    by_split[split].append((index, path))
                    break
            else:
                report.add(relative, f"index {index} is in no split")
        return {split: [(p.stem, p) for _, p in sorted(items)] for split, items in by_split.items()}


class ClassSRDiv2k(_NumberedBuilder):
    """DIV2K HR photos as ClassSR training pairs (train 0001–0800, validation 0801–0900)."""

    name = "classsr_div2k"
    SPLIT_RANGES = {"train": (1, 800), "validation": (801, 900)}
    EXPECTED_FILES = "the DIV2K HR PNGs 0001.png … 0900.png (e.g. the folders DIV2K_train_HR/ and DIV2K_valid_HR/)"
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Download DIV2K_train_HR.zip and DIV2K_valid_HR.zip from https://data.vision.ee.ethz.ch/cvl/DIV2K/ and "
        "extract both into the manual dir (files 0001.png … 0900.png, any subfolders)."
    )


class ClassSRDiv8k(_NumberedBuilder):
    """DIV8K HR photos as training pairs (train 0001–1200; validation 1201–1500, the sources of Test2K/4K/8K)."""

    name = "classsr_div8k"
    SPLIT_RANGES = {"train": (1, 1200), "validation": (1201, 1500)}
    EXPECTED_FILES = "the DIV8K HR PNGs 0001.png … 1500.png"
    MANUAL_DOWNLOAD_INSTRUCTIONS = "Place the DIV8K HR images 0001.png … 1500.png in the manual dir (any subfolders)."


class _FolderRule(_ClassSRBuilder, skip_registration=True):
    """Every image is train, except those under a top-level `validation/` subfolder, which form validation."""

    def _split_sources(self, root: Path, report: SkipReport) -> dict[str, list[tuple[str, Path]]]:
        del report  # Any image file is welcome here.
        train: list[tuple[str, Path]] = []
        validation: list[tuple[str, Path]] = []
        for path in map(Path, list_images(root, recursive=True, allow_empty=True)):
            relative = path.relative_to(root)
            name = relative.with_suffix("").as_posix()  # Unique even when two subfolders share a file name.
            if len(relative.parts) > 1 and relative.parts[0] == VALIDATION_FOLDER:
                validation.append((name, path))
            else:
                train.append((name, path))
        sources = {"train": train}
        if (root / VALIDATION_FOLDER).is_dir():
            sources["validation"] = validation
        return sources


class ClassSRFlickr2k(_FolderRule):
    """Flickr2K HR photos as training pairs (all train; a `validation/` subfolder, if present, is validation)."""

    name = "classsr_flickr2k"
    EXPECTED_FILES = "the Flickr2K HR PNGs 000001.png … 002650.png"
    MANUAL_DOWNLOAD_INSTRUCTIONS = "Extract Flickr2K's Flickr2K_HR/ images into the manual dir."


class ClassSRFolder(_FolderRule):
    """Any folder of photos as training pairs (all train; a `validation/` subfolder, if present, is validation)."""

    name = "classsr_folder"
    EXPECTED_FILES = "photos (PNG/JPEG/BMP/TIFF/WebP; put held-out ones in a validation/ subfolder)"
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Put photos in the manual dir (any subfolders); those under validation/ form the validation split."
    )


class ClassSRBundled(_ClassSRBuilder):
    """scikit-image's bundled photos: train (7 colour photos), grey (8 grey photos and textures as RGB),
    validation (2 held-out colour photos) and the held-out photos recoloured (validation_permuted,
    validation_hue); see `classsr_jax.data.bundled`."""

    name = "classsr_bundled"
    VERSION = tfds.core.Version("1.2.0")
    RELEASE_NOTES = {
        "1.0.0": "First release.",
        "1.1.0": "Splits grey, validation_permuted and validation_hue; the _aug configs augment grey as train.",
        "1.2.0": "Split colorwheel (scikit-image's color.png), augmented as train.",
    }
    TRAINING_SPLITS = ("train", "grey", "colorwheel")

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        del dl_manager  # Nothing to download or place: the photos are inside the installed scikit-image.
        return {split: self._generate_bundled(split) for split in BUNDLED_SPLIT_NAMES}

    def _augment_factors(self, split: str) -> tuple[float, ...]:
        return tuple(self.builder_config.augment_factors) if split in self.TRAINING_SPLITS else (1,)

    def _generate_bundled(self, split: str):
        report = SkipReport()
        for name, photo in bundled_photos(split):
            yield from examples_from_photo(name, photo, self.builder_config.scale, self._augment_factors(split), report)
        self._record_skips(split, report)
