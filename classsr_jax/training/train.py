"""ClassSR training: the whole recipe as stages in one workdir, resumable and data parallel.

This module holds the train state, the train and eval steps, the loop that trains one stage, and
`train_and_evaluate`, which runs the stages the config selects. What each stage trains is in `stages`, the
workdir's layout and checks in `workdir`, validation in `validation`.

A rerun skips finished stages and resumes an interrupted one from its last checkpoint. The data pipeline is
then re-seeded deterministically from (seed, stage, step), so the same interrupted command gives the same run.
A non-finite loss or gradient norm stops the stage with a one-line TrainError naming the step; its last
checkpoint stays the latest, and no model is written from the diverged parameters.

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

import collections
import functools
import os
import zlib
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from clu import metric_writers, periodic_actions

from classsr_jax import checkpointing, parallel
from classsr_jax.data import input_pipeline
from classsr_jax.errors import CheckpointError, ConfigError, TrainError
from classsr_jax.evaluation.scoring import class_shares
from classsr_jax.io import atomic
from classsr_jax.models.spec import ModelSpec
from classsr_jax.training import calibration, configuration, losses, stages
from classsr_jax.training.losses import Objective
from classsr_jax.training.validation import CollapseMonitor, Validator, scalar_summaries
from classsr_jax.training.workdir import Workdir, config_record, preflight

# Train steps the loop lets JAX queue ahead of the devices. Enough to keep them busy while the host prepares the
# next batch; more gains nothing, and with several CPU devices XLA's in-process all-reduce deadlocks once a few
# dozen multi-device steps are queued (seen at 32 on 2 cores; tests/test_train.py reproduces it).
MAX_STEPS_IN_FLIGHT = 4


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


# ------------------------------------------------------------------------------------------ state and steps


@flax.struct.dataclass
class TrainState:
    """step; `params`: what the optimiser updates; `frozen_params`: parameters held fixed (the branches during
    joint training); `batch_stats`: BatchNorm statistics (CARN); `opt_state`: Adam's moments."""

    step: jax.Array
    params: Any
    frozen_params: Any
    batch_stats: Any
    opt_state: Any

    @property
    def variables(self) -> dict[str, Any]:
        return merge_variables(self.params, self.frozen_params, self.batch_stats)


def merge_variables(params, frozen_params, batch_stats) -> dict[str, Any]:
    variables = {"params": {**frozen_params, **params}}
    if batch_stats:
        variables["batch_stats"] = batch_stats
    return variables


def split_params(params: dict[str, Any], trainable: tuple[str, ...] | None) -> tuple[dict, dict]:
    """(trained, frozen) top-level parameter groups; `trainable` None trains everything."""
    if trainable is None:
        return dict(params), {}
    missing = [k for k in trainable if k not in params]
    if missing:
        raise ValueError(f"no parameter group(s) {missing} in {sorted(params)}")
    return {k: v for k, v in params.items() if k in trainable}, {k: v for k, v in params.items() if k not in trainable}


def create_train_state(variables: dict[str, Any], tx: optax.GradientTransformation, trainable: tuple[str, ...] | None = None) -> TrainState:
    params, frozen = split_params(dict(variables["params"]), trainable)
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        frozen_params=frozen,
        batch_stats=dict(variables.get("batch_stats", {}) or {}),
        opt_state=tx.init(params),
    )


def abstract_train_state(spec: ModelSpec, tx, trainable, mesh, lr_patch: int) -> TrainState:
    """The train state's shapes, dtypes and (replicated) shardings, for restoring a checkpoint."""
    abstract_vars = spec.abstract(tile=lr_patch)
    shapes = jax.eval_shape(lambda v: create_train_state(v, tx, trainable), abstract_vars)
    sharding = parallel.replicated(mesh)
    return jax.tree_util.tree_map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding), shapes)


