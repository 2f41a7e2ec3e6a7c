"""The stages of the recipe: what each trains, from which weights, on which tiles, and what it exports (one
table, `RECIPES`), and stage `evaluate`; stage `divide`, which trains nothing either, is in `divide`.

  original  the -O network (the widest branch) trained on all tiles: the paper's baseline and the division's
            reference network;
  divide    every training tile scored by that network (PSNR) and split into simple / medium / hard;
  branches  branch k trained on the tiles of class k (one sub-stage per branch: branch1, branch2, branch3);
  joint     the Class-Module trained with the branches frozen: L1 of the softmax-mixed output + Class-Loss +
            Average-Loss;
  finetune  optional (`config.finetune.enabled`, or named in `config.stages`): everything trained together;
  evaluate  ClassSR against -O and bicubic on the validation (or test) sets: the paper's table, saved as JSON
            with what it was computed from, and computed again when any of that changes.

Converted official weights (`config.pretrained`) start the stage that makes that network (original from
pretrained.original, branch k from pretrained.branches[k]) and stand in for a stage's output that the workdir
lacks (the -O network for the division and the table; the branches for joint training, also taken from
pretrained.classsr; the ClassSR model for finetune and evaluate).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
from collections.abc import Callable, Iterator
from typing import Any

import jax
import numpy as np
from absl import logging

from classsr_jax import checkpointing, parallel
from classsr_jax.checkpointing import CLASSSR_EXPORT, ORIGINAL_EXPORT
from classsr_jax.data import division as division_lib
from classsr_jax.data.colour_augment import ColourAugment
from classsr_jax.data.input_pipeline import create_train_iterator
from classsr_jax.errors import TrainError
from classsr_jax.evaluation.scoring import bicubic_average, evaluate_pairs, format_results_table
from classsr_jax.inference.upscaler import Upscaler
from classsr_jax.io import atomic
from classsr_jax.models import interpolation_init, slim
from classsr_jax.models.spec import ModelSpec
from classsr_jax.training import configuration
from classsr_jax.training.context import StageContext, dataset_pairs
from classsr_jax.training.losses import Objective
from classsr_jax.training.workdir import (
    branch_stages,
    branch_variables,
    classsr_source,
    load_variables,
    original_source,
    pretrained_branches,
    trained_branch_stages,
)


def _load_division(ctx: StageContext, stage: str):
    if not os.path.isfile(ctx.workdir.division):
        raise TrainError(f"stage {stage} needs the class division {ctx.workdir.division}: run stage divide first")
    return division_lib.load_division(ctx.workdir.division)


# ------------------------------------------------------------------------------------------ training stages


@dataclasses.dataclass(frozen=True)
class TrainingStage:
    """One stage for `train.train_stage`: what to train, from what, on what data, and where to export it."""

    name: str  # also its folder under stages/ and tensorboard/
    settings: Any  # its config section: batch, steps, learning rate (and loss weights)
    spec: ModelSpec
    objective: Objective
    trainable: tuple[str, ...] | None  # the parameter groups the optimiser updates; None: all
    initial_variables: Callable[[], dict[str, Any]]
    make_iterator: Callable[[int], Iterator[dict[str, np.ndarray]]]  # data seed → training batches
    export_to: str | None = None  # an export folder that receives the stage's model


def objective_for(config, section: str, spec: ModelSpec) -> Objective:
    """L1 for a single network; the ClassSR loss with the section's weights for a ClassSR model."""
    if spec.kind != "classsr":
        return Objective("l1", pixel_range=config.loss.pixel_range)
    settings = config[section]
    return Objective(
        "classsr",
        l1_weight=settings.l1_weight,
        class_loss_weight=settings.class_loss_weight,
        average_loss_weight=settings.average_loss_weight,
        pixel_range=config.loss.pixel_range,
    )


def _fresh_variables(ctx: StageContext, spec: ModelSpec, seed: int) -> dict[str, Any]:
    """A model trained from scratch. A single network starts as config.model.init says; in a ClassSR model only
    the Class-Module is new (its branches are replaced by trained ones)."""
    variables = spec.init(seed=seed, tile=ctx.lr_patch)
    if spec.kind == "network" and ctx.config.model.init == "interpolation":
        params = interpolation_init.interpolating_params(spec.network, variables["params"], spec.scale)
        variables = {**variables, "params": params}
    return variables


