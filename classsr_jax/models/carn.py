"""CARN-M as implemented in ClassSR (docs/original.md#carn-m), scale ×2/×3/×4.

Quirks kept: the fusion layers are Conv1x1 without bias + BatchNorm + ReLU; one EResidualBlock
is shared three times inside each Block; grouped (g=4) upsampling convs followed by ReLU; trainable MeanShift.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from classsr_jax.models.common import Dtype, MeanShift, conv, pixel_shuffle, upsample_stages


class EResidualBlock(nn.Module):
    nf: int
    group: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        kw = dict(init_scale=None, in_features=self.nf, dtype=self.dtype)
        y = nn.relu(conv(self.nf, 3, "conv0", groups=self.group, **kw)(x))
        y = nn.relu(conv(self.nf, 3, "conv1", groups=self.group, **kw)(y))
        y = conv(self.nf, 1, "conv2", **kw)(y)
        return nn.relu(y + x)


class Fusion(nn.Module):
    """`arch_util.BasicBlock(k·nf, nf, 1, 1, 0)`: Conv1x1 (no bias) + BatchNorm + ReLU."""

    nf: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool):
        x = conv(self.nf, 1, "conv", use_bias=False, init_scale=None, in_features=x.shape[-1], dtype=self.dtype)(x)
        # PyTorch momentum 0.1 is Flax momentum 0.9.
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=self.dtype, name="bn")(x)
        return nn.relu(x)


def cascade(x, steps, fusions, train):
    """c0 = o0 = x; B_i = step_i(o_{i-1}); c_i = concat[c_{i-1}, B_i]; o_i = fusion_i(c_i)."""
    concat, out = x, x
    for step, fusion in zip(steps, fusions):
        concat = jnp.concatenate([concat, step(out)], axis=-1)
        out = fusion(concat, train)
    return out


class CarnBlock(nn.Module):
    nf: int
    group: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool):
        shared = EResidualBlock(self.nf, self.group, self.dtype, name="erb")
        fusions = [Fusion(self.nf, self.dtype, name=f"fusion_{i}") for i in range(3)]
        return cascade(x, [shared] * 3, fusions, train)


class CARNM(nn.Module):
    """nf: feature width (the branch width); group: groups of the grouped convs. RGB in [0, 1] in and out."""

    nf: int = 64
    group: int = 4
    scale: int = 4
    rgb_range: float = 1.0
    scan: bool = True  # unused: the three Blocks differ in their cascade wiring
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        if self.nf % self.group:
            raise ValueError(f"carn width {self.nf} is not divisible by group {self.group}")
        kw = dict(init_scale=None, dtype=self.dtype)
        x = x.astype(self.dtype) * self.rgb_range
        x = MeanShift(self.rgb_range, -1, self.dtype, name="sub_mean")(x)
        x = conv(self.nf, 3, "entry", in_features=3, **kw)(x)
        blocks = [
            (lambda b: (lambda h: b(h, train)))(CarnBlock(self.nf, self.group, self.dtype, name=f"block_{i}"))
            for i in range(3)
        ]
        fusions = [Fusion(self.nf, self.dtype, name=f"fusion_{i}") for i in range(3)]
        x = cascade(x, blocks, fusions, train)
        for i, r in enumerate(upsample_stages(self.scale)):
            x = conv(r * r * self.nf, 3, f"upsample_{i}", groups=self.group, in_features=self.nf, **kw)(x)
            x = pixel_shuffle(nn.relu(x), r)
        x = conv(3, 3, "exit", in_features=self.nf, **kw)(x)
        x = MeanShift(self.rgb_range, 1, self.dtype, name="add_mean")(x)
        return (x / self.rgb_range).astype(jnp.float32)
