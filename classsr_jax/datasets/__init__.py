"""Training data for ClassSR: MATLAB bicubic, TFDS builders, the bundled photos, class division, test sets.

Importing this package registers the TFDS builders `classsr_div2k`, `classsr_div8k`, `classsr_flickr2k`,
`classsr_folder` and `classsr_bundled` (configs x2, x3, x4, x2_aug, x3_aug, x4_aug).
"""

from classsr_jax.bicubic import bicubic_degrade, imresize, modcrop
from classsr_jax.datasets.builders import (
    AUGMENT_FACTORS,
    ClassSRBundled,
    ClassSRDiv2k,
    ClassSRDiv8k,
    ClassSRFlickr2k,
    ClassSRFolder,
)
from classsr_jax.datasets.bundled import bundled_photos
from classsr_jax.datasets.division import (
    PAPER_THRESHOLDS,
    Division,
    bicubic_sr_fn,
    divide,
    load_division,
    save_division,
)
from classsr_jax.datasets.files import DataError
from classsr_jax.datasets.loading import load_dataset

__all__ = [
    "AUGMENT_FACTORS",
    "ClassSRBundled",
    "ClassSRDiv2k",
    "ClassSRDiv8k",
    "ClassSRFlickr2k",
    "ClassSRFolder",
    "DataError",
    "Division",
    "PAPER_THRESHOLDS",
    "bicubic_degrade",
    "bicubic_sr_fn",
    "bundled_photos",
    "divide",
    "imresize",
    "load_dataset",
    "load_division",
    "modcrop",
    "save_division",
]