def _start_original(ctx: StageContext, spec: ModelSpec, k: int | None) -> dict[str, Any]:
    pretrained = ctx.config.pretrained.original
    if pretrained:
        logging.info("stage original: starting from %s", pretrained)
        return load_variables(pretrained)
    return _fresh_variables(ctx, spec, ctx.config.seed)


def _start_branch(ctx: StageContext, spec: ModelSpec, k: int) -> dict[str, Any]:
    name = branch_stages(ctx.spec.num_branches)[k]
    pretrained = pretrained_branches(ctx.config)
    if pretrained:
        logging.info("stage %s: starting from %s", name, pretrained[k])
        return load_variables(pretrained[k])
    source = original_source(ctx.config, ctx.workdir)
    widest = ctx.spec.branch(ctx.spec.num_branches - 1).widths
    if ctx.config.branches.init_from_original and source and spec.widths == widest:
        logging.info("stage %s: starting from the -O network %s", name, source)
        return load_variables(source)
    if ctx.config.branches.slim_from_original and source and spec.widths != widest:
        logging.info(
            "stage %s: starting from the %d most important channels of the -O network %s",
            name, spec.widths[0], source
        )
        variables = {"params": slim.slim_params(spec.network, load_variables(source)["params"], spec.widths[0])}
        spec.check(variables, f"stage {name}'s start cut out of {source}")
        return variables
    return _fresh_variables(ctx, spec, ctx.config.seed + k + 1)


def _start_joint(ctx: StageContext, spec: ModelSpec, k: int | None) -> dict[str, Any]:
    """A fresh Class-Module with the trained branches."""
    variables = _fresh_variables(ctx, spec, ctx.config.seed)
    params = dict(variables["params"])
    stats = dict(variables.get("batch_stats", {}) or {})
    for k in range(spec.num_branches):
        branch = branch_variables(ctx.config, ctx.workdir, k)
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
    spec.check(merged, "the joint stage's starting model")
    return merged


def _start_finetune(ctx: StageContext, spec: ModelSpec, k: int | None) -> dict[str, Any]:
    source = classsr_source(ctx.config, ctx.workdir)
    if source is None:
        raise TrainError("stage finetune needs a ClassSR model: run stage joint, or give --config.pretrained.classsr")
    return load_variables(source)


def _iterator_factory(ctx: StageContext, batch_size: int, *, division=None, class_filter: int | None = None):
    """The one place training batches are made: the data seed → an endless iterator of this process's share."""
    local = parallel.process_batch_size(batch_size, ctx.mesh)

    def make(seed: int):
        return create_train_iterator(
            ctx.train_dataset(),
            batch_size=local,
            scale=ctx.spec.scale,
            lr_patch=ctx.lr_patch,
            seed=seed,
            process_index=jax.process_index(),
            process_count=jax.process_count(),
            class_filter=class_filter,
            division=division,
            prefetch=ctx.config.data.prefetch,
            colour=ColourAugment(**ctx.config.data.colour_augment),
            raw=True,  # finished inside the jitted step (train.train_step)
        )

    return make


@dataclasses.dataclass(frozen=True)
class Recipe:
    """How a training stage is set up.

    model: 'original' (the -O network), 'branch' (each branch in turn, one sub-stage each) or 'classsr'.
    start: (context, spec, branch index or None) → the variables training starts from.
    The training tiles come from the stage's config field `tiles` (configuration.TILE_SOURCES); stage
    original draws random tiles of the training set.
    export: the export folder written with the result; export_when: 'missing' (only if there is none before
      the stage), 'unless finetuned' (unless stage finetune's model exists) or 'always'.
    """

    model: str
    start: Callable[[StageContext, ModelSpec, int | None], dict[str, Any]]
    trainable: tuple[str, ...] | None  # the parameter groups the optimiser updates; None: all
    export: str | None = None
    export_when: str = "always"


RECIPES = {
    "original": Recipe("original", _start_original, None, ORIGINAL_EXPORT, "missing"),
    "branches": Recipe("branch", _start_branch, None),
    "joint": Recipe("classsr", _start_joint, ("classifier",), CLASSSR_EXPORT, "unless finetuned"),
    "finetune": Recipe("classsr", _start_finetune, None, CLASSSR_EXPORT, "always"),
}


