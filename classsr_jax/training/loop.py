"""The loop that trains one stage: resume from its last readable checkpoint, step, log, validate, save, and write
the stage's model.

A rerun skips a finished stage and resumes an interrupted one from its last checkpoint; a latest checkpoint
that cannot be read (a damaged disk) is moved aside to `unreadable_checkpoints/` and the one before it is used.
The data pipeline is re-seeded deterministically from (seed, stage, step), so the same interrupted command gives
the same run. A non-finite loss or gradient norm stops the stage with a one-line TrainError naming the step; its
last checkpoint stays the latest, and no model is written from the diverged parameters. Ctrl-C or SIGTERM
(`guard.Terminated`) ends the stage with `guard.TrainingInterrupted` after its checkpoints are finished.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import glob
import os
import shutil
import zlib
from typing import Any

import jax
import numpy as np
from absl import logging
from clu import metric_writers, periodic_actions

from classsr_jax import checkpointing, parallel
from classsr_jax.errors import CheckpointError, TrainError, reason
from classsr_jax.evaluation.scoring import class_shares
from classsr_jax.models.spec import ModelSpec
from classsr_jax.training import calibration, guard, stages
from classsr_jax.training.steps import (
    abstract_train_state,
    create_train_state,
    eval_step,
    learning_rate_schedule,
    make_optimizer,
    train_step,
)
from classsr_jax.training.validation import CollapseMonitor, Validator, scalar_summaries

# Train steps the loop lets JAX queue ahead of the devices. Enough to keep them busy while the host prepares the
# next batch; more gains nothing, and with several CPU devices XLA's in-process all-reduce deadlocks once a few
# dozen multi-device steps are queued (seen at 32 on 2 cores; tests/test_train.py reproduces it).
MAX_STEPS_IN_FLIGHT = 4
UNREADABLE_DIR = "unreadable_checkpoints"
ORBAX_TMP_SUFFIX = ".orbax-checkpoint-tmp"


class StepsInFlight:
    """Holds the outputs of the steps queued so far and waits for the one `limit` back before another joins."""

    def __init__(self, limit: int = MAX_STEPS_IN_FLIGHT):
        self.limit = limit
        self.pending: collections.deque = collections.deque()

    def add(self, outputs: Any) -> None:
        self.pending.append(outputs)
        if len(self.pending) > self.limit:
            jax.block_until_ready(self.pending.popleft())

    def wait(self) -> None:
        """Waits for every queued step."""
        jax.block_until_ready(list(self.pending))
        self.pending.clear()


def data_seed(seed: int, stage: str, step: int) -> int:
    """The data pipeline's seed for a stage (re)started at `step`: deterministic in (seed, stage, step)."""
    return int(np.random.SeedSequence([int(seed), zlib.crc32(stage.encode()), int(step)]).generate_state(1)[0])


class StepMetrics:
    """The train step's metrics, left on the device until they are needed: fetching them every step would make
    each step wait for the last. `first_non_finite` fetches the steps not checked yet; `mean` those since the
    last log."""

    def __init__(self):
        self.unchecked: list[tuple[int, dict[str, jax.Array]]] = []
        self.unlogged: list[dict[str, jax.Array]] = []

    def append(self, step: int, metrics: dict[str, jax.Array]) -> None:
        self.unchecked.append((step, metrics))
        self.unlogged.append(metrics)

    def first_non_finite(self) -> tuple[int, float, float] | None:
        """(step, loss, gradient norm) of the first step since the last check whose loss or gradient norm is
        NaN or infinite, or None."""
        values = parallel.host_copy([(m["loss"], m["grad_norm"]) for _, m in self.unchecked])
        steps = [step for step, _ in self.unchecked]
        self.unchecked = []
        for step, (loss, norm) in zip(steps, values):
            if not (np.isfinite(loss) and np.isfinite(norm)):
                return step, float(loss), float(norm)
        return None

    def mean(self) -> dict[str, np.ndarray]:
        fetched = jax.tree_util.tree_map(lambda x: np.asarray(parallel.host_copy(x), np.float64), self.unlogged)
        self.unlogged = []
        return jax.tree_util.tree_map(lambda *xs: np.mean(np.stack(xs), axis=0), *fetched)


