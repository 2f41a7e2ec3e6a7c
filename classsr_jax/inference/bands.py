"""Whole-image inference as device programs, one band of tile rows at a time.

An image's tile grid (tiling.py) is cut into bands of consecutive tile rows. For each band one jitted program
- takes the band's LR pixels as they were decoded (uint8, uint16 or float) and cuts its tiles with gathers;
- classifies and routes them (routing.route_classes: bucketed gather loops, static shapes);
- merges the SR tiles into the band's HR rows with a loop of dynamic-update-slices: overlap-add with the
  window weights (full protocol) or the mean of the tiles rounded to uint8 (paper protocol);
- adds the carry, the partial sums of the rows it shares with the previous band, and hands on the rows it
  shares with the next one;
- normalises and quantises the finished rows, and returns them as uint8 (or uint16, or the paper protocol's
  float merge for evaluation).
The host only decodes, uploads a band, downloads finished rows and encodes; no float HR canvas ever lives
on the host, and the device holds one band.

Static shapes: a band is `rows` tile rows of a canvas `cols` tiles wide, where `cols` is the image's column
count rounded up to a short geometric list (`column_bucket`) and `rows` follows from `cols` and the
backend's tile budget per band. So every image whose tile columns fall in one bucket reuses one program.

Several local devices: the band's tiles are spread over them (`shard_map` over the 'data' axis); each merges
its own tiles into a partial canvas and the partial canvases are summed (`psum`). The valid tiles of a band
are dealt out so that each device's share starts with its valid tiles, which bounds each merge loop.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from classsr_jax.inference import program_cache, tiling
from classsr_jax.inference.routing import RoutedModel, class_logits, classify, route_classes
from classsr_jax.inference.tiling import weight_sums
from classsr_jax.parallel import DATA_AXIS

# Tiles per band by backend, and the most tile rows a band may have. A band pays a fixed cost (a call, zeroing
# its canvas, the carry, a download), so bands should be big; on a CPU the tiles of one call also compete for
# the caches, and a GPU or TPU wants thousands of tiles in flight (benchmarks/JOURNAL.md, "Device inference").
BAND_TILES = {"cpu": 256, "gpu": 2048, "tpu": 2048}
MAX_BAND_ROWS = 32


def default_band_tiles(platform: str | None = None) -> int:
    """Tiles per band for a JAX platform ('cpu', 'gpu', 'tpu'; default: the default backend's)."""
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


@dataclasses.dataclass(frozen=True)
class BandShape:
    """The static shape of one band program.

    tile, step: LR tile size and grid step; scale: SR factor; rows, cols: tile rows per band and canvas
    width in tile columns; slots: tiles per call (rows·cols rounded up to a multiple of the device count).
    """

    tile: int
    step: int
    scale: int
    rows: int
    cols: int
    slots: int

    @property
    def lr_hw(self) -> tuple[int, int]:
        """LR pixels of a band: enough for `rows` × `cols` tiles on the grid (flush tiles sit inside)."""
        return self.step * (self.rows - 1) + self.tile, self.step * (self.cols - 1) + self.tile

    @property
    def canvas_lr_rows(self) -> int:
        """The canvas is one step taller than the band's tiles, so the carry slice always fits."""
        return self.step * self.rows + self.tile

    @property
    def carry_lr_rows(self) -> int:
        """Rows a band can share with the next: at most one tile (the flush last row overlaps most)."""
        return self.tile


def band_shape(cols: int, rows: int, *, tile: int, step: int, scale: int, band_tiles: int, max_rows: int,
               devices: int) -> BandShape:
    """The band shape for an image of `rows` × `cols` tiles, aiming at `band_tiles` tiles per band.

    Images of a few tile rows get a band a quarter as tall (a second program per canvas width), so that a
    small image does not pay for a canvas many times its size.
    """
    bucket = column_bucket(cols)
    band_rows = int(np.clip(band_tiles // bucket, 1, max_rows))
    short = -(-band_rows // 4)
    if rows <= short:
        band_rows = short
    slots = -(-band_rows * bucket // devices) * devices
    return BandShape(tile, step, scale, band_rows, bucket, slots)


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


@dataclasses.dataclass
class BandInputs:
    """Host arrays for one band call; `slot_of_tile[i]` is where the band's i-th tile (grid order) sits."""

    lr: np.ndarray
    positions: np.ndarray
    valid: np.ndarray
    slot_of_tile: np.ndarray


def band_inputs(image: np.ndarray, grid: tiling.TileGrid, band: Band, shape: BandShape, devices: int) -> BandInputs:
    """The band's LR pixels (zero-padded to the static shape) and its tiles dealt out over the devices.

    `image` is the (already padded, for images smaller than a tile) LR image. Each device's share of the
    slots starts with its valid tiles, in grid order, so every device gets nearly the same number.
    """
    lr_h, lr_w = shape.lr_hw
    lr = np.zeros((lr_h, lr_w, image.shape[2]), image.dtype)
    rows = image[band.base : band.base + lr_h]
    lr[: rows.shape[0], : rows.shape[1]] = rows
    cols = grid.grid_shape[1]
    tiles = grid.positions[band.first_row * cols : band.stop_row * cols]
    count = tiles.shape[0]
    per_device = shape.slots // devices
    share, extra = divmod(count, devices)
    sizes = np.full(devices, share) + (np.arange(devices) < extra)
    starts = np.arange(devices) * per_device
    slot_of_tile = np.concatenate([s + np.arange(n) for s, n in zip(starts, sizes)]).astype(np.int64)
    positions = np.zeros((shape.slots, 2), np.int32)
    positions[slot_of_tile] = tiles - np.array([band.base, 0])
    valid = np.zeros(shape.slots, bool)
    valid[slot_of_tile] = True
    return BandInputs(lr, positions, valid, slot_of_tile)


@dataclasses.dataclass(frozen=True)
class OutputFormat:
    """How a band program merges and what it returns.

    merge: 'blend' (overlap-add with raised-cosine weights over `overlap` LR px) or 'paper' (mean of the
    tiles rounded to uint8); bit_depth: 8 or 16 for the quantised rows; float_merge: also return the float
    merge on [0, 255] (the image the paper protocol's PSNR is computed on).
    """

    merge: str
    overlap: int
    bit_depth: int = 8
    float_merge: bool = False


def _to_unit(pixels: jax.Array) -> jax.Array:
    """Decoded samples → float32 on [0, 1] (floats are taken as they are)."""
    if pixels.dtype == jnp.uint8:
        return pixels.astype(jnp.float32) / 255.0
    if pixels.dtype == jnp.uint16:
        return pixels.astype(jnp.float32) / 65535.0
    return pixels.astype(jnp.float32)


def cut_tiles(lr: jax.Array, positions: jax.Array, tile: int) -> jax.Array:
    """(n, tile, tile, 3) float32 tiles at LR `positions` (n, 2) of a band's pixels."""
    cut = lambda p: jax.lax.dynamic_slice(lr, (p[0], p[1], 0), (tile, tile, lr.shape[2]))
    return _to_unit(jax.vmap(cut)(positions))


def merge_tiles(canvas: jax.Array, sr: jax.Array, corners: jax.Array, count: jax.Array,
                profile: np.ndarray | None) -> jax.Array:
    """Adds the first `count` SR tiles into `canvas` (H, W, 3) at their HR `corners` (n, 2).

    profile None: the paper's merge, each tile clamped, ×255 and rounded half to even (their mean is taken
    later). Otherwise overlap-add of the clamped tile times the separable window outer(profile, profile).
    """
    size = sr.shape[1]
    window = None if profile is None else jnp.asarray(np.outer(profile, profile), jnp.float32)[:, :, None]

    def add(i, canvas):
        values = jnp.clip(sr[i], 0.0, 1.0)
        values = jnp.round(values * 255.0) if window is None else values * window
        corner = (corners[i, 0], corners[i, 1], 0)
        current = jax.lax.dynamic_slice(canvas, corner, (size, size, 3))
        return jax.lax.dynamic_update_slice(canvas, current + values, corner)

    return jax.lax.fori_loop(0, count, add, canvas)


def finish_rows(rows: jax.Array, row_weights: jax.Array, col_weights: jax.Array,
                fmt: OutputFormat) -> tuple[jax.Array, jax.Array | None]:
    """Normalised, quantised rows (and, with float_merge, the float merge on [0, 255]).

    The total weight of a pixel is row_weights[y] · col_weights[x] (the window is separable and the tiles
    sit on a grid); pixels no tile covers (the canvas padding) have weight 0 and come out 0.
    """
    weight = row_weights[:, None, None] * col_weights[None, :, None]
    merged = rows / jnp.where(weight > 0, weight, 1.0)
    unit = merged / 255.0 if fmt.merge == "paper" else merged
    peak = 2.0**fmt.bit_depth - 1.0
    quantised = jnp.round(jnp.clip(unit, 0.0, 1.0) * peak).astype(jnp.uint8 if fmt.bit_depth == 8 else jnp.uint16)
    if not fmt.float_merge:
        return quantised, None
    return quantised, merged if fmt.merge == "paper" else merged * 255.0


def merge_profile(fmt: OutputFormat, hr_tile: int, scale: int) -> np.ndarray | None:
    """The 1-D weight profile of one HR tile: raised-cosine ramps (blend), or None for the paper's plain mean."""
    return None if fmt.merge == "paper" else tiling.blend_profile(hr_tile, fmt.overlap * scale)


def axis_weights(grid: tiling.TileGrid, fmt: OutputFormat, scale: int, axis: int, length: int) -> np.ndarray:
    """Total tile weight along one HR axis of the image (float32, zero beyond the tiles)."""
    hr_tile = grid.tile * scale
    profile = merge_profile(fmt, hr_tile, scale)
    profile = np.ones(hr_tile) if profile is None else profile
    starts = np.unique(grid.positions[:, axis]) * scale
    return weight_sums(starts, profile, length).astype(np.float32)


def _band_program(routed: RoutedModel, shape: BandShape, fmt: OutputFormat):
    """jit(shard_map(...)) of one band: (variables, lr, positions, valid, carry, next_base, row_weights,
    col_weights, offsets, force) → (rows, float rows or None, carry, classes, per-device class counts)."""
    s = shape.scale
    profile = merge_profile(fmt, shape.tile * s, s)
    canvas_shape = (shape.canvas_lr_rows * s, shape.lr_hw[1] * s, 3)
    out_rows = shape.lr_hw[0] * s
    carry_rows = shape.carry_lr_rows * s
    model = routed.model
    route = functools.partial(route_classes, model, num_branches=routed.num_branches, buckets=routed.buckets,
                              has_classifier=routed.has_classifier)

    def per_device(variables, lr, positions, valid, carry, next_base, row_weights, col_weights, offsets, force):
        tiles = cut_tiles(lr, positions, shape.tile)
        _, classes = classify(model, variables, tiles, valid, offsets, force, has_classifier=routed.has_classifier)
        corners = positions * s

        def merge(canvas, sel, count, sr):  # each bucket's SR tiles go straight into the canvas
            return merge_tiles(canvas, sr, corners[jnp.minimum(sel, corners.shape[0] - 1)], count, profile)

        canvas, counts = route(variables, tiles, classes, jnp.zeros(canvas_shape, jnp.float32), merge)
        if routed.num_devices > 1:
            canvas = jax.lax.psum(canvas, DATA_AXIS)
        canvas = canvas.at[:carry_rows].add(carry)
        carry = jax.lax.dynamic_slice(canvas, (next_base * s, 0, 0), (carry_rows, canvas_shape[1], 3))
        quantised, merged = finish_rows(canvas[:out_rows], row_weights, col_weights, fmt)
        return quantised, merged, carry, classes, counts[None]

    sharded = jax.shard_map(
        per_device,
        mesh=routed.mesh,
        in_specs=(P(), P(), P(DATA_AXIS), P(DATA_AXIS), P(), P(), P(), P(), P(), P()),
        out_specs=(P(), P(), P(), P(DATA_AXIS), P(DATA_AXIS)),
        check_vma=False,
    )
    return jax.jit(sharded, donate_argnums=(4,))


def _classify_program(routed: RoutedModel, shape: BandShape):
    """jit(shard_map(...)) of a band's logits: the budget's first pass."""

    def per_device(variables, lr, positions):
        tiles = cut_tiles(lr, positions, shape.tile)
        return class_logits(routed.model, variables, tiles)

    sharded = jax.shard_map(
        per_device, mesh=routed.mesh, in_specs=(P(), P(), P(DATA_AXIS)), out_specs=P(DATA_AXIS), check_vma=False
    )
    return jax.jit(sharded)


# Compiled programs, shared by every Upscaler of the process with the same model description, routing, dtype
# and devices: the variables are an argument, so new weights (training validation, --with-original, the
# notebooks' sweeps) reuse them. Least recently used programs are dropped beyond this many.
MAX_CACHED_PROGRAMS = 32
_programs: collections.OrderedDict = collections.OrderedDict()


class BandPrograms:
    """Compiled band programs of one routed model, compiled ahead of time on first use and cached by (model,
    shape, input dtype, format). `route_programs`/`classify_programs`: the keys this instance has used."""

    def __init__(self, routed: RoutedModel):
        self.routed = routed
        self.compile_seconds = 0.0
        self.route_programs: set = set()
        self.classify_programs: set = set()
        self._replicated = routed.replicated
        self._sharded = routed.data_sharding
        self._model_key = (
            json.dumps(routed.compute_spec.to_dict(), sort_keys=True), routed.buckets, np.dtype(routed.dtype).name,
            tuple(d.id for d in routed.mesh.devices.flat),
        )

    def _cached(self, key, lower):
        """The compiled program for `key`: from this process's programs, else from the cache folder of earlier
        runs (`program_cache`), else `lower().compile()`."""
        key = (self._model_key, *key)
        if key in _programs:
            _programs.move_to_end(key)
            return _programs[key]
        t0 = time.perf_counter()
        program = program_cache.load_or_compile(key, self.routed.mesh.devices.flat, lower)
        self.compile_seconds += time.perf_counter() - t0
        _programs[key] = program
        while len(_programs) > MAX_CACHED_PROGRAMS:
            _programs.popitem(last=False)
        return program

    def _abstract(self, shape: BandShape, dtype, channels: int):
        lr_h, lr_w = shape.lr_hw
        carry = (shape.carry_lr_rows * shape.scale, lr_w * shape.scale, 3)
        return dict(
            lr=jax.ShapeDtypeStruct((lr_h, lr_w, channels), dtype, sharding=self._replicated),
            positions=jax.ShapeDtypeStruct((shape.slots, 2), jnp.int32, sharding=self._sharded),
            valid=jax.ShapeDtypeStruct((shape.slots,), jnp.bool_, sharding=self._sharded),
            carry=jax.ShapeDtypeStruct(carry, jnp.float32, sharding=self._replicated),
            scalar=jax.ShapeDtypeStruct((), jnp.int32, sharding=self._replicated),
            offsets=jax.ShapeDtypeStruct((self.routed.num_branches,), jnp.float32, sharding=self._replicated),
            row_weights=jax.ShapeDtypeStruct((lr_h * shape.scale,), jnp.float32, sharding=self._replicated),
            col_weights=jax.ShapeDtypeStruct((lr_w * shape.scale,), jnp.float32, sharding=self._replicated),
        )

    def route(self, variables, shape: BandShape, dtype, fmt: OutputFormat):
        key = ("route", shape, np.dtype(dtype).name, fmt)
        self.route_programs.add(key)
        a = self._abstract(shape, dtype, 3)
        return self._cached(key, lambda: _band_program(self.routed, shape, fmt).lower(
            variables, a["lr"], a["positions"], a["valid"], a["carry"], a["scalar"], a["row_weights"],
            a["col_weights"], a["offsets"], a["scalar"]))

    def classify(self, variables, shape: BandShape, dtype):
        key = ("classify", shape, np.dtype(dtype).name)
        self.classify_programs.add(key)
        a = self._abstract(shape, dtype, 3)

        def lower():  # traced only when neither this process nor the cache folder holds the program
            return _classify_program(self.routed, shape).lower(variables, a["lr"], a["positions"])

        return self._cached(key, lower)

    def empty_carry(self, shape: BandShape) -> jax.Array:
        rows = shape.carry_lr_rows * shape.scale
        return jax.device_put(np.zeros((rows, shape.lr_hw[1] * shape.scale, 3), np.float32), self._replicated)

    def put(self, inputs: BandInputs):
        """Uploads one band's host arrays (asynchronously)."""
        return (
            jax.device_put(inputs.lr, self._replicated),
            jax.device_put(inputs.positions, self._sharded),
            jax.device_put(inputs.valid, self._sharded),
        )

    def put_replicated(self, value, dtype=np.int32):
        return jax.device_put(np.asarray(value, dtype), self._replicated)


def padded_image(image: np.ndarray, grid: tiling.TileGrid) -> np.ndarray:
    """Images smaller than a tile, padded at the bottom/right (symmetric: mirrored, the edge pixel repeated, which
    is defined for a 1-pixel axis and continues the image with plausible content)."""
    if tuple(grid.padded_hw) == tuple(grid.image_hw):
        return image
    pad = ((0, grid.padded_hw[0] - image.shape[0]), (0, grid.padded_hw[1] - image.shape[1]), (0, 0))
    return np.pad(image, pad, mode="symmetric")


