"""Where the work of one image goes: bands of tile rows, and each band's rows dealt out over the local devices.

An image's tile grid (tiling.py) is cut into bands of consecutive tile rows; one compiled program (bands.py)
runs a band. Within a band every device takes a contiguous block of tile rows, merges its own tiles on its own
canvas and finishes its own rows. Neighbouring blocks share only the overlap strip below a block: one cyclic
`ppermute` hands it to the next device, and the last device's strip is the carry into the next band. So the
devices exchange a few HR rows per band, never a whole canvas (XLA:CPU sums a 43 MB canvas across two devices in
about 80 ms, more than the FSRCNN work of the band; benchmarks/JOURNAL.md, "Every core without a canvas sum").

What a block's strip may hold: a block's tiles reach at most `overlap` LR rows past the next block's first row,
and a block's own rows end at least one `step` below its first row, so a block's strip never needs what it
receives, provided that (a) `overlap <= step` (else a single device runs the image), and (b) the 'full' grid's
flush last row, which may sit closer than a step to the row above, never starts a block or a band: it always
shares a block with the row above it (`plan_bands`, `deal_rows`). The carry is then `overlap` LR rows.

Static shapes: a band is `devices` × `device_rows` tile rows of a canvas `cols` tiles wide, where `cols` is the
image's column count rounded up to a short geometric list (`column_bucket`) and `device_rows` follows from
`cols` and the backend's tile budget per device. So every image whose tile columns fall in one bucket reuses one
program.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from classsr_jax.inference import tiling

# Tiles per band and device by backend, and the most tile rows a device's block may have. A band pays a fixed
# cost (a call, zeroing its canvas, the carry, a download), so bands should be big; on a CPU the tiles of one call
# also compete for the caches, and a GPU or TPU wants thousands of tiles in flight (benchmarks/JOURNAL.md,
# "Device inference").
BAND_TILES = {"cpu": 256, "gpu": 2048, "tpu": 2048}
MAX_BAND_ROWS = 32
# A block has at least two tile rows, so the flush last row always has a row above it in its block.
MIN_DEVICE_ROWS = 2


def default_band_tiles(platform: str | None = None) -> int:
    """Tiles per band and device for a JAX platform ('cpu', 'gpu', 'tpu'; default: the default backend's)."""
    return BAND_TILES.get(platform or jax.default_backend(), BAND_TILES["gpu"])


# Tile columns of the narrowest canvas; wider ones grow by √2, so a canvas is at most 41% wider than its image
# (the padding costs only the elementwise normalise/quantise and memory, never network work).
MIN_COLUMN_BUCKET = 16


def column_bucket(cols: int) -> int:
    """The canvas width in tile columns for an image with `cols` columns: 16, 23, 32, 45, 64, 91, 128, …"""
    k = 0
    while True:
        bucket = round(MIN_COLUMN_BUCKET * 2 ** (k / 2))
        if bucket >= cols:
            return bucket
        k += 1


def multi_device_ok(tile: int, step: int) -> bool:
    """Whether a band's rows may be split over devices: the overlap is at most a step (see the module doc)."""
    return tile - step <= step


@dataclasses.dataclass(frozen=True)
class BandShape:
    """The static shape of one band program.

    tile, step: LR tile size and grid step; scale: SR factor; devices: the devices a band is dealt over;
    device_rows: tile rows of one device's block; cols: canvas width in tile columns.
    """

    tile: int
    step: int
    scale: int
    devices: int
    device_rows: int
    cols: int

    @property
    def rows(self) -> int:
        """Tile rows of a band."""
        return self.devices * self.device_rows

    @property
    def slots(self) -> int:
        """Tiles per call: each device's block of `device_rows` × `cols` slots, device after device."""
        return self.rows * self.cols

    @property
    def lr_hw(self) -> tuple[int, int]:
        """LR pixels of a band: enough for `rows` × `cols` tiles on the grid (flush tiles sit inside)."""
        return self.step * (self.rows - 1) + self.tile, self.step * (self.cols - 1) + self.tile

    @property
    def block_lr_rows(self) -> int:
        """LR rows one device returns: enough for its block's tiles."""
        return self.step * (self.device_rows - 1) + self.tile

    @property
    def canvas_lr_rows(self) -> int:
        """A device's canvas is one step taller than its block's tiles, so the carry slice always fits."""
        return self.step * self.device_rows + self.tile

    @property
    def carry_lr_rows(self) -> int:
        """Rows a block can share with the next: the overlap (a whole tile when a single device may see a flush
        row start its band after a row closer than the overlap allows; see `multi_device_ok`)."""
        return self.tile - self.step if multi_device_ok(self.tile, self.step) else self.tile


def band_shape(cols: int, rows: int, *, tile: int, step: int, scale: int, band_tiles: int, max_rows: int,
               devices: int) -> BandShape:
    """The band shape for an image of `rows` × `cols` tiles, aiming at `band_tiles` tiles per device.

    Images of a few tile rows get blocks a quarter as tall (a second program per canvas width), so that a small
    image does not pay for a canvas many times its size.
    """
    bucket = column_bucket(cols)
    device_rows = int(np.clip(band_tiles // bucket, MIN_DEVICE_ROWS, max(max_rows, MIN_DEVICE_ROWS)))
    short = max(-(-device_rows // 4), MIN_DEVICE_ROWS)
    if -(-rows // devices) <= short:
        device_rows = short
    return BandShape(tile, step, scale, devices, device_rows, bucket)


def grid_rows(grid: tiling.TileGrid) -> tuple[np.ndarray, bool]:
    """The grid's tile row positions and whether the last one is a flush row (closer than a step to the one
    above it)."""
    ys = np.unique(grid.positions[:, 0])
    step = grid.tile - grid.overlap
    return ys, ys.size >= 2 and int(ys[-1] - ys[-2]) < step


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
    """Bands of `rows_per_band` tile rows covering the grid, top to bottom; a flush last row that would start the
    last band moves there with the row above it."""
    ys, flush = grid_rows(grid)
    total = grid.padded_hw[0] if grid.protocol == "full" else grid.covered_hw[0]
    starts = list(range(0, ys.size, rows_per_band))
    if flush and len(starts) > 1 and starts[-1] == ys.size - 1:
        starts[-1] -= 1
    bands = []
    for i, first in enumerate(starts):
        stop = starts[i + 1] if i + 1 < len(starts) else ys.size
        base = int(ys[first])
        if stop < ys.size:
            next_base = int(ys[stop])
            finished = next_base - base
        else:
            next_base, finished = 0, total - base
        bands.append(Band(first, stop, base, next_base, finished))
    return bands


def deal_rows(count: int, devices: int, flush: bool) -> np.ndarray:
    """Tile rows per device for a band of `count` rows: as even as can be, earlier devices taking the extra
    ones, except that a flush last row never starts a block (it joins the row above it)."""
    per_device = np.full(devices, count // devices) + (np.arange(devices) < count % devices)
    last = int(np.flatnonzero(per_device)[-1])
    if flush and last > 0 and per_device[last] == 1:
        if per_device[last - 1] >= 2:  # the block above gives up its last row
            per_device[last - 1] -= 1
            per_device[last] += 1
        else:  # every block has one row: the flush row joins the block above
            per_device[last - 1] += 1
            per_device[last] = 0
    return per_device


@dataclasses.dataclass
class BandInputs:
    """Host arrays for one band call.

    lr: the band's LR pixels; positions, valid: per slot, relative to the band; slot_of_tile[i]: where the band's
    i-th tile (grid order) sits; block_base, block_finished: per device, its block's first LR row relative to the
    band and the LR rows it completes (0 for an empty block).
    """

    lr: np.ndarray
    positions: np.ndarray
    valid: np.ndarray
    slot_of_tile: np.ndarray
    block_base: np.ndarray
    block_finished: np.ndarray


def band_inputs(image: np.ndarray, grid: tiling.TileGrid, band: Band, shape: BandShape) -> BandInputs:
    """The band's LR pixels (zero-padded to the static shape) and its tile rows dealt out over the devices.

    `image` is the (already padded, for images smaller than a tile) LR image. Device d's slots are
    [d·device_rows·cols, (d+1)·device_rows·cols); its block's tiles come first, in grid order.
    """
    lr_h, lr_w = shape.lr_hw
    lr = np.zeros((lr_h, lr_w, image.shape[2]), image.dtype)
    rows = image[band.base : band.base + lr_h]
    lr[: rows.shape[0], : rows.shape[1]] = rows
    ys, flush = grid_rows(grid)
    cols = grid.grid_shape[1]
    count = band.stop_row - band.first_row
    per_device = deal_rows(count, shape.devices, flush and band.stop_row == ys.size)
    first = band.first_row + np.concatenate([[0], np.cumsum(per_device)[:-1]])
    slot_of_tile = np.concatenate([d * shape.device_rows * shape.cols + np.arange(n * cols)
                                   for d, n in enumerate(per_device)]).astype(np.int64)
    positions = np.zeros((shape.slots, 2), np.int32)
    positions[slot_of_tile] = grid.positions[band.first_row * cols : band.stop_row * cols] - np.array([band.base, 0])
    valid = np.zeros(shape.slots, bool)
    valid[slot_of_tile] = True
    occupied = np.flatnonzero(per_device)  # a prefix of the devices
    base = np.zeros(shape.devices, np.int32)
    base[occupied] = ys[first[occupied]] - band.base
    finished = np.zeros(shape.devices, np.int32)
    finished[occupied] = np.append(base[occupied[1:]], band.finished) - base[occupied]
    return BandInputs(lr, positions, valid, slot_of_tile, base, finished)


def padded_image(image: np.ndarray, grid: tiling.TileGrid) -> np.ndarray:
    """Images smaller than a tile, padded at the bottom/right (symmetric: mirrored, the edge pixel repeated, which
    is defined for a 1-pixel axis and continues the image with plausible content)."""
    if tuple(grid.padded_hw) == tuple(grid.image_hw):
        return image
    pad = ((0, grid.padded_hw[0] - image.shape[0]), (0, grid.padded_hw[1] - image.shape[1]), (0, 0))
    return np.pad(image, pad, mode="symmetric")