def _stop_if_diverged(name: str, history: StepMetrics, manager) -> None:
    """Raises TrainError at the first non-finite step, after the checkpoints already started are finished."""
    bad = history.first_non_finite()
    if bad is None:
        return
    checkpointing.wait_for_train_saves(manager)
    latest = manager.latest_step()
    kept = f"its latest checkpoint is step {latest}" if latest else "no checkpoint was saved"
    step, loss, norm = bad
    raise TrainError(
        f"stage {name}: the loss or gradient norm is not finite at step {step} (loss {loss:.4g}, gradient norm "
        f"{norm:.4g}); training stopped and {kept}: lower the learning rate or check the data"
    )


# ------------------------------------------------------------------------------------------------ one stage


def train_stage(ctx: stages.StageContext, stage: stages.TrainingStage) -> dict[str, Any]:
    """Trains one stage to `num_steps` (resuming from its last checkpoint), writes its model and its export;
    returns the final variables (host numpy). A finished stage is skipped and its model returned; it writes
    its export only if that is missing, so a rerun of a finished run writes nothing."""
    model_dir = ctx.workdir.model(stage.name)
    if parallel.process0_value(os.path.isdir(model_dir)):
        logging.info("stage %s: finished earlier (%s), skipping", stage.name, model_dir)
        model = checkpointing.load_model(model_dir)
        variables, metadata = model.variables, model.metadata
        missing = bool(stage.export_to) and not os.path.isdir(stage.export_to)
        export = parallel.process0_value(missing)
    else:
        variables, metadata = _train_stage_model(ctx, stage)
        export = bool(stage.export_to)
    if export:
        checkpointing.export_model(stage.export_to, stage.spec, variables, metadata)
    return variables


@dataclasses.dataclass
class StageRun:
    """One stage's training under way: its checkpoints, state, and where its data and logs go."""

    manager: Any
    state: Any
    start: int  # the step the state is at
    seed: int  # the data seed for this (re)start
    writer: Any = None
    calibrator: Any = None  # joint and finetune: routing calibrated on the stage's own tiles
    step: int = 0  # the last step dispatched


def _train_stage_model(ctx: stages.StageContext, stage: stages.TrainingStage) -> tuple[dict[str, Any], dict[str, Any]]:
    """The stage's final variables (host numpy) and the metadata stored with them, trained now."""
    tx = make_optimizer(stage.settings, ctx.config.optimizer)
    run = _open_stage(ctx, stage, tx)
    iterator, interrupted = None, False
    try:
        iterator = stage.make_iterator(run.seed)
        run.writer = metric_writers.create_default_writer(
            ctx.workdir.tensorboard(stage.name), just_logging=not parallel.is_primary_process()
        )
        best = _run_steps(ctx, stage, tx, run, iterator)
    except (KeyboardInterrupt, guard.Terminated) as e:
        interrupted = True
        raise guard.TrainingInterrupted(f"stage {stage.name} at step {run.step}", guard.signal_number(e)) from None
    finally:
        _close_stage(run, iterator, interrupted)
    return _finish_stage(ctx, stage, run, best)


def _open_stage(ctx: stages.StageContext, stage: stages.TrainingStage, tx) -> StageRun:
    """The stage's checkpoint manager and the state it starts from: its last readable checkpoint, or fresh."""
    sc = stage.settings
    manager = checkpointing.train_checkpoint_manager(
        ctx.workdir.checkpoints(stage.name),
        keep_last=ctx.config.checkpoint.keep_last,
        save_every_steps=sc.checkpoint_every_steps,
        asynchronous=ctx.config.checkpoint.asynchronous,
    )
    try:
        state, start = _restore_latest_readable(ctx, stage, manager, tx)
    except BaseException:
        manager.close()
        raise
    if start:
        logging.info("stage %s: resuming from step %d of %d", stage.name, start, sc.num_steps)
    else:
        state = parallel.replicate(create_train_state(stage.initial_variables(), tx, stage.trainable), ctx.mesh)
        logging.info("stage %s: starting, %d steps, global batch %d on %d devices", stage.name, sc.num_steps,
                     sc.batch_size, ctx.mesh.devices.size)
    return StageRun(manager, state, start, data_seed(ctx.config.seed, stage.name, start), step=start)