def learning_rate_schedule(learning_rate: float, eta_min: float, cosine_period: int) -> optax.Schedule:
    """The original's CosineAnnealingLR_Restart with restart weight 1: update t = 1, 2, … uses
    lr(t) = eta_min + (lr − eta_min)·(1 + cos(π·t'/T))/2 with t' = ((t − 1) mod T) + 1, so lr(T) = eta_min
    and update T + 1 restarts at lr(1). The original steps the scheduler before the optimiser, so optax's
    count c (updates done so far) is update c + 1."""

    def schedule(count):
        t = (jnp.mod(count, cosine_period) + 1).astype(jnp.float32)
        return eta_min + (learning_rate - eta_min) * 0.5 * (1.0 + jnp.cos(jnp.pi * t / cosine_period))

    return schedule


def make_optimizer(stage_config, optimizer_config) -> optax.GradientTransformation:
    """Adam (β = (0.9, 0.99) in the paper, no weight decay) on the stage's cosine schedule."""
    schedule = learning_rate_schedule(stage_config.learning_rate, stage_config.eta_min, stage_config.cosine_period)
    return optax.adam(schedule, b1=optimizer_config.b1, b2=optimizer_config.b2, eps=optimizer_config.eps)


def _batch_psnr(sr, hr):
    """Mean per-sample PSNR (dB) on [0, 1], SR clipped, no border crop: a cheap training signal."""
    err = (jnp.clip(sr.astype(jnp.float32), 0.0, 1.0) - hr.astype(jnp.float32)) ** 2
    mse = jnp.maximum(jnp.mean(err, axis=(1, 2, 3)), 1e-10)
    return jnp.mean(-10.0 * jnp.log10(mse))


def _argmax_share(probs):
    """Each class's share of the tiles whose largest probability is that class's (what routing would pick)."""
    return jnp.mean(jax.nn.one_hot(jnp.argmax(probs, axis=-1), probs.shape[-1]), axis=0)


def _forward_loss(model, variables, batch, objective: Objective, axis_name, batch_norm_train: bool):
    lr, hr = batch["lr"], batch["hr"]
    if not objective.is_classsr:
        if batch_norm_train and "batch_stats" in variables:
            sr, updated = model.apply(variables, lr, True, mutable=["batch_stats"])
            new_batch_stats = updated["batch_stats"]
        else:
            sr = model.apply(variables, lr, False)
            new_batch_stats = variables.get("batch_stats", {})
        l1 = losses.l1_loss(sr, hr, objective.pixel_range)
        loss = objective.total(l1)
        return loss, ({"loss": loss, "l1": l1, "psnr": _batch_psnr(sr, hr)}, new_batch_stats)
    # Branches in inference mode (BatchNorm on stored statistics): a deliberate fix of the original.
    mixed, probs = model.apply(variables, lr, False)
    loss, terms = losses.classsr_loss(
        mixed,
        hr,
        probs,
        l1_weight=objective.l1_weight,
        class_loss_weight=objective.class_loss_weight,
        average_loss_weight=objective.average_loss_weight,
        pixel_range=objective.pixel_range,
        axis_name=axis_name,
    )
    probs = probs.astype(jnp.float32)
    metrics = {
        "loss": loss,
        **terms,
        "psnr": _batch_psnr(mixed, hr),
        "prob_mass": jnp.mean(probs, axis=0),
        "argmax_share": _argmax_share(probs),
    }
    return loss, (metrics, variables.get("batch_stats", {}))


