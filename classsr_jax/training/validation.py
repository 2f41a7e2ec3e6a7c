"""Validation during training: whole-image PSNR (and FLOPs, class shares) through the inference engine, losses
and class statistics on validation tiles, images for TensorBoard, and the classifier-collapse warning.

Validation PSNR is the mean over images (the original logs their sum).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from absl import logging

from classsr_jax import parallel
from classsr_jax.errors import DataError
from classsr_jax.evaluation.scoring import evaluate_pairs
from classsr_jax.inference.class_map import class_map_overlay
from classsr_jax.inference.upscaler import Upscaler
from classsr_jax.io.pixels import to_float01, to_uint8
from classsr_jax.models.spec import ModelSpec
from classsr_jax.training.losses import Objective

CLASS_NAMES = ("simple", "medium", "hard")


def validation_tiles(pairs, lr_patch: int, scale: int, limit: int) -> dict[str, np.ndarray]:
    """Non-overlapping LR tiles (and their HR) of the validation images, row-major, at most `limit`."""
    lrs, hrs = [], []
    for _, lr, hr in pairs:
        for y in range(0, lr.shape[0] - lr_patch + 1, lr_patch):
            for x in range(0, lr.shape[1] - lr_patch + 1, lr_patch):
                lrs.append(lr[y : y + lr_patch, x : x + lr_patch])
                hrs.append(hr[y * scale : (y + lr_patch) * scale, x * scale : (x + lr_patch) * scale])
                if len(lrs) >= limit:
                    break
            if len(lrs) >= limit:
                break
    if not lrs:
        raise DataError(f"the validation images hold no {lr_patch} px LR tile")
    return {
        "lr": to_float01(np.stack(lrs)),
        "hr": to_float01(np.stack(hrs)),
    }


def summarize_eval(sums: dict[str, np.ndarray], objective: Objective) -> dict[str, Any]:
    """Validation metrics from summed `train.eval_step` outputs; Average-Loss treats all tiles as one batch."""
    n = float(sums["count"])
    out = {"l1": float(sums["l1_sum"]) / n, "tile_psnr": float(sums["psnr_sum"]) / n}
    if objective.is_classsr:
        mass = np.asarray(sums["mass"], np.float64)
        m = mass.shape[0]
        out["class_loss"] = float(sums["class_loss_sum"]) / n
        out["average_loss"] = float(np.sum(np.abs(mass - n / m)) / (2 * (m - 1) * n / m))
        out["loss"] = objective.total(out["l1"], out["class_loss"], out["average_loss"])
        out["prob_mass"] = (mass / n).tolist()
        out["argmax_share"] = (np.asarray(sums["argmax_count"], np.float64) / n).tolist()
    else:
        out["loss"] = objective.total(out["l1"])
    return out


def scalar_summaries(prefix: str, metrics: dict[str, Any]) -> dict[str, float]:
    """Flat scalars for TensorBoard; a per-class vector becomes `<prefix>/<name>/<class>`."""
    out = {}
    for key, value in metrics.items():
        value = np.asarray(value)
        if value.ndim == 0:
            out[f"{prefix}/{key}"] = float(value)
        else:
            for k, v in enumerate(value.tolist()):
                label = CLASS_NAMES[k] if len(value) == len(CLASS_NAMES) else str(k)
                out[f"{prefix}/{key}/{label}"] = float(v)
    return out


class Validator:
    """Validation of one stage's model: whole-image PSNR (and FLOPs, class shares) through inference.Upscaler,
    losses and class statistics on validation tiles through `eval_step`, and images for TensorBoard.

    `eval_step(variables, batch)` is the per-device step (`train.eval_step` with its model and objective bound).
    Runs on this process's devices only: every process computes the same numbers from the same data.
    """

    def __init__(self, pairs, spec: ModelSpec, objective: Objective, eval_step: Callable, *, protocol: str,
                 lr_patch: int, num_tiles: int, batch_size: int):
        self.pairs, self.spec, self.objective = pairs, spec, objective
        # Each validation builds an Upscaler for its weights; the compiled band programs are shared, so only the
        # first compiles.
        self.upscaler_options = dict(protocol=protocol, tile=lr_patch, step=lr_patch * 7 // 8, overlap=lr_patch // 4)
        self.mesh = parallel.local_mesh()
        devices = self.mesh.devices.size
        batch = max(devices, -(-batch_size // devices) * devices)
        tiles = validation_tiles(pairs, lr_patch, spec.scale, num_tiles)
        n = tiles["lr"].shape[0]
        padded = -(-n // batch) * batch
        self.batches = []
        for start in range(0, padded, batch):
            chunk = {k: np.zeros((batch,) + v.shape[1:], np.float32) for k, v in tiles.items()}
            weight = np.zeros((batch,), np.float32)
            stop = min(n, start + batch)
            for k, v in tiles.items():
                chunk[k][: stop - start] = v[start:stop]
            weight[: stop - start] = 1.0
            chunk["weight"] = weight
            self.batches.append(chunk)
        self._eval = parallel.data_parallel(
            eval_step, self.mesh, donate_state=False, out_specs=jax.sharding.PartitionSpec()
        )

    def __call__(self, variables: dict[str, Any], step: int, writer) -> dict[str, Any]:
        placed = jax.device_put(variables, parallel.replicated(self.mesh))
        sums = None
        for batch in self.batches:
            out = self._eval(placed, jax.device_put(batch, parallel.batch_sharded(self.mesh)))
            out = jax.tree_util.tree_map(np.asarray, out)
            sums = out if sums is None else jax.tree_util.tree_map(np.add, sums, out)
        metrics = summarize_eval(sums, self.objective)
        upscaler = Upscaler(self.spec, variables, **self.upscaler_options)
        report = evaluate_pairs(upscaler, self.pairs)["average"]
        metrics.update(psnr=report["psnr"], psnr_y=report["psnr_y"], ssim_y=report["ssim_y"])
        if self.spec.kind == "classsr":
            metrics.update(flops_percent=report["flops_percent"], class_ratio=report["class_ratio"])
        writer.write_scalars(step, scalar_summaries("val", metrics))
        # An SR sample and its class map (the first validation image).
        result = upscaler.upscale(self.pairs[0][1])
        sr = to_uint8(result.sr)
        images = {"val/sr": sr[None]}
        if self.spec.kind == "classsr":
            overlay = class_map_overlay(sr, result.grid.hr_boxes(self.spec.scale), result.classes)
            images["val/class_map"] = overlay[None]
        writer.write_images(step, images)
        return metrics


class CollapseMonitor:
    """Warns when one class takes more than `threshold` of the tiles (classifier collapse, which users of the
    original hit often): once when it starts, again at every validation while it lasts, and says when it ends."""

    def __init__(self, threshold: float):
        self.threshold = threshold
        self.collapsed: dict[str, bool] = {}

    def __call__(self, shares, where: str, step: int, always: bool = False) -> bool:
        shares = np.asarray(shares, np.float64)
        collapsed = bool(shares.size and shares.max() > self.threshold)
        if collapsed and (always or not self.collapsed.get(where)):
            k = int(shares.argmax())
            label = CLASS_NAMES[k] if shares.size == len(CLASS_NAMES) else str(k)
            logging.warning(
                "classifier collapse at step %d: class %d (%s) takes %.0f%% of the %s tiles (more than %.0f%%); "
                "check the Average-Loss weight and that the branches were trained on their classes",
                step, k, label, 100 * shares.max(), where, 100 * self.threshold,
            )
        elif not collapsed and self.collapsed.get(where):
            logging.info(
                "step %d: the %s tiles are spread over the classes again (largest share %.0f%%)",
                step, where, 100 * shares.max()
            )
        self.collapsed[where] = collapsed
        return collapsed
