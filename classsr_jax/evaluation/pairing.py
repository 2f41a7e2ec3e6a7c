"""LR/HR pairing by file name for evaluation folders.

An LR name may carry the scale suffix of DIV2K (0801x4.png pairs with 0801.png). Each LR image is paired with
exactly one HR image and each HR image is scored at most once: LR files that reduce to one name (0801.png and
0801x4.png, or 0801.png and 0801.jpg) are refused together, in one line that names them all, rather than scoring
one ground truth twice; an LR image without an HR partner, or with several, is refused too.
"""

from __future__ import annotations

import collections
import os
import re

from classsr_jax.io.images import list_images


def _stem(path: str) -> str:
    return os.path.splitext(os.path.basename(path))[0]


def pair_folders(lr_dir: str, hr_dir: str, scale: int) -> tuple[list[tuple[str, str, str]], list[dict]]:
    """Pairs the images of two folders by name.

    Returns:
      ((name, lr path, hr path) for every LR image with exactly one HR partner, sorted by name;
       {"name", "error"} for every LR name that cannot be paired, the error one line naming the files).
    """
    lr_paths, hr_paths = list_images(lr_dir), list_images(hr_dir)
    hr_by_stem = collections.defaultdict(list)
    for path in hr_paths:
        hr_by_stem[_stem(path)].append(path)
    lr_by_name = collections.defaultdict(list)
    for path in lr_paths:
        lr_by_name[re.sub(rf"x{scale}$", "", _stem(path), flags=re.IGNORECASE)].append(path)
    pairs, failures = [], []
    for name, lrs in sorted(lr_by_name.items()):
        if len(lrs) > 1:
            listed = " and ".join(lrs)
            error = f"{name}: the LR files {listed} would share one HR image; keep one of them (none was scored)"
        elif not (hrs := hr_by_stem.get(_stem(lrs[0])) or hr_by_stem.get(name) or []):
            error = f"{name}: no HR image in {hr_dir} for {lrs[0]} (looked for {_stem(lrs[0])} and {name})"
        elif len(hrs) > 1:
            shown = ", ".join(map(os.path.basename, hrs))
            error = f"{name}: several HR files could be the partner of {lrs[0]}: {shown}"
        else:
            pairs.append((name, lrs[0], hrs[0]))
            continue
        failures.append({"name": name, "error": error})
    return pairs, failures
