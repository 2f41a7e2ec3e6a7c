"""Whole-image ClassSR inference: the `Upscaler`, its results and the FLOPs budget.

`Upscaler` is the library entry point that `upscale`, `evaluate`, training validation and the notebooks share.
The device does all the pixel work (bands.py): for each band of tile rows one compiled program cuts the
tiles, classifies and routes them, merges them and returns finished uint8 rows, each device those of its block
of tile columns (band_plan.py). The host cuts the image into bands, uploads them, and copies the finished rows
into the output; it dispatches the next band before it waits for the previous one, so the device never waits
for the host. Band shapes come from a short list, so images of any size reuse a few compiled programs.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from classsr_jax.inference import band_plan, bands, tiling
from classsr_jax.inference.routing import Buckets, RoutedModel
from classsr_jax.models import flops as flops_lib
from classsr_jax.models.spec import ModelSpec
from classsr_jax.parallel import create_mesh

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


@dataclasses.dataclass
class UpscaleResult:
    sr: np.ndarray  # uint8 (or uint16) (scale·H, scale·W, 3) (paper protocol: the covered area)
    sr_255: np.ndarray | None  # paper protocol: the original's float merge on [0, 255]
    grid: tiling.TileGrid
    classes: np.ndarray  # (tiles,) branch of every tile
    class_counts: list[int]
    flops: float  # the paper's figure: mean FLOPs per tile (paper convention)
    flops_percent: float  # of the -O network
    executed_flops: float  # computed for this image: bucket padding, widened branches and the classifier included
    logit_offsets: list[float]
    budget: float | None  # the FLOPs cap asked for (fraction of the -O network's), or None
    budget_met: bool | None  # False when even the cheapest branch for every tile costs more than the cap
    devices: int  # the local devices each band's tile columns were dealt over
    compile_s: float
    inference_s: float  # the device path: upload, programs, download, without compilation
    host_s: float  # the part of inference_s the host spent preparing bands and storing rows

    def report(self, scale: int) -> dict[str, Any]:
        return {
            "input_hw": list(self.grid.image_hw),
            "output_hw": list(self.sr.shape[:2]),
            "protocol": self.grid.protocol,
            "scale": scale,
            "tiles": int(self.grid.num_tiles),
            "class_counts": self.class_counts,
            "class_ratio": [c / max(1, self.grid.num_tiles) for c in self.class_counts],
            "flops": self.flops,
            "flops_percent": self.flops_percent,
            "executed_flops": self.executed_flops,
            "logit_offsets": self.logit_offsets,
            "budget": self.budget,
            "budget_met": self.budget_met,
            "devices": self.devices,
            "timing": {"compile_s": self.compile_s, "inference_s": self.inference_s, "host_s": self.host_s},
        }


def budget_offsets(logits: np.ndarray, branch_flops, budget: float, overhead: float = 0.0) -> tuple[np.ndarray, bool]:
    """Logit offsets −λ·F_k/F_O that hold these tiles to a FLOPs cap, and whether the cap is met.

    The cap: mean branch FLOPs + overhead (the Class-Module's, per tile) ≤ budget·F_O. Free routing (λ = 0) is
    kept when it fits; otherwise λ is the smallest shift whose routing fits, which moves the tiles that gain
    least from their branch to cheaper ones first. When even the cheapest branch for every tile costs more than
    the cap, every tile goes to it and the second value is False.

    Mean FLOPs of argmax(logits − λ·F/F_O) never increase with λ ≥ 0, so bisection finds that λ.
    """
    cost = np.asarray(branch_flops, np.float64) / float(branch_flops[-1])
    target = budget * float(branch_flops[-1]) - overhead
    logits = np.asarray(logits, np.float32)  # in float32, as the routing program adds the offsets

    def mean_flops(lam):
        offsets = (-lam * cost).astype(np.float32)
        return float(np.mean(np.asarray(branch_flops)[np.argmax(logits + offsets, axis=-1)]))

    if mean_flops(0.0) <= target:
        return np.zeros(len(cost), np.float32), True
    gaps = np.diff(np.sort(np.unique(cost)))
    lo, hi = 0.0, (logits.max() - logits.min()) / (gaps.min() if gaps.size else 1.0) + 1.0  # hi: all to the cheapest
    if mean_flops(hi) > target:
        return (-hi * cost).astype(np.float32), False
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if mean_flops(mid) > target:
            lo = mid
        else:
            hi = mid
    return (-hi * cost).astype(np.float32), True


def check_routing(spec: ModelSpec, budget: float | None, force_class: int | None) -> None:
    """ValueError, one line, unless the routing options fit the model: `force_class` names a branch (0-based)
    and `budget` is a positive fraction of the -O network's FLOPs, for a ClassSR model."""
    if force_class is not None and not 0 <= force_class < spec.num_branches:
        raise ValueError(f"force_class {force_class} is out of range: the model has branches 0 (simplest) to "
                         f"{spec.num_branches - 1} (the -O network)")
    if budget is not None and not budget > 0:
        raise ValueError(f"the budget must be a positive fraction of the -O network's FLOPs, got {budget}")
    if budget is not None and spec.kind != "classsr":
        raise ValueError("a FLOPs budget needs a ClassSR model; this one is a single network")


def single_device_mesh(mesh: jax.sharding.Mesh | None, overlap: int, tile: int) -> jax.sharding.Mesh:
    """The mesh for an overlap over half a tile, whose band rows cannot be split over devices (band_plan):
    the first local device, or `mesh` itself when it has one device."""
    if mesh is not None and mesh.devices.size > 1:
        raise ValueError(f"an overlap of {overlap} px, over half the {tile}-px tile, needs a one-device mesh")
    return mesh or create_mesh(jax.local_devices()[:1])


class Upscaler:
    """Routed ClassSR (or single-network) inference for whole images of any size.

    The weights are given once, to the constructor; the compiled programs are shared by every Upscaler of the
    process with the same model description, so a new Upscaler for new weights (training validation) compiles
    nothing. Routing options (`budget`, `force_class`) are arguments of each `upscale` call.

    protocol: 'full' (default; output exactly scale·H × scale·W, overlaps blended) or 'paper' (the original's
    test: 32/28 grid, no border tiles, uint8-rounded tiles averaged, output cropped to the covered area).
    buckets: tiles per branch call (default: measured best for the backend, `routing.default_buckets`).
    band_tiles: tiles per device in a band program (default `band_plan.default_band_tiles`). dtype: 'float32'
    or 'bfloat16' (parameters and activations; the merge and the quantisation stay float32). mesh: the local
    devices each band's tile columns are dealt over (default: all of them; the first one alone for an overlap over
    half a tile).
    """

    def __init__(
        self,
        spec: ModelSpec,
        variables,
        *,
        protocol: str = "full",
        tile: int = 32,
        step: int = 28,
        overlap: int = 8,
        buckets: Buckets | None = None,
        band_tiles: int | None = None,
        dtype: str = "float32",
        mesh: jax.sharding.Mesh | None = None,
    ):
        if protocol not in ("full", "paper"):
            raise ValueError(f"unknown protocol {protocol!r}: use 'full' or 'paper'")
        if dtype not in DTYPES:
            raise ValueError(f"unknown dtype {dtype!r}: use one of {', '.join(DTYPES)}")
        self.spec = spec
        self.protocol, self.tile, self.overlap = protocol, tile, overlap
        self.step = step if protocol == "paper" else tile - overlap
        self.dtype = dtype
        if not band_plan.multi_device_ok(tile, self.step):
            mesh = single_device_mesh(mesh, tile - self.step, tile)
        # RoutedModel resolves the default buckets for the backend.
        self.routed = RoutedModel(spec, buckets, mesh=mesh, dtype=DTYPES[dtype])
        self.buckets = self.routed.buckets
        self.band_tiles = band_tiles or band_plan.default_band_tiles()
        self.programs = bands.BandPrograms(self.routed)
        self.flops = flops_lib.model_flops(spec, tile)
        # What the device computes: branches widened for speed (`RoutedModel.compute_spec`) cost their wide FLOPs.
        self.computed_flops = flops_lib.model_flops(self.routed.compute_spec, tile)
        self._placed = self.routed.place_variables(variables)

    @property
    def num_compilations(self) -> int:
        """Routing programs compiled so far (the budget's classify programs are not counted)."""
        return len(self.programs.route_programs)

    def band_shape(self, grid: tiling.TileGrid) -> band_plan.BandShape:
        rows, cols = grid.grid_shape
        return band_plan.band_shape(
            cols, rows, tile=self.tile, step=self.step, scale=self.spec.scale, band_tiles=self.band_tiles,
            max_rows=band_plan.MAX_BAND_ROWS, devices=self.routed.num_devices,
        )

    def _output_format(self, bit_depth: int, float_merge: bool) -> bands.OutputFormat:
        merge = "paper" if self.protocol == "paper" else "blend"
        return bands.OutputFormat(merge, self.overlap, bit_depth, float_merge)

    def _budget_offsets(self, program, image, grid, shape, plan, blocks, budget) -> tuple[np.ndarray, bool]:
        """The budget's first pass: every tile's logits, then the offsets that hold this image to the cap."""
        pending = []
        for band in plan:
            inputs = band_plan.band_inputs(image, grid, band, shape, blocks)
            pending.append((inputs.slot_of_tile, program(self._placed, *self.programs.put(inputs)[:2])))
        logits = np.concatenate([np.asarray(out)[slots] for slots, out in pending])
        return budget_offsets(logits, self.flops.branches, budget, self.flops.classifier)

    def upscale(self, lr: np.ndarray, *, budget: float | None = None, force_class: int | None = None,
                bit_depth: int = 8, float_merge: bool | None = None) -> UpscaleResult:
        """lr: (H, W, 3) uint8, uint16 or float in [0, 1], any size from 1×1 (paper protocol: at least one tile).

        budget: hold the FLOPs per tile (the Class-Module's included) to at most this fraction of the -O
        network's: free routing when it fits, else the least useful tiles move to cheaper branches
        (`budget_offsets`). force_class: send every tile to this branch (0-based). bit_depth: 8 or 16, the
        quantised output. float_merge: also keep the paper protocol's float merge (`sr_255`, what its PSNR is
        computed on); default: for the paper protocol.
        """
        check_routing(self.spec, budget, force_class)
        image = np.asarray(lr)
        if image.ndim != 3 or image.shape[-1] != 3:
            raise ValueError(f"expected an RGB image of shape (H, W, 3), got {image.shape}")
        if image.dtype not in (np.uint8, np.uint16):
            image = image.astype(np.float32, copy=False)
        if bit_depth not in (8, 16):
            raise ValueError(f"bit_depth must be 8 or 16, got {bit_depth}")
        float_merge = self.protocol == "paper" if float_merge is None else float_merge
        grid = tiling.make_grid(image.shape[0], image.shape[1], self.protocol, self.tile, self.step, self.overlap)
        shape = self.band_shape(grid)
        fmt = self._output_format(bit_depth, float_merge)
        compile_before = self.programs.compile_seconds
        program = self.programs.route(self._placed, shape, image.dtype, fmt)  # compiled outside inference_s
        with_budget = budget is not None and force_class is None
        classify = self.programs.classify(self._placed, shape, image.dtype) if with_budget else None
        t0 = time.perf_counter()
        image = band_plan.padded_image(image, grid)
        plan = band_plan.plan_bands(grid, shape.rows)
        blocks = band_plan.deal_blocks(grid, shape.devices)
        offsets, met = np.zeros(self.spec.num_branches, np.float32), None
        if with_budget:
            offsets, met = self._budget_offsets(classify, image, grid, shape, plan, blocks, budget)
        out = _Outputs(grid, blocks, self.spec.scale, self.spec.num_branches, bit_depth, float_merge, self.buckets)
        host_s = self._run_bands(program, image, grid, shape, fmt, plan, blocks, offsets, force_class, out)
        elapsed = time.perf_counter() - t0
        classified = shape.slots * len(plan) if self.spec.kind == "classsr" else 0
        figure = flops_lib.paper_flops_figure(out.counts, self.flops, self.spec.network)
        return UpscaleResult(
            sr=out.sr,
            sr_255=out.sr_255,
            grid=grid,
            classes=out.classes,
            class_counts=[int(c) for c in out.counts],
            flops=figure,
            flops_percent=100.0 * figure / self.flops.original,
            executed_flops=flops_lib.executed_flops(self.computed_flops, out.padded, classified),
            logit_offsets=[float(o) for o in offsets],
            budget=budget,
            budget_met=met,
            devices=self.routed.num_devices,
            compile_s=self.programs.compile_seconds - compile_before,
            inference_s=elapsed,
            host_s=host_s,
        )

    def _run_bands(self, program, image, grid, shape, fmt, plan, blocks, offsets, force_class,
                   out: "_Outputs") -> float:
        """Dispatches every band, collecting each one's rows after the next one is queued, so the device never
        waits for the host; returns the seconds the host spent preparing bands and storing rows."""
        scale, put = self.spec.scale, self.programs.put_replicated
        put_offsets = put(offsets, np.float32)
        put_force = put(-1 if force_class is None else force_class)
        block_x, block_finished = self.programs.put_blocks(blocks)
        carry = self.programs.empty_carry(shape)
        band_rows = shape.lr_hw[0] * scale
        row_weights = bands.axis_weights(grid, fmt, scale, 0, grid.padded_hw[0] * scale + band_rows)
        col_weights = put(bands.axis_weights(grid, fmt, scale, 1, shape.lr_hw[1] * scale), np.float32)
        host_s, pending = 0.0, None
        for band in plan:
            t = time.perf_counter()
            inputs = band_plan.band_inputs(image, grid, band, shape, blocks)
            lr_band, positions, valid = self.programs.put(inputs)
            next_base = put(band.next_base - band.base if band.next_base else 0)
            top = band.base * scale
            band_weights = put(row_weights[top : top + band_rows], np.float32)
            host_s += time.perf_counter() - t
            outputs = program(self._placed, lr_band, positions, valid, block_x, block_finished, carry, next_base,
                              band_weights, col_weights, put_offsets, put_force)
            carry = outputs[2]
            if pending is not None:
                host_s += out.store(*pending)
            pending = (band, inputs, outputs)
        return host_s + out.store(*pending)


class _Outputs:
    """What the bands of one image return, gathered on the host: the finished rows, each tile's branch, and
    the class counts (real and with each device's bucket padding)."""

    def __init__(self, grid: tiling.TileGrid, blocks: band_plan.Blocks, scale: int, num_branches: int,
                 bit_depth: int, float_merge: bool, buckets: Buckets):
        self.grid, self.blocks, self.scale, self.buckets = grid, blocks, scale, buckets
        self.hw = (grid.covered_hw[0] * scale, grid.covered_hw[1] * scale)
        self.sr = np.empty(self.hw + (3,), np.uint8 if bit_depth == 8 else np.uint16)
        self.sr_255 = np.empty(self.hw + (3,), np.float32) if float_merge else None
        self.classes = np.zeros(grid.num_tiles, np.int32)
        self.counts = np.zeros(num_branches, np.int64)
        self.padded = np.zeros(num_branches, np.int64)

    def store(self, band: band_plan.Band, inputs: band_plan.BandInputs, outputs) -> float:
        """Copies one band's results into place (waiting for the device first); returns the host's seconds."""
        rows, merged, _, band_classes, device_counts = outputs
        rows = np.asarray(rows)  # waits for the device
        t = time.perf_counter()
        merged = None if merged is None else np.asarray(merged)
        top = band.base * self.scale
        n = min(band.finished * self.scale, self.hw[0] - top)
        block = rows.shape[0] // self.blocks.x.size  # each device's rows, one block after another
        for d, (x, finished) in enumerate(zip(self.blocks.x, self.blocks.finished)):
            left = int(x) * self.scale
            width = min(int(finished) * self.scale, self.hw[1] - left)
            if width <= 0:
                continue
            self.sr[top : top + n, left : left + width] = rows[d * block : d * block + n, :width]
            if merged is not None:
                self.sr_255[top : top + n, left : left + width] = merged[d * block : d * block + n, :width]
        cols = self.grid.grid_shape[1]
        self.classes[band.first_row * cols : band.stop_row * cols] = np.asarray(band_classes)[inputs.slot_of_tile]
        per_device = np.asarray(device_counts)
        self.counts += per_device.sum(0)
        self.padded += [sum(self.buckets.padded(int(c)) for c in per_device[:, j]) for j in range(per_device.shape[1])]
        return time.perf_counter() - t
