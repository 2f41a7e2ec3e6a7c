"""The host reference path, for tests and benchmarks only: what the device programs (`bands`) do, written the
plain way.

- `extract_tiles` cuts tiles on the host (symmetric padding for images smaller than a tile, as
  `band_plan.padded_image`), `TileMerger` merges SR tiles on the host (the paper's mean of uint8-rounded tiles, or
  the raised-cosine blend);
- `route_tiles` routes a batch of tiles and returns every SR tile instead of merging them; `ReferenceRouter`
  runs it on all local devices.

Nothing in the package's own inference path imports this module.
"""

from __future__ import annotations

import functools
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from classsr_jax.inference.routing import Buckets, RoutedModel, class_logits, classify, route_classes
from classsr_jax.inference.tiling import TileGrid, _check_size, blend_profile
from classsr_jax.parallel import DATA_AXIS

MergeMode = Literal["paper", "blend"]


def _symmetric_index(padded_length: int, length: int) -> np.ndarray:
    """Source index of each padded position under numpy's 'symmetric' padding.

    Padding only ever happens at the bottom/right, so positions < length map to
    themselves. 'symmetric' (mirror, edge pixel repeated) is used because it is
    defined for a 1-pixel axis (it degenerates to edge replication, whereas
    'reflect' has period 2L-2 = 0 there) and, for longer axes, it continues the
    image with plausible mirrored content instead of flat streaks.
    """
    m = np.arange(padded_length) % (2 * length)
    return np.where(m < length, m, 2 * length - 1 - m)


def extract_tiles(image: np.ndarray, grid: TileGrid,
                  indices: np.ndarray | list[int] | None = None) -> np.ndarray:
    """Gather LR tiles (n, tile, tile, C) from an (H, W, C) image.

    Images smaller than a tile are padded consistently with the grid (symmetric
    padding at the bottom/right) without materialising the padded image.

    Args:
      image: (H, W, C) array, H, W == grid.image_hw. The dtype is kept.
      grid: the tile grid of this image.
      indices: which tiles (default: all), e.g. one chunk of a huge image.
    """
    image = np.asarray(image)
    if image.ndim != 3:
        raise ValueError(f"expected an (H, W, C) image, got shape {image.shape}")
    if tuple(image.shape[:2]) != tuple(grid.image_hw):
        raise ValueError(
            f"image is {image.shape[0]}x{image.shape[1]} but the grid was made for "
            f"{grid.image_hw[0]}x{grid.image_hw[1]}"
        )
    positions = grid.positions if indices is None else grid.positions[np.asarray(indices, dtype=np.int64)]
    offsets = np.arange(grid.tile)
    row_map = _symmetric_index(grid.padded_hw[0], grid.image_hw[0])
    col_map = _symmetric_index(grid.padded_hw[1], grid.image_hw[1])
    rows = row_map[positions[:, 0:1] + offsets]  # (n, tile)
    cols = col_map[positions[:, 1:2] + offsets]  # (n, tile)
    return image[rows[:, :, None], cols[:, None, :]]




def blend_window(size: int, overlap: int) -> np.ndarray:
    """Separable (size, size) float32 blending window: the outer product of `blend_profile`."""
    profile = blend_profile(size, overlap)
    return np.outer(profile, profile).astype(np.float32)




class TileMerger:
    """Incremental merge of SR tiles into one HR image.

    Modes:
      'paper': the original's merge. Each tile is clamped to [0, 1], x255 and rounded
        half-to-even (the original's per-patch uint8 `tensor2img`) before the
        overlapping tiles are averaged; the mean stays float (not re-quantised).
      'blend': weighted overlap-add with `blend_window` weights, normalised by the
        accumulated weight, so the effective weights sum to one everywhere.

    Memory: one float32 (H, W, C) canvas of the (padded) output plus a 2-D float32
    weight canvas; tiles are only ever held one chunk at a time by the caller.
    """

    def __init__(self, grid: TileGrid, scale: int, channels: int = 3,
                 mode: MergeMode | None = None) -> None:
        """Args:
          grid: the tile grid the tiles come from.
          scale: SR factor (HR tile size = grid.tile * scale).
          channels: channels of the SR tiles.
          mode: 'paper' or 'blend'; default 'paper' for paper grids, 'blend' otherwise.
        """
        if mode is None:
            mode = "paper" if grid.protocol == "paper" else "blend"
        if mode not in ("paper", "blend"):
            raise ValueError(f"unknown merge mode {mode!r} (expected 'paper' or 'blend')")
        self.grid = grid
        self.scale = _check_size("scale", scale)
        self.channels = _check_size("channels", channels)
        self.mode: MergeMode = mode
        self.hr_tile = grid.tile * self.scale
        # Tiles of padded small images reach into the padding, so the canvas spans
        # the padded size (paper grids are never padded) and is cropped at the end.
        canvas_hw = (grid.padded_hw[0] * self.scale, grid.padded_hw[1] * self.scale)
        self.output_hw = (grid.covered_hw[0] * self.scale, grid.covered_hw[1] * self.scale)
        self._canvas = np.zeros(canvas_hw + (self.channels,), dtype=np.float32)
        self._weight = np.zeros(canvas_hw, dtype=np.float32)
        if mode == "blend":
            self._window = blend_window(self.hr_tile, max(grid.overlap, 0) * self.scale)
        else:
            self._window = None  # plain mean: every tile weighs 1
        self._added = np.zeros(grid.num_tiles, dtype=bool)

    @property
    def num_added(self) -> int:
        """How many tiles have been added so far."""
        return int(self._added.sum())

    def add(self, indices: np.ndarray | list[int], sr_tiles: np.ndarray) -> None:
        """Accumulate SR tiles (n, tile*scale, tile*scale, C), floats in [0, 1].

        `indices` are the tiles' indices into `grid.positions`; each tile may be
        added once.
        """
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        sr_tiles = np.asarray(sr_tiles)
        expected = (indices.size, self.hr_tile, self.hr_tile, self.channels)
        if sr_tiles.shape != expected:
            raise ValueError(f"expected SR tiles of shape {expected}, got {sr_tiles.shape}")
        if indices.size and (indices.min() < 0 or indices.max() >= self.grid.num_tiles):
            raise ValueError(f"tile indices must lie in [0, {self.grid.num_tiles})")
        if np.unique(indices).size != indices.size or self._added[indices].any():
            raise ValueError("a tile was added twice")
        for index, tile in zip(indices, sr_tiles):
            # float32 like the original network output; clamp as tensor2img does.
            values = np.clip(tile.astype(np.float32, copy=False), 0.0, 1.0)
            y, x = self.grid.positions[index] * self.scale
            box = (slice(y, y + self.hr_tile), slice(x, x + self.hr_tile))
            if self._window is None:
                self._canvas[box] += np.rint(values * np.float32(255.0))
                self._weight[box] += 1.0
            else:
                self._canvas[box] += values * self._window[:, :, None]
                self._weight[box] += self._window
        self._added[indices] = True

    def _merged(self) -> np.ndarray:
        missing = self.grid.num_tiles - self.num_added
        if missing:
            raise RuntimeError(f"{missing} of {self.grid.num_tiles} tiles have not been added yet")
        h, w = self.output_hw
        return self._canvas[:h, :w] / self._weight[:h, :w, None]

    def result_255(self) -> np.ndarray:
        """Merged float32 (H, W, C) image on the [0, 255] scale.

        In 'paper' mode this is the original's float merge (mean of the rounded
        tiles), the image paper-protocol PSNR is computed on.
        """
        merged = self._merged()
        if self.mode == "blend":
            merged *= np.float32(255.0)
        return merged

    def result(self) -> np.ndarray:
        """Merged float32 (scale*covered_h, scale*covered_w, C) image in [0, 1]."""
        merged = self._merged()
        if self.mode == "paper":
            merged /= np.float32(255.0)
        # Normalised convex combinations can overshoot by an ulp.
        return np.clip(merged, 0.0, 1.0, out=merged)


