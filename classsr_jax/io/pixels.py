"""Pixel value conversions shared by every module: the one quantiser.

Values are rounded half to even after clipping, as the original's `tensor2img` and `cv2.imwrite` do. NaN
becomes 0 (a model that produces NaN is refused before it gets here; this only keeps the cast defined).
"""

from __future__ import annotations

import numpy as np


def quantise(values: np.ndarray, bit_depth: int = 8, max_value: float = 1.0) -> np.ndarray:
    """Float samples on [0, max_value] → uint8 (bit_depth 8) or uint16 (16): clip, scale, round half to even.

    Integer input of the requested depth is returned as it is.
    """
    dtype = np.uint8 if bit_depth == 8 else np.uint16
    values = np.asarray(values)
    if values.dtype == dtype:
        return values
    if values.dtype.kind in "ui":
        raise ValueError(f"cannot quantise {values.dtype} samples to {bit_depth} bits; pass floats")
    peak = float(2**bit_depth - 1)
    float_type = np.result_type(values.dtype, np.float32)  # float64 input is rounded in float64
    x = np.clip(np.nan_to_num(values.astype(float_type, copy=False), nan=0.0), 0.0, float_type.type(max_value))
    if max_value != peak:  # values already on the integer scale are only rounded, never rescaled
        x = x * float_type.type(peak / max_value)
    return np.rint(x).astype(dtype)


def to_uint8(values: np.ndarray, max_value: float = 1.0) -> np.ndarray:
    """Float on [0, max_value] (1 for network outputs, 255 for MATLAB-style images) → uint8; uint8 passes."""
    return quantise(values, 8, max_value)


def to_float01(samples: np.ndarray) -> np.ndarray:
    """uint8 or uint16 samples → float32 on [0, 1]."""
    samples = np.asarray(samples)
    if samples.dtype == np.uint8:
        return samples.astype(np.float32) / np.float32(255.0)
    if samples.dtype == np.uint16:
        return samples.astype(np.float32) / np.float32(65535.0)
    raise ValueError(f"expected uint8 or uint16 samples, got {samples.dtype}")
