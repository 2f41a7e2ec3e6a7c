"""Whole-image ClassSR inference: tile, classify, route, merge; budgets, reports and evaluation.

`Upscaler` is the library entry point that `upscale`, `evaluate`, training validation and the notebooks
share. Tiles are processed in chunks whose sizes come from a short list (`default_chunk_sizes`), so images of any
size reuse the same few compiled programs, and the HR canvas is merged incrementally chunk by chunk.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import jax
import numpy as np

from classsr_jax import flops as flops_lib
from classsr_jax import tiling
from classsr_jax.models.registry import ModelSpec
from classsr_jax.routing import Buckets, RoutedModel

# Tiles per device call (before rounding up to a multiple of the device count). A chunk of n tiles uses the
# smallest size ≥ n; bigger images are cut into chunks of the largest size. On a CPU every padded tile costs
# its classifier pass and a slice of a freshly allocated output buffer, and bigger calls gain nothing, so the
# sizes are small (with the CPU buckets, a 256×256 image's 121 tiles ran ClassSR-FSRCNN 1.32× faster as one chunk of
# 128 than with the accelerator sizes, BENCHMARKS.md); accelerators want big calls.
CPU_CHUNK_SIZES = (32, 128)
ACCELERATOR_CHUNK_SIZES = (64, 256, 1024)


def default_chunk_sizes(platform: str | None = None) -> tuple[int, ...]:
    """The chunk sizes for a JAX platform ('cpu', 'gpu', 'tpu'; default: the default backend's)."""
    platform = platform or jax.default_backend()
    return CPU_CHUNK_SIZES if platform == "cpu" else ACCELERATOR_CHUNK_SIZES


@dataclasses.dataclass
class UpscaleResult:
    sr: np.ndarray  # float32 (scale·H, scale·W, 3) in [0, 1] (paper protocol: the covered area)
    sr_255: np.ndarray | None  # paper protocol: the original's float merge on [0, 255]
    grid: tiling.TileGrid
    classes: np.ndarray  # (tiles,) branch of every tile
    class_counts: list[int]
    flops: float  # the paper's figure: mean FLOPs per tile (paper convention)
    flops_percent: float  # of the -O network
    executed_flops: float  # computed for this image: bucket padding, widened branches and the classifier included
    logit_offsets: list[float]
    compile_s: float
    inference_s: float

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
            "timing": {"compile_s": self.compile_s, "inference_s": self.inference_s},
        }


def budget_offsets(logits: np.ndarray, branch_flops, budget: float) -> np.ndarray:
    """Logit offsets −λ·F_k/F_O that bring the mean branch FLOPs of these tiles closest to budget·F_O.

    Mean FLOPs of argmax(logits − λ·F/F_O) never increase with λ, so bisection finds the λ where the mean
    crosses the budget; of the two routings on either side, the closer one wins.
    """
    cost = np.asarray(branch_flops, np.float64) / float(branch_flops[-1])
    target = budget * float(branch_flops[-1])
    logits = np.asarray(logits, np.float64)

    def mean_flops(lam):
        return float(np.mean(np.asarray(branch_flops)[np.argmax(logits - lam * cost, axis=-1)]))

    gaps = np.diff(np.sort(np.unique(cost)))
    span = (logits.max() - logits.min()) / (gaps.min() if gaps.size else 1.0) + 1.0
    lo, hi = -span, span  # lo: everything to the costliest branch; hi: to the cheapest
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if mean_flops(mid) > target:
            lo = mid
        else:
            hi = mid
    lam = min((lo, hi), key=lambda v: abs(mean_flops(v) - target))
    return (-lam * cost).astype(np.float32)


