"""The class-map picture of the ClassSR test: every tile of the SR image tinted by the branch it went to."""

from __future__ import annotations

import numpy as np


def class_colours(num_classes: int = 3) -> np.ndarray:
    """RGB uint8 colours (K, 3) per class: green -> yellow -> red.

    For 3 classes exactly the original's green (0,255,0), yellow (255,255,0) and
    red (255,0,0); other counts interpolate along the same green-yellow-red path.
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    t = np.arange(num_classes) / max(num_classes - 1, 1)
    red = np.minimum(1.0, 2.0 * t)
    green = np.minimum(1.0, 2.0 - 2.0 * t)
    colours = np.stack([red, green, np.zeros_like(t)], axis=1) * 255
    return np.rint(colours).astype(np.uint8)


def class_map_overlay(sr_uint8: np.ndarray, boxes_hr: np.ndarray, classes: np.ndarray,
                      alpha: float = 0.2, num_classes: int | None = None) -> np.ndarray:
    """Tint every tile by its predicted class (the original `add_mask`).

    For each tile, a rectangle inset from its HR box by `9 * size // 128` px on
    each side (pixels x0+9 .. x0+118 of a 128-px tile) is blended as
    `cv2.addWeighted(img, 1.0, mask, alpha, 0)`: float32 `img + alpha * colour`,
    rounded half to even and saturated, one tile at a time, so with alpha 0.2 the
    coloured channels gain 51 per covering tile.

    Args:
      sr_uint8: (H, W, 3) uint8 RGB image (not modified).
      boxes_hr: (N, 4) HR boxes (y0, x0, y1, x1), end exclusive; clipped to the image.
      classes: (N,) class index per tile.
      alpha: mask weight.
      num_classes: colour count; default max(3, max(classes) + 1).
    """
    image = np.asarray(sr_uint8)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) uint8 image, got {image.dtype} {image.shape}")
    boxes = np.asarray(boxes_hr, dtype=np.int64).reshape(-1, 4)
    classes = np.asarray(classes, dtype=np.int64).reshape(-1)
    if classes.size != boxes.shape[0]:
        raise ValueError(f"{boxes.shape[0]} boxes but {classes.size} classes")
    if num_classes is None:
        num_classes = max(3, int(classes.max()) + 1 if classes.size else 3)
    if classes.size and (classes.min() < 0 or classes.max() >= num_classes):
        raise ValueError(f"class indices must lie in [0, {num_classes})")
    tint = class_colours(num_classes).astype(np.float32) * np.float32(alpha)
    out = image.copy()
    h, w = image.shape[:2]
    for (y0, x0, y1, x1), k in zip(boxes, classes):
        inset_y, inset_x = 9 * (y1 - y0) // 128, 9 * (x1 - x0) // 128
        ys = slice(min(max(y0 + inset_y, 0), h), min(max(y1 - inset_y, 0), h))
        xs = slice(min(max(x0 + inset_x, 0), w), min(max(x1 - inset_x, 0), w))
        region = out[ys, xs].astype(np.float32) + tint[k]
        out[ys, xs] = np.clip(np.rint(region), 0, 255).astype(np.uint8)
    return out
