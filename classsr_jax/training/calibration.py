"""Routing calibration: shifts the Class-Module's logits so that routing (the argmax) sends the same share of
the stage's own training tiles to every branch, the balance the Average-Loss asks for. An addition: the
original has no such step.

Why: joint training sees the Class-Module only through the soft mixture Σ_k p_k·SR_k, and the Average-Loss
balances the probability mass per branch, not the argmax. In a short joint stage the argmax is left to chance:
a Class-Module pushed to one-hot outputs (a strong Class-Loss) can send every tile to the hard branch, whose
L1 is lowest everywhere, while still ranking the tiles by how much they gain from it; one left near uniform
(a weak Class-Loss) has argmax shares set by a shared bias that flips between validations. Offsets that make
the argmax shares equal on the training tiles keep the order of the tiles and set only that bias. A
Class-Module whose routing is already balanced is left nearly as it was.

The offsets are added to the bias of the Class-Module's last layer, so the calibrated model is an ordinary
ClassSR model: every tool routes it the same way.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterator
from typing import Any

import jax
import numpy as np

from classsr_jax import parallel
from classsr_jax.data.input_pipeline import finish_batch
from classsr_jax.inference.routing import class_logits
from classsr_jax.models.spec import ModelSpec


def balance_offsets(logits: np.ndarray, target_shares: np.ndarray, cycles: int = 50) -> np.ndarray:
    """Logit offsets (the last class's 0) with which the argmax of `logits` (n, M) sends about
    target_shares[k]·n of the n rows to class k.

    The share of class k only grows with its offset, so each offset in turn is bisected to its class's target
    while the others are held; the cycles repeat until every share is within one row of its target (ties
    aside). The offsets start by equalising the classes' mean logits, since a shared bias can lie far outside
    the spread of the rows.
    """
    logits = np.asarray(logits, np.float64)
    n, num_classes = logits.shape
    target = np.clip(np.asarray(target_shares, np.float64), 0.0, None)
    target = target / target.sum()
    centred = logits - logits.mean(axis=1, keepdims=True)
    if float(centred.std(axis=0).max()) == 0.0:
        return np.zeros(num_classes, np.float32)  # every row alike: no offset splits them
    offsets = -centred.mean(axis=0)

    def shares(b):
        return np.bincount(np.argmax(centred + b, axis=1), minlength=num_classes) / n

    for _ in range(cycles):
        for k in range(num_classes - 1):
            # Moving offset k by the whole range of the shifted logits takes its share to 0 or to 1.
            width = float(np.ptp(centred + offsets)) + 1e-30
            lo, hi = offsets[k] - width, offsets[k] + width
            for _ in range(60):
                offsets[k] = 0.5 * (lo + hi)
                if shares(offsets)[k] < target[k]:
                    lo = offsets[k]
                else:
                    hi = offsets[k]
            offsets[k] = hi
        if np.abs(shares(offsets) - target).max() <= 1.0 / n:
            break
    return (offsets - offsets[-1]).astype(np.float32)


def argmax_shares(logits: np.ndarray) -> np.ndarray:
    """Share of the rows whose argmax is each class."""
    return np.bincount(np.argmax(logits, axis=-1), minlength=logits.shape[-1]) / max(len(logits), 1)


def draw_tiles(make_iterator: Callable[[int], Iterator[dict[str, np.ndarray]]], seed: int, count: int) -> np.ndarray:
    """This process's share of `count` LR training tiles from a stage's own iterator (its data, its augmentation)."""
    iterator = make_iterator(seed)
    try:
        first = finish_batch(next(iterator))["lr"]
        per_process = math.ceil(count / jax.process_count())
        batches = [first] + [finish_batch(next(iterator))["lr"] for _ in range(math.ceil(per_process / len(first)) - 1)]
    finally:
        if hasattr(iterator, "close"):
            iterator.close()
    return np.concatenate(batches)[:per_process]


class RoutingCalibrator:
    """`calibrate(variables)`: the variables with a Class-Module bias that routes these tiles in equal shares;
    `calibrate_with_report` also returns the shares before and after (the latter as float32 computes them),
    the probability mass and the offsets. The tiles are this process's; the logits of every process's tiles
    are gathered first, so all processes compute the same offsets."""

    def __init__(self, spec: ModelSpec, tiles: np.ndarray):
        model = spec.build()
        self.tiles = np.asarray(tiles, np.float32)
        self._classify = jax.jit(functools.partial(class_logits, model))

    def logits(self, variables: dict[str, Any]) -> np.ndarray:
        local = np.asarray(self._classify(variables, self.tiles), np.float32)
        return parallel.gather_rows(local)

    def _calibrated(self, variables: dict[str, Any]) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
        logits = self.logits(variables)
        offsets = balance_offsets(logits, np.full(logits.shape[1], 1.0 / logits.shape[1]))
        params = jax.tree_util.tree_map(np.asarray, dict(variables["params"]))
        fc = params["classifier"]["fc"]
        bias = (fc["bias"] + offsets).astype(fc["bias"].dtype)
        params["classifier"] = {**params["classifier"], "fc": {**fc, "bias": bias}}
        return {**variables, "params": params}, logits, offsets

    def calibrate(self, variables: dict[str, Any]) -> dict[str, Any]:
        return self._calibrated(variables)[0]

    def calibrate_with_report(self, variables: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        calibrated, logits, offsets = self._calibrated(variables)
        probs = np.asarray(jax.nn.softmax(logits, axis=-1), np.float64)
        report = {
            "tiles": int(len(logits)),
            "probability_mass": probs.mean(axis=0).tolist(),
            "argmax_shares_before": argmax_shares(logits).tolist(),
            "argmax_shares_after": argmax_shares(self.logits(calibrated)).tolist(),
            "offsets": offsets.tolist(),
        }
        return calibrated, report
