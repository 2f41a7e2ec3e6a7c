"""A random ClassSR-FSRCNN whose Class-Module spreads tiles over all branches, and images that give it work."""

import jax
import numpy as np

from classsr_jax.models import ModelSpec

SPEC = ModelSpec("classsr", "fsrcnn", (16, 36, 56))


def spread_classifier(variables, seed=0):
    """Random weights send every tile to one branch. Re-fit the last layer on pooled features of varied
    tiles (their top principal directions, standardised) so the argmax spreads tiles over all branches."""
    variables = jax.tree_util.tree_map(np.array, variables)
    model = SPEC.build()
    rng = np.random.default_rng(seed)
    tiles = np.concatenate([rng.random((64, 32, 32, 3)), textured_tiles(64, rng)]).astype(np.float32)
    _, state = model.apply(variables, tiles, method=model.classify, capture_intermediates=True)
    feats = np.asarray(state["intermediates"]["classifier"]["conv4"]["__call__"][0]).mean(axis=(1, 2))
    centred = feats - feats.mean(0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    proj = centred @ vt[:3].T
    kernel = vt[:3].T / proj.std(0)
    fc = variables["params"]["classifier"]["fc"]
    fc["kernel"] = kernel.astype(np.float32)
    fc["bias"] = (-(feats.mean(0) @ kernel)).astype(np.float32)
    return variables


def textured_tiles(n, rng):
    ramps = np.linspace(0, 1, 32, dtype=np.float32)[None, None, :, None] * rng.random((n, 1, 1, 3))
    return np.broadcast_to(ramps, (n, 32, 32, 3)) + 0.02 * rng.normal(size=(n, 32, 32, 3))


def textured_image(h, w, seed=0):
    """Flat regions and noisy regions, so the classifier has something to tell apart."""
    rng = np.random.default_rng(seed)
    img = np.full((h, w, 3), 0.5, np.float32)
    img[:, w // 2 :] = rng.random((h, w - w // 2, 3))
    img[h // 2 :, : w // 2] = np.linspace(0, 1, w // 2)[None, :, None]
    return img
