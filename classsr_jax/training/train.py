"""ClassSR training: the whole recipe as stages in one workdir, resumable and data parallel.

This module holds `train_and_evaluate`, which runs the stages the config selects in one workdir, locked
against a second run. The train state and the steps are in `steps` (and importable from here), the loop that
trains one stage in `loop`, what each stage trains in `stages`, the workdir's layout and checks in `workdir`,
validation in `validation`.

A rerun skips finished stages and resumes an interrupted one from its last checkpoint (see `loop`); a rerun
whose config differs from the workdir's config.json in more than the stages and step counts is refused unless
`allow_changed` names the fields. Ctrl-C or SIGTERM end the run with `guard.TrainingInterrupted`.

Deliberate differences from the original:
- Frozen branches run in inference mode (CARN's BatchNorm uses its stored statistics), and only the
  classifier is differentiated, so the branches' backward pass does not exist.
- Validation PSNR is the mean over images (the original logs the sum).
- Average-Loss generalises the normaliser 4n/M to 2(M−1)n/M (identical for M = 3).
- The division scores tiles with the network's own -O (stage original); the paper used one MSRResNet for all.
- A stage longer than its cosine period restarts the cosine (weight 1) where train_RCAN.yml crashes.
- Data parallel BatchNorm (CARN branch training) normalises with each device's statistics, as DataParallel
  without SyncBN does; the running statistics are averaged over devices.
"""

from __future__ import annotations

import os
from typing import Any

import jax.numpy as jnp
from absl import logging

from classsr_jax import parallel
from classsr_jax.errors import ConfigError, TrainError
from classsr_jax.training import configuration, divide, guard, stages
from classsr_jax.training.loop import MAX_STEPS_IN_FLIGHT, StepMetrics, StepsInFlight, data_seed, train_stage
from classsr_jax.training.steps import (
    TrainState,
    abstract_train_state,
    create_train_state,
    eval_step,
    learning_rate_schedule,
    make_optimizer,
    merge_variables,
    split_params,
    train_step,
)
from classsr_jax.training.workdir import Workdir, preflight, record_config

# The steps and the loop's pieces live in `steps` and `loop`; scripts and notebooks import them from here.
__all__ = [
    "MAX_STEPS_IN_FLIGHT", "StepMetrics", "StepsInFlight", "TrainState", "abstract_train_state", "create_train_state",
    "data_seed", "eval_step", "learning_rate_schedule", "make_optimizer", "merge_variables", "split_params",
    "train_and_evaluate", "train_stage", "train_step",
]


# ----------------------------------------------------------------------------------------------- entry point


def _check_batch_sizes(config, mesh, selected: tuple[str, ...]) -> None:
    """Every selected training stage's global batch must split evenly over the devices."""
    devices = mesh.devices.size
    for stage in configuration.TRAINING_STAGES:
        batch = config[stage].batch_size
        if stage in selected and batch % devices:
            suggestion = -(-batch // devices) * devices
            raise ConfigError(
                f"config field {stage}.batch_size is {batch}, which does not split evenly over {devices} devices; "
                f"use a multiple of {devices}, e.g. --config.{stage}.batch_size={suggestion}"
            )


def train_and_evaluate(config, workdir: str) -> dict[str, Any]:
    """Runs the selected stages of the recipe in `workdir`; returns {'stages': [...], 'variables': {stage:
    final host variables of every training stage run (or skipped as finished)}, 'evaluation': results}.

    Raises a UserError (one line) for a bad config, missing data, an incompatible workdir or one that another
    run is using; such a failure happens before anything is written, and a bad batch size before any dataset is
    prepared. Ctrl-C or SIGTERM raise `guard.TrainingInterrupted` once the checkpoints started are finished.
    """
    configuration.validate_config(config)
    parallel.use_cpu_devices(config.cpu_devices)  # from a notebook; main has done it before JAX started
    spec = configuration.model_spec(config)
    selected = configuration.selected_stages(config)
    work = Workdir(os.path.abspath(os.path.expanduser(workdir)))
    mesh = parallel.create_mesh()
    _check_batch_sizes(config, mesh, selected)
    lock = guard.WorkdirLock(work.root)
    where = [f"before stage {selected[0]}"]
    with guard.sigterm_raises():
        try:
            ctx = _open_run(config, work, spec, mesh, selected, lock)
            return _run_stages(ctx, selected, where)
        except (KeyboardInterrupt, guard.Terminated) as e:
            raise guard.TrainingInterrupted(where[0], guard.signal_number(e)) from None
        finally:
            lock.release()


def _open_run(config, work: Workdir, spec, mesh, selected: tuple[str, ...],
              lock: guard.WorkdirLock) -> stages.StageContext:
    """Checks everything that can be checked, opens the data, then creates and locks the workdir and records
    the config in it."""
    preflight(config, work, spec, selected)
    ctx = stages.StageContext(config, work, spec, mesh, jnp.bfloat16 if config.half_precision else jnp.float32)
    # Open the data now, so that missing data fails before the workdir is touched.
    if any(s != "evaluate" for s in selected):
        ctx.train_dataset()
    if any(s in configuration.TRAINING_STAGES for s in selected) or "validation" in config.evaluate.datasets:
        ctx.validation_pairs()
    if parallel.is_primary_process():
        try:
            os.makedirs(work.root, exist_ok=True)
        except OSError as e:
            raise TrainError(f"cannot create workdir {work.root}: {e.strerror or e}") from None
        lock.acquire()
        record_config(config, work, spec)
    parallel.sync_processes("workdir")
    logging.info(
        "workdir %s: %s, stages %s, %d devices",
        work.root, spec.describe(), ",".join(selected), mesh.devices.size
    )
    return ctx


def _run_stages(ctx: stages.StageContext, selected: tuple[str, ...], where: list[str]) -> dict[str, Any]:
    """Runs the stages in order; `where[0]` names the one under way (for an interruption's message)."""
    evaluation, variables = None, {}
    for stage in selected:
        where[0] = f"stage {stage}"
        if stage == "divide":
            divide.run_divide(ctx)
        elif stage == "evaluate":
            evaluation = stages.run_evaluate(ctx)
        else:
            for unit in stages.plan_training(ctx, stage):
                where[0] = f"stage {unit.name}"
                variables[unit.name] = train_stage(ctx, unit)
    return {"stages": list(selected), "variables": variables, "evaluation": evaluation}