def route_tiles(
    model,
    variables,
    tiles: jax.Array,
    valid: jax.Array,
    logit_offsets: jax.Array,
    force_class: jax.Array,
    *,
    num_branches: int,
    scale: int,
    buckets: Buckets,
    has_classifier: bool = True,
):
    """Per-device routing of a batch of tiles, returning every SR tile.

    tiles (n, t, t, 3) in [0, 1]; valid (n,) bool marks real tiles (padding is neither classified into a
    branch nor computed); logit_offsets (K,) are added to the logits before the argmax (the FLOPs budget);
    force_class (): a branch index that takes every tile, or −1.
    Returns (sr (n, t·s, t·s, 3), classes (n,) with −1 for padding, logits (n, K), counts (K,)).
    """
    n, t = tiles.shape[0], tiles.shape[1]
    logits, classes = classify(model, variables, tiles, valid, logit_offsets, force_class,
                               has_classifier=has_classifier)
    scatter = lambda out, sel, _, sr: out.at[sel].set(sr, mode="drop")
    out = jnp.zeros((n, t * scale, t * scale, 3), jnp.float32)
    out, counts = route_classes(model, variables, tiles, classes, out, scatter, num_branches=num_branches,
                                buckets=buckets, has_classifier=has_classifier)
    return out, classes, logits, counts


class ReferenceRouter:
    """`route_tiles` and the Class-Module's logits on all local devices of a `RoutedModel`, jitted once per
    batch size: `route(variables, tiles, valid, offsets, force)` returns (sr, classes, logits, per-device
    counts) for every tile; `classify(variables, tiles)` the logits. Variables come from `place_variables`."""

    def __init__(self, routed: RoutedModel):
        self.routed = routed
        per_device = functools.partial(
            route_tiles, routed.model, num_branches=routed.num_branches, scale=routed.spec.scale,
            buckets=routed.buckets, has_classifier=routed.has_classifier,
        )

        def sharded_route(variables, tiles, valid, offsets, force):
            def local(tiles, valid):
                sr, classes, logits, counts = per_device(variables, tiles, valid, offsets, force)
                return sr, classes, logits, counts[None]

            return jax.shard_map(local, mesh=routed.mesh, in_specs=(P(DATA_AXIS), P(DATA_AXIS)),
                                 out_specs=(P(DATA_AXIS),) * 4, check_vma=False)(tiles, valid)

        def sharded_classify(variables, tiles):
            return jax.shard_map(lambda t: class_logits(routed.model, variables, t), mesh=routed.mesh,
                                 in_specs=P(DATA_AXIS), out_specs=P(DATA_AXIS), check_vma=False)(tiles)

        self._route = jax.jit(sharded_route)
        self._classify = jax.jit(sharded_classify)

    def route(self, variables, tiles: np.ndarray, valid: np.ndarray, offsets: np.ndarray, force: int):
        """One batch (its size a multiple of the device count); returns device arrays (asynchronously)."""
        put = lambda x, sharding: jax.device_put(x, sharding)
        return self._route(
            variables, put(tiles, self.routed.data_sharding), put(valid, self.routed.data_sharding),
            put(np.asarray(offsets, np.float32), self.routed.replicated),
            put(np.asarray(force, np.int32), self.routed.replicated),
        )

    def classify(self, variables, tiles: np.ndarray):
        return self._classify(variables, jax.device_put(tiles, self.routed.data_sharding))
