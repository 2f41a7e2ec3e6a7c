"""Image quality metrics with BasicSR / ClassSR conventions (docs/original.md#the-test-protocol).

All inputs are on the [0, 255] scale (uint8 or float) and all arithmetic is float64.
The paper reports RGB PSNR with a 4-px border crop; PSNR_Y and SSIM_Y follow the
MATLAB-style definitions of BasicSR (`bgr2ycbcr`, `calculate_ssim`).
"""

from __future__ import annotations

import numpy as np

# PSNR reported for identical images (the original returns 80 when MSE == 0).
PSNR_IDENTICAL = 80.0

# BasicSR / MATLAB `rgb2ycbcr` luma row on a [0, 255] scale.
_Y_WEIGHTS = np.array([65.481, 128.553, 24.966]) / 255.0
_Y_OFFSET = 16.0

_SSIM_C1 = (0.01 * 255.0) ** 2
_SSIM_C2 = (0.03 * 255.0) ** 2
_SSIM_SIZE = 11
_SSIM_SIGMA = 1.5


def _check_same_shape(a: np.ndarray, b: np.ndarray) -> None:
    if a.shape != b.shape:
        raise ValueError(f"image shapes differ: {a.shape} vs {b.shape}")


def _crop(img: np.ndarray, border: int) -> np.ndarray:
    border = int(border)
    if border < 0:
        raise ValueError(f"crop_border must be >= 0, got {border}")
    if border == 0:
        return img
    if img.shape[0] <= 2 * border or img.shape[1] <= 2 * border:
        raise ValueError(
            f"image of {img.shape[0]}x{img.shape[1]} is too small for a {border}-px border crop"
        )
    return img[border:-border, border:-border]


def psnr(sr: np.ndarray, hr: np.ndarray, crop_border: int = 4,
         max_value: float = 255.0) -> float:
    """PSNR in dB over all channels, after cropping `crop_border` px per side.

    Computed in float64 as `20 log10(max_value / sqrt(MSE))`; 80.0 when MSE == 0.
    """
    sr, hr = np.asarray(sr), np.asarray(hr)
    _check_same_shape(sr, hr)
    diff = _crop(sr, crop_border).astype(np.float64) - _crop(hr, crop_border).astype(np.float64)
    mse = float(np.mean(diff ** 2))
    if mse == 0.0:
        return PSNR_IDENTICAL
    return float(20.0 * np.log10(max_value / np.sqrt(mse)))


def rgb_to_y(img: np.ndarray) -> np.ndarray:
    """Luma Y (float64, not rounded) of an (H, W, 3) RGB image on [0, 255].

    `Y = (65.481 R + 128.553 G + 24.966 B) / 255 + 16`, i.e. BasicSR's
    `bgr2ycbcr(only_y=True)` on RGB order, range [16, 235].
    """
    img = np.asarray(img)
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) RGB image, got shape {img.shape}")
    return img.astype(np.float64) @ _Y_WEIGHTS + _Y_OFFSET


def _as_y(img: np.ndarray) -> np.ndarray:
    """Y channel of an RGB image; single-channel images are taken as Y already."""
    img = np.asarray(img)
    if img.ndim == 3 and img.shape[2] == 1:
        return img[:, :, 0].astype(np.float64)
    if img.ndim == 2:
        return img.astype(np.float64)
    return rgb_to_y(img)


def psnr_y(sr: np.ndarray, hr: np.ndarray, crop_border: int = 4) -> float:
    """PSNR on the Y channel (RGB inputs on [0, 255]), border-cropped."""
    sr, hr = np.asarray(sr), np.asarray(hr)
    _check_same_shape(sr, hr)
    return psnr(_as_y(sr), _as_y(hr), crop_border=crop_border)


def _gaussian_kernel(size: int = _SSIM_SIZE, sigma: float = _SSIM_SIGMA) -> np.ndarray:
    """1-D normalised Gaussian, as `cv2.getGaussianKernel(11, 1.5)`."""
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2
    k = np.exp(-(x ** 2) / (2 * sigma ** 2))
    return k / k.sum()


def _filter_valid(img: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Separable 'valid' filtering: the `[5:-5, 5:-5]` part of cv2.filter2D."""
    n = kernel.size
    h, w = img.shape
    rows = sum(kernel[i] * img[i:h - n + 1 + i] for i in range(n))
    return sum(kernel[i] * rows[:, i:w - n + 1 + i] for i in range(n))


def ssim(img1: np.ndarray, img2: np.ndarray) -> float:
    """MATLAB-style SSIM (BasicSR `ssim`) of two single-channel images on [0, 255].

    11x11 Gaussian window (sigma 1.5), 'valid' filtering, C1 = (0.01*255)^2,
    C2 = (0.03*255)^2, float64; the mean of the SSIM map.
    """
    img1, img2 = np.asarray(img1), np.asarray(img2)
    _check_same_shape(img1, img2)
    if img1.ndim != 2:
        raise ValueError(f"expected a single-channel (H, W) image, got shape {img1.shape}")
    if min(img1.shape) < _SSIM_SIZE:
        raise ValueError(
            f"image of {img1.shape[0]}x{img1.shape[1]} is smaller than the "
            f"{_SSIM_SIZE}x{_SSIM_SIZE} SSIM window"
        )
    a = img1.astype(np.float64)
    b = img2.astype(np.float64)
    k = _gaussian_kernel()
    mu1, mu2 = _filter_valid(a, k), _filter_valid(b, k)
    mu1_sq, mu2_sq, mu1_mu2 = mu1 * mu1, mu2 * mu2, mu1 * mu2
    sigma1_sq = _filter_valid(a * a, k) - mu1_sq
    sigma2_sq = _filter_valid(b * b, k) - mu2_sq
    sigma12 = _filter_valid(a * b, k) - mu1_mu2
    ssim_map = ((2 * mu1_mu2 + _SSIM_C1) * (2 * sigma12 + _SSIM_C2)) / (
        (mu1_sq + mu2_sq + _SSIM_C1) * (sigma1_sq + sigma2_sq + _SSIM_C2)
    )
    return float(ssim_map.mean())


def ssim_y(sr: np.ndarray, hr: np.ndarray, crop_border: int = 4) -> float:
    """SSIM on the Y channel (RGB inputs on [0, 255]), border-cropped."""
    sr, hr = np.asarray(sr), np.asarray(hr)
    _check_same_shape(sr, hr)
    return ssim(_crop(_as_y(sr), crop_border), _crop(_as_y(hr), crop_border))
