"""Building blocks shared by the backbones: conv helpers, PyTorch-equivalent inits,
pixel shuffle, MeanShift and the sub-pixel form of FSRCNN's transposed convolution."""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Dtype = Any

# DIV2K RGB mean used by EDSR/RCAN/CARN MeanShift (std is 1 everywhere in ClassSR).
DIV2K_RGB_MEAN = (0.4488, 0.4371, 0.4040)


def kaiming_normal(scale: float = 1.0):
    """`arch_util.initialize_weights`: untruncated Kaiming normal (fan_in, a=0) times `scale`."""
    return nn.initializers.variance_scaling(2.0 * scale * scale, "fan_in", "normal")


def torch_default_kernel():
    """PyTorch's default Conv/Linear weight init, kaiming_uniform(a=sqrt(5)) = U(±1/sqrt(fan_in))."""
    return nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def torch_default_bias(fan_in: int):
    """PyTorch's default bias init, U(±1/sqrt(fan_in)); fan_in must be given since Flax biases do not know it."""
    bound = 1.0 / math.sqrt(fan_in)

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def conv(
    features: int,
    kernel: int,
    name: str,
    *,
    groups: int = 1,
    use_bias: bool = True,
    init_scale: float | None = 0.1,
    in_features: int | None = None,
    dtype: Dtype = jnp.float32,
) -> nn.Conv:
    """A 'same'-padded conv like PyTorch's Conv2d(k, padding=k//2).

    init_scale: Kaiming-normal times this with zero bias (`initialize_weights`), or None for PyTorch's
    default init, which needs in_features for the bias bound.
    """
    pad = kernel // 2
    if init_scale is None:
        if in_features is None:
            raise ValueError("in_features is needed for PyTorch's default bias init")
        kernel_init = torch_default_kernel()
        bias_init = torch_default_bias(in_features // groups * kernel * kernel)
    else:
        kernel_init = kaiming_normal(init_scale)
        bias_init = nn.initializers.zeros
    conv_class = SplitGroupConv if groups > 1 else nn.Conv
    return conv_class(
        features,
        (kernel, kernel),
        padding=((pad, pad), (pad, pad)),
        feature_group_count=groups,
        use_bias=use_bias,
        kernel_init=kernel_init,
        bias_init=bias_init,
        dtype=dtype,
        name=name,
    )


class SplitGroupConv(nn.Conv):
    """A grouped `nn.Conv` (same parameters, same numbers) computed as one conv per group.

    XLA's CPU backend runs feature-grouped convolutions 3-4x slower than the same work as separate convs
    (benchmarks/JOURNAL.md, CARN); GPUs and TPUs handle both forms well.
    """

    @nn.compact
    def __call__(self, x):
        groups = self.feature_group_count
        kernel = self.param(
            "kernel", self.kernel_init, (*self.kernel_size, x.shape[-1] // groups, self.features), self.param_dtype
        )
        dtype = self.dtype or x.dtype
        ys = [
            jax.lax.conv_general_dilated(
                xg.astype(dtype),
                kg.astype(dtype),
                window_strides=(1, 1),
                padding=self.padding,
                dimension_numbers=("NHWC", "HWIO", "NHWC"),
            )
            for xg, kg in zip(jnp.split(x, groups, axis=-1), jnp.split(kernel, groups, axis=-1))
        ]
        y = jnp.concatenate(ys, axis=-1)
        if self.use_bias:
            y = y + self.param("bias", self.bias_init, (self.features,), self.param_dtype).astype(dtype)
        return y


def pixel_shuffle(x: jax.Array, r: int) -> jax.Array:
    """NHWC PixelShuffle with PyTorch's channel order: input channel c·r² + i·r + j → (row i, col j) of output
    channel c."""
    n, h, w, c = x.shape
    out_c = c // (r * r)
    x = x.reshape(n, h, w, out_c, r, r)
    x = x.transpose(0, 1, 4, 2, 5, 3)
    return x.reshape(n, h * r, w * r, out_c)


def upsample_stages(scale: int) -> tuple[int, ...]:
    """The pixel-shuffle factors of the EDSR-style upsamplers: ×2 → (2,), ×3 → (3,), ×4 → (2, 2)."""
    if scale == 1 or scale <= 0:
        raise ValueError(f"unsupported scale {scale}: use 2, 3 or 4")
    if scale == 3:
        return (3,)
    if scale & (scale - 1) == 0:
        return (2,) * int(math.log2(scale))
    raise ValueError(f"unsupported scale {scale}: use 2, 3 or 4")


class MeanShift(nn.Module):
    """EDSR's MeanShift: a 1x1 conv with weight I/std and bias sign·rgb_range·mean/std.

    It is a real conv with trainable weights because the original trains it, so converted checkpoints carry
    values that differ from the defaults (docs/original.md#meanshift).
    """

    rgb_range: float
    sign: int  # -1 subtracts the mean, +1 adds it back
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        mean = np.asarray(DIV2K_RGB_MEAN, np.float32)

        def kernel_init(key, shape, dtype=jnp.float32):
            return jnp.eye(3, dtype=dtype).reshape(1, 1, 3, 3)

        def bias_init(key, shape, dtype=jnp.float32):
            return jnp.asarray(self.sign * self.rgb_range * mean, dtype)

        return nn.Conv(3, (1, 1), kernel_init=kernel_init, bias_init=bias_init, dtype=self.dtype, name="conv")(x)


def deconv_as_subpixel_kernel(kernel: jax.Array, stride: int, padding: int):
    """Rewrites a PyTorch ConvTranspose2d (stride s, padding p, output = s·input) as a conv on the LR grid.

    Output pixel s·q + r of the transposed conv is Σ_t x[q − t] · W[s·t + r + p]: for every phase r a
    small ordinary correlation on the LR grid. Stacking the s² phases as channels (PixelShuffle order)
    gives one conv plus a pixel shuffle, exactly equal to the transposed conv but without multiplying the
    s²−1 inserted zeros of the dilated form (the paper's FLOPs convention counts those).

    kernel: (K, K, C_in, C_out), i.e. torch weight (C_in, C_out, K, K).transpose(2, 3, 0, 1).
    Returns (sub_kernel (J, J, C_in, C_out·s²), ((lo, hi), (lo, hi)) padding).
    """
    k = kernel.shape[0]
    t_max = (k - 1 - padding) // stride
    t_min = -((stride - 1 + padding) // stride)
    taps = t_max - t_min + 1
    # Kernel row of tap j (tap t = t_max − j) and phase r; rows outside [0, K) pick an appended zero row.
    t = t_max - np.arange(taps)
    idx = stride * t[:, None] + np.arange(stride)[None, :] + padding  # (J, s)
    idx = np.where((idx >= 0) & (idx < k), idx, k)
    padded = jnp.pad(kernel, ((0, 1), (0, 1), (0, 0), (0, 0)))
    sub = padded[idx[:, None, :, None], idx[None, :, None, :]]  # (J, J, s, s, C_in, C_out)
    c_in, c_out = kernel.shape[2], kernel.shape[3]
    sub = sub.transpose(0, 1, 4, 5, 2, 3).reshape(taps, taps, c_in, c_out * stride * stride)
    pad = (t_max, -t_min)
    return sub, (pad, pad)


class SubPixelConvTranspose(nn.Module):
    """PyTorch ConvTranspose2d(C_in, features, K, stride, padding, output_padding) with output = stride·input,
    computed as one LR-grid conv and a pixel shuffle (see `deconv_as_subpixel_kernel`).

    Parameters keep the transposed-conv layout: kernel (K, K, C_in, features), bias (features,).
    """

    features: int
    kernel_size: int
    stride: int
    padding: int
    output_padding: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        k, s = self.kernel_size, self.stride
        if -s - 2 * self.padding + k + self.output_padding != 0:
            raise ValueError(
                f"transposed conv (k={k}, stride={s}, padding={self.padding}, output_padding={self.output_padding})"
                " does not give an output of exactly stride × input"
            )
        c_in = x.shape[-1]
        # PyTorch's default init for ConvTranspose2d takes fan_in from weight dim 1 (= out channels)·k².
        fan_in = self.features * k * k
        bound = 1.0 / math.sqrt(fan_in)
        uniform = lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)
        kernel = self.param("kernel", uniform, (k, k, c_in, self.features))
        bias = self.param("bias", uniform, (self.features,))
        sub_kernel, padding = deconv_as_subpixel_kernel(kernel, s, self.padding)
        y = self.lr_grid_conv(x.astype(self.dtype), sub_kernel.astype(self.dtype), padding)
        y = y + jnp.repeat(bias, s * s).astype(self.dtype)
        return pixel_shuffle(y, s)

    def lr_grid_conv(self, x, sub_kernel, padding):
        """The sub-pixel form's conv on the LR grid (a subclass may compute it another way)."""
        return jax.lax.conv_general_dilated(
            x, sub_kernel, window_strides=(1, 1), padding=padding, dimension_numbers=("NHWC", "HWIO", "NHWC")
        )


def global_avg_pool(x: jax.Array) -> jax.Array:
    return jnp.mean(x, axis=(1, 2), keepdims=True)