class Upscaler:
    """Routed ClassSR (or single-network) inference for whole images of any size.

    protocol: 'full' (default; output exactly scale·H × scale·W, blended overlaps) or 'paper' (spec §5: 32/28
    grid, no border tiles, uint8-rounded tiles averaged, output cropped to the covered area).
    force_class: send every tile to this branch (0-based). budget: fraction of the -O FLOPs to aim at.
    buckets, chunk_sizes: default to the measured best for the backend (`default_buckets`,
    `default_chunk_sizes`): small on a CPU, big on GPUs and TPUs.
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
        force_class: int | None = None,
        budget: float | None = None,
        buckets: Buckets | None = None,
        chunk_sizes: tuple[int, ...] | None = None,
    ):
        if protocol not in ("full", "paper"):
            raise ValueError(f"unknown protocol {protocol!r}: use 'full' or 'paper'")
        if force_class is not None and not 0 <= force_class < spec.num_branches:
            raise ValueError(f"--force-class {force_class} is out of range: the model has {spec.num_branches} branches (0–{spec.num_branches - 1})")
        if budget is not None and not 0.0 < budget:
            raise ValueError(f"--budget must be a positive fraction of the -O FLOPs, got {budget}")
        if budget is not None and spec.kind != "classsr":
            raise ValueError("--budget needs a ClassSR model; this checkpoint is a single network")
        self.spec = spec
        self.protocol, self.tile, self.step, self.overlap = protocol, tile, step, overlap
        self.force_class, self.budget = force_class, budget
        self.routed = RoutedModel(spec, buckets)  # resolves the default buckets for the backend
        self.buckets = self.routed.buckets
        chunk_sizes = chunk_sizes or default_chunk_sizes()
        devices = self.routed.num_devices
        self.chunk_sizes = tuple(sorted({-(-c // devices) * devices for c in chunk_sizes}))
        self.flops = flops_lib.model_flops(spec, tile)
        # What the device computes: branches widened for speed (`RoutedModel.compute_spec`) cost their wide FLOPs.
        self.computed_flops = flops_lib.model_flops(self.routed.compute_spec, tile)
        self._variables = None
        self._placed = None
        if variables is not None:
            self.set_variables(variables)

    @property
    def num_compilations(self) -> int:
        return self.routed.num_compilations

    def set_variables(self, variables) -> None:
        """New weights (e.g. during training) reuse the compiled programs."""
        self._variables = variables
        self._placed = self.routed.place_variables(variables)

    def _chunks(self, n: int):
        """(start, stop, padded size) of each chunk of n tiles."""
        largest = self.chunk_sizes[-1]
        start = 0
        while start < n:
            stop = min(n, start + largest)
            size = next(c for c in self.chunk_sizes if c >= stop - start)
            yield start, stop, size
            start = stop

    def _padded_tiles(self, image, grid, start, stop, size):
        tiles = np.zeros((size, self.tile, self.tile, 3), np.float32)
        tiles[: stop - start] = tiling.extract_tiles(image, grid, np.arange(start, stop))
        valid = np.arange(size) < stop - start
        return tiles, valid

    def upscale(self, lr: np.ndarray, variables=None) -> UpscaleResult:
        """lr: float (H, W, 3) in [0, 1], any size from 1×1 (paper protocol: at least one tile)."""
        if variables is not None:
            self.set_variables(variables)
        if self._placed is None:
            raise ValueError("no variables: pass them to Upscaler(...) or upscale(..., variables=...)")
        lr = np.asarray(lr, np.float32)
        if lr.ndim != 3 or lr.shape[-1] != 3:
            raise ValueError(f"expected an RGB image of shape (H, W, 3), got {lr.shape}")
        compile_before = self.routed.compile_seconds
        t0 = time.perf_counter()
        grid = tiling.make_grid(lr.shape[0], lr.shape[1], self.protocol, self.tile, self.step, self.overlap)
        merger = tiling.TileMerger(grid, self.spec.scale)
        k = self.spec.num_branches
        offsets = np.zeros(k, np.float32)
        if self.budget is not None and self.force_class is None:
            logits = []
            for start, stop, size in self._chunks(grid.num_tiles):
                tiles, _ = self._padded_tiles(lr, grid, start, stop, size)
                logits.append(np.asarray(self.routed.classify(self._placed, tiles))[: stop - start])
            offsets = budget_offsets(np.concatenate(logits), self.flops.branches, self.budget)
        force = -1 if self.force_class is None else self.force_class
        classes = np.zeros(grid.num_tiles, np.int32)
        counts = np.zeros(k, np.int64)
        padded = np.zeros(k, np.int64)
        classified = 0
        pending = None  # overlap the host's tile cutting and merging with the device's routing

        def collect(item):
            nonlocal classified
            (start, stop, size), (sr, cls, _logits, dev_counts) = item
            merger.add(np.arange(start, stop), np.asarray(sr)[: stop - start])
            classes[start:stop] = np.asarray(cls)[: stop - start]
            per_device = np.asarray(dev_counts)
            counts[:] += per_device.sum(0)
            padded[:] += [sum(self.buckets.padded(int(c)) for c in per_device[:, j]) for j in range(k)]
            classified += size if self.spec.kind == "classsr" else 0

        for chunk in self._chunks(grid.num_tiles):
            tiles, valid = self._padded_tiles(lr, grid, *chunk)
            result = self.routed.route(self._placed, tiles, valid, offsets, force)
            if pending is not None:
                collect(pending)
            pending = (chunk, result)
        collect(pending)
        sr_255 = merger.result_255() if self.protocol == "paper" else None
        sr = merger.result()
        elapsed = time.perf_counter() - t0
        compile_s = self.routed.compile_seconds - compile_before
        figure = flops_lib.paper_flops_figure(counts, self.flops, self.spec.network)
        return UpscaleResult(
            sr=sr,
            sr_255=sr_255,
            grid=grid,
            classes=classes,
            class_counts=[int(c) for c in counts],
            flops=figure,
            flops_percent=100.0 * figure / self.flops.original,
            executed_flops=flops_lib.executed_flops(counts, self.computed_flops, padded, classified),
            logit_offsets=[float(o) for o in offsets],
            compile_s=compile_s,
            inference_s=elapsed - compile_s,
        )
