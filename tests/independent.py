"""References written from the definitions, for tests that must not take their expected values from the package:
MATLAB's bicubic upscaling (imresize, no antialiasing when enlarging) and the paper's RGB PSNR."""

import numpy as np


def matlab_cubic(x):
    """Keys' cubic kernel with a = -0.5, MATLAB's 'bicubic'."""
    x = np.abs(x)
    near = 1.5 * x**3 - 2.5 * x**2 + 1
    far = -0.5 * x**3 + 2.5 * x**2 - 4 * x + 2
    return np.where(x <= 1, near, np.where(x < 2, far, 0.0))


def _enlarge_axis0(values, scale):
    """One axis of imresize(values, scale) for an integer scale >= 1, in float64."""
    length = values.shape[0]
    x = np.arange(1, length * scale + 1)
    centre = x / scale + 0.5 * (1 - 1 / scale)  # MATLAB's 1-based input coordinate of output pixel x
    taps = np.floor(centre - 2)[:, None] + np.arange(6)[None, :]
    weights = matlab_cubic(centre[:, None] - taps)
    weights /= weights.sum(axis=1, keepdims=True)
    mirrored = np.concatenate([np.arange(length), np.arange(length)[::-1]])  # MATLAB's symmetric border
    index = mirrored[(taps.astype(np.int64) - 1) % (2 * length)]
    return np.einsum("ok,ok...->o...", weights, values[index])


def matlab_bicubic_upscale(image, scale):
    """imresize(image, scale, 'bicubic') of an (H, W, C) image, rounded and clipped to uint8 as MATLAB returns it."""
    values = np.asarray(image, np.float64)
    tall = _enlarge_axis0(values, scale)
    wide = _enlarge_axis0(tall.transpose(1, 0, 2), scale).transpose(1, 0, 2)
    return np.clip(np.round(wide), 0, 255).astype(np.uint8)


def psnr_rgb(a, b, border):
    """PSNR (dB) over all RGB samples on [0, 255] after cutting `border` pixels from every side."""
    a = np.asarray(a, np.float64)[border:-border, border:-border]
    b = np.asarray(b, np.float64)[border:-border, border:-border]
    return float(10 * np.log10(255.0**2 / np.mean((a - b) ** 2)))
