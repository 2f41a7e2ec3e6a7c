"""MATLAB-compatible bicubic resizing, as the original ClassSR data scripts use it (`data.util.imresize_np`).

Everything the paper's data goes through (training HR/LR pairs, the 0.6–0.9 augmentation copies, the Test2K/4K/8K
sets) is made with `imresize_np`, a port of MATLAB's `imresize(..., 'bicubic')`:

* Keys cubic kernel with a = −0.5, support [−2, 2];
* when downscaling with antialiasing the kernel is stretched by 1/scale (support 4/scale input pixels) and its
  values are multiplied by scale;
* input coordinate of output pixel x (1-based) is u = x/scale + (1 − 1/scale)/2;
* each output pixel sees P = ceil(kernel_width) + 2 candidate input pixels starting at floor(u − width/2); rows of
  weights are normalised to sum to 1, then the first column (always all zero) is dropped together with the last
  column (also always zero), leaving ceil(kernel_width) taps: 4 when upscaling, 16 at ×1/4, 12 at ×1/3, 5 at ×0.9;
* pixels outside the image are taken from a symmetric (edge-repeating) mirror: index −1 → 0, −2 → 1, L → L−1;
* output size is ceil(in · scale); H is resized first, then W; the result is NOT rounded.

Precision: the original runs in float32 (torch.FloatTensor); this module computes in float64. The two differ by
< 1e-4 on a 0–255 scale (measured: ≤ 6e-5 on uint8 noise at ×1/4, ×1/3, ×0.9, ×0.6), which can only flip a
uint8 value that lies within 1e-4 of a .5 rounding tie.

Why not `jax.image.resize` or PIL (measured on this machine with jax 0.10.2 and Pillow 13 on 0–255 noise; pinned
by tests/test_bicubic.py::test_jax_and_pil_differ_from_matlab_only_as_documented):

* `jax.image.resize(x, shape, 'bicubic', antialias=True)` uses the same Keys a = −0.5 kernel, the same
  half-pixel coordinate map and the same 1/scale stretch when downscaling, so where MATLAB needs no pixel outside
  the image the two agree to float32 precision (≤ 2e-3 grey levels). The difference is the edge: jax drops
  the taps that fall outside the image and renormalises the rest, where MATLAB mirrors the image. That changes
  the outer 2 output rows/columns when downscaling (up to ~15 grey levels on noise) and the outer ~2·scale
  when upscaling. jax also takes the scale as out/in, so when in·scale is not an integer (ceil rounds it up)
  the whole image is sampled at slightly different positions.
* PIL's `Image.resize(..., Image.BICUBIC)` has the same kernel, the same stretch and the same clip-and-renormalise
  edge as jax: on float ('F') images it matches MATLAB in the interior (≤ 1e-3) and not at the edge. On 8-bit
  images it works in fixed point and rounds and clips to uint8 after the first of its two passes, so even
  interior pixels differ from round(MATLAB) by one grey level on smooth images (about a fifth of them) and by
  more where the clipped intermediate overshoots.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from classsr_jax.io.pixels import to_uint8

# Keys' cubic convolution parameter used by MATLAB's imresize and the original code.
CUBIC_A = -0.5
# Support of the unstretched cubic kernel, in input pixels.
KERNEL_WIDTH = 4.0


def cubic(x: np.ndarray) -> np.ndarray:
    """Keys cubic convolution kernel with a = −0.5 (MATLAB's `cubic`), evaluated element-wise in float64."""
    absx = np.abs(np.asarray(x, dtype=np.float64))
    absx2 = absx * absx
    absx3 = absx2 * absx
    a = CUBIC_A  # every coefficient below is exact in binary: the same numbers as MATLAB's literals
    near = ((a + 2.0) * absx3 - (a + 3.0) * absx2 + 1.0) * (absx <= 1)
    far = (a * absx3 - 5.0 * a * absx2 + 8.0 * a * absx - 4.0 * a) * ((absx > 1) & (absx <= 2))
    return near + far


def candidate_weights(
    in_length: int, out_length: int, scale: float, antialias: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """MATLAB's full candidate window before trimming: P = ceil(kernel_width) + 2 taps per output pixel.

    Returns (weights float64 (out_length, P) with rows summing to 1, 1-based input indices (out_length, P)).
    """
    if in_length < 1 or out_length < 1:
        raise ValueError(f"cannot resize an axis of length {in_length} to {out_length}")
    if not scale > 0:
        raise ValueError(f"scale must be positive, got {scale}")
    kernel_width = KERNEL_WIDTH
    stretch = scale < 1 and antialias
    if stretch:
        kernel_width = kernel_width / scale
    x = np.arange(1, out_length + 1, dtype=np.float64)
    u = x / scale + 0.5 * (1 - 1 / scale)
    left = np.floor(u - kernel_width / 2)
    # MATLAB's "it's OK to use an extra pixel here": P candidates, of which the outer ones come out zero.
    taps = math.ceil(kernel_width) + 2
    indices = left[:, None] + np.arange(taps, dtype=np.float64)[None, :]
    distance = u[:, None] - indices
    weights = scale * cubic(distance * scale) if stretch else cubic(distance)
    weights = weights / weights.sum(axis=1, keepdims=True)
    return weights, indices.astype(np.int64)


def contributions(
    in_length: int, out_length: int, scale: float, antialias: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Weights and 0-based input indices for resizing one axis, exactly as the original's
    `calculate_weights_indices`: the candidate window with its all-zero first and last columns removed.

    Returns:
      weights: float64 (out_length, taps), each row summing to 1.
      indices: int64 (out_length, taps), 0-based input positions, possibly outside [0, in_length) (the caller
        mirrors them symmetrically).
    """
    weights, indices = candidate_weights(in_length, out_length, scale, antialias)
    taps = weights.shape[1]
    # Same trimming rule as the original: it looks for zeros in the first column, else in the last one.
    if np.any(weights[:, 0] == 0):
        weights, indices = weights[:, 1 : taps - 1], indices[:, 1 : taps - 1]
    elif np.any(weights[:, -1] == 0):
        weights, indices = weights[:, : taps - 2], indices[:, : taps - 2]
    return weights, indices - 1  # MATLAB indices are 1-based.


def symmetric_index(indices: np.ndarray, length: int) -> np.ndarray:
    """Maps any integer positions into [0, length) by symmetric (edge-repeating) mirroring: −1→0, length→length−1."""
    period = 2 * length
    folded = np.mod(indices, period)
    return np.where(folded < length, folded, period - 1 - folded)


def _resize_axis0(x: np.ndarray, out_length: int, scale: float, antialias: bool) -> np.ndarray:
    """Resizes axis 0 of a float64 array (L, ...) to out_length; a weighted sum over a few shifted gathers."""
    weights, indices = contributions(x.shape[0], out_length, scale, antialias)
    indices = symmetric_index(indices, x.shape[0])
    out = np.zeros((out_length,) + x.shape[1:], dtype=np.float64)
    extra = (1,) * (x.ndim - 1)
    for k in range(weights.shape[1]):
        out += weights[:, k].reshape((-1,) + extra) * x[indices[:, k]]
    return out


def _pair(value: float | Sequence[float], what: str) -> tuple[float, float]:
    if isinstance(value, (int, float, np.integer, np.floating)):
        return float(value), float(value)
    pair = tuple(float(v) for v in value)
    if len(pair) != 2:
        raise ValueError(f"{what} must be a number or a (height, width) pair, got {value!r}")
    return pair  # type: ignore[return-value]


def imresize(
    img: np.ndarray,
    scale: float | Sequence[float] | None = None,
    output_shape: Sequence[int] | None = None,
    antialias: bool = True,
) -> np.ndarray:
    """MATLAB-compatible bicubic resize of an HxW or HxWxC array; float64 out, not rounded or clipped.

    Args:
      img: HxW or HxWxC array of any real dtype (uint8 stays on its 0–255 scale).
      scale: a factor for both axes (or an (h, w) pair). With only `scale`, the output is ceil(in · scale), as
        the original's `math.ceil(in_H * scale)`.
      output_shape: (out_h, out_w). With only `output_shape`, each axis uses scale = out / in, as MATLAB does.
      antialias: stretch the kernel when downscaling (MATLAB's default, and what the original always uses).
    """
    arr = np.asarray(img)
    if arr.ndim not in (2, 3):
        raise ValueError(f"imresize expects an HxW or HxWxC array, got shape {arr.shape}")
    in_h, in_w = arr.shape[:2]
    if scale is None and output_shape is None:
        raise ValueError("imresize needs scale or output_shape")
    if scale is not None:
        scale_h, scale_w = _pair(scale, "scale")
        if scale_h <= 0 or scale_w <= 0:
            raise ValueError(f"scale must be positive, got {scale!r}")
    if output_shape is not None:
        out_h, out_w = (int(v) for v in output_shape)
        if out_h < 1 or out_w < 1:
            raise ValueError(f"output_shape must be positive, got {tuple(output_shape)!r}")
        if scale is None:
            scale_h, scale_w = out_h / in_h, out_w / in_w
    else:
        out_h, out_w = math.ceil(in_h * scale_h), math.ceil(in_w * scale_w)
    x = arr.astype(np.float64)
    x = _resize_axis0(x, out_h, scale_h, antialias)
    x = np.swapaxes(_resize_axis0(np.swapaxes(x, 0, 1), out_w, scale_w, antialias), 0, 1)
    return np.ascontiguousarray(x)


def modcrop(img: np.ndarray, scale: int) -> np.ndarray:
    """Crops the bottom and right so that height and width are multiples of `scale` (the original's modcrop)."""
    arr = np.asarray(img)
    if arr.ndim not in (2, 3):
        raise ValueError(f"modcrop expects an HxW or HxWxC array, got shape {arr.shape}")
    if int(scale) != scale or scale < 1:
        raise ValueError(f"modcrop scale must be a positive integer, got {scale!r}")
    scale = int(scale)
    h, w = arr.shape[0] - arr.shape[0] % scale, arr.shape[1] - arr.shape[1] % scale
    return arr[:h, :w]


def bicubic_degrade(hr: np.ndarray, scale: int) -> np.ndarray:
    """The paper's LR: modcrop(HR, scale), MATLAB bicubic ×1/scale, rounded and saturated to uint8.

    Returns an (H // scale, W // scale[, C]) uint8 array (H, W of the input before modcrop).
    """
    hr = modcrop(hr, scale)
    if hr.shape[0] < scale or hr.shape[1] < scale:
        raise ValueError(f"image of shape {hr.shape} is smaller than the scale {scale}")
    out_shape = (hr.shape[0] // scale, hr.shape[1] // scale)
    return to_uint8(imresize(hr, scale=1.0 / scale, output_shape=out_shape), 255.0)


def rescale_uint8(img: np.ndarray, factor: float) -> np.ndarray:
    """One copy of the paper's scale augmentation: uint8 imresize by `factor`, rounded as cv2.imwrite would.

    factor 1 returns an exact copy (the original copies the file for scale 1).
    """
    arr = np.asarray(img)
    if factor == 1:
        return arr.copy()
    return to_uint8(imresize(arr, scale=factor), 255.0)
