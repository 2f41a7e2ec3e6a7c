"""An FSRCNN that starts as cubic interpolation: `model.init = 'interpolation'` (not in the paper).

FSRCNN has no skip connection, so from PyTorch's random initialisation its first few thousand updates mostly
learn to copy the input's colours to the output (in the quickstart's earlier recipe, the first 2000 of 8000 steps
took the training PSNR from 15 to 25 dB). This start gives the network that copy from step 0 instead, with no
change to the architecture:

- three channels of the head, shrink, mapping and expand convs are identity paths for R, G and B (centre tap 1,
  bias 0). Pixels are in [0, 1], so the scalar PReLUs pass them unchanged;
- the tail's transposed conv turns each of those channels into its output colour with Keys' cubic kernel (MATLAB's
  bicubic), cut to the layer's taps: at ×4 the 9 taps give each output pixel the two input pixels of the
  kernel's main lobe (one phase also gets a side-lobe pixel), where bicubic uses four. The taps of each output
  phase are renormalised to sum to 1, so flat colours come out exactly;
- every other channel keeps the original's random initialisation, and the tail reads them with zero weights, so
  the start computes exactly the interpolation and their gradients begin flowing after the first update.

At ×4 the start is 0.3–0.6 dB below MATLAB bicubic on natural photos (tests/test_interpolation_init.py pins
it); training then only has to learn what interpolation misses.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from classsr_jax.data.bicubic import cubic
from classsr_jax.models.fsrcnn import DECONV_PADDING

SUPPORTED = ("fsrcnn",)
INITS = ("paper", "interpolation")  # the values of config field model.init


def deconv_cubic_taps(kernel_size: int, stride: int, padding: int) -> np.ndarray:
    """The 1-D taps of a PyTorch ConvTranspose1d(kernel_size, stride, padding) that upsample by `stride` with
    Keys' cubic kernel, as far as the layer's taps reach, each output phase's taps summing to 1.

    Output pixel o = stride·i − padding + j receives input i through tap j; its centre lies at
    (o + ½)/stride − ½ in input pixels (MATLAB's coordinate map), so tap j sits at distance
    (j − padding + ½)/stride − ½ from input i, for every i.
    """
    taps = np.arange(kernel_size)
    weights = cubic((taps - padding + 0.5) / stride - 0.5)
    phase = (taps - padding) % stride
    for r in range(stride):
        weights[phase == r] /= weights[phase == r].sum()
    return weights


def _identity_paths(kernel: np.ndarray, bias: np.ndarray, channels: int = 3) -> None:
    """Output channels 0..channels-1 of an HWIO conv copy input channels 0..channels-1 (in place)."""
    h, w = kernel.shape[0] // 2, kernel.shape[1] // 2
    kernel[..., :channels] = 0.0
    kernel[h, w, np.arange(channels), np.arange(channels)] = 1.0
    bias[:channels] = 0.0


def interpolating_params(network: str, params: dict[str, Any], scale: int) -> dict[str, Any]:
    """Freshly initialised parameters of `network` changed to start as cubic interpolation (module docstring)."""
    if network not in SUPPORTED:
        raise ValueError(f"an interpolating start is implemented for {', '.join(SUPPORTED)}, not {network}")
    p = {name: {k: np.array(v, np.float32) for k, v in layer.items()} for name, layer in params.items()}
    d, s = p["head_conv"]["bias"].shape[0], p["shrink_conv"]["bias"].shape[0]
    if min(d, s) < 3:
        raise ValueError(f"an interpolating start needs 3 channels for R, G and B; this FSRCNN has d={d}, s={s}")
    convs = ["head_conv", "shrink_conv", *sorted(n for n in p if n.startswith("map_conv_")), "expand_conv"]
    for name in convs:
        _identity_paths(p[name]["kernel"], p[name]["bias"])
    kernel = p["tail_deconv"]["kernel"]
    taps = deconv_cubic_taps(kernel.shape[0], scale, DECONV_PADDING[scale][0])
    kernel[:] = 0.0
    for c in range(3):
        kernel[:, :, c, c] = np.outer(taps, taps)
    p["tail_deconv"]["bias"][:] = 0.0
    return p
