"""Where the work of one image goes: bands of tile rows, and each band's tile columns dealt out over the local
devices.

An image's tile grid (tiling.py) is cut into bands of consecutive tile rows; one compiled program (bands.py)
runs a band. Within a band every device takes a contiguous block of tile columns, merges its own tiles on its
own canvas, carries its own rows into the next band and finishes its own columns. Neighbouring blocks share only
the overlap strip right of a block: one `ppermute` hands it to the next device. So the devices exchange a few HR
columns per band, never a whole canvas (XLA:CPU sums a 43 MB canvas across two devices in about 80 ms, more than
the FSRCNN work of the band; benchmarks/JOURNAL.md, "Every core without a canvas sum"). Columns, not rows: an
image has many more of them, so blocks come out even (a 2K image's 11 tile rows would split 6/5).

What a strip may hold: a block's tiles reach at most `overlap` LR columns past the next block's first column,
and a block's own columns end at least one `step` right of its first column, so a block's strip never needs what
it receives, provided that (a) `overlap <= step` (else a single device runs the image), and (b) the 'full'
grid's flush last column, which may sit closer than a step to the one left of it, never starts a block: it
always shares a block with the column left of it (`deal`).

Static shapes: a band is `rows` tile rows of `devices` blocks of `device_cols` tile columns, where `device_cols`
is a device's share of the image's columns rounded up to a short geometric list (`column_bucket`) and `rows`
follows from `device_cols` and the backend's tile budget per device. So every image whose tile columns fall in
one bucket reuses one program.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from classsr_jax.inference import tiling

# Tiles per band and device by backend, and the most tile rows a band may have. A band pays a fixed cost (a call,
# zeroing its canvas, the carry, a download), so bands should be big; on a CPU the tiles of one call also compete
# for the caches, and a GPU or TPU wants thousands of tiles in flight (benchmarks/JOURNAL.md, "Device inference").
BAND_TILES = {"cpu": 256, "gpu": 2048, "tpu": 2048}
MAX_BAND_ROWS = 32


def default_band_tiles(platform: str | None = None) -> int:
    """Tiles per band and device for a JAX platform ('cpu', 'gpu', 'tpu'; default: the default backend's)."""
    return BAND_TILES.get(platform or jax.default_backend(), BAND_TILES["gpu"])


# Tile columns of the narrowest band; wider ones grow by √2, and a device's block is its share of that, so a band
# is at most 41% wider than its image (the padding costs only the classifier, the elementwise normalise/quantise
# and memory, never branch work).
MIN_COLUMN_BUCKET = 16


def column_bucket(cols: int, devices: int = 1) -> int:
    """A device's block width in tile columns for `cols` columns: on one device 16, 23, 32, 45, 64, 91, 128, …;
    on n devices those over n (at least 1)."""
    k = 0
    while True:
        bucket = max(1, round(MIN_COLUMN_BUCKET * 2 ** (k / 2) / devices))
        if bucket >= cols:
            return bucket
        k += 1


def multi_device_ok(tile: int, step: int) -> bool:
    """Whether a band's columns may be split over devices: the overlap is at most a step (see the module doc)."""
    return tile - step <= step


@dataclasses.dataclass(frozen=True)
class BandShape:
    """The static shape of one band program.

    tile, step: LR tile size and grid step; scale: SR factor; rows: tile rows per band; devices: the devices a
    band's columns are dealt over; device_cols: tile columns of one device's block.
    """

    tile: int
    step: int
    scale: int
    rows: int
    devices: int
    device_cols: int

    @property
    def cols(self) -> int:
        """Tile columns of a band, every block's together."""
        return self.devices * self.device_cols

    @property
    def slots(self) -> int:
        """Tiles per call: each device's block of `rows` × `device_cols` slots, device after device."""
        return self.rows * self.cols

    @property
    def lr_hw(self) -> tuple[int, int]:
        """LR pixels of a band: enough for `rows` × `cols` tiles on the grid (flush tiles sit inside)."""
        return self.step * (self.rows - 1) + self.tile, self.step * (self.cols - 1) + self.tile

    @property
    def block_lr_cols(self) -> int:
        """LR columns one device returns: enough for its block's tiles."""
        return self.step * (self.device_cols - 1) + self.tile

    @property
    def canvas_lr_hw(self) -> tuple[int, int]:
        """A device's canvas: one step taller than a band's tiles, so the carry slice always fits, and one step
        wider than its block's, so the strip slice does."""
        return self.step * self.rows + self.tile, self.step * self.device_cols + self.tile

    @property
    def carry_lr_rows(self) -> int:
        """Rows a band can share with the next: at most one tile (the flush last row overlaps most)."""
        return self.tile

    @property
    def strip_lr_cols(self) -> int:
        """Columns a block shares with the next: the overlap."""
        return self.tile - self.step


def band_shape(cols: int, rows: int, *, tile: int, step: int, scale: int, band_tiles: int, max_rows: int,
               devices: int) -> BandShape:
    """The band shape for an image of `rows` × `cols` tiles on `devices`, aiming at `band_tiles` tiles per device.

    Images of a few tile rows get a band a quarter as tall (a second program per block width), so that a small
    image does not pay for a canvas many times its size.
    """
    device_cols = column_bucket(-(-cols // devices), devices)
    band_rows = int(np.clip(band_tiles // device_cols, 1, max_rows))
    short = -(-band_rows // 4)
    if rows <= short:
        band_rows = short
    return BandShape(tile, step, scale, band_rows, devices, device_cols)


def grid_columns(grid: tiling.TileGrid) -> tuple[np.ndarray, bool]:
    """The grid's tile column positions and whether the last one is a flush column (closer than a step to the one
    left of it)."""
    starts = np.unique(grid.positions[:, 1])
    step = grid.tile - grid.overlap
    return starts, starts.size >= 2 and int(starts[-1] - starts[-2]) < step


@dataclasses.dataclass(frozen=True)
class Band:
    """Tile rows [first_row, stop_row) of a grid; `base`: their first LR row; `next_base`: the next band's
    (0 for the last band); `finished`: LR rows, from `base`, that this band completes."""

    first_row: int
    stop_row: int
    base: int
    next_base: int
    finished: int


def plan_bands(grid: tiling.TileGrid, rows_per_band: int) -> list[Band]:
    """Bands of `rows_per_band` tile rows covering the grid, top to bottom."""
    ys = np.unique(grid.positions[:, 0])
    total = grid.padded_hw[0] if grid.protocol == "full" else grid.covered_hw[0]
    bands = []
    for first in range(0, ys.size, rows_per_band):
        stop = min(first + rows_per_band, ys.size)
        base = int(ys[first])
        if stop < ys.size:
            next_base = int(ys[stop])
            finished = next_base - base
        else:
            next_base, finished = 0, total - base
        bands.append(Band(first, stop, base, next_base, finished))
    return bands


def deal(count: int, devices: int, flush: bool) -> np.ndarray:
    """Tile columns per device for `count` columns: as even as can be, earlier devices taking the extra ones,
    except that a flush last column never starts a block (it joins the column left of it)."""
    per_device = np.full(devices, count // devices) + (np.arange(devices) < count % devices)
    last = int(np.flatnonzero(per_device)[-1])
    if flush and last > 0 and per_device[last] == 1:
        if per_device[last - 1] >= 2:  # the block to the left gives up its last column
            per_device[last - 1] -= 1
            per_device[last] += 1
        else:  # every block has one column: the flush column joins the block to the left
            per_device[last - 1] += 1
            per_device[last] = 0
    return per_device


@dataclasses.dataclass
class Blocks:
    """How an image's tile columns are dealt over the devices (the same for every band).

    per_device: columns per device; first: each block's first tile column; x: its first LR column; finished: the
    LR columns it completes (up to the next block, the last one to the image's right edge; 0 for an empty block).
    """

    per_device: np.ndarray
    first: np.ndarray
    x: np.ndarray
    finished: np.ndarray


def deal_blocks(grid: tiling.TileGrid, devices: int) -> Blocks:
    """The column blocks of `grid` over `devices`."""
    xs, flush = grid_columns(grid)
    per_device = deal(xs.size, devices, flush)
    first = np.concatenate([[0], np.cumsum(per_device)[:-1]]).astype(np.int64)
    occupied = np.flatnonzero(per_device)  # a prefix of the devices
    x = np.zeros(devices, np.int32)
    x[occupied] = xs[first[occupied]]
    width = grid.padded_hw[1] if grid.protocol == "full" else grid.covered_hw[1]
    finished = np.zeros(devices, np.int32)
    finished[occupied] = np.append(x[occupied[1:]], width) - x[occupied]
    return Blocks(per_device, first, x, finished)


@dataclasses.dataclass
class BandInputs:
    """Host arrays for one band call.

    lr: the band's LR pixels; positions, valid: per slot, positions relative to the band's first row;
    slot_of_tile[i]: where the band's i-th tile (grid order) sits.
    """

    lr: np.ndarray
    positions: np.ndarray
    valid: np.ndarray
    slot_of_tile: np.ndarray


def band_inputs(image: np.ndarray, grid: tiling.TileGrid, band: Band, shape: BandShape, blocks: Blocks) -> BandInputs:
    """The band's LR pixels (zero-padded to the static shape) and its tiles dealt out in column blocks.

    `image` is the (already padded, for images smaller than a tile) LR image. Device d's slots are
    [d·rows·device_cols, (d+1)·rows·device_cols); its block's tiles come first, row by row.
    """
    lr_h, lr_w = shape.lr_hw
    lr = np.zeros((lr_h, lr_w, image.shape[2]), image.dtype)
    rows = image[band.base : band.base + lr_h]
    lr[: rows.shape[0], : rows.shape[1]] = rows
    cols = grid.grid_shape[1]
    band_rows = np.arange(band.stop_row - band.first_row)
    block_slots = shape.rows * shape.device_cols
    slot_of_tile = np.empty((band_rows.size, cols), np.int64)
    for d, (n, first) in enumerate(zip(blocks.per_device, blocks.first)):
        slot_of_tile[:, first : first + n] = d * block_slots + band_rows[:, None] * n + np.arange(n)
    slot_of_tile = slot_of_tile.ravel()
    positions = np.zeros((shape.slots, 2), np.int32)
    positions[slot_of_tile] = grid.positions[band.first_row * cols : band.stop_row * cols] - np.array([band.base, 0])
    valid = np.zeros(shape.slots, bool)
    valid[slot_of_tile] = True
    return BandInputs(lr, positions, valid, slot_of_tile)


def padded_image(image: np.ndarray, grid: tiling.TileGrid) -> np.ndarray:
    """Images smaller than a tile, padded at the bottom/right (symmetric: mirrored, the edge pixel repeated, which
    is defined for a 1-pixel axis and continues the image with plausible content)."""
    if tuple(grid.padded_hw) == tuple(grid.image_hw):
        return image
    pad = ((0, grid.padded_hw[0] - image.shape[0]), (0, grid.padded_hw[1] - image.shape[1]), (0, 0))
    return np.pad(image, pad, mode="symmetric")
