"""What the benchmarks measure on: photo-like images and random ClassSR models whose Class-Module sends a
third of the tiles to each branch (a random Class-Module sends them all to one)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

try:
    from classsr_jax.models.spec import PAPER_WIDTHS, ModelSpec
except ImportError:  # a code tree from before the package was grouped by role, measured side by side
    from classsr_jax.models.registry import PAPER_WIDTHS, ModelSpec


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


def init_variables(spec: ModelSpec, seed: int = 0) -> dict:
    """Fresh variables through the module's own init (the older code trees measured side by side lack
    `ModelSpec.init`)."""
    variables = jax.jit(spec.build().init)(jax.random.PRNGKey(seed), jnp.zeros((1, 32, 32, 3), jnp.float32))
    return jax.tree_util.tree_map(np.asarray, dict(variables))


def thirds_classsr(network: str, image: np.ndarray, scale: int = 4, sample: int = 1024, seed: int = 0,
                   extra: dict | None = None):
    """(spec, variables) of a random ClassSR with the paper's widths whose Class-Module splits the tiles of
    `image` (float (H, W, 3) in [0, 1]) into thirds. `extra`: network fields (e.g. a shallower RCAN)."""
    spec = ModelSpec("classsr", network, PAPER_WIDTHS[network], scale, dict(extra or {}))
    return spec, tertile_classifier(spec, init_variables(spec, seed), grid_tiles(image, sample, seed))


def grid_tiles(image: np.ndarray, count: int, seed: int = 0, tile: int = 32, step: int = 24) -> np.ndarray:
    """Up to `count` tiles, drawn without replacement, of the full protocol's grid of an (H, W, 3) image of at least
    one tile: every `step` px plus a last tile flush with the edge. Written here, not taken from the package, so that
    every code tree measured side by side gets the same tiles."""

    def starts(length):
        return sorted(set(range(0, length - tile + 1, step)) | {length - tile})

    corners = [(y, x) for y in starts(image.shape[0]) for x in starts(image.shape[1])]
    rng = np.random.default_rng(seed)
    picked = np.sort(rng.choice(len(corners), size=min(count, len(corners)), replace=False))
    return np.stack([image[y : y + tile, x : x + tile] for y, x in (corners[i] for i in picked)])
