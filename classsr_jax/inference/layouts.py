"""Upscaling a decoded image in any layout: gray, gray+alpha, RGB or RGBA, 8 or 16 bit.

The network sees RGB. A gray image goes through as three equal channels (`LoadedImage.pixels`, no copy) and is
written back gray by `io.images.write_image`; an alpha channel is not a colour, so it is upscaled on its own
with bicubic interpolation, on the device, and cropped to the SR image.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from classsr_jax.inference.upscaler import Upscaler, UpscaleResult
from classsr_jax.io.images import LoadedImage


@functools.partial(jax.jit, static_argnames=("out_hw", "scale"))
def _upscale_alpha(alpha: jax.Array, out_hw: tuple[int, int], scale: int) -> jax.Array:
    peak = 65535.0 if alpha.dtype == jnp.uint16 else 255.0
    h, w = alpha.shape
    big = jax.image.resize(alpha.astype(jnp.float32) / peak, (h * scale, w * scale), "bicubic")
    return jnp.round(jnp.clip(big[: out_hw[0], : out_hw[1]], 0.0, 1.0) * peak).astype(alpha.dtype)


def upscale_alpha(alpha: np.ndarray, out_hw: tuple[int, int], scale: int) -> np.ndarray:
    """Bicubic upscaling of an alpha channel (integer samples) on the device, cropped to the SR output."""
    return np.asarray(_upscale_alpha(alpha, out_hw=tuple(out_hw), scale=scale))


def upscale_image(upscaler: Upscaler, image: LoadedImage, *, bit_depth: int = 8, budget: float | None = None,
                  force_class: int | None = None) -> tuple[UpscaleResult, np.ndarray | None]:
    """The routed RGB result of a decoded image, and its upscaled alpha samples (None without alpha).

    bit_depth: 8 or 16, the depth of `result.sr`; 16 keeps a 16-bit input's precision where the output can.
    """
    # Only the quantised image is written: no float merge, even under the paper protocol (it is evaluate's).
    result = upscaler.upscale(image.pixels, bit_depth=bit_depth, budget=budget, force_class=force_class,
                              float_merge=False)
    if image.alpha_pixels is None:
        return result, None
    return result, upscale_alpha(image.alpha_pixels, result.sr.shape[:2], upscaler.spec.scale)
