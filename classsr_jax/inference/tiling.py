"""Cutting an LR image into tiles and merging SR tiles back into one HR image.

Two protocols:

* ``'paper'`` reproduces the original ClassSR test pipeline (docs/original.md#the-test-protocol):
  32x32 tiles every 28 px, no extra border tile (the uncovered right/bottom strip
  is dropped), every SR tile rounded to uint8 before overlaps are averaged.
* ``'full'`` is our default: tiles step by ``tile - overlap`` and the last tile is
  placed flush with the bottom/right edge, so the output is exactly
  ``scale*H x scale*W`` for any input (images smaller than a tile are padded);
  overlaps are blended with a smooth window instead of a plain mean
  (docs/original.md#the-full-protocol).

Everything here is plain numpy and works chunk by chunk: ``extract_tiles`` can
gather any subset of tiles and ``TileMerger.add`` accumulates any subset, so a
huge image never needs all its tiles in memory at once.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import numpy as np

Protocol = Literal["paper", "full"]
MergeMode = Literal["paper", "blend"]


@dataclasses.dataclass(frozen=True, eq=False)
class TileGrid:
    """Where the LR tiles of one image lie.

    Attributes:
      positions: int64 array (N, 2) of LR top-left corners (y, x), row-major
        (all tiles of the first row, then the second row, ...).
      tile: LR tile size (tiles are square).
      overlap: nominal LR overlap of neighbouring tiles (``tile - step``); in the
        'full' protocol the flush border tile may overlap its neighbour more.
      image_hw: LR input (H, W).
      covered_hw: LR region the output covers, anchored at (0, 0).
      padded_hw: LR size after padding images smaller than a tile ('full' only;
        equals ``image_hw`` otherwise).
      protocol: 'paper' or 'full'.
    """

    positions: np.ndarray
    tile: int
    overlap: int
    image_hw: tuple[int, int]
    covered_hw: tuple[int, int]
    padded_hw: tuple[int, int]
    protocol: Protocol

    @property
    def num_tiles(self) -> int:
        """Number of tiles N."""
        return int(self.positions.shape[0])

    @property
    def grid_shape(self) -> tuple[int, int]:
        """(rows, cols) of the tile grid."""
        rows = np.unique(self.positions[:, 0]).size
        cols = np.unique(self.positions[:, 1]).size
        return int(rows), int(cols)

    @property
    def needs_padding(self) -> bool:
        """True when the image is smaller than a tile along some axis."""
        return tuple(self.padded_hw) != tuple(self.image_hw)

    def hr_boxes(self, scale: int) -> np.ndarray:
        """HR pixel boxes (N, 4) of (y0, x0, y1, x1), end exclusive, one per tile.

        Boxes of padded small images may extend past the (cropped) output.
        """
        start = self.positions * int(scale)
        size = self.tile * int(scale)
        return np.concatenate([start, start + size], axis=1)


def _check_size(name: str, value: int, minimum: int = 1) -> int:
    value = int(value)
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def _make_grid(ys: np.ndarray, xs: np.ndarray, **fields) -> TileGrid:
    yy, xx = np.meshgrid(ys, xs, indexing="ij")
    positions = np.stack([yy.ravel(), xx.ravel()], axis=1).astype(np.int64)
    positions.setflags(write=False)  # the grid is frozen; so are its positions
    return TileGrid(positions=positions, **fields)


def paper_grid(h: int, w: int, tile: int = 32, step: int = 28) -> TileGrid:
    """Tile grid of the original ClassSR test code (``crop_cpu``; docs/original.md#the-test-protocol).

    Corners are 0, step, 2*step, ... while ``pos + tile <= L``; there is no extra
    border tile, so the last 0..step-1 rows/columns are not covered
    (e.g. 1080x1920 -> 38x68 tiles covering 1068x1908).

    Raises:
      ValueError: if the image is smaller than one tile along an axis.
    """
    h, w = _check_size("h", h), _check_size("w", w)
    tile = _check_size("tile", tile)
    step = _check_size("step", step)
    if step > tile:
        # Larger steps would leave gaps that no tile covers.
        raise ValueError(f"step ({step}) must not exceed tile ({tile})")
    if h < tile or w < tile:
        raise ValueError(
            f"image of {h}x{w} LR pixels is smaller than the {tile}x{tile} tile; "
            "the paper protocol cannot handle it, use protocol 'full'"
        )
    ys = np.arange(0, h - tile + 1, step)
    xs = np.arange(0, w - tile + 1, step)
    covered = (int(ys[-1]) + tile, int(xs[-1]) + tile)
    return _make_grid(
        ys, xs, tile=tile, overlap=tile - step, image_hw=(h, w),
        covered_hw=covered, padded_hw=(h, w), protocol="paper",
    )


def _flush_positions(length: int, tile: int, step: int) -> np.ndarray:
    """0, step, 2*step, ... plus a last tile flush with the end (no duplicates)."""
    count = -(-(length - tile) // step) + 1  # ceil division
    return np.minimum(np.arange(count) * step, length - tile)


def full_grid(h: int, w: int, tile: int = 32, overlap: int = 8) -> TileGrid:
    """Tile grid covering every pixel of an image of any size (our default).

    Tiles step by ``tile - overlap``; the last tile of each row/column is flush
    with the bottom/right edge. An axis shorter than ``tile`` is padded up to
    ``tile`` (see ``extract_tiles``), so even a 1x1 image gives one tile.
    """
    h, w = _check_size("h", h), _check_size("w", w)
    tile = _check_size("tile", tile)
    overlap = _check_size("overlap", overlap, minimum=0)
    if overlap >= tile:
        raise ValueError(f"overlap ({overlap}) must be smaller than tile ({tile})")
    padded = (max(h, tile), max(w, tile))
    step = tile - overlap
    ys = _flush_positions(padded[0], tile, step)
    xs = _flush_positions(padded[1], tile, step)
    return _make_grid(
        ys, xs, tile=tile, overlap=overlap, image_hw=(h, w),
        covered_hw=(h, w), padded_hw=padded, protocol="full",
    )


def make_grid(h: int, w: int, protocol: Protocol = "full", tile: int = 32,
              step: int = 28, overlap: int = 8) -> TileGrid:
    """``paper_grid(h, w, tile, step)`` or ``full_grid(h, w, tile, overlap)``."""
    if protocol == "paper":
        return paper_grid(h, w, tile=tile, step=step)
    if protocol == "full":
        return full_grid(h, w, tile=tile, overlap=overlap)
    raise ValueError(f"unknown tiling protocol {protocol!r} (expected 'paper' or 'full')")


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


def blend_profile(size: int, overlap: int) -> np.ndarray:
    """The 1-D factor (size,) float64 of the blending window, strictly positive.

    Flat 1 in the middle with raised-cosine ramps of width ``min(overlap, size // 2)``
    at both ends, sampled at pixel centres, so the ramp never reaches 0 (every pixel
    keeps some weight) and a rising ramp plus the falling ramp of a neighbour offset
    by exactly ``overlap`` sum to 1.
    """
    size = _check_size("size", size)
    overlap = _check_size("overlap", overlap, minimum=0)
    ramp_width = min(overlap, size // 2)
    profile = np.ones(size, dtype=np.float64)
    if ramp_width > 0:
        t = (np.arange(ramp_width) + 0.5) / ramp_width
        ramp = 0.5 - 0.5 * np.cos(np.pi * t)
        profile[:ramp_width] = ramp
        profile[size - ramp_width:] = ramp[::-1]
    return profile


def blend_window(size: int, overlap: int) -> np.ndarray:
    """Separable (size, size) float32 blending window: the outer product of ``blend_profile``."""
    profile = blend_profile(size, overlap)
    return np.outer(profile, profile).astype(np.float32)


def weight_sums(starts: np.ndarray, profile: np.ndarray, length: int) -> np.ndarray:
    """Σ over tiles of their 1-D profile, placed at `starts`, on an axis of `length` pixels (float64).

    The window is separable and tiles sit on a grid (every row of tiles has the same columns), so the
    total weight at (y, x) is ``weight_sums(rows)[y] * weight_sums(cols)[x]``; no weight canvas is needed.
    """
    sums = np.zeros(max(length, int(np.max(starts)) + profile.size), np.float64)
    for start in np.asarray(starts, np.int64):
        sums[start : start + profile.size] += profile
    return sums[:length]


class TileMerger:
    """Incremental merge of SR tiles into one HR image.

    Modes:
      'paper': the original's merge. Each tile is clamped to [0, 1], x255 and rounded
        half-to-even (the original's per-patch uint8 ``tensor2img``) before the
        overlapping tiles are averaged; the mean stays float (not re-quantised).
      'blend': weighted overlap-add with ``blend_window`` weights, normalised by the
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

        ``indices`` are the tiles' indices into ``grid.positions``; each tile may be
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
