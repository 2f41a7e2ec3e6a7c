"""Other ways to compute a convolution, tried against XLA:CPU's own (narrow_widths).

Each takes `lax.conv_general_dilated`'s arguments and computes the same numbers (up to float summation order).
The library adopted the per-group form (`models.common.SplitGroupConv`); the others stayed experiments
(train_step_profile times the im2col form in training: faster for a layer alone, slower in the whole step).
"""

from __future__ import annotations

import contextlib
from typing import Any

import flax.linen as linen
import jax
import jax.numpy as jnp

from classsr_jax.models import common


def conv_grouped_as_split(lhs, rhs, window_strides, padding, *, dimension_numbers, feature_group_count):
    """A grouped NHWC/HWIO conv as one ordinary conv per group, concatenated: XLA:CPU runs feature-grouped
    convs at a few GFLOP/s, ordinary ones at the speed of dense convs."""
    g = feature_group_count
    cin, cout = lhs.shape[-1] // g, rhs.shape[-1] // g
    parts = [jax.lax.conv_general_dilated(lhs[..., i * cin:(i + 1) * cin], rhs[..., i * cout:(i + 1) * cout],
                                          window_strides, padding, dimension_numbers=dimension_numbers)
             for i in range(g)]
    return jnp.concatenate(parts, axis=-1)


def conv_grouped_as_dense(lhs, rhs, window_strides, padding, *, dimension_numbers, feature_group_count):
    """A grouped NHWC/HWIO conv as one ordinary conv with a block-diagonal kernel: g× the MACs (zeros
    included), but one call, which may win when the groups are very narrow (CARN-M's 36/4 = 9 channels)."""
    g = feature_group_count
    cin, cout = rhs.shape[-2], rhs.shape[-1] // g
    blocks = rhs.reshape(*rhs.shape[:2], cin, g, cout)  # (kh, kw, in per group, group, out per group)
    full = jnp.einsum("hwigo,Gg->hwGigo", blocks, jnp.eye(g, dtype=rhs.dtype)).reshape(
        *rhs.shape[:2], g * cin, g * cout)
    return jax.lax.conv_general_dilated(lhs, full, window_strides, padding, dimension_numbers=dimension_numbers)


def conv_rgb_as_matmul(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                       dimension_numbers=None, feature_group_count=1, batch_group_count=1, precision=None,
                       preferred_element_type=None):
    """A stride-1 'same' k×k NHWC conv to ≤ 4 channels (a network's last, RGB conv) as one matmul to k²·C_out
    channels followed by k² shifted adds; every other conv goes to `lax.conv_general_dilated` unchanged.
    XLA:CPU runs a 3×3 conv C→3 at only 20–60 GFLOP/s."""
    k = rhs.shape[0]
    simple = (feature_group_count == 1 and batch_group_count == 1 and rhs.shape[-1] <= 4 and k == rhs.shape[1]
              and k % 2 == 1 and k > 1 and tuple(window_strides) == (1, 1) and set(lhs_dilation or (1,)) == {1}
              and set(rhs_dilation or (1,)) == {1} and not isinstance(padding, str)
              and tuple(map(tuple, padding)) == ((k // 2, k // 2),) * 2)
    if not simple:
        return jax.lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
                                            rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
                                            feature_group_count=feature_group_count,
                                            batch_group_count=batch_group_count, precision=precision,
                                            preferred_element_type=preferred_element_type)
    n, h, w, ci = lhs.shape
    co, p = rhs.shape[-1], k // 2
    z = jnp.einsum("nhwc,co->nhwo", lhs, rhs.transpose(2, 0, 1, 3).reshape(ci, k * k * co), precision=precision)
    z = jnp.pad(z.reshape(n, h, w, k * k, co), ((0, 0), (p, p), (p, p), (0, 0), (0, 0)))
    return sum(z[:, i:i + h, j:j + w, i * k + j, :] for i in range(k) for j in range(k))


def conv_as_im2col_matmul(lhs, rhs):
    """A stride-1 'same' k×k NHWC/HWIO conv as im2col: the k² shifted copies of the padded input side by side,
    then one matmul with the kernel reshaped to (k²·C_in, C_out). Its gradients are matmuls and slices too,
    where XLA:CPU's backward pass of a conv is slow."""
    k, p = rhs.shape[0], rhs.shape[0] // 2
    n, h, w, ci = lhs.shape
    padded = jnp.pad(lhs, ((0, 0), (p, p), (p, p), (0, 0)))
    columns = jnp.concatenate([padded[:, i:i + h, j:j + w, :] for i in range(k) for j in range(k)], axis=-1)
    return (columns.reshape(n * h * w, k * k * ci) @ rhs.reshape(k * k * ci, -1)).reshape(n, h, w, -1)


@contextlib.contextmanager
def rgb_convs_as_matmul():
    """Inside the block, the ungrouped convs of models built by `classsr_jax` (`models.common.conv`) compute
    through `conv_rgb_as_matmul`. It applies to modules traced inside the block: call a jitted function once
    inside it; the compiled program keeps the form afterwards."""

    class MatmulConv(linen.Conv):
        conv_general_dilated: Any = conv_rgb_as_matmul

    class Proxy:  # linen with Conv replaced, seen only by models.common
        Conv = MatmulConv

        def __getattr__(self, name):
            return getattr(linen, name)

    saved = common.nn
    common.nn = Proxy()
    try:
        yield
    finally:
        common.nn = saved