def train_step(
    state: TrainState,
    batch: dict[str, jax.Array],
    *,
    model,
    tx: optax.GradientTransformation,
    objective: Objective,
    axis_name: str | None = parallel.DATA_AXIS,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimiser step on this device's share of the batch; gradients, metrics and BatchNorm statistics are
    averaged over `axis_name` (None: a single device, no collectives). The metrics include the global norm of
    the averaged gradient (`grad_norm`), which the loop checks for NaN and infinity.

    Only `state.params` is differentiated: for joint training that is the classifier, so the frozen branches'
    outputs are constants to autodiff and their backward pass is never built.
    """
    batch = input_pipeline.finish_batch(batch, jnp)  # raw uint8 tiles are made float, and recoloured, here
    params = state.params
    if axis_name is not None:
        # Per-device gradients, as under pmap. Without the cast, shard_map would treat the replicated
        # parameters as one value and sum their gradients over devices before our pmean.
        params = jax.lax.pcast(params, axis_name, to="varying")
    batch_norm_train = not objective.is_classsr and bool(state.batch_stats)

    def loss_fn(params):
        variables = merge_variables(params, state.frozen_params, state.batch_stats)
        return _forward_loss(model, variables, batch, objective, axis_name, batch_norm_train)

    (_, (metrics, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    if axis_name is not None:
        grads = jax.lax.pmean(grads, axis_name)
        metrics = jax.lax.pmean(metrics, axis_name)
        if batch_norm_train:
            batch_stats = jax.lax.pmean(batch_stats, axis_name)
    metrics["grad_norm"] = optax.global_norm(grads)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    new_state = state.replace(
        step=state.step + 1,
        params=optax.apply_updates(state.params, updates),
        batch_stats=batch_stats,
        opt_state=opt_state,
    )
    return new_state, metrics


def eval_step(
    variables: dict[str, Any],
    batch: dict[str, jax.Array],
    *,
    model,
    objective: Objective,
    axis_name: str | None = parallel.DATA_AXIS,
) -> dict[str, jax.Array]:
    """Sums over this batch's valid tiles (`batch['weight']` 1, padding 0) for validation metrics:
    count, l1_sum, psnr_sum and, for ClassSR, class_loss_sum, mass (Σ p per class) and argmax_count."""
    lr, hr, weight = batch["lr"], batch["hr"], batch["weight"].astype(jnp.float32)
    per_sample_l1 = jax.vmap(lambda s, h: losses.l1_loss(s[None], h[None], objective.pixel_range))
    if not objective.is_classsr:
        sr = model.apply(variables, lr, False)
        sums = {"l1_sum": jnp.sum(weight * per_sample_l1(sr, hr))}
    else:
        sr, probs = model.apply(variables, lr, False)
        probs = probs.astype(jnp.float32)
        per_sample_class = jax.vmap(lambda p: losses.class_loss(p[None]))(probs)
        argmax = jax.nn.one_hot(jnp.argmax(probs, axis=-1), probs.shape[-1])
        sums = {
            "l1_sum": jnp.sum(weight * per_sample_l1(sr, hr)),
            "class_loss_sum": jnp.sum(weight * per_sample_class),
            "mass": jnp.sum(weight[:, None] * probs, axis=0),
            "argmax_count": jnp.sum(weight[:, None] * argmax, axis=0),
        }
    err = (jnp.clip(sr.astype(jnp.float32), 0.0, 1.0) - hr) ** 2
    psnr = -10.0 * jnp.log10(jnp.maximum(jnp.mean(err, axis=(1, 2, 3)), 1e-10))
    sums["psnr_sum"] = jnp.sum(weight * psnr)
    sums["count"] = jnp.sum(weight)
    if axis_name is not None:
        sums = jax.lax.psum(sums, axis_name)
    return sums


# --------------------------------------------------------------------------------------- the training loop


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


def train_stage(ctx: stages.StageContext, stage: stages.TrainingStage) -> dict[str, Any]:
    """Trains one stage to `num_steps` (resuming from its last checkpoint), writes its model and its export;
    returns the final variables (host numpy). A finished stage is skipped and its model returned."""
    variables, metadata = _train_stage_model(ctx, stage)
    if stage.export_to:
        checkpointing.export_model(stage.export_to, stage.spec, variables, metadata)
    return variables


def _train_stage_model(ctx: stages.StageContext, stage: stages.TrainingStage) -> tuple[dict[str, Any], dict[str, Any]]:
    """The stage's final variables (host numpy) and the metadata stored with them, trained now or earlier."""
    config, workdir, sc = ctx.config, ctx.workdir, stage.settings
    model_dir = workdir.model(stage.name)
    if parallel.process0_value(os.path.isdir(model_dir)):
        logging.info("stage %s: finished earlier (%s), skipping", stage.name, model_dir)
        model = checkpointing.load_model(model_dir)
        return model.variables, model.metadata
    model = stage.spec.build(dtype=ctx.compute_dtype)
    tx = make_optimizer(sc, config.optimizer)
    manager = checkpointing.train_checkpoint_manager(
        workdir.checkpoints(stage.name),
        keep_last=config.checkpoint.keep_last,
        save_every_steps=sc.checkpoint_every_steps,
        asynchronous=config.checkpoint.asynchronous,
    )
    start = parallel.process0_value(manager.latest_step() or 0)
    if start:
        abstract = abstract_train_state(stage.spec, tx, stage.trainable, ctx.mesh, ctx.lr_patch)
        state, progress = checkpointing.restore_train_state(manager, start, abstract)
        if ModelSpec.from_dict(progress["model"]) != stage.spec:
            raise CheckpointError(f"checkpoint {workdir.checkpoints(stage.name)} holds another model than {stage.spec.describe()}")
        logging.info("stage %s: resuming from step %d of %d", stage.name, start, sc.num_steps)
    else:
        state = parallel.replicate(create_train_state(stage.initial_variables(), tx, stage.trainable), ctx.mesh)
        logging.info("stage %s: starting, %d steps, global batch %d on %d devices", stage.name, sc.num_steps, sc.batch_size, ctx.mesh.devices.size)
    p_train_step = parallel.data_parallel(
        functools.partial(train_step, model=model, tx=tx, objective=stage.objective), ctx.mesh
    )
    seed = data_seed(config.seed, stage.name, start)
    iterator = stage.make_iterator(seed)
    validator = Validator(
        ctx.validation_pairs(), stage.spec, stage.objective,
        functools.partial(eval_step, model=stage.spec.build(), objective=stage.objective),
        protocol=config.validation.protocol, lr_patch=ctx.lr_patch,
        num_tiles=config.validation.num_tiles, batch_size=config.validation.batch_size,
    )
    calibrator = None
    if sc.get("calibrate_routing", False):  # joint and finetune: routing calibrated on the stage's own tiles
        tiles = calibration.draw_tiles(stage.make_iterator, data_seed(config.seed, f"{stage.name}/calibration", 0), sc.calibration_tiles)
        calibrator = calibration.RoutingCalibrator(stage.spec, tiles)
    writer = metric_writers.create_default_writer(workdir.tensorboard(stage.name), just_logging=not parallel.is_primary_process())
    report = periodic_actions.ReportProgress(num_train_steps=sc.num_steps, writer=writer, every_steps=sc.log_every_steps, every_secs=None)
    schedule = learning_rate_schedule(sc.learning_rate, sc.eta_min, sc.cosine_period)
    history = StepMetrics()
    collapse = CollapseMonitor(config.collapse_threshold)
    progress = {"stage": stage.name, "model": stage.spec.to_dict(), "trainable": list(stage.trainable or []), "started_at_step": start, "data_seed": seed}
    in_flight = StepsInFlight()
    try:
        for step in range(start + 1, sc.num_steps + 1):
            with report.timed("data", wait_jax_async_dispatch=False):
                batch = parallel.global_batch(next(iterator), ctx.mesh)
            state, metrics = p_train_step(state, batch)
            in_flight.add(metrics)
            history.append(step, metrics)
            report(step)
            last = step == sc.num_steps
            if step % sc.log_every_steps == 0 or last:
                _stop_if_diverged(stage.name, history, manager)
                summary = history.mean()
                scalars = scalar_summaries("train", summary)
                scalars["train/learning_rate"] = float(schedule(step - 1))
                writer.write_scalars(step, scalars)
                if "argmax_share" in summary and not calibrator:  # calibrated, the batches' argmax is not the routing
                    collapse(summary["argmax_share"], "training", step)
            val = None
            if step % sc.eval_every_steps == 0 or last:
                _stop_if_diverged(stage.name, history, manager)
                with report.timed("validation"):
                    current = parallel.host_copy(state.variables)
                    val = validator(calibrator.calibrate(current) if calibrator else current, step, writer)
                if "class_ratio" in val:
                    collapse(val["class_ratio"], "validation", step, always=True)
            if step % sc.checkpoint_every_steps == 0 or last:
                _stop_if_diverged(stage.name, history, manager)
                checkpointing.save_train_state(
                    manager, step, state, {**progress, "step": step},
                    metrics={checkpointing.BEST_METRIC: float(val["psnr"])} if val else None, force=True,
                )
        _stop_if_diverged(stage.name, history, manager)
        checkpointing.wait_for_train_saves(manager)
        best = manager.best_step()
    finally:
        try:
            manager.close()
        except Exception:  # noqa: BLE001 - a failed save was reported by wait_for_train_saves, or another error is under way
            pass
        writer.flush()
        writer.close()
        if hasattr(iterator, "close"):
            iterator.close()
    variables = parallel.host_copy(state.variables)
    metadata = {"stage": stage.name, "steps": sc.num_steps, "best_step": best}
    if calibrator:
        variables, metadata["routing_calibration"] = calibrator.calibrate_with_report(variables)
        report = metadata["routing_calibration"]
        logging.info(
            "stage %s: routing calibrated on %d training tiles: argmax shares %s%% → %s%% (probability mass %s%%)",
            stage.name, report["tiles"], class_shares(report["argmax_shares_before"]),
            class_shares(report["argmax_shares_after"]), class_shares(report["probability_mass"]),
        )
    checkpointing.export_model(model_dir, stage.spec, variables, metadata)
    logging.info("stage %s: done (%d steps), model in %s", stage.name, sc.num_steps, model_dir)
    return variables, metadata


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

    Raises a UserError (one line) for a bad config, missing data or an incompatible workdir; such a failure
    happens before anything is written, and a bad batch size before any dataset is prepared.
    """
    configuration.validate_config(config)
    parallel.use_cpu_devices(config.cpu_devices)  # from a notebook; main has done it before JAX started
    spec = configuration.model_spec(config)
    selected = configuration.selected_stages(config)
    work = Workdir(os.path.abspath(os.path.expanduser(workdir)))
    mesh = parallel.create_mesh()
    _check_batch_sizes(config, mesh, selected)
    preflight(config, work, spec, selected)
    ctx = stages.StageContext(config, work, spec, mesh, jnp.bfloat16 if config.half_precision else jnp.float32)
    # Open the data now, so that missing data fails before the workdir is touched.
    if any(s != "evaluate" for s in selected):
        ctx.train_dataset()
    if any(s in configuration.TRAINING_STAGES for s in selected) or "validation" in config.evaluate.datasets:
        ctx.validation_pairs()
    if parallel.is_primary_process():
        os.makedirs(work.root, exist_ok=True)
        if not os.path.isfile(work.config_json):
            atomic.write_text(work.config_json, config_record(config.to_json_best_effort(), spec))
    parallel.sync_processes("workdir")
    logging.info("workdir %s: %s, stages %s, %d devices", work.root, spec.describe(), ",".join(selected), mesh.devices.size)
    evaluation, variables = None, {}
    for stage in selected:
        if stage == "divide":
            stages.run_divide(ctx)
        elif stage == "evaluate":
            evaluation = stages.run_evaluate(ctx)
        else:
            for unit in stages.plan_training(ctx, stage):
                variables[unit.name] = train_stage(ctx, unit)
    return {"stages": list(selected), "variables": variables, "evaluation": evaluation}
