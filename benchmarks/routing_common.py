"""Shared helpers of the routing benchmarks (issue 3, item 9): machine line, interleaved timing, a synthetic
photo-like image, a classifier that spreads tiles over the branches, and the CPU speed-up variants that are
measured here (grouped convs computed in other forms).

Nothing here changes `classsr_jax`: the variants are applied by patching module attributes inside the running
benchmark process only (`grouped_conv_as_split`).
"""

from __future__ import annotations

import contextlib
import datetime
import os
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from classsr_jax.models.registry import ModelSpec
from benchmarks.machine import cpu_model


# ----------------------------------------------------------------------------------------------- machine




def machine_line() -> str:
    devices = jax.devices()
    kinds = sorted({d.device_kind for d in devices})
    return (
        f"nproc={os.cpu_count()}, CPU {cpu_model()}, backend={jax.default_backend()} "
        f"({len(devices)} × {', '.join(kinds)}), jax {jax.__version__}, XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}, "
        f"date {datetime.date.today().isoformat()}"
    )


def load_average() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


# ----------------------------------------------------------------------------------------------- timing


def block(out):
    return jax.block_until_ready(out)


def time_interleaved(fns: dict[str, Callable[[], Any]], reps: int, warmup: int = 1) -> dict[str, list[float]]:
    """Seconds of every call of each fn, measured in rounds (one call of each per round, rotating order).

    Interleaving spreads the load of the other jobs on this shared machine evenly over the variants, so ratios
    between variants measured in one run are fairer than ratios of separate runs. Each fn must return what it
    computed (device arrays are waited for). `warmup` untimed rounds first (compilation happens there).
    """
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            block(fns[name]())
    times = {name: [] for name in names}
    for r in range(reps):
        order = names[r % len(names):] + names[: r % len(names)]
        for name in order:
            t0 = time.perf_counter()
            block(fns[name]())
            times[name].append(time.perf_counter() - t0)
    return times


def med(ts) -> float:
    return float(np.median(ts))


def spread(ts) -> str:
    """'median (min–max)' in seconds or milliseconds."""
    lo, m, hi = float(np.min(ts)), med(ts), float(np.max(ts))
    if hi < 1.0:
        return f"{1e3 * m:.1f} ms ({1e3 * lo:.1f}–{1e3 * hi:.1f})"
    return f"{m:.2f} s ({lo:.2f}–{hi:.2f})"


def fmt_s(t: float) -> str:
    return f"{1e3 * t:.1f} ms" if t < 1.0 else f"{t:.2f} s"


# ----------------------------------------------------------------------------------------------- images


