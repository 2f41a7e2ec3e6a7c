"""What the training tests share: tiny photos with smooth and textured regions, prepared once per module."""

import os

import numpy as np
import pytest
from PIL import Image


def tiny_photos(root):
    """4 training photos and 1 validation photo with smooth and textured regions (varied difficulty)."""
    rng = np.random.default_rng(0)
    os.makedirs(os.path.join(root, "validation"), exist_ok=True)
    for i, (h, w) in enumerate([(128, 160), (128, 160), (160, 128), (128, 128), (96, 128)]):
        yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
        base = np.stack([yy, xx, 0.5 + 0.3 * np.sin(6 * (xx + yy + i))], -1)
        noise = rng.random((h // 8, w // 8, 3)).repeat(8, 0).repeat(8, 1)
        mask = (xx > 0.5)[..., None] * (0.2 + 0.2 * i)
        image = np.clip(255 * ((1 - mask) * base + mask * noise), 0, 255).astype(np.uint8)
        folder = os.path.join(root, "validation") if i == 4 else root
        Image.fromarray(image).save(os.path.join(folder, f"photo{i}.png"))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    photos, tfds_dir = str(root / "photos"), str(root / "tfds")
    os.makedirs(tfds_dir)
    tiny_photos(photos)
    return photos, tfds_dir
