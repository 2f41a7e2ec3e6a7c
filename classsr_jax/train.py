"""ClassSR training (spec §3, §4): the whole recipe as stages in one workdir, resumable and data parallel.

Stages, in order (`config.stages`: 'all', or a comma list of them):
  original  the -O network (the widest branch) trained on all tiles: the paper's baseline and the division's
            reference network;
  divide    every training tile scored by that network (PSNR) and split into simple / medium / hard;
  branches  branch k trained on the tiles of class k (one sub-stage per branch: branch1, branch2, branch3);
  joint     the Class-Module trained with the branches frozen: L1 of the softmax-mixed output + Class-Loss +
            Average-Loss (spec §3 weights);
  finetune  optional (`config.finetune.enabled`, or named in `config.stages`): everything trained together;
  evaluate  ClassSR against -O and bicubic on the validation (or test) sets: the paper's table, saved as JSON.

Workdir layout:
  config.json                    the run's config and model (a later run with another model is refused)
  stages/<stage>/checkpoints/    Orbax CheckpointManager of the train state (last N + best validation PSNR)
  stages/<stage>/model/          the stage's finished model; its presence marks the stage done
  division/division.npz          the class division (+ .json summary, _hist.png)
  export/original, export/classsr   inference models for `upscale` / `evaluate`
  evaluation/results.json, table.md
  tensorboard/<stage>/           clu metric writers' event files

A rerun skips finished stages and resumes an interrupted one from its last checkpoint. The data pipeline is
then re-seeded deterministically from (seed, stage, step), so the same interrupted command gives the same run.

Converted official weights (`config.pretrained`) start the stage that makes that network (original from
pretrained.original, branch k from pretrained.branches[k]) and stand in for a stage's output that this workdir
lacks (the -O network for the division and the table; the branches for joint training, also taken from
pretrained.classsr; the ClassSR model for finetune and evaluate). E.g.
`--config.stages=joint,evaluate --config.pretrained.branches=b1,b2,b3` skips (a)–(c).

Deliberate differences from the original:
- Frozen branches run in inference mode (CARN's BatchNorm uses its stored statistics, spec Q2), and only the
  classifier is differentiated, so the branches' backward pass does not exist.
- Validation PSNR is the mean over images (the original logs the sum, spec Q8).
- Average-Loss generalises the normaliser 4n/M to 2(M−1)n/M (identical for M = 3).
- The division scores tiles with the network's own -O (stage a); the paper used one MSRResNet for all four.
- A stage longer than its cosine period restarts the cosine (weight 1) where train_RCAN.yml crashes (Q9).
- Data parallel BatchNorm (CARN branch training) normalises with each device's statistics, as DataParallel
  without SyncBN does; the running statistics are averaged over devices.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import tempfile
import time
import zlib
from collections.abc import Callable, Iterator
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from clu import metric_writers, periodic_actions

from classsr_jax import checkpointing, losses, parallel
from classsr_jax.errors import CheckpointError, DataError, TrainError
from classsr_jax.models.registry import NETWORKS, ModelSpec

STAGES = ("original", "divide", "branches", "joint", "finetune", "evaluate")
TRAINING_DATA_STAGES = ("original", "divide", "branches", "joint", "finetune")
NUM_CLASSES = 3  # The division makes three classes (simple, medium, hard).
CLASS_NAMES = ("simple", "medium", "hard")


# Errors a user can fix; main prints them as one line and exits non-zero.
USER_ERRORS = (TrainError, CheckpointError, DataError)


# ---------------------------------------------------------------------------------------------------- config

# Every field a config must have, with its type. Unknown and missing fields are errors (a typo must not be
# silently ignored). `model.extra` is free-form: the network's extra fields (build_network checks them).
_STAGE_FIELDS = {
    "batch_size": int,
    "num_steps": int,
    "learning_rate": float,
    "eta_min": float,
    "cosine_period": int,
    "log_every_steps": int,
    "eval_every_steps": int,
    "checkpoint_every_steps": int,
}
_LOSS_FIELDS = {"l1_weight": float, "class_loss_weight": float, "average_loss_weight": float}
CONFIG_SCHEMA: dict[str, type | tuple[type, ...]] = {
    "seed": int,
    "stages": str,
    "half_precision": bool,
    "collapse_threshold": float,
    "model.network": str,
    "model.widths": tuple,
    "model.scale": int,
    "model.extra": dict,
    "data.dataset": str,
    "data.train_split": str,
    "data.data_dir": str,
    "data.manual_dir": str,
    "data.validation_dataset": str,
    "data.validation_split": str,
    "data.lr_patch": int,
    "data.prefetch": int,
    "loss.pixel_range": float,
    "optimizer.b1": float,
    "optimizer.b2": float,
    "optimizer.eps": float,
    "division.thresholds": str,
    "division.reference": str,
    "division.batch_size": int,
    "pretrained.original": str,
    "pretrained.branches": str,
    "pretrained.classsr": str,
    **{f"original.{k}": t for k, t in _STAGE_FIELDS.items()},
    **{f"branches.{k}": t for k, t in _STAGE_FIELDS.items()},
    "branches.init_from_original": bool,
    **{f"joint.{k}": t for k, t in {**_STAGE_FIELDS, **_LOSS_FIELDS}.items()},
    **{f"finetune.{k}": t for k, t in {**_STAGE_FIELDS, **_LOSS_FIELDS}.items()},
    "finetune.enabled": bool,
    "validation.protocol": str,
    "validation.num_tiles": int,
    "validation.batch_size": int,
    "evaluate.datasets": str,
    "evaluate.protocol": str,
    "checkpoint.keep_last": int,
    "checkpoint.asynchronous": bool,
}


def _flatten_config(config: Any, prefix: str = "") -> dict[str, Any]:
    items = config.items() if hasattr(config, "items") else []
    flat = {}
    for key, value in items:
        name = f"{prefix}{key}"
        if f"{name}" == "model.extra":
            flat[name] = dict(value)
        elif isinstance(value, (ml_collections.ConfigDict, dict)):
            flat.update(_flatten_config(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def validate_config(config: ml_collections.ConfigDict) -> None:
    """One-line TrainError for an unknown or missing field, a wrongly typed value or an impossible setting."""
    flat = _flatten_config(config)
    unknown = sorted(set(flat) - set(CONFIG_SCHEMA))
    if unknown:
        raise TrainError(f"unknown config field(s): {', '.join(unknown)}")
    missing = sorted(set(CONFIG_SCHEMA) - set(flat))
    if missing:
        raise TrainError(f"config lacks field(s): {', '.join(missing)}")
    for name, kind in CONFIG_SCHEMA.items():
        value = flat[name]
        ok = isinstance(value, kind) or (kind is float and isinstance(value, int) and not isinstance(value, bool))
        ok = ok or (kind is tuple and isinstance(value, list))
        if kind is int and isinstance(value, bool):
            ok = False
        if not ok:
            raise TrainError(f"config field {name} must be {kind.__name__}, got {value!r}")
    if config.model.network not in NETWORKS:
        raise TrainError(f"config field model.network is {config.model.network!r}: use one of {', '.join(NETWORKS)}")
    if len(config.model.widths) != NUM_CLASSES:
        raise TrainError(f"config field model.widths needs {NUM_CLASSES} widths (simple, medium, hard), got {tuple(config.model.widths)}")
    for stage in ("original", "branches", "joint", "finetune"):
        sc = config[stage]
        for field in ("batch_size", "num_steps", "cosine_period", "log_every_steps", "eval_every_steps", "checkpoint_every_steps"):
            if sc[field] < 1:
                raise TrainError(f"config field {stage}.{field} must be positive, got {sc[field]}")
    for name in ("validation.protocol", "evaluate.protocol"):
        if flat[name] not in ("paper", "full"):
            raise TrainError(f"config field {name} is {flat[name]!r}: use 'paper' or 'full'")
    if config.division.reference not in ("original", "bicubic"):
        raise TrainError(f"config field division.reference is {config.division.reference!r}: use 'original' or 'bicubic'")
    division_thresholds(config)
    selected_stages(config)
    if config.checkpoint.keep_last < 1:
        raise TrainError(f"config field checkpoint.keep_last must be at least 1, got {config.checkpoint.keep_last}")


def division_thresholds(config) -> str | tuple[float, float]:
    value = config.division.thresholds.strip()
    if value in ("tertiles", "paper"):
        return value
    try:
        t1, t2 = (float(v) for v in value.split(","))
    except ValueError:
        raise TrainError(f"config field division.thresholds is {value!r}: use 'tertiles', 'paper' or 't1,t2' in dB") from None
    return (t1, t2)


def selected_stages(config) -> tuple[str, ...]:
    """The stages to run, in recipe order. 'all' includes finetune only when finetune.enabled."""
    text = config.stages.strip()
    if text == "all":
        return tuple(s for s in STAGES if s != "finetune" or config.finetune.enabled)
    names = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in names if s not in STAGES]
    if unknown or not names:
        raise TrainError(f"config field stages has unknown stage(s) {', '.join(unknown) or '(none given)'}: use 'all' or some of {', '.join(STAGES)}")
    return tuple(s for s in STAGES if s in names)


def model_spec(config) -> ModelSpec:
    return ModelSpec("classsr", config.model.network, tuple(int(w) for w in config.model.widths), int(config.model.scale), dict(config.model.extra))


# ------------------------------------------------------------------------------------------ state and steps


@dataclasses.dataclass(frozen=True)
class Objective:
    """What a train step minimises.

    kind 'sr': pixel L1 of one network (branch pretraining, -O); BatchNorm in train mode when the network has it.
    kind 'classsr': l1_weight·L1(Σ p_k SR_k) + class_loss_weight·L_class + average_loss_weight·L_avg.
    pixel_range: the scale the L1 is taken on (255 for RCAN, whose original data is on [0, 255]).
    """

    kind: str = "sr"
    l1_weight: float = 1.0
    class_loss_weight: float = 0.0
    average_loss_weight: float = 0.0
    pixel_range: float = 1.0


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


def _forward_loss(model, variables, batch, objective: Objective, axis_name, batch_norm_train: bool):
    lr, hr = batch["lr"], batch["hr"]
    if objective.kind == "sr":
        if batch_norm_train and "batch_stats" in variables:
            sr, updated = model.apply(variables, lr, True, mutable=["batch_stats"])
            new_batch_stats = updated["batch_stats"]
        else:
            sr = model.apply(variables, lr, False)
            new_batch_stats = variables.get("batch_stats", {})
        l1 = losses.l1_loss(sr, hr, objective.pixel_range)
        loss = objective.l1_weight * l1
        return loss, ({"loss": loss, "l1": l1, "psnr": _batch_psnr(sr, hr)}, new_batch_stats)
    # Branches in inference mode (BatchNorm on stored statistics): a deliberate fix of spec Q2.
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
        "hard_ratio": jnp.mean(jax.nn.one_hot(jnp.argmax(probs, axis=-1), probs.shape[-1]), axis=0),
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
    averaged over `axis_name` (None: a single device, no collectives).

    Only `state.params` is differentiated: for joint training that is the classifier, so the frozen branches'
    outputs are constants to autodiff and their backward pass is never built.
    """
    params = state.params
    if axis_name is not None:
        # Per-device gradients, as under pmap. Without the cast, shard_map would treat the replicated
        # parameters as one value and sum their gradients over devices before our pmean.
        params = jax.lax.pcast(params, axis_name, to="varying")
    batch_norm_train = objective.kind == "sr" and bool(state.batch_stats)

    def loss_fn(params):
        variables = merge_variables(params, state.frozen_params, state.batch_stats)
        return _forward_loss(model, variables, batch, objective, axis_name, batch_norm_train)

    (_, (metrics, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    if axis_name is not None:
        grads = jax.lax.pmean(grads, axis_name)
        metrics = jax.lax.pmean(metrics, axis_name)
        if batch_norm_train:
            batch_stats = jax.lax.pmean(batch_stats, axis_name)
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
    count, l1_sum, psnr_sum and, for ClassSR, class_loss_sum, mass (Σ p per class) and hard_count (argmax)."""
    lr, hr, weight = batch["lr"], batch["hr"], batch["weight"].astype(jnp.float32)
    per_sample_l1 = jax.vmap(lambda s, h: losses.l1_loss(s[None], h[None], objective.pixel_range))
    if objective.kind == "sr":
        sr = model.apply(variables, lr, False)
        sums = {"l1_sum": jnp.sum(weight * per_sample_l1(sr, hr))}
    else:
        sr, probs = model.apply(variables, lr, False)
        probs = probs.astype(jnp.float32)
        per_sample_class = jax.vmap(lambda p: losses.class_loss(p[None]))(probs)
        hard = jax.nn.one_hot(jnp.argmax(probs, axis=-1), probs.shape[-1])
        sums = {
            "l1_sum": jnp.sum(weight * per_sample_l1(sr, hr)),
            "class_loss_sum": jnp.sum(weight * per_sample_class),
            "mass": jnp.sum(weight[:, None] * probs, axis=0),
            "hard_count": jnp.sum(weight[:, None] * hard, axis=0),
        }
    err = (jnp.clip(sr.astype(jnp.float32), 0.0, 1.0) - hr) ** 2
    psnr = -10.0 * jnp.log10(jnp.maximum(jnp.mean(err, axis=(1, 2, 3)), 1e-10))
    sums["psnr_sum"] = jnp.sum(weight * psnr)
    sums["count"] = jnp.sum(weight)
    if axis_name is not None:
        sums = jax.lax.psum(sums, axis_name)
    return sums


def summarize_eval(sums: dict[str, np.ndarray], objective: Objective) -> dict[str, Any]:
    """Validation metrics from summed `eval_step` outputs; Average-Loss treats all tiles as one batch."""
    n = float(sums["count"])
    out = {"l1": float(sums["l1_sum"]) / n, "tile_psnr": float(sums["psnr_sum"]) / n}
    if objective.kind == "classsr":
        mass = np.asarray(sums["mass"], np.float64)
        m = mass.shape[0]
        out["class_loss"] = float(sums["class_loss_sum"]) / n
        out["average_loss"] = float(np.sum(np.abs(mass - n / m)) / (2 * (m - 1) * n / m))
        out["loss"] = (
            objective.l1_weight * out["l1"]
            + objective.class_loss_weight * out["class_loss"]
            + objective.average_loss_weight * out["average_loss"]
        )
        out["prob_mass"] = (mass / n).tolist()
        out["hard_ratio"] = (np.asarray(sums["hard_count"], np.float64) / n).tolist()
    else:
        out["loss"] = objective.l1_weight * out["l1"]
    return out


# ---------------------------------------------------------------------------------------------- the workdir


@dataclasses.dataclass(frozen=True)
class Workdir:
    root: str

    @property
    def config_json(self) -> str:
        return os.path.join(self.root, "config.json")

    def stage_dir(self, stage: str) -> str:
        return os.path.join(self.root, "stages", stage)

    def checkpoints(self, stage: str) -> str:
        return os.path.join(self.stage_dir(stage), "checkpoints")

    def model(self, stage: str) -> str:
        return os.path.join(self.stage_dir(stage), "model")

    @property
    def division(self) -> str:
        return os.path.join(self.root, "division", "division.npz")

    def export(self, name: str) -> str:
        return os.path.join(self.root, checkpointing.EXPORT_DIR, name)

    @property
    def results_json(self) -> str:
        return os.path.join(self.root, "evaluation", "results.json")

    @property
    def table_md(self) -> str:
        return os.path.join(self.root, "evaluation", "table.md")

    def tensorboard(self, stage: str) -> str:
        return os.path.join(self.root, "tensorboard", stage)


def branch_stages(num_branches: int = NUM_CLASSES) -> tuple[str, ...]:
    return tuple(f"branch{k + 1}" for k in range(num_branches))


def _write_text_atomic(path: str, text: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=os.path.dirname(path))
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _is_primary() -> bool:
    return jax.process_index() == 0


def _sync(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def _agreed_int(value: int) -> int:
    """Process 0's answer to a question about the workdir, on every process: a file that process 0 is writing
    may be seen by one process and not by another, and all must take the same branch (they meet in collectives)."""
    if jax.process_count() == 1:
        return int(value)
    from jax.experimental import multihost_utils

    return int(multihost_utils.broadcast_one_to_all(np.int32(value)))


def _agreed(flag: bool) -> bool:
    return bool(_agreed_int(int(bool(flag))))


# ------------------------------------------------------------------------------------------------ the run


@dataclasses.dataclass
class Run:
    """Everything the stages share."""

    config: ml_collections.ConfigDict
    workdir: Workdir
    spec: ModelSpec
    mesh: jax.sharding.Mesh
    compute_dtype: Any
    datasets: dict[str, Any] = dataclasses.field(default_factory=dict)
    _validation_pairs: list | None = None

    @property
    def lr_patch(self) -> int:
        return int(self.config.data.lr_patch)

    @property
    def data_dir(self) -> str:
        return os.path.expanduser(self.config.data.data_dir or "~/tensorflow_datasets")

    def dataset(self, name: str, split: str):
        """A TFDS dataset (prepared on first use; with several processes, process 0 prepares it first)."""
        key = f"{name}:{split}"
        if key not in self.datasets:
            from classsr_jax.datasets import load_dataset

            manual = self.config.data.manual_dir or None

            def load():
                try:
                    return load_dataset(name, split, self.data_dir, manual)
                except (DataError, TrainError):
                    raise
                except Exception as e:  # TFDS raises many types with long messages; the user needs one line.
                    first = (str(e).strip().splitlines() or [""])[0]
                    raise DataError(f"cannot load dataset {name} split {split!r} from {self.data_dir}: {type(e).__name__}: {first}") from e

            if jax.process_count() > 1 and not _is_primary():
                _sync(f"dataset:{key}")
                self.datasets[key] = load()
            else:
                self.datasets[key] = load()
                if jax.process_count() > 1:
                    _sync(f"dataset:{key}")
        return self.datasets[key]

    def train_dataset(self):
        return self.dataset(self.config.data.dataset, self.config.data.train_split)

    def validation_pairs(self) -> list[tuple[str, np.ndarray, np.ndarray]]:
        """(name, lr uint8, hr uint8) of the validation set, read once."""
        if self._validation_pairs is None:
            ds = self.dataset(self.config.data.validation_dataset, self.config.data.validation_split)
            self._validation_pairs = _pairs(ds)
            if not self._validation_pairs:
                raise DataError(f"validation set {self.config.data.validation_dataset} {self.config.data.validation_split!r} is empty")
        return self._validation_pairs


def _pairs(ds) -> list[tuple[str, np.ndarray, np.ndarray]]:
    pairs = []
    for ex in ds.as_numpy_iterator():
        name = ex["name"].decode() if isinstance(ex["name"], bytes) else str(ex["name"])
        pairs.append((name, np.asarray(ex["lr"]), np.asarray(ex["hr"])))
    return pairs


def data_seed(seed: int, stage: str, step: int) -> int:
    """The data pipeline's seed for a stage (re)started at `step`: deterministic in (seed, stage, step)."""
    return int(np.random.SeedSequence([int(seed), zlib.crc32(stage.encode()), int(step)]).generate_state(1)[0])


def _specs_equal(a: ModelSpec, b: ModelSpec) -> bool:
    return a.to_dict() == b.to_dict()


def _describe(spec: ModelSpec) -> str:
    return checkpointing.describe(spec)


def _pretrained_branches(config) -> list[str]:
    paths = [p.strip() for p in config.pretrained.branches.split(",") if p.strip()]
    if paths and len(paths) != NUM_CLASSES:
        raise TrainError(f"config field pretrained.branches needs {NUM_CLASSES} comma-separated checkpoints, got {len(paths)}")
    return paths


def _check_pretrained(path: str, expected: ModelSpec, field: str) -> None:
    if not os.path.exists(path):
        raise TrainError(f"config field {field}: checkpoint {path} does not exist")
    found = checkpointing.read_model_spec(path)
    if not _specs_equal(found, expected):
        raise CheckpointError(f"config field {field}: {path} is {_describe(found)}, but this config needs {_describe(expected)}")


def check_stage_inputs(config, workdir: Workdir, stages: tuple[str, ...]) -> None:
    """Each selected stage's inputs come from an earlier selected stage, this workdir, or config.pretrained."""
    has_model = lambda stage: os.path.isdir(workdir.model(stage))
    classsr = any(has_model(s) for s in ("joint", "finetune")) or bool(config.pretrained.classsr)
    if "branches" in stages and "divide" not in stages and not os.path.isfile(workdir.division):
        raise TrainError(f"stage branches needs the class division {workdir.division}: run stage divide first")
    if "joint" in stages and "branches" not in stages:
        if not (all(has_model(b) for b in branch_stages()) or config.pretrained.branches or config.pretrained.classsr):
            raise TrainError(
                "stage joint needs trained branches: run stage branches, or give "
                "--config.pretrained.branches=b1,b2,b3 or --config.pretrained.classsr"
            )
    for stage in ("finetune", "evaluate"):
        if stage in stages and not (classsr or "joint" in stages or (stage == "evaluate" and "finetune" in stages)):
            raise TrainError(f"stage {stage} needs a ClassSR model: run stage joint, or give --config.pretrained.classsr")


def preflight(config, workdir: Workdir, spec: ModelSpec, stages: tuple[str, ...] = STAGES) -> None:
    """Every check that can fail before anything is written: a failing run leaves the workdir untouched."""
    if os.path.exists(workdir.root) and not os.path.isdir(workdir.root):
        raise TrainError(f"workdir {workdir.root} exists and is not a directory")
    if config.data.data_dir and not os.path.isdir(os.path.expanduser(config.data.data_dir)):
        raise TrainError(f"data dir {config.data.data_dir} does not exist (config.data.data_dir); create it or leave it empty for ~/tensorflow_datasets")
    if config.data.manual_dir and not os.path.isdir(os.path.expanduser(config.data.manual_dir)):
        raise TrainError(f"data dir {config.data.manual_dir} does not exist (config.data.manual_dir): put the source photos there")
    if os.path.isfile(workdir.config_json):
        try:
            with open(workdir.config_json) as f:
                stored = ModelSpec.from_dict(json.load(f)["model"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise CheckpointError(f"workdir {workdir.root} has an unreadable config.json ({type(e).__name__}); use another workdir") from e
        if not _specs_equal(stored, spec):
            raise CheckpointError(f"workdir {workdir.root} holds a {_describe(stored)} run, but this config is {_describe(spec)}; use another --workdir")
    # Models and checkpoints already in the workdir must fit too (e.g. a workdir copied from another run).
    expected = {"original": spec.branch(spec.num_branches - 1), "joint": spec, "finetune": spec}
    expected.update({name: spec.branch(k) for k, name in enumerate(branch_stages(spec.num_branches))})
    for stage, want in expected.items():
        if os.path.isdir(workdir.model(stage)):
            found = checkpointing.read_model_spec(workdir.model(stage))
            if not _specs_equal(found, want):
                raise CheckpointError(f"workdir model {workdir.model(stage)} is {_describe(found)}, but this config needs {_describe(want)}; use another --workdir")
        progress = checkpointing.read_train_progress(workdir.checkpoints(stage))
        if progress is not None:
            found = ModelSpec.from_dict(progress["model"])
            if not _specs_equal(found, want):
                raise CheckpointError(f"workdir checkpoint {workdir.checkpoints(stage)} is {_describe(found)}, but this config needs {_describe(want)}; use another --workdir")
    for name, want in (("original", spec.branch(spec.num_branches - 1)), ("classsr", spec)):
        if os.path.isdir(workdir.export(name)):
            found = checkpointing.read_model_spec(workdir.export(name))
            if not _specs_equal(found, want):
                raise CheckpointError(f"workdir export {workdir.export(name)} is {_describe(found)}, but this config needs {_describe(want)}; use another --workdir")
    if config.pretrained.original:
        _check_pretrained(config.pretrained.original, spec.branch(spec.num_branches - 1), "pretrained.original")
    for k, path in enumerate(_pretrained_branches(config)):
        _check_pretrained(path, spec.branch(k), "pretrained.branches")
    if config.pretrained.classsr:
        _check_pretrained(config.pretrained.classsr, spec, "pretrained.classsr")
    check_stage_inputs(config, workdir, stages)


# ------------------------------------------------------------------------------------------ model sources


def _load_variables(path: str) -> dict[str, Any]:
    return checkpointing.load_model(path).variables


def original_source(run: Run) -> str | None:
    """Where the -O network comes from: this workdir's stage, else config.pretrained.original."""
    if os.path.isdir(run.workdir.model("original")):
        return run.workdir.model("original")
    return run.config.pretrained.original or None


def branch_variables(run: Run, k: int) -> dict[str, Any] | None:
    """Branch k's variables: this workdir's stage, else the pretrained branch, else the pretrained ClassSR's."""
    stage_model = run.workdir.model(branch_stages()[k])
    if os.path.isdir(stage_model):
        return _load_variables(stage_model)
    pretrained = _pretrained_branches(run.config)
    if pretrained:
        return _load_variables(pretrained[k])
    if run.config.pretrained.classsr:
        return _branch_of(_load_variables(run.config.pretrained.classsr), k)
    return None


def _branch_of(variables: dict[str, Any], k: int) -> dict[str, Any]:
    out = {"params": variables["params"][f"net{k + 1}"]}
    stats = variables.get("batch_stats", {}) or {}
    if f"net{k + 1}" in stats:
        out["batch_stats"] = stats[f"net{k + 1}"]
    return out


def classsr_source(run: Run) -> str | None:
    """The final ClassSR model: finetune, else joint, in this workdir; else config.pretrained.classsr."""
    for stage in ("finetune", "joint"):
        if os.path.isdir(run.workdir.model(stage)):
            return run.workdir.model(stage)
    return run.config.pretrained.classsr or None


def _fresh_variables(spec: ModelSpec, seed: int, lr_patch: int) -> dict[str, Any]:
    return checkpointing.init_variables(spec, seed=seed, tile=lr_patch)


def count_params(variables: dict[str, Any]) -> int:
    return int(sum(np.size(x) for x in jax.tree_util.tree_leaves(variables["params"])))


# ------------------------------------------------------------------------------------------- validation


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
        "lr": np.stack(lrs).astype(np.float32) / 255.0,
        "hr": np.stack(hrs).astype(np.float32) / 255.0,
    }


class Validator:
    """Validation of one stage's model: whole-image PSNR (and FLOPs, class ratios) through inference.Upscaler,
    losses and class statistics on validation tiles through `eval_step`, and images for TensorBoard.

    Runs on this process's devices only: every process computes the same numbers from the same data.
    """

    def __init__(self, run: Run, spec: ModelSpec, objective: Objective):
        from classsr_jax.inference import Upscaler

        self.run, self.spec, self.objective = run, spec, objective
        self.pairs = run.validation_pairs()
        patch = run.lr_patch
        self.upscaler = Upscaler(
            spec, None, protocol=run.config.validation.protocol, tile=patch, step=patch * 7 // 8, overlap=patch // 4
        )
        self.mesh = parallel.local_mesh()
        devices = self.mesh.devices.size
        batch = max(devices, -(-run.config.validation.batch_size // devices) * devices)
        tiles = validation_tiles(self.pairs, patch, spec.scale, run.config.validation.num_tiles)
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
        model = spec.build()
        self._eval = parallel.data_parallel(
            functools.partial(eval_step, model=model, objective=objective), self.mesh, donate_state=False,
            out_specs=jax.sharding.PartitionSpec(),
        )

    def __call__(self, variables: dict[str, Any], step: int, writer) -> dict[str, Any]:
        from classsr_jax.image_io import class_map_overlay, to_uint8
        from classsr_jax.evaluation import evaluate_pairs

        placed = jax.device_put(variables, parallel.replicated(self.mesh))
        sums = None
        for batch in self.batches:
            out = self._eval(placed, jax.device_put(batch, parallel.batch_sharded(self.mesh)))
            out = jax.tree_util.tree_map(np.asarray, out)
            sums = out if sums is None else jax.tree_util.tree_map(np.add, sums, out)
        metrics = summarize_eval(sums, self.objective)
        report = evaluate_pairs(self.upscaler, self.pairs, variables=variables)["average"]
        metrics.update(psnr=report["psnr"], psnr_y=report["psnr_y"], ssim_y=report["ssim_y"])
        if self.spec.kind == "classsr":
            metrics.update(flops_percent=report["flops_percent"], class_ratio=report["class_ratio"])
        scalars = _scalars("val", metrics)
        writer.write_scalars(step, scalars)
        # An SR sample and its class map (the first validation image).
        result = self.upscaler.upscale(self.pairs[0][1].astype(np.float32) / 255.0)
        sr = to_uint8(result.sr)
        images = {"val/sr": sr[None]}
        if self.spec.kind == "classsr":
            overlay = class_map_overlay(sr, result.grid.hr_boxes(self.spec.scale), result.classes)
            images["val/class_map"] = overlay[None]
        writer.write_images(step, images)
        return metrics


def _scalars(prefix: str, metrics: dict[str, Any]) -> dict[str, float]:
    """Flat scalar dict; per-class vectors become `<name>/<class>`."""
    out = {}
    for key, value in metrics.items():
        value = np.asarray(value)
        if value.ndim == 0:
            out[f"{prefix}/{key}"] = float(value)
        else:
            for k, v in enumerate(value.tolist()):
                label = CLASS_NAMES[k] if len(value) == NUM_CLASSES else str(k)
                out[f"{prefix}/{key}/{label}"] = float(v)
    return out


class CollapseMonitor:
    """Warns when one class takes more than `threshold` of the tiles (classifier collapse, which users of the
    original hit often): once when it starts, again at every validation while it lasts, and says when it ends."""

    def __init__(self, threshold: float):
        self.threshold = threshold
        self.collapsed: dict[str, bool] = {}

    def __call__(self, ratios, where: str, step: int, always: bool = False) -> bool:
        ratios = np.asarray(ratios, np.float64)
        collapsed = bool(ratios.size and ratios.max() > self.threshold)
        if collapsed and (always or not self.collapsed.get(where)):
            k = int(ratios.argmax())
            label = CLASS_NAMES[k] if ratios.size == NUM_CLASSES else str(k)
            logging.warning(
                "classifier collapse at step %d: class %d (%s) takes %.0f%% of the %s tiles (more than %.0f%%); "
                "check the Average-Loss weight and that the branches were trained on their classes",
                step, k, label, 100 * ratios.max(), where, 100 * self.threshold,
            )
        elif not collapsed and self.collapsed.get(where):
            logging.info("step %d: the %s tiles are spread over the classes again (largest share %.0f%%)", step, where, 100 * ratios.max())
        self.collapsed[where] = collapsed
        return collapsed


# --------------------------------------------------------------------------------------- the training loop


@dataclasses.dataclass
class StageSetup:
    """One training stage: what to train, from what, on what data, and how to validate it."""

    name: str
    stage_config: ml_collections.ConfigDict
    spec: ModelSpec
    objective: Objective
    trainable: tuple[str, ...] | None
    init_variables: Callable[[], dict[str, Any]]
    make_iterator: Callable[[int], Iterator[dict[str, np.ndarray]]]


def _abstract_state(spec: ModelSpec, tx, trainable, mesh, lr_patch: int) -> TrainState:
    abstract_vars = checkpointing.abstract_variables(spec, tile=lr_patch)
    shapes = jax.eval_shape(lambda v: create_train_state(v, tx, trainable), abstract_vars)
    sharding = parallel.replicated(mesh)
    return jax.tree_util.tree_map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding), shapes)


def _mean_metrics(history: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    fetched = jax.tree_util.tree_map(lambda x: np.asarray(parallel.host_copy(x), np.float64), history)
    return jax.tree_util.tree_map(lambda *xs: np.mean(np.stack(xs), axis=0), *fetched)


def run_training_stage(run: Run, setup: StageSetup) -> dict[str, Any]:
    """Trains one stage to `num_steps` (resuming from its last checkpoint) and exports its model; returns the
    final variables (host numpy). A finished stage is skipped and its model returned."""
    config, workdir, sc = run.config, run.workdir, setup.stage_config
    model_dir = workdir.model(setup.name)
    if _agreed(os.path.isdir(model_dir)):
        logging.info("stage %s: finished earlier (%s), skipping", setup.name, model_dir)
        return _load_variables(model_dir)
    model = setup.spec.build(dtype=run.compute_dtype)
    tx = make_optimizer(sc, config.optimizer)
    manager = checkpointing.train_checkpoint_manager(
        workdir.checkpoints(setup.name),
        keep_last=config.checkpoint.keep_last,
        save_every_steps=sc.checkpoint_every_steps,
        asynchronous=config.checkpoint.asynchronous,
    )
    start = _agreed_int(manager.latest_step() or 0)
    if start:
        abstract = _abstract_state(setup.spec, tx, setup.trainable, run.mesh, run.lr_patch)
        state, progress = checkpointing.restore_train_state(manager, start, abstract)
        if not _specs_equal(ModelSpec.from_dict(progress["model"]), setup.spec):
            raise CheckpointError(f"checkpoint {workdir.checkpoints(setup.name)} holds another model than {_describe(setup.spec)}")
        logging.info("stage %s: resuming from step %d of %d", setup.name, start, sc.num_steps)
    else:
        state = parallel.replicate(create_train_state(setup.init_variables(), tx, setup.trainable), run.mesh)
        logging.info("stage %s: starting, %d steps, global batch %d on %d devices", setup.name, sc.num_steps, sc.batch_size, run.mesh.devices.size)
    p_train_step = parallel.data_parallel(
        functools.partial(train_step, model=model, tx=tx, objective=setup.objective), run.mesh
    )
    seed = data_seed(config.seed, setup.name, start)
    iterator = setup.make_iterator(seed)
    validator = Validator(run, setup.spec, setup.objective)
    writer = metric_writers.create_default_writer(workdir.tensorboard(setup.name), just_logging=not _is_primary())
    report = periodic_actions.ReportProgress(num_train_steps=sc.num_steps, writer=writer, every_steps=sc.log_every_steps, every_secs=None)
    schedule = learning_rate_schedule(sc.learning_rate, sc.eta_min, sc.cosine_period)
    history: list[dict[str, Any]] = []
    collapse = CollapseMonitor(config.collapse_threshold)
    progress = {"stage": setup.name, "model": setup.spec.to_dict(), "trainable": list(setup.trainable or []), "started_at_step": start, "data_seed": seed}
    try:
        for step in range(start + 1, sc.num_steps + 1):
            with report.timed("data", wait_jax_async_dispatch=False):
                batch = parallel.global_batch(next(iterator), run.mesh)
            state, metrics = p_train_step(state, batch)
            history.append(metrics)
            report(step)
            last = step == sc.num_steps
            if step % sc.log_every_steps == 0 or last:
                summary = _mean_metrics(history)
                history = []
                scalars = _scalars("train", summary)
                scalars["train/learning_rate"] = float(schedule(step - 1))
                writer.write_scalars(step, scalars)
                if "hard_ratio" in summary:
                    collapse(summary["hard_ratio"], "training", step)
            val = None
            if step % sc.eval_every_steps == 0 or last:
                with report.timed("validation"):
                    val = validator(parallel.host_copy(state.variables), step, writer)
                if "class_ratio" in val:
                    collapse(val["class_ratio"], "validation", step, always=True)
            if step % sc.checkpoint_every_steps == 0 or last:
                checkpointing.save_train_state(
                    manager, step, state, {**progress, "step": step},
                    metrics={checkpointing.BEST_METRIC: float(val["psnr"])} if val else None, force=True,
                )
        manager.wait_until_finished()
        best = manager.best_step()
    finally:
        manager.close()
        writer.flush()
        writer.close()
        if hasattr(iterator, "close"):
            iterator.close()
    variables = parallel.host_copy(state.variables)
    checkpointing.export_model(
        model_dir, setup.spec, variables, {"stage": setup.name, "steps": sc.num_steps, "best_step": best}
    )
    logging.info("stage %s: done (%d steps), model in %s", setup.name, sc.num_steps, model_dir)
    return variables


def _iterator_factory(run: Run, batch_size: int, *, division=None, class_filter: int | None = None):
    from classsr_jax.input_pipeline import create_train_iterator

    local = parallel.process_batch_size(batch_size, run.mesh)

    def make(seed: int):
        return create_train_iterator(
            run.train_dataset(),
            batch_size=local,
            scale=run.spec.scale,
            lr_patch=run.lr_patch,
            seed=seed,
            process_index=jax.process_index(),
            process_count=jax.process_count(),
            class_filter=class_filter,
            division=division,
            prefetch=run.config.data.prefetch,
        )

    return make


# ---------------------------------------------------------------------------------------------- the stages


def stage_original(run: Run) -> dict[str, Any]:
    """(a) The -O network on all training data."""
    spec_o = run.spec.branch(run.spec.num_branches - 1)
    pretrained = run.config.pretrained.original
    export = _agreed(not os.path.isdir(run.workdir.export("original")))

    def init():
        if pretrained:
            logging.info("stage original: starting from %s", pretrained)
            return _load_variables(pretrained)
        return _fresh_variables(spec_o, run.config.seed, run.lr_patch)

    variables = run_training_stage(
        run,
        StageSetup(
            name="original",
            stage_config=run.config.original,
            spec=spec_o,
            objective=Objective("sr", pixel_range=run.config.loss.pixel_range),
            trainable=None,
            init_variables=init,
            make_iterator=_iterator_factory(run, run.config.original.batch_size),
        ),
    )
    if export:
        metadata = {"stage": "original", "steps": run.config.original.num_steps}
        checkpointing.export_model(run.workdir.export("original"), spec_o, variables, metadata)
    return variables


def stage_divide(run: Run) -> None:
    """(b) Scores every training tile with the -O network (or bicubic) and splits them into three classes."""
    from classsr_jax.datasets import division as division_lib

    path = run.workdir.division
    if _agreed(os.path.isfile(path)):
        logging.info("stage divide: finished earlier (%s), skipping", path)
        return
    cfg, scale, patch = run.config.division, run.spec.scale, run.lr_patch
    source = original_source(run) if cfg.reference == "original" else None
    local_devices = len(jax.local_devices())
    batch = -(-cfg.batch_size // local_devices) * local_devices
    if source:
        loaded = checkpointing.load_model(source)
        model = loaded.spec.build()
        sr_fn = parallel.local_batch_fn(lambda v, x: model.apply(v, x, False), loaded.variables)
        reference = f"-O network {source}"
    else:
        if cfg.reference == "original":
            logging.warning("stage divide: no -O network (stage original not run, no pretrained.original); using bicubic")
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
            logging.info("stage divide: %d tiles scored (%.0f tiles/s)", counter["tiles"], counter["tiles"] / (now - counter["t0"]))
        return out

    division = division_lib.divide(
        run.train_dataset(),
        scored,
        scale,
        thresholds=division_thresholds(run.config),
        batch_size=batch,
        lr_tile=patch,
        step=patch // 2,
        thres=patch * 3 // 8,
    )
    if _is_primary():
        division_lib.save_division(division, path)
    _sync("division")
    simple, medium, hard = division.counts()
    logging.info(
        "stage divide: %d tiles → %d simple / %d medium / %d hard (thresholds %.3f, %.3f dB), saved to %s",
        division.num_tiles, simple, medium, hard, *division.thresholds, path,
    )


def _load_division(run: Run, stage: str):
    from classsr_jax.datasets.division import load_division

    if not os.path.isfile(run.workdir.division):
        raise TrainError(f"stage {stage} needs the class division {run.workdir.division}: run stage divide first")
    return load_division(run.workdir.division)


def stage_branches(run: Run) -> dict[str, Any]:
    """(c) Branch k trained on the tiles of class k."""
    division = _load_division(run, "branches")
    pretrained = _pretrained_branches(run.config)
    spec_o = run.spec.branch(run.spec.num_branches - 1)
    trained = {}
    for k, name in enumerate(branch_stages(run.spec.num_branches)):
        spec_k = run.spec.branch(k)

        def init(k=k, spec_k=spec_k, name=name):
            if pretrained:
                logging.info("stage %s: starting from %s", name, pretrained[k])
                return _load_variables(pretrained[k])
            source = original_source(run)
            if run.config.branches.init_from_original and source and spec_k.widths == spec_o.widths:
                logging.info("stage %s: starting from the -O network %s", name, source)
                return _load_variables(source)
            return _fresh_variables(spec_k, run.config.seed + k + 1, run.lr_patch)

        trained[name] = run_training_stage(
            run,
            StageSetup(
                name=name,
                stage_config=run.config.branches,
                spec=spec_k,
                objective=Objective("sr", pixel_range=run.config.loss.pixel_range),
                trainable=None,
                init_variables=init,
                make_iterator=_iterator_factory(run, run.config.branches.batch_size, division=division, class_filter=k),
            ),
        )
    return trained


def _classsr_objective(run: Run, stage_config) -> Objective:
    return Objective(
        "classsr",
        l1_weight=stage_config.l1_weight,
        class_loss_weight=stage_config.class_loss_weight,
        average_loss_weight=stage_config.average_loss_weight,
        pixel_range=run.config.loss.pixel_range,
    )


def _joint_data(run: Run):
    """The original's joint data: every grid tile of the training set (all classes)."""
    if os.path.isfile(run.workdir.division):
        return _load_division(run, "joint")
    return None


def stage_joint(run: Run) -> dict[str, Any]:
    """(d) The Class-Module trained with the branches frozen."""
    spec = run.spec
    export = _agreed(not os.path.isdir(run.workdir.model("finetune")))

    def init():
        variables = _fresh_variables(spec, run.config.seed, run.lr_patch)
        params = dict(variables["params"])
        stats = dict(variables.get("batch_stats", {}) or {})
        for k in range(spec.num_branches):
            branch = branch_variables(run, k)
            if branch is None:
                raise TrainError(
                    "stage joint needs trained branches: run stage branches, or give "
                    "--config.pretrained.branches=b1,b2,b3 or --config.pretrained.classsr"
                )
            params[f"net{k + 1}"] = branch["params"]
            if branch.get("batch_stats"):
                stats[f"net{k + 1}"] = branch["batch_stats"]
        merged = {"params": params}
        if stats:
            merged["batch_stats"] = stats
        checkpointing.check_variables(spec, merged, "the joint stage's starting model")
        return merged

    variables = run_training_stage(
        run,
        StageSetup(
            name="joint",
            stage_config=run.config.joint,
            spec=spec,
            objective=_classsr_objective(run, run.config.joint),
            trainable=("classifier",),
            init_variables=init,
            make_iterator=_iterator_factory(run, run.config.joint.batch_size, division=_joint_data(run)),
        ),
    )
    if export:
        metadata = {"stage": "joint", "steps": run.config.joint.num_steps}
        checkpointing.export_model(run.workdir.export("classsr"), spec, variables, metadata)
    return variables


def stage_finetune(run: Run) -> dict[str, Any]:
    """(e) Everything trained together, from the joint result."""

    def init():
        source = classsr_source(run)
        if source is None:
            raise TrainError("stage finetune needs a ClassSR model: run stage joint, or give --config.pretrained.classsr")
        return _load_variables(source)

    variables = run_training_stage(
        run,
        StageSetup(
            name="finetune",
            stage_config=run.config.finetune,
            spec=run.spec,
            objective=_classsr_objective(run, run.config.finetune),
            trainable=None,
            init_variables=init,
            make_iterator=_iterator_factory(run, run.config.finetune.batch_size, division=_joint_data(run)),
        ),
    )
    metadata = {"stage": "finetune", "steps": run.config.finetune.num_steps}
    checkpointing.export_model(run.workdir.export("classsr"), run.spec, variables, metadata)
    return variables


# ------------------------------------------------------------------------------------------ evaluation


def evaluation_datasets(run: Run) -> list[tuple[str, list]]:
    """(label, pairs) for every entry of config.evaluate.datasets: 'validation' or 'tfds_name:split', each
    optionally labelled as 'label=…' for the table."""
    out = []
    for entry in [e.strip() for e in run.config.evaluate.datasets.split(",") if e.strip()]:
        label, _, source = entry.rpartition("=") if "=" in entry else (entry, "", entry)
        if source == "validation":
            out.append((label, run.validation_pairs()))
            continue
        if ":" not in source:
            raise TrainError(f"config field evaluate.datasets: {source!r} is neither 'validation' nor 'dataset:split'")
        name, split = source.split(":", 1)
        out.append((label, _pairs(run.dataset(name, split))))
    if not out:
        raise TrainError("config field evaluate.datasets is empty")
    return out


def stage_evaluate(run: Run) -> dict[str, Any]:
    """(f) ClassSR against -O (and bicubic) on the evaluation sets: the paper's table, printed and saved."""
    from classsr_jax.evaluation import bicubic_average, evaluate_pairs, format_results_table
    from classsr_jax.inference import Upscaler

    if _agreed(os.path.isfile(run.workdir.results_json)):
        with open(run.workdir.results_json) as f:
            results = json.load(f)
        logging.info("stage evaluate: finished earlier (%s), skipping", run.workdir.results_json)
        if _is_primary():
            print(results["table"], flush=True)
        return results
    cfg, scale, patch = run.config.evaluate, run.spec.scale, run.lr_patch
    models = []
    classsr = classsr_source(run)
    if classsr is None:
        raise TrainError("stage evaluate needs a ClassSR model: run stage joint, or give --config.pretrained.classsr")
    original = original_source(run)
    network = run.spec.network
    if original:
        models.append(("original", f"{network.upper() if network != 'srresnet' else 'SRResNet'}-O", original))
    models.append(("classsr", f"ClassSR-{network.upper() if network != 'srresnet' else 'SRResNet'}", classsr))
    results: dict[str, Any] = {
        "protocol": cfg.protocol,
        "scale": scale,
        "models": [{"key": "bicubic", "name": "Bicubic", "params": 0}],
        "datasets": {},
        "per_image": {},
    }
    loaded = {}
    for key, name, path in models:
        loaded[key] = checkpointing.load_model(path)
        results["models"].append({"key": key, "name": name, "path": path, "params": count_params(loaded[key].variables)})
    for label, pairs in evaluation_datasets(run):
        logging.info("stage evaluate: %s (%d images)", label, len(pairs))
        row = {"bicubic": bicubic_average(pairs, scale, cfg.protocol, patch)}
        per_image = {}
        for key, _, _ in models:
            upscaler = Upscaler(loaded[key].spec, loaded[key].variables, protocol=cfg.protocol, tile=patch, step=patch * 7 // 8, overlap=patch // 4)
            report = evaluate_pairs(upscaler, pairs, progress=False)
            row[key] = report["average"]
            per_image[key] = [{"name": i["name"], "psnr": i["psnr"], "class_counts": i["class_counts"]} for i in report["images"]]
        results["datasets"][label] = row
        results["per_image"][label] = per_image
    if "original" in loaded:
        results["models"][1]["flops_note"] = "-O FLOPs are its per-tile cost (100%)"
    else:
        logging.warning("stage evaluate: no -O network (stage original not run, no pretrained.original); the table has no -O row")
    results["table"] = format_results_table(results)
    if _is_primary():
        _write_text_atomic(run.workdir.results_json, json.dumps(results, indent=2))
        _write_text_atomic(run.workdir.table_md, results["table"] + "\n")
        print(results["table"], flush=True)
    _sync("evaluate")
    return results


# ----------------------------------------------------------------------------------------------- entry point


def _config_record(config, spec: ModelSpec) -> str:
    return json.dumps({"model": spec.to_dict(), "config": json.loads(config.to_json_best_effort())}, indent=2)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Runs the selected stages of the recipe in `workdir`; returns {'stages': [...], 'variables': {stage:
    final host variables of every training stage run (or skipped as finished)}, 'evaluation': results}.

    Raises one of USER_ERRORS, with a one-line message, for a bad config, missing data or an incompatible
    workdir; such a failure happens before anything is written.
    """
    validate_config(config)
    spec = model_spec(config)
    try:
        spec.build()  # unknown extra fields, unsupported scale
    except ValueError as e:
        raise TrainError(f"config field model: {e}") from None
    stages = selected_stages(config)
    work = Workdir(os.path.abspath(os.path.expanduser(workdir)))
    preflight(config, work, spec, stages)
    mesh = parallel.create_mesh()
    run = Run(config, work, spec, mesh, jnp.bfloat16 if config.half_precision else jnp.float32)
    # Open the data now, so that missing data fails before the workdir is touched.
    if any(s in TRAINING_DATA_STAGES for s in stages):
        run.train_dataset()
    if any(s in ("original", "branches", "joint", "finetune") for s in stages) or "validation" in config.evaluate.datasets:
        run.validation_pairs()
    for stage in ("original", "branches", "joint", "finetune"):
        if stage in stages:
            parallel.process_batch_size(config[stage].batch_size, mesh)  # fails early on an uneven batch
    if _is_primary():
        os.makedirs(work.root, exist_ok=True)
        if not os.path.isfile(work.config_json):
            _write_text_atomic(work.config_json, _config_record(config, spec))
    _sync("workdir")
    logging.info("workdir %s: %s, stages %s, %d devices", work.root, _describe(spec), ",".join(stages), mesh.devices.size)
    runners = {
        "original": stage_original,
        "divide": stage_divide,
        "branches": stage_branches,
        "joint": stage_joint,
        "finetune": stage_finetune,
        "evaluate": stage_evaluate,
    }
    evaluation, variables = None, {}
    for stage in stages:
        out = runners[stage](run)
        if stage == "evaluate":
            evaluation = out
        elif stage == "branches":
            variables.update(out)
        elif out is not None:
            variables[stage] = out
    return {"stages": list(stages), "variables": variables, "evaluation": evaluation}