def photo_like(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A deterministic (h, w, 3) float32 image in [0, 1] with what photos have: smooth shading (sky, walls),
    flat shapes with hard edges, fine texture (foliage, fabric) and thin stripes (text, railings).

    Built on coarse grids and upsampled, so a 1920×1080 image takes well under a second.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.meshgrid(np.linspace(0, 1, h, dtype=np.float32), np.linspace(0, 1, w, dtype=np.float32), indexing="ij")
    img = np.empty((h, w, 3), np.float32)
    for c in range(3):  # smooth shading: a few low-frequency waves per channel
        a, b, p, q = rng.uniform(0.5, 3.0, 4)
        img[..., c] = 0.5 + 0.2 * np.sin(2 * np.pi * (a * xx + p)) * np.cos(2 * np.pi * (b * yy + q))
    # flat shapes with hard edges: rectangles and discs of random colour
    for _ in range(max(4, (h * w) // 6000)):
        color = rng.uniform(0.05, 0.95, 3).astype(np.float32)
        cy, cx = rng.integers(0, h), rng.integers(0, w)
        size = int(rng.integers(max(4, min(h, w) // 40), max(8, min(h, w) // 6)))
        if rng.random() < 0.5:
            img[max(0, cy - size):cy + size, max(0, cx - size // 2):cx + size // 2] = color
        else:
            y0, y1, x0, x1 = max(0, cy - size), min(h, cy + size), max(0, cx - size), min(w, cx + size)
            disc = (yy[y0:y1, x0:x1] * h - cy) ** 2 + (xx[y0:y1, x0:x1] * w - cx) ** 2 < size**2
            img[y0:y1, x0:x1][disc] = color
    # texture: noise on a 1/2-resolution grid, shown in a few large patches
    tex = rng.normal(0.0, 0.18, ((h + 1) // 2, (w + 1) // 2, 3)).astype(np.float32)
    tex = np.repeat(np.repeat(tex, 2, 0), 2, 1)[:h, :w]
    mask = np.zeros((h, w), np.float32)
    for _ in range(max(2, (h * w) // 40000)):
        cy, cx = rng.integers(0, h), rng.integers(0, w)
        ry, rx = rng.integers(max(8, h // 16), max(16, h // 4)), rng.integers(max(8, w // 16), max(16, w // 4))
        mask[max(0, cy - ry):cy + ry, max(0, cx - rx):cx + rx] = 1.0
    img += tex * mask[..., None]
    # stripes: thin dark lines (text, railings)
    for _ in range(max(2, (h * w) // 60000)):
        cy, cx = rng.integers(0, h), rng.integers(0, w)
        period = int(rng.integers(3, 7))
        band = slice(max(0, cy - 12), cy + 12), slice(max(0, cx - 60), cx + 60)
        cols = np.arange(w)[band[1]]
        img[band[0], band[1]] *= np.where((cols % period) == 0, 0.3, 1.0)[None, :, None].astype(np.float32)
    return np.clip(img, 0.0, 1.0)


# ----------------------------------------------------------------------------------------------- routing


def pooled_features(spec: ModelSpec, variables, tiles: np.ndarray) -> np.ndarray:
    """The classifier's pooled conv4 features (n, 32) of these tiles."""
    model = spec.build()
    _, state = model.apply(variables, jnp.asarray(tiles), method=model.classify, capture_intermediates=True)
    return np.asarray(state["intermediates"]["classifier"]["conv4"]["__call__"][0], np.float64).mean(axis=(1, 2))


def tertile_classifier(spec: ModelSpec, variables, tiles: np.ndarray):
    """Variables whose Class-Module sends a third of these tiles to each branch.

    A randomly initialised Class-Module sends every tile to one branch. Its last layer is re-fitted so that
    the logits are (0, s − t1, 2s − t1 − t2), where s is the first principal component of the pooled conv4
    features (oriented to grow with the tile's standard deviation, so busy tiles go to the wide branch) and
    t1 < t2 are thresholds between the tertiles of s on these tiles: the argmax is then 0 below t1, 1 between
    and 2 above, a routing decided by the real classifier on device, only re-weighted.
    """
    if spec.num_branches != 3:
        raise ValueError("tertile_classifier needs three branches")
    variables = jax.tree_util.tree_map(np.array, variables)
    feats = pooled_features(spec, variables, tiles)
    mu = feats.mean(0)
    _, _, vt = np.linalg.svd(feats - mu, full_matrices=False)
    v = vt[0]
    s = (feats - mu) @ v
    if np.corrcoef(s, tiles.reshape(len(tiles), -1).std(1))[0, 1] < 0:
        v, s = -v, -s
    v = v / s.std()
    s = s / s.std()
    order = np.sort(s)
    n = len(order)
    i1, i2 = n // 3, (2 * n) // 3
    t1 = 0.5 * (order[i1 - 1] + order[i1])
    t2 = 0.5 * (order[i2 - 1] + order[i2])
    kernel = np.stack([np.zeros_like(v), v, 2 * v], axis=1).astype(np.float32)
    bias = np.array([0.0, -(mu @ v) - t1, -2 * (mu @ v) - t1 - t2], np.float32)
    fc = variables["params"]["classifier"]["fc"]
    fc["kernel"], fc["bias"] = kernel, bias
    return variables


def chunk_size(n: int, chunk_sizes=None) -> int:
    """The chunk size Upscaler pads n tiles to (one device)."""
    from classsr_jax.inference import default_chunk_sizes

    sizes = sorted(chunk_sizes or default_chunk_sizes())
    return next((c for c in sizes if c >= n), sizes[-1])


def branch_apply(spec: ModelSpec, k: int):
    """The plain jitted batched apply of branch k of a ClassSR spec: f(variables, tiles)."""
    model = spec.build()
    return jax.jit(lambda v, x: model.apply(v, x, k, method=model.branch))


# ----------------------------------------------------------------------------------------------- CPU variants


def conv_grouped_as_split(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                          dimension_numbers=None, feature_group_count=1, batch_group_count=1, precision=None,
                          preferred_element_type=None):
    """`lax.conv_general_dilated` with feature groups computed as one ordinary conv per group + concat (NHWC/HWIO).

    Exactly the grouped conv (up to float summation order). XLA's CPU grouped convolution runs at a few
    GFLOP/s; per-group ordinary convs run at the speed of dense ones.
    """
    kw = dict(lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
              precision=precision, preferred_element_type=preferred_element_type)
    g = feature_group_count
    if g == 1 or batch_group_count != 1:
        return jax.lax.conv_general_dilated(lhs, rhs, window_strides, padding, feature_group_count=g,
                                            batch_group_count=batch_group_count, **kw)
    if tuple(dimension_numbers or ()) not in (("NHWC", "HWIO", "NHWC"),) and not hasattr(dimension_numbers, "lhs_spec"):
        raise NotImplementedError(f"dimension numbers {dimension_numbers}")
    cin, cout = lhs.shape[-1] // g, rhs.shape[-1] // g
    parts = [
        jax.lax.conv_general_dilated(lhs[..., i * cin:(i + 1) * cin], rhs[..., i * cout:(i + 1) * cout],
                                     window_strides, padding, **kw)
        for i in range(g)
    ]
    return jnp.concatenate(parts, axis=-1)


def conv_grouped_as_dense(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                          dimension_numbers=None, feature_group_count=1, batch_group_count=1, precision=None,
                          preferred_element_type=None):
    """A grouped conv computed as one ordinary conv with a block-diagonal kernel (g× the MACs, zeros included).

    Faster than per-group convs when the groups are very narrow (CARN-M's 36/4 = 9 channels per group)."""
    kw = dict(lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
              precision=precision, preferred_element_type=preferred_element_type, batch_group_count=batch_group_count)
    g = feature_group_count
    if g == 1 or batch_group_count != 1:
        return jax.lax.conv_general_dilated(lhs, rhs, window_strides, padding, feature_group_count=g, **kw)
    cin, cout = rhs.shape[-2], rhs.shape[-1] // g
    eye = jnp.eye(g, dtype=rhs.dtype)  # (group in, group out)
    blocks = rhs.reshape(*rhs.shape[:2], cin, g, cout)  # (..., c_in_local, group, c_out_local)
    full = jnp.einsum("hwigo,Gg->hwGigo", blocks, eye).reshape(*rhs.shape[:2], g * cin, g * cout)
    return jax.lax.conv_general_dilated(lhs, full, window_strides, padding, **kw)


GROUPED_CONV_VARIANTS = {"split": conv_grouped_as_split, "dense": conv_grouped_as_dense}


def conv_rgb_as_matmul(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                       dimension_numbers=None, feature_group_count=1, batch_group_count=1, precision=None,
                       preferred_element_type=None):
    """A stride-1 'same' k×k conv to ≤ 4 output channels (the networks' last, RGB conv) computed as one matmul
    to k²·C_out channels followed by k² shifted adds; any other conv goes to `lax.conv_general_dilated`.

    XLA:CPU runs a 3×3 conv C→3 at ~20–60 GFLOP/s; the matmul form is 1.4–5× faster (bench_narrow_widths).
    """
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


@contextlib.contextmanager
def grouped_conv_as_split(mode: str = "split"):
    """Inside the block, models built by `classsr_jax` compute grouped convs per group (CARN-M's g=4 convs).

    The proposed library change is the same thing written into `models/common.conv`: pass
    `conv_general_dilated=conv_grouped_as_split` to `nn.Conv` when groups > 1. Parameter names and shapes
    are unchanged. Applies to modules *traced* inside the block (jit traces lazily: call a jitted function
    once inside it; compiled programs keep the variant afterwards).
    """
    import flax.linen as linen

    from classsr_jax.models import common

    if mode == "rgb-matmul":
        impl = conv_rgb_as_matmul
    elif mode == "split+rgb-matmul":
        impl = lambda *a, **kw: (conv_grouped_as_split if kw.get("feature_group_count", 1) > 1 else conv_rgb_as_matmul)(*a, **kw)
    else:
        impl = GROUPED_CONV_VARIANTS[mode]

    class SplitGroupConv(linen.Conv):
        conv_general_dilated: Any = impl

    class Proxy:
        Conv = SplitGroupConv

        def __getattr__(self, name):
            return getattr(linen, name)

    saved = common.nn
    common.nn = Proxy()
    try:
        yield
    finally:
        common.nn = saved
