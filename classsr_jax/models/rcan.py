"""RCAN (docs/original.md#rcan), scale ×2/×3/×4: residual groups of residual channel-attention blocks.

Groups and blocks run under nested `nn.scan`, so jit traces one block instead of 200.
The [0, rgb_range] convention of the original (255 for RCAN) lives inside the module: callers pass [0, 1].
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from classsr_jax.models.common import Dtype, MeanShift, conv, global_avg_pool, pixel_shuffle, upsample_stages


class ChannelAttention(nn.Module):
    nf: int
    reduction: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        y = global_avg_pool(x)
        y = nn.relu(conv(self.nf // self.reduction, 1, "squeeze", dtype=self.dtype)(y))
        y = nn.sigmoid(conv(self.nf, 1, "excite", dtype=self.dtype)(y))
        return x * y


class RCAB(nn.Module):
    """Residual channel-attention block; the original's res_scale is ignored there too."""

    nf: int
    reduction: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, _=None):
        y = nn.relu(conv(self.nf, 3, "conv1", dtype=self.dtype)(x))
        y = conv(self.nf, 3, "conv2", dtype=self.dtype)(y)
        y = ChannelAttention(self.nf, self.reduction, self.dtype, name="attention")(y)
        return x + y, None


class ResidualGroup(nn.Module):
    nf: int
    reduction: int
    n_resblocks: int
    scan: bool = True
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, _=None):
        y = x
        if self.scan:
            blocks = nn.scan(RCAB, variable_axes={"params": 0}, split_rngs={"params": True}, length=self.n_resblocks)
            y, _ = blocks(self.nf, self.reduction, self.dtype, name="blocks")(y, None)
        else:
            for i in range(self.n_resblocks):
                y, _ = RCAB(self.nf, self.reduction, self.dtype, name=f"blocks_{i}")(y)
        y = conv(self.nf, 3, "conv", dtype=self.dtype)(y)
        return x + y, None


class RCAN(nn.Module):
    """n_feats: feature width (the branch width). RGB in [0, 1] in and out; rgb_range scales inside."""

    n_feats: int = 64
    n_resgroups: int = 10
    n_resblocks: int = 20
    reduction: int = 16
    scale: int = 4
    rgb_range: float = 255.0
    scan: bool = True
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        nf = self.n_feats
        x = x.astype(self.dtype) * self.rgb_range
        x = MeanShift(self.rgb_range, -1, self.dtype, name="sub_mean")(x)
        head = conv(nf, 3, "head", dtype=self.dtype)(x)
        feat = head
        if self.scan:
            groups = nn.scan(
                ResidualGroup, variable_axes={"params": 0}, split_rngs={"params": True}, length=self.n_resgroups
            )
            feat, _ = groups(nf, self.reduction, self.n_resblocks, True, self.dtype, name="groups")(feat, None)
        else:
            for g in range(self.n_resgroups):
                group = ResidualGroup(nf, self.reduction, self.n_resblocks, False, self.dtype, name=f"groups_{g}")
                feat, _ = group(feat)
        feat = conv(nf, 3, "body_conv", dtype=self.dtype)(feat) + head
        for i, r in enumerate(upsample_stages(self.scale)):
            feat = pixel_shuffle(conv(r * r * nf, 3, f"upsample_{i}", dtype=self.dtype)(feat), r)
        out = conv(3, 3, "tail", dtype=self.dtype)(feat)
        out = MeanShift(self.rgb_range, 1, self.dtype, name="add_mean")(out)
        return (out / self.rgb_range).astype(jnp.float32)
