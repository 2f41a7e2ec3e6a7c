"""FSRCNN as in ClassSR's `FSRCNN_net` (docs/original.md#fsrcnn), scale ×2/×3/×4.

Quirks kept: scalar PReLUs, a single PReLU after the m mapping convs, default-initialised deconv
(`interpolation_init` can start the network as cubic interpolation instead; not in the paper).
The transposed conv runs in sub-pixel form (one LR-grid conv + pixel shuffle), exactly equal to PyTorch's.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from classsr_jax.models.common import Dtype, SubPixelConvTranspose, conv

# scale → (padding, output_padding) of the 9x9 transposed conv, chosen so the output is exactly scale·H.
# ×4 is the original's (3, 1); the others are the smallest output_padding that does it
# (docs/original.md#scales-2-and-3).
DECONV_PADDING = {2: (4, 1), 3: (3, 0), 4: (3, 1)}


class FSRCNN(nn.Module):
    """d: feature width (the branch width), s: shrunk width, m: mapping convs. Input and output RGB in [0, 1]."""

    d: int = 56
    s: int = 12
    m: int = 4
    scale: int = 4
    scan: bool = True  # unused: kept so every backbone takes the same fields
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        if self.scale not in DECONV_PADDING:
            raise ValueError(f"unsupported scale {self.scale} for fsrcnn: use one of {sorted(DECONV_PADDING)}")
        prelu = lambda name: nn.PReLU(negative_slope_init=0.25, param_dtype=jnp.float32, name=name)
        x = x.astype(self.dtype)
        x = prelu("head_prelu")(conv(self.d, 5, "head_conv", dtype=self.dtype)(x))
        x = prelu("shrink_prelu")(conv(self.s, 1, "shrink_conv", dtype=self.dtype)(x))
        for i in range(self.m):
            x = conv(self.s, 3, f"map_conv_{i}", dtype=self.dtype)(x)
        x = prelu("map_prelu")(x)
        x = prelu("expand_prelu")(conv(self.d, 1, "expand_conv", dtype=self.dtype)(x))
        padding, output_padding = DECONV_PADDING[self.scale]
        x = SubPixelConvTranspose(3, 9, self.scale, padding, output_padding, dtype=self.dtype, name="tail_deconv")(x)
        return x.astype(jnp.float32)
