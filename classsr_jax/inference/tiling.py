"""Cutting an LR image into tiles and merging SR tiles back into one HR image.

Two protocols:

* `'paper'` reproduces the original ClassSR test pipeline (docs/original.md#the-test-protocol):
  32x32 tiles every 28 px, no extra border tile (the uncovered right/bottom strip
  is dropped), every SR tile rounded to uint8 before overlaps are averaged.
* `'full'` is our default: tiles step by `tile - overlap` and the last tile is
  placed flush with the bottom/right edge, so the output is exactly
  `scale*H x scale*W` for any input (images smaller than a tile are padded);
  overlaps are blended with a smooth window instead of a plain mean
  (docs/original.md#the-full-protocol).

Everything here is plain numpy: where the tiles lie and how much each HR pixel of a tile weighs. The device
programs (`bands`) cut and merge the tiles; `reference` holds a host re-implementation for tests.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import numpy as np

Protocol = Literal["paper", "full"]


@dataclasses.dataclass(frozen=True, eq=False)
class TileGrid:
    """Where the LR tiles of one image lie.

    Attributes:
      positions: int64 array (N, 2) of LR top-left corners (y, x), row-major
        (all tiles of the first row, then the second row, ...).
      tile: LR tile size (tiles are square).
      overlap: nominal LR overlap of neighbouring tiles (`tile - step`); in the
        'full' protocol the flush border tile may overlap its neighbour more.
      image_hw: LR input (H, W).
      covered_hw: LR region the output covers, anchored at (0, 0).
      padded_hw: LR size after padding images smaller than a tile ('full' only;
        equals `image_hw` otherwise).
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
    """Tile grid of the original ClassSR test code (`crop_cpu`; docs/original.md#the-test-protocol).

    Corners are 0, step, 2*step, ... while `pos + tile <= L`; there is no extra
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
            f"image of {w}x{h} LR pixels is smaller than the {tile}x{tile} tile; "
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

    Tiles step by `tile - overlap`; the last tile of each row/column is flush
    with the bottom/right edge. An axis shorter than `tile` is padded up to
    `tile` (`band_plan.padded_image`), so even a 1x1 image gives one tile.
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
    """`paper_grid(h, w, tile, step)` or `full_grid(h, w, tile, overlap)`."""
    if protocol == "paper":
        return paper_grid(h, w, tile=tile, step=step)
    if protocol == "full":
        return full_grid(h, w, tile=tile, overlap=overlap)
    raise ValueError(f"unknown tiling protocol {protocol!r} (expected 'paper' or 'full')")


def blend_profile(size: int, overlap: int) -> np.ndarray:
    """The 1-D factor (size,) float64 of the blending window, strictly positive.

    Flat 1 in the middle with raised-cosine ramps of width `min(overlap, size // 2)`
    at both ends, sampled at pixel centres, so the ramp never reaches 0 (every pixel
    keeps some weight) and a rising ramp plus the falling ramp of a neighbour offset
    by exactly `overlap` sum to 1.
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


def weight_sums(starts: np.ndarray, profile: np.ndarray, length: int) -> np.ndarray:
    """Σ over tiles of their 1-D profile, placed at `starts`, on an axis of `length` pixels (float64).

    The window is separable and tiles sit on a grid (every row of tiles has the same columns), so the
    total weight at (y, x) is `weight_sums(rows)[y] * weight_sums(cols)[x]`; no weight canvas is needed.
    """
    sums = np.zeros(max(length, int(np.max(starts)) + profile.size), np.float64)
    for start in np.asarray(starts, np.int64):
        sums[start : start + profile.size] += profile
    return sums[:length]