def _export_to(ctx: StageContext, recipe: Recipe) -> str | None:
    """Where the stage exports its model, decided before it trains (every process takes process 0's answer)."""
    if recipe.export is None:
        return None
    path = ctx.workdir.export(recipe.export)
    if recipe.export_when == "missing":
        wanted = not os.path.isdir(path)
    elif recipe.export_when == "unless finetuned":
        wanted = not os.path.isdir(ctx.workdir.model("finetune"))
    else:
        wanted = True
    return path if parallel.process0_value(bool(wanted)) else None


def plan_training(ctx: StageContext, stage: str) -> list[TrainingStage]:
    """The training stages that `stage` stands for: one, or one per branch for 'branches'."""
    recipe, spec = RECIPES[stage], ctx.spec
    settings = ctx.config[stage]
    if recipe.model == "branch":
        trained = trained_branch_stages(ctx.config, spec.num_branches)
        units = [(name, spec.branch(k), k) for k, name in enumerate(branch_stages(spec.num_branches))]
        for name, _, _ in units[len(trained):]:  # -O itself (workdir.branch_variables)
            logging.info("stage %s: the -O network %s", name, original_source(ctx.config, ctx.workdir))
        units = [unit for unit in units if unit[0] in trained]
    elif recipe.model == "original":
        units = [(stage, spec.branch(spec.num_branches - 1), None)]
    else:
        units = [(stage, spec, None)]
    tiles = settings.tiles if stage in configuration.TILE_SOURCES else "any"
    if tiles == "class":
        division = _load_division(ctx, stage)
    elif tiles == "grid" and os.path.isfile(ctx.workdir.division):
        division = _load_division(ctx, stage)  # the original's joint data: every grid tile, all classes
    else:
        division = None
    export_to = _export_to(ctx, recipe)
    return [
        TrainingStage(
            name=name,
            settings=settings,
            spec=unit_spec,
            objective=objective_for(ctx.config, stage, unit_spec),
            trainable=recipe.trainable,
            initial_variables=functools.partial(recipe.start, ctx, unit_spec, k),
            make_iterator=_iterator_factory(
                ctx, settings.batch_size, division=division, class_filter=k if tiles == "class" else None
            ),
            export_to=export_to,
        )
        for name, unit_spec, k in units
    ]


# ---------------------------------------------------------------------------------------------- evaluate


def evaluation_datasets(ctx: StageContext) -> list[tuple[str, str, list]]:
    """(label, source, pairs) for every entry of config.evaluate.datasets (see configuration.evaluation_sources)."""
    out = []
    for label, source in configuration.evaluation_sources(ctx.config):
        if source == "validation":
            data = ctx.config.data
            out.append((label, f"{data.validation_dataset}:{data.validation_split}", ctx.validation_pairs()))
        else:
            name, split = source.split(":", 1)
            out.append((label, source, dataset_pairs(ctx.dataset(name, split))))
    return out


def pairs_digest(pairs) -> str:
    """sha256 of every pair's name and pixels: equal digests, the same evaluation images."""
    digest = hashlib.sha256()
    for name, lr, hr in pairs:
        for array in (np.ascontiguousarray(lr), np.ascontiguousarray(hr)):
            digest.update(f"{name}|{array.dtype.str}|{array.shape}|".encode())
            digest.update(array.tobytes())
    return f"sha256:{digest.hexdigest()}"


def _display_name(network: str) -> str:
    return "SRResNet" if network == "srresnet" else network.upper()


def _changed_inputs(old: dict[str, Any] | None, new: dict[str, Any]) -> list[str]:
    if not isinstance(old, dict):
        return ["everything (no record of its inputs)"]
    return [key for key in new if old.get(key) != new[key]]


def _saved_results(path: str) -> dict[str, Any] | None:
    """The results a run saved, or None when there are none, or they are unreadable or incomplete (without the
    table, e.g. hand-edited): then they are computed again."""
    try:
        with open(path) as f:
            saved = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(saved, dict) or not isinstance(saved.get("table"), str):
        logging.info("stage evaluate: %s has no table; evaluating again", path)
        return None
    return saved


def _inputs_record(ctx: StageContext, loaded, datasets, tiles) -> dict[str, Any]:
    """What results are computed from: the models' digests, the datasets' sources and digests, the protocol."""
    cfg = ctx.config.evaluate
    return {
        "models": {key: checkpointing.variables_digest(loaded[key].variables) for key in loaded},
        "datasets": {label: {"source": source, "images": len(pairs), "digest": pairs_digest(pairs)}
                     for label, source, pairs in datasets},
        "protocol": cfg.protocol,
        "scale": ctx.spec.scale,
        "tiles": tiles,
        "budget": cfg.budget,
    }