def _restore_latest_readable(ctx, stage, manager, tx) -> tuple[Any, int]:
    """(state, step) of the newest checkpoint that can be read, newest first; (None, 0) if there is none. An
    unreadable newer one is moved aside, with one log line. If none can be read, the newest one's error."""
    directory = ctx.workdir.checkpoints(stage.name)
    latest = parallel.process0_value(manager.latest_step() or 0)
    if not latest:
        return None, 0
    steps = [latest] + sorted((s for s in manager.all_steps() if s < latest), reverse=True)
    abstract = abstract_train_state(stage.spec, tx, stage.trainable, ctx.mesh, ctx.lr_patch)
    first_error = None
    for step in steps:
        try:
            state, progress = checkpointing.restore_train_state(manager, step, abstract)
        except CheckpointError as e:
            first_error = first_error or e
            continue
        if ModelSpec.from_dict(progress["model"]) != stage.spec:
            raise CheckpointError(f"checkpoint {directory} holds another model than {stage.spec.describe()}")
        unreadable = [s for s in steps if s > step]
        if unreadable:
            _move_aside(ctx, stage, manager, unreadable, first_error)
            logging.warning("stage %s: checkpoint step %s in %s cannot be read (%s); moved to %s, resuming from "
                            "step %d, the last complete one", stage.name, ",".join(map(str, unreadable)), directory,
                            reason(first_error), os.path.join(ctx.workdir.stage_dir(stage.name), UNREADABLE_DIR), step)
        return state, step
    raise first_error


def _move_aside(ctx, stage, manager, steps: list[int], error: BaseException) -> None:
    """Moves unreadable step folders out of the checkpoints (the same steps are saved again as training goes on)."""
    aside = os.path.join(ctx.workdir.stage_dir(stage.name), UNREADABLE_DIR)
    if parallel.is_primary_process():
        os.makedirs(aside, exist_ok=True)
        for step in steps:
            target = os.path.join(aside, str(step))
            shutil.rmtree(target, ignore_errors=True)  # an older copy of the same step, moved aside before
            os.replace(os.path.join(ctx.workdir.checkpoints(stage.name), str(step)), target)
    parallel.sync_processes(f"unreadable:{stage.name}")
    manager.reload()


@dataclasses.dataclass
class StageTools:
    """What the loop uses besides the state: validation, routing calibration, metrics, logs."""

    validator: Validator
    calibrator: Any  # joint and finetune with calibrate_routing: routing calibrated on the stage's own tiles
    report: Any
    schedule: Any
    progress: dict[str, Any]  # what each checkpoint records beside the state
    history: StepMetrics = dataclasses.field(default_factory=StepMetrics)
    collapse: CollapseMonitor | None = None


def _stage_tools(ctx: stages.StageContext, stage: stages.TrainingStage, run: StageRun) -> StageTools:
    config, sc = ctx.config, stage.settings
    validator = Validator(
        ctx.validation_pairs(), stage.spec, stage.objective,
        functools.partial(eval_step, model=stage.spec.build(), objective=stage.objective),
        protocol=config.validation.protocol, lr_patch=ctx.lr_patch,
        num_tiles=config.validation.num_tiles, batch_size=config.validation.batch_size,
    )
    calibrator = None
    if sc.get("calibrate_routing", False):
        seed = data_seed(config.seed, f"{stage.name}/calibration", 0)
        tiles = calibration.draw_tiles(stage.make_iterator, seed, sc.calibration_tiles)
        calibrator = calibration.RoutingCalibrator(stage.spec, tiles)
    report = periodic_actions.ReportProgress(num_train_steps=sc.num_steps, writer=run.writer,
                                             every_steps=sc.log_every_steps, every_secs=None)
    progress = {"stage": stage.name, "model": stage.spec.to_dict(), "trainable": list(stage.trainable or []),
                "started_at_step": run.start, "data_seed": run.seed}
    schedule = learning_rate_schedule(sc.learning_rate, sc.eta_min, sc.cosine_period)
    return StageTools(validator, calibrator, report, schedule, progress,
                      collapse=CollapseMonitor(config.collapse_threshold))


