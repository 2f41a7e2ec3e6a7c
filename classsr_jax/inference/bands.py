"""Whole-image inference as device programs, one band of tile rows at a time.

For each band (band_plan.py: which tile rows, and which device takes which block of tile columns) one jitted
program
- takes the band's LR pixels as they were decoded (uint8, uint16 or float) and cuts each device's tiles with
  gathers;
- classifies and routes them (routing.route_classes: bucketed gather loops, static shapes);
- merges each device's SR tiles into its own canvas with a loop of dynamic-update-slices: overlap-add with the
  window weights (full protocol) or the mean of the tiles rounded to uint8 (paper protocol);
- adds each device's carry, the partial sums of the rows its block shares with the previous band, and hands on
  the rows it shares with the next one;
- hands the overlap strip right of each block to the next device (one `ppermute`) and adds the strip it receives;
- normalises and quantises each block's rows, and returns them as uint8 (or uint16, or the paper protocol's
  float merge for evaluation), one block per device.
The host only decodes, uploads a band, downloads finished rows and encodes; no float HR canvas ever lives on
the host, and the devices hold one band.
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
from classsr_jax.inference.band_plan import BandInputs, BandShape, Blocks
from classsr_jax.inference.routing import RoutedModel, class_logits, classify, route_classes
from classsr_jax.inference.tiling import weight_sums
from classsr_jax.parallel import DATA_AXIS


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


def _exchange_strips(canvas, finished, shape: BandShape, devices: int):
    """Hands the overlap strip right of this device's block (all rows, its carry's included) to the next device
    and adds the one it receives at its left edge. The strip sent is cleared here, so that neither this block's
    carry nor its rows count it twice (band_plan's module doc: a strip never needs what its block receives)."""
    s = shape.scale
    strip_cols = shape.strip_lr_cols * s
    strip = jax.lax.dynamic_slice(canvas, (0, finished * s, 0), (canvas.shape[0], strip_cols, 3))
    received = jax.lax.ppermute(strip, DATA_AXIS, [(d, d + 1) for d in range(devices - 1)])  # the first gets 0
    canvas = jax.lax.dynamic_update_slice(canvas, jnp.zeros_like(strip), (0, finished * s, 0))
    return canvas.at[:, :strip_cols].add(received)


def _band_program(routed: RoutedModel, shape: BandShape, fmt: OutputFormat):
    """jit(shard_map(...)) of one band: (variables, lr, positions, valid, block_x, block_finished, carry,
    next_base, row_weights, col_weights, offsets, force) → (rows, float rows or None, carry, classes, per-device
    class counts); rows, carry and the block scalars are per device (stacked along the first axis)."""
    s = shape.scale
    profile = merge_profile(fmt, shape.tile * s, s)
    canvas_shape = (shape.canvas_lr_hw[0] * s, shape.canvas_lr_hw[1] * s, 3)
    out_rows, out_cols = shape.lr_hw[0] * s, shape.block_lr_cols * s
    carry_rows = shape.carry_lr_rows * s
    model = routed.model
    route = functools.partial(route_classes, model, num_branches=routed.num_branches, buckets=routed.buckets,
                              has_classifier=routed.has_classifier)

    def per_device(variables, lr, positions, valid, block_x, block_finished, carry, next_base, row_weights,
                   col_weights, offsets, force):
        x0, finished = block_x[0], block_finished[0]
        tiles = cut_tiles(lr, positions, shape.tile)
        _, classes = classify(model, variables, tiles, valid, offsets, force, has_classifier=routed.has_classifier)
        corners = (positions - jnp.stack([0, x0])) * s

        def merge(canvas, sel, count, sr):  # each bucket's SR tiles go straight into the canvas
            return merge_tiles(canvas, sr, corners[jnp.minimum(sel, corners.shape[0] - 1)], count, profile)

        canvas, counts = route(variables, tiles, classes, jnp.zeros(canvas_shape, jnp.float32), merge)
        canvas = canvas.at[:carry_rows].add(carry)
        if routed.num_devices > 1:
            canvas = _exchange_strips(canvas, finished, shape, routed.num_devices)
        carry = jax.lax.dynamic_slice(canvas, (next_base * s, 0, 0), (carry_rows, canvas_shape[1], 3))
        block_weights = jax.lax.dynamic_slice(col_weights, (x0 * s,), (out_cols,))
        quantised, merged = finish_rows(canvas[:out_rows, :out_cols], row_weights, block_weights, fmt)
        return quantised, merged, carry, classes, counts[None]

    block = P(DATA_AXIS)
    sharded = jax.shard_map(
        per_device,
        mesh=routed.mesh,
        in_specs=(P(), P(), block, block, block, block, block, P(), P(), P(), P(), P()),
        out_specs=(block, block, block, block, block),
        check_vma=False,
    )
    return jax.jit(sharded, donate_argnums=(6,))


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
        carry = (shape.devices * shape.carry_lr_rows * shape.scale, shape.canvas_lr_hw[1] * shape.scale, 3)
        return dict(
            lr=jax.ShapeDtypeStruct((lr_h, lr_w, channels), dtype, sharding=self._replicated),
            positions=jax.ShapeDtypeStruct((shape.slots, 2), jnp.int32, sharding=self._sharded),
            valid=jax.ShapeDtypeStruct((shape.slots,), jnp.bool_, sharding=self._sharded),
            blocks=jax.ShapeDtypeStruct((shape.devices,), jnp.int32, sharding=self._sharded),
            carry=jax.ShapeDtypeStruct(carry, jnp.float32, sharding=self._sharded),
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
            variables, a["lr"], a["positions"], a["valid"], a["blocks"], a["blocks"], a["carry"], a["scalar"],
            a["row_weights"], a["col_weights"], a["offsets"], a["scalar"]))

    def classify(self, variables, shape: BandShape, dtype):
        key = ("classify", shape, np.dtype(dtype).name)
        self.classify_programs.add(key)
        a = self._abstract(shape, dtype, 3)

        def lower():  # traced only when neither this process nor the cache folder holds the program
            return _classify_program(self.routed, shape).lower(variables, a["lr"], a["positions"])

        return self._cached(key, lower)

    def empty_carry(self, shape: BandShape) -> jax.Array:
        """No carry into the first band: zero rows for every device's block."""
        rows = shape.devices * shape.carry_lr_rows * shape.scale
        zeros = np.zeros((rows, shape.canvas_lr_hw[1] * shape.scale, 3), np.float32)
        return jax.device_put(zeros, self._sharded)

    def put(self, inputs: BandInputs):
        """Uploads one band's host arrays (asynchronously): LR pixels, positions, valid."""
        return (
            jax.device_put(inputs.lr, self._replicated),
            jax.device_put(inputs.positions, self._sharded),
            jax.device_put(inputs.valid, self._sharded),
        )

    def put_blocks(self, blocks: Blocks):
        """Uploads each device's block origin and columns finished (LR)."""
        return jax.device_put(blocks.x, self._sharded), jax.device_put(blocks.finished, self._sharded)

    def put_replicated(self, value, dtype=np.int32):
        return jax.device_put(np.asarray(value, dtype), self._replicated)
