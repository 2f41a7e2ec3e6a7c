"""Stage divide: every training tile scored by the -O network (or bicubic) and split into simple / medium / hard
(the division the branches and joint training draw their tiles from)."""

from __future__ import annotations

import os
import time

import jax
from absl import logging

from classsr_jax import checkpointing, parallel
from classsr_jax.data import division as division_lib
from classsr_jax.training import configuration
from classsr_jax.training.context import StageContext
from classsr_jax.training.workdir import original_source


def run_divide(ctx: StageContext) -> None:
    """Scores every training tile with the -O network (or bicubic) and splits them into three classes."""
    path = ctx.workdir.division
    if parallel.process0_value(os.path.isfile(path)):
        logging.info("stage divide: finished earlier (%s), skipping", path)
        return
    cfg, scale, patch = ctx.config.division, ctx.spec.scale, ctx.lr_patch
    source = original_source(ctx.config, ctx.workdir) if cfg.reference == "original" else None
    local_devices = len(jax.local_devices())
    batch = -(-cfg.batch_size // local_devices) * local_devices
    if source:
        loaded = checkpointing.load_model(source)
        model = loaded.spec.build()
        sr_fn = parallel.local_batch_fn(lambda v, x: model.apply(v, x, False), loaded.variables)
        reference = f"-O network {source}"
    else:
        if cfg.reference == "original":
            logging.warning(
                "stage divide: no -O network (stage original not run, no pretrained.original); using bicubic"
            )
        sr_fn = division_lib.bicubic_sr_fn(scale)
        reference = "bicubic"
    logging.info("stage divide: scoring the training tiles with %s", reference)
    counter = {"tiles": 0, "t0": time.perf_counter(), "last": time.perf_counter()}

    def scored(tiles):
        out = sr_fn(tiles)
        counter["tiles"] += tiles.shape[0]
        now = time.perf_counter()
        if now - counter["last"] > 30:
            counter["last"] = now
            logging.info(
                "stage divide: %d tiles scored (%.0f tiles/s)",
                counter["tiles"], counter["tiles"] / (now - counter["t0"])
            )
        return out

    division = division_lib.divide(
        ctx.train_dataset(),
        scored,
        scale,
        thresholds=configuration.division_thresholds(ctx.config),
        batch_size=batch,
        lr_tile=patch,
        step=patch // 2,
        max_uncovered=patch * 3 // 8,
    )
    if parallel.is_primary_process():
        division_lib.save_division(division, path)
    parallel.sync_processes("division")
    simple, medium, hard = division.counts()
    logging.info(
        "stage divide: %d tiles → %d simple / %d medium / %d hard (thresholds %.3f, %.3f dB), saved to %s",
        division.num_tiles, simple, medium, hard, *division.thresholds, path,
    )
