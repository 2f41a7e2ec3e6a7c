"""The default dataset that needs no download: photos shipped inside scikit-image's wheel.

scikit-image installs a few sample images in `skimage/data/`. Splits:
  - `train`: its 7 real colour photographs (synthetic ones such as the colorwheel `color.png` and the RGBA logo
    are left out). The stereo pair `motorcycle_left/right` stays together here, so no split shares a scene.
  - `grey`: its 8 grey photos and textures (camera, brick, coins, grass, gravel, moon, page, text), as RGB with
    three equal channels: more structure to learn from (the motion-blurred clock, the near-empty cell image, the
    tiny microaneurysms crop and the synthetic chessboards are left out).
  - `colorwheel`: the synthetic `color.png`, every hue and saturation in smooth gradients on black: the
    saturated colours that few photos hold.
  - `validation`: 2 held-out colour photos, chelsea and coffee, never trained on.
  - `validation_permuted` and `validation_hue`: the held-out photos in colours the training photos lack, made by
    permuting their channels (BGR, GRB) or rotating their HSV hue (by 90° and 270°, which no channel permutation
    gives), as a test of a model on photos unlike the ones it saw.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from classsr_jax.data.files import read_rgb_uint8
from classsr_jax.errors import DataError
from classsr_jax.io.pixels import to_uint8

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
    # Grey (one channel, replicated to RGB when read).
    "camera": "camera.png",  # 512 x 512
    "brick": "brick.png",  # 512 x 512, texture
    "coins": "coins.png",  # 384 x 303
    "grass": "grass.png",  # 512 x 512, texture
    "gravel": "gravel.png",  # 512 x 512, texture
    "moon": "moon.png",  # 512 x 512
    "page": "page.png",  # 384 x 191, printed text
    "text": "text.png",  # 448 x 172, handwriting
    # Synthetic.
    "colorwheel": "color.png",  # 371 x 370: every hue and saturation, smooth, on black
}
BUNDLED_SPLITS: dict[str, tuple[str, ...]] = {
    "train": ("astronaut", "hubble_deep_field", "ihc", "motorcycle_left", "motorcycle_right", "retina", "rocket"),
    "grey": ("camera", "brick", "coins", "grass", "gravel", "moon", "page", "text"),
    "colorwheel": ("colorwheel",),
    "validation": ("chelsea", "coffee"),
}
# Recoloured copies of the validation photos: split -> ((suffix, recolouring), …), each recolouring either a
# channel order (the letters name the source channel of each output channel) or an HSV hue rotation in degrees.
RECOLOURED_SPLITS: dict[str, tuple[tuple[str, str | float], ...]] = {
    "validation_permuted": (("bgr", "bgr"), ("grb", "grb")),
    "validation_hue": (("hue90", 90.0), ("hue270", 270.0)),
}
SPLITS = (*BUNDLED_SPLITS, *RECOLOURED_SPLITS)


def skimage_data_dir() -> Path:
    """The installed `skimage/data` folder, found without importing scikit-image."""
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("scikit-image is not installed; the bundled photos come from its package "
                        "(pip install scikit-image)")
    return Path(list(spec.submodule_search_locations)[0]) / "data"


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"unknown bundled split {split!r}; expected one of {sorted(SPLITS)}")


def bundled_paths(split: str) -> list[tuple[str, Path]]:
    """(name, file path) of the photos in a split read straight from a file, in a fixed order."""
    _check_split(split)
    if split in RECOLOURED_SPLITS:
        raise ValueError(f"bundled split {split!r} is made from the validation photos; read it with bundled_photos")
    root = skimage_data_dir()
    return [(name, root / BUNDLED_FILES[name]) for name in BUNDLED_SPLITS[split]]


def permute_channels(photo: np.ndarray, order: str) -> np.ndarray:
    """The photo with its channels reordered: order 'bgr' puts the blue channel first, and so on."""
    if sorted(order) != ["b", "g", "r"]:
        raise ValueError(f"channel order must be a permutation of 'rgb', got {order!r}")
    return np.ascontiguousarray(photo[..., ["rgb".index(c) for c in order]])


def rotate_hue(photo: np.ndarray, degrees: float) -> np.ndarray:
    """uint8 RGB photo with its HSV hue turned by `degrees` (saturation and value kept), rounded to uint8."""
    rgb = photo.astype(np.float64) / 255.0
    value = rgb.max(axis=-1)
    chroma = value - rgb.min(axis=-1)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    safe = np.where(chroma > 0, chroma, 1.0)
    # Hue in sextants [0, 6): which channel is the largest decides the sector.
    hue = np.where(value == r, ((g - b) / safe) % 6.0, np.where(value == g, (b - r) / safe + 2.0, (r - g) / safe + 4.0))
    hue = np.where(chroma > 0, (hue + degrees / 60.0) % 6.0, 0.0)
    # Back to RGB: every channel n is value − chroma · clip(min(k, 4 − k), 0, 1) with k = (n + hue) mod 6.
    out = np.stack(
        [value - chroma * np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)
         for k in ((n + hue) % 6.0 for n in (5.0, 3.0, 1.0))],
        axis=-1,
    )
    return to_uint8(out)


def recolour(photo: np.ndarray, recolouring: str | float) -> np.ndarray:
    """A channel order ('bgr') or an HSV hue rotation in degrees (90.0) applied to a uint8 RGB photo."""
    return permute_channels(photo, recolouring) if isinstance(recolouring, str) else rotate_hue(photo, recolouring)


def _read(name: str, path: Path) -> np.ndarray:
    if not path.is_file():
        raise DataError(f"bundled photo {path} is missing from the installed scikit-image; reinstall it")
    return read_rgb_uint8(path)


def bundled_photos(split: str) -> list[tuple[str, np.ndarray]]:
    """The bundled photos of `split` (one of SPLITS) as (name, uint8 HxWx3), read from the package.

    Recoloured splits name each copy `{photo}_{suffix}`, e.g. chelsea_bgr, coffee_hue90.
    """
    _check_split(split)
    if split in RECOLOURED_SPLITS:
        return [
            (f"{name}_{suffix}", recolour(photo, recolouring))
            for name, photo in bundled_photos("validation")
            for suffix, recolouring in RECOLOURED_SPLITS[split]
        ]
    return [(name, _read(name, path)) for name, path in bundled_paths(split)]
