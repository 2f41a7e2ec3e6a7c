"""The default dataset that needs no download: colour photos shipped inside scikit-image's wheel.

scikit-image installs a few sample images in `skimage/data/`. The real colour photographs among them are used
here; synthetic or grey ones (colorwheel `color.png`, chessboards, `camera`, `brick`, …) and the RGBA logo are
left out. Two photos form a fixed validation split; the stereo pair `motorcycle_left/right` stays together in
train so the splits share no scene.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from classsr_jax.datasets.files import DataError, read_rgb_uint8

# name -> file inside skimage/data (sizes as W x H).
BUNDLED_FILES: dict[str, str] = {
    "astronaut": "astronaut.png",  # 512 x 512
    "hubble_deep_field": "hubble_deep_field.jpg",  # 1000 x 872
    "ihc": "ihc.png",  # 512 x 512, immunohistochemistry micrograph
    "motorcycle_left": "motorcycle_left.png",  # 741 x 500
    "motorcycle_right": "motorcycle_right.png",  # 741 x 500
    "retina": "retina.jpg",  # 1411 x 1411
    "rocket": "rocket.jpg",  # 640 x 427
    "chelsea": "chelsea.png",  # 451 x 300
    "coffee": "coffee.png",  # 600 x 400
}
BUNDLED_SPLITS: dict[str, tuple[str, ...]] = {
    "train": ("astronaut", "hubble_deep_field", "ihc", "motorcycle_left", "motorcycle_right", "retina", "rocket"),
    "validation": ("chelsea", "coffee"),
}


def skimage_data_dir() -> Path:
    """The installed `skimage/data` folder, found without importing scikit-image."""
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("scikit-image is not installed; the bundled photos come from its package (pip install scikit-image)")
    return Path(list(spec.submodule_search_locations)[0]) / "data"


def bundled_paths(split: str) -> list[tuple[str, Path]]:
    """(name, file path) of the photos in a split, in a fixed order."""
    if split not in BUNDLED_SPLITS:
        raise ValueError(f"unknown bundled split {split!r}; expected one of {sorted(BUNDLED_SPLITS)}")
    root = skimage_data_dir()
    return [(name, root / BUNDLED_FILES[name]) for name in BUNDLED_SPLITS[split]]


def bundled_photos(split: str) -> list[tuple[str, np.ndarray]]:
    """The bundled photos of `split` ('train' or 'validation') as (name, uint8 HxWx3), read from the package."""
    photos = []
    for name, path in bundled_paths(split):
        if not path.is_file():
            raise DataError(f"bundled photo {path} is missing from the installed scikit-image; reinstall it")
        photos.append((name, read_rgb_uint8(path)))
    return photos
