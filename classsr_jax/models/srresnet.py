"""BasicSR's MSRResNet (docs/original.md#msrresnet), scale ×2/×3/×4. No long skip; a bilinear base is added.

The 16 identical residual blocks run under `nn.scan` (one traced block instead of 16 for jit).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from classsr_jax.models.common import Dtype, conv, pixel_shuffle, upsample_stages


class ResidualBlockNoBN(nn.Module):
    nf: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, _=None):
        y = nn.relu(conv(self.nf, 3, "conv1", dtype=self.dtype)(x))
        y = conv(self.nf, 3, "conv2", dtype=self.dtype)(y)
        return x + y, None


def lrelu(x):
    return nn.leaky_relu(x, 0.1)


class MSRResNet(nn.Module):
    """nf: feature width (the branch width); nb: residual blocks. RGB in [0, 1] in and out."""

    nf: int = 64
    nb: int = 16
    scale: int = 4
    scan: bool = True
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        n, h, w, c = x.shape
        base = jax.image.resize(x.astype(jnp.float32), (n, h * self.scale, w * self.scale, c), "bilinear")
        feat = lrelu(conv(self.nf, 3, "conv_first", dtype=self.dtype)(x.astype(self.dtype)))
        if self.scan:
            trunk = nn.scan(
                ResidualBlockNoBN,
                variable_axes={"params": 0},
                split_rngs={"params": True},
                length=self.nb,
            )
            feat, _ = trunk(self.nf, self.dtype, name="trunk")(feat, None)
        else:
            for i in range(self.nb):
                feat, _ = ResidualBlockNoBN(self.nf, self.dtype, name=f"trunk_{i}")(feat)
        for i, r in enumerate(upsample_stages(self.scale)):
            feat = lrelu(pixel_shuffle(conv(r * r * self.nf, 3, f"upconv{i + 1}", dtype=self.dtype)(feat), r))
        feat = lrelu(conv(self.nf, 3, "hr_conv", dtype=self.dtype)(feat))
        out = conv(3, 3, "conv_last", dtype=self.dtype)(feat)
        return out.astype(jnp.float32) + base
