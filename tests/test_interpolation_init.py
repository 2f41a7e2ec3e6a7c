"""FSRCNN's interpolating start (`model.init = 'interpolation'`): hand-computed taps, the whole network against an
independent transposed convolution, flat colours, and the gap to MATLAB bicubic on a photo."""

import jax.numpy as jnp
import numpy as np
import pytest
import skimage.data

from classsr_jax.data.bicubic import bicubic_degrade, imresize, modcrop
from classsr_jax.evaluation import metrics
from classsr_jax.io.pixels import to_uint8
from classsr_jax.models import ModelSpec
from classsr_jax.models.fsrcnn import DECONV_PADDING
from classsr_jax.models.interpolation_init import deconv_cubic_taps, interpolating_params


def test_taps_at_x4_are_keys_cubic_renormalised_per_phase():
    # 9 taps, stride 4, padding 3: tap j sits (j − 3 + ½)/4 − ½ input pixels away, i.e. at −9/8, −7/8, …, 7/8.
    # Keys (a = −½) at those distances, by hand: 1/8 → 0.9638671875, 3/8 → 0.7275390625, 5/8 → 0.3896484375,
    # 7/8 → 0.0908203125, 9/8 → −0.0478515625. The phases are taps {3, 7}, {0, 4, 8}, {1, 5}, {2, 6}.
    c1, c3, c5, c7, c9 = 0.9638671875, 0.7275390625, 0.3896484375, 0.0908203125, -0.0478515625
    expected = np.empty(9)
    expected[[3, 7]] = np.array([c3, c5]) / (c3 + c5)
    expected[[0, 4, 8]] = np.array([c9, c1, c7]) / (c9 + c1 + c7)
    expected[[1, 5]] = np.array([c7, c1]) / (c7 + c1)
    expected[[2, 6]] = np.array([c5, c3]) / (c5 + c3)
    np.testing.assert_allclose(deconv_cubic_taps(9, 4, 3), expected, rtol=1e-12)


def transposed_conv_reference(image: np.ndarray, taps: np.ndarray, stride: int, padding: int) -> np.ndarray:
    """PyTorch's ConvTranspose2d of each channel with the separable kernel taps ⊗ taps, by scatter-adding every
    input pixel's weighted kernel, then cutting `padding` off the top/left (output = stride · input)."""
    h, w, channels = image.shape
    k = taps.size
    kernel = np.outer(taps, taps)
    full = np.zeros((stride * (h - 1) + k, stride * (w - 1) + k, channels))
    for i in range(h):
        for j in range(w):
            full[stride * i : stride * i + k, stride * j : stride * j + k] += kernel[:, :, None] * image[i, j]
    full = np.pad(full, ((0, stride), (0, stride), (0, 0)))  # output_padding rows/columns get no input
    return full[padding : padding + stride * h, padding : padding + stride * w]


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_the_start_is_the_interpolation_and_keeps_flat_colours(scale):
    spec = ModelSpec("network", "fsrcnn", (56,), scale)
    params = interpolating_params("fsrcnn", spec.init(seed=3, tile=8)["params"], scale)
    model = spec.build()
    image = np.random.default_rng(scale).uniform(0.0, 1.0, (11, 13, 3))
    out = np.asarray(model.apply({"params": params}, jnp.asarray(image[None], jnp.float32)))[0]
    padding = DECONV_PADDING[scale][0]
    expected = transposed_conv_reference(image, deconv_cubic_taps(9, scale, padding), scale, padding)
    assert out.shape == (11 * scale, 13 * scale, 3)
    np.testing.assert_allclose(out, expected, atol=2e-6)

    flat = np.broadcast_to(np.array([0.1, 0.8, 0.35]), (10, 10, 3))
    up = np.asarray(model.apply({"params": params}, jnp.asarray(flat[None], jnp.float32)))[0]
    inner = up[3 * scale : -3 * scale, 3 * scale : -3 * scale]  # zero padding darkens the border only
    np.testing.assert_allclose(inner, np.broadcast_to(flat[0, 0], inner.shape), atol=1e-6)


def test_the_start_is_a_little_below_bicubic_on_a_photo():
    hr = modcrop(skimage.data.chelsea(), 4)
    lr = bicubic_degrade(hr, 4)
    spec = ModelSpec("network", "fsrcnn", (56,), 4)
    params = interpolating_params("fsrcnn", spec.init(seed=10)["params"], 4)
    sr = spec.build().apply({"params": params}, jnp.asarray(lr[None] / 255.0, jnp.float32))[0]
    start = metrics.psnr(to_uint8(np.asarray(sr)), hr)
    bicubic = metrics.psnr(to_uint8(imresize(lr, 4), 255.0), hr)
    # The 9-tap kernel lacks most of bicubic's side lobes: measured 0.48 dB below it (30.05 dB) on chelsea.
    assert bicubic - 0.7 < start < bicubic - 0.3


def test_unsupported_networks_and_too_few_channels_are_refused():
    with pytest.raises(ValueError, match=r"^an interpolating start is implemented for fsrcnn, not carn$"):
        interpolating_params("carn", {}, 4)
    narrow = ModelSpec("network", "fsrcnn", (8,), 2, {"s": 2, "m": 1}).init(tile=8)["params"]
    with pytest.raises(ValueError, match=r"^an interpolating start needs 3 channels for R, G and B; "
                                         r"this FSRCNN has d=8, s=2$"):
        interpolating_params("fsrcnn", narrow, 2)