def _evaluate(ctx: StageContext, rows, loaded, datasets, tiles) -> dict[str, Any]:
    """Every table row's model (and bicubic) on every dataset: the averages and the per-image PSNRs."""
    cfg, scale = ctx.config.evaluate, ctx.spec.scale
    results: dict[str, Any] = {
        "protocol": cfg.protocol,
        "scale": scale,
        "models": [{"key": "bicubic", "name": "Bicubic", "params": 0}],
        "datasets": {},
        "per_image": {},
    }
    upscalers = {source: Upscaler(model.spec, model.variables, protocol=cfg.protocol, **tiles)
                 for source, model in loaded.items()}
    for key, name, path, source, _ in rows:
        params = checkpointing.count_params(loaded[source].variables)
        results["models"].append({"key": key, "name": name, "path": path, "params": params})
    for label, _, pairs in datasets:
        logging.info("stage evaluate: %s (%d images)", label, len(pairs))
        row = {"bicubic": bicubic_average(pairs, scale, cfg.protocol, ctx.lr_patch)}
        per_image = {}
        for key, _, _, source, budget in rows:
            report = evaluate_pairs(upscalers[source], pairs, progress=False, budget=budget)
            row[key] = report["average"]
            per_image[key] = [{"name": i["name"], "psnr": i["psnr"], "class_counts": i["class_counts"]}
                              for i in report["images"]]
        results["datasets"][label] = row
        results["per_image"][label] = per_image
    return results


def run_evaluate(ctx: StageContext) -> dict[str, Any]:
    """ClassSR against -O (and bicubic) on the evaluation sets: the paper's table, printed and saved.

    results.json records what it was computed from (the models' parameter digests, the datasets' sources and
    pixel digests, the protocol and the tiling); a rerun reuses it only when all of these are unchanged.
    """
    cfg, patch = ctx.config.evaluate, ctx.lr_patch
    classsr = classsr_source(ctx.config, ctx.workdir)
    if classsr is None:
        raise TrainError("stage evaluate needs a ClassSR model: run stage joint, or give --config.pretrained.classsr")
    original = original_source(ctx.config, ctx.workdir)
    network = _display_name(ctx.spec.network)
    models = [("original", f"{network}-O", original)] if original else []
    models.append(("classsr", f"ClassSR-{network}", classsr))
    loaded = {key: checkpointing.load_model(path) for key, _, path in models}
    # Table rows: (key, name, path, the loaded model it runs, FLOPs budget).
    rows = [(key, name, path, key, None) for key, name, path in models]
    if cfg.budget:
        # The same ClassSR with its logits shifted per image to this share of the -O FLOPs (Upscaler budget).
        rows.append((
            "classsr_budget",
            f"ClassSR-{network}, {100 * cfg.budget:.0f}% budget", classsr, "classsr", cfg.budget)
        )
    datasets = evaluation_datasets(ctx)
    tiles = {"tile": patch, "step": patch * 7 // 8, "overlap": patch // 4}
    computed_from = _inputs_record(ctx, loaded, datasets, tiles)
    previous = _saved_results(ctx.workdir.results_json)
    changed = _changed_inputs(previous.get("computed_from") if previous else None, computed_from)
    if not parallel.process0_value(bool(changed)):
        logging.info(
            "stage evaluate: finished earlier from the same models and datasets (%s), skipping",
            ctx.workdir.results_json
        )
        if parallel.is_primary_process():
            print(previous["table"], flush=True)
        return previous
    if previous is not None:
        logging.info(
            "stage evaluate: %s changed since %s was computed; evaluating again",
            ", ".join(changed), ctx.workdir.results_json
        )
    results = _evaluate(ctx, rows, loaded, datasets, tiles)
    results["computed_from"] = computed_from
    if "original" in loaded:
        results["models"][1]["flops_note"] = "-O FLOPs are its per-tile cost (100%)"
    else:
        logging.warning(
            "stage evaluate: no -O network (stage original not run, no pretrained.original); the table has no -O row"
        )
    results["table"] = format_results_table(results, ctx.config.collapse_threshold)
    if parallel.is_primary_process():
        os.makedirs(os.path.dirname(ctx.workdir.results_json), exist_ok=True)
        atomic.write_text(ctx.workdir.table_md, results["table"] + "\n")
        atomic.write_json(ctx.workdir.results_json, results)
        print(results["table"], flush=True)
    parallel.sync_processes("evaluate")
    return results