def _run_steps(ctx: stages.StageContext, stage: stages.TrainingStage, tx, run: StageRun, iterator) -> int | None:
    """Trains from `run.start` to the stage's last step; returns the step with the best validation PSNR."""
    model = stage.spec.build(dtype=ctx.compute_dtype)
    step_fn = functools.partial(train_step, model=model, tx=tx, objective=stage.objective)
    p_train_step = parallel.data_parallel(step_fn, ctx.mesh)
    tools = _stage_tools(ctx, stage, run)
    run.calibrator = tools.calibrator
    in_flight = StepsInFlight()
    for step in range(run.start + 1, stage.settings.num_steps + 1):
        with tools.report.timed("data", wait_jax_async_dispatch=False):
            batch = parallel.global_batch(next(iterator), ctx.mesh)
        run.state, metrics = p_train_step(run.state, batch)
        run.step = step
        in_flight.add(metrics)
        tools.history.append(step, metrics)
        tools.report(step)
        _at_intervals(stage, run, tools, step)
    _stop_if_diverged(stage.name, tools.history, run.manager)
    checkpointing.wait_for_train_saves(run.manager)
    return run.manager.best_step()


def _at_intervals(stage: stages.TrainingStage, run: StageRun, tools: StageTools, step: int) -> None:
    """What happens every so many steps (and at the last): log, validate, save a checkpoint, each after the
    steps so far are checked for NaN."""
    sc, calibrator = stage.settings, tools.calibrator
    last = step == sc.num_steps
    if step % sc.log_every_steps == 0 or last:
        _stop_if_diverged(stage.name, tools.history, run.manager)
        summary = tools.history.mean()
        scalars = scalar_summaries("train", summary)
        scalars["train/learning_rate"] = float(tools.schedule(step - 1))
        run.writer.write_scalars(step, scalars)
        if "argmax_share" in summary and not calibrator:  # calibrated, the batches' argmax is not the routing
            tools.collapse(summary["argmax_share"], "training", step)
    val = None
    if step % sc.eval_every_steps == 0 or last:
        _stop_if_diverged(stage.name, tools.history, run.manager)
        with tools.report.timed("validation"):
            current = parallel.host_copy(run.state.variables)
            val = tools.validator(calibrator.calibrate(current) if calibrator else current, step, run.writer)
        if "class_ratio" in val:
            tools.collapse(val["class_ratio"], "validation", step, always=True)
    if step % sc.checkpoint_every_steps == 0 or last:
        _stop_if_diverged(stage.name, tools.history, run.manager)
        checkpointing.save_train_state(
            run.manager, step, run.state, {**tools.progress, "step": step},
            metrics={checkpointing.BEST_METRIC: float(val["psnr"])} if val else None, force=True,
        )


def _close_stage(run: StageRun, iterator, interrupted: bool) -> None:
    """Finishes the background saves and closes what the stage opened; after an interruption, also removes the
    temporary folder of a save that was cut short, so that nothing half written is left."""
    try:
        run.manager.close()
    except Exception:  # noqa: BLE001 - a failed save was reported by wait_for_train_saves, or another error is on
        pass
    if interrupted and parallel.is_primary_process():
        for leftover in glob.glob(os.path.join(glob.escape(str(run.manager.directory)), "*" + ORBAX_TMP_SUFFIX + "*")):
            shutil.rmtree(leftover, ignore_errors=True)
    if run.writer is not None:
        run.writer.flush()
        run.writer.close()
    if hasattr(iterator, "close"):
        iterator.close()


def _finish_stage(ctx: stages.StageContext, stage: stages.TrainingStage, run: StageRun, best: int | None):
    """The trained variables (calibrated, for a stage that calibrates its routing) and their record, written as
    the stage's model."""
    sc = stage.settings
    variables = parallel.host_copy(run.state.variables)
    metadata = {"stage": stage.name, "steps": sc.num_steps, "best_step": best}
    if run.calibrator:
        variables, metadata["routing_calibration"] = run.calibrator.calibrate_with_report(variables)
        report = metadata["routing_calibration"]
        logging.info(
            "stage %s: routing calibrated on %d training tiles: argmax shares %s%% → %s%% (probability mass %s%%)",
            stage.name, report["tiles"], class_shares(report["argmax_shares_before"]),
            class_shares(report["argmax_shares_after"]), class_shares(report["probability_mass"]),
        )
    model_dir = ctx.workdir.model(stage.name)
    checkpointing.export_model(model_dir, stage.spec, variables, metadata)
    logging.info("stage %s: done (%d steps), model in %s", stage.name, sc.num_steps, model_dir)
    return variables, metadata
