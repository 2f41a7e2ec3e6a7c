"""A training run's workdir: where everything lives, the checks made before anything is written, and where each
stage's weights come from.

Layout:
  .lock                          the lock of the run using the workdir (its PID); see guard.WorkdirLock
  config.json                    the run's config and model (a later run with another model is refused, one with
                                 other values unless config.allow_changed names them; see check_config_changes)
  stages/<stage>/checkpoints/    Orbax CheckpointManager of the train state (last N + best validation PSNR)
  stages/<stage>/unreadable_checkpoints/  damaged steps moved aside when a run resumed from an earlier one
  stages/<stage>/model/          the stage's finished model; its presence marks the stage done
  division/division.npz          the class division (+ .json summary, _hist.png)
  export/original, export/classsr   inference models for `upscale` / `evaluate`
  evaluation/results.json, table.md
  tensorboard/<stage>/           clu metric writers' event files

Where a workdir's models are (`checkpointing.resolve_model_dir`) is the checkpointing module's: inference never
imports this training module.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import json
import os
from typing import Any

from classsr_jax import checkpointing
from classsr_jax.checkpointing import CLASSSR_EXPORT, EXPORT_DIR, ORIGINAL_EXPORT, resolve_model_dir
from classsr_jax.errors import CheckpointError, ConfigError, TrainError
from classsr_jax.io import atomic
from classsr_jax.models.spec import ModelSpec
from classsr_jax.training.configuration import NUM_CLASSES, STAGES, allowed_changes


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
        return os.path.join(self.root, EXPORT_DIR, name)

    @property
    def results_json(self) -> str:
        return os.path.join(self.root, "evaluation", "results.json")

    @property
    def table_md(self) -> str:
        return os.path.join(self.root, "evaluation", "table.md")

    def tensorboard(self, stage: str) -> str:
        return os.path.join(self.root, "tensorboard", stage)


def branch_stages(num_branches: int = NUM_CLASSES) -> tuple[str, ...]:
    """The sub-stages of stage 'branches': branch1 (simple) … branchN (hard)."""
    return tuple(f"branch{k + 1}" for k in range(num_branches))


def trained_branch_stages(config, num_branches: int = NUM_CLASSES) -> tuple[str, ...]:
    """The branch stages that train: all of them, or all but the widest with branches.reuse_original (that
    branch is the -O network itself)."""
    names = branch_stages(num_branches)
    return names[:-1] if config.branches.reuse_original else names


def config_record(config_json: str, spec: ModelSpec, earlier: list | None = None) -> str:
    """What config.json holds: the model, the config (as the JSON ml_collections writes) and, after a rerun
    with allowed changes, the `earlier` values of the fields changed, run by run."""
    record = {"model": spec.to_dict(), "config": json.loads(config_json)}
    if earlier:
        record["earlier"] = earlier
    return json.dumps(record, indent=2) + "\n"


# Fields a rerun may change without `allow_changed`: what to run, for how long, on how many CPU devices, and the
# evaluation (its results.json records its inputs and is computed again when they change).
RESUMABLE_FIELDS = ("stages", "finetune.enabled", "*.num_steps", "cpu_devices", "allow_changed", "evaluate.*")
# Fields whose change alone is not worth rewriting config.json: they say how this run was started.
NOT_RECORDED = ("stages", "cpu_devices", "allow_changed")


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(tree, dict):
        return {prefix: tree}
    out: dict[str, Any] = {}
    for key, value in tree.items():
        out.update(_flat(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def changed_fields(stored: dict[str, Any], current: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """{dotted field: (stored value, current value)} for every field that differs (or exists in one only)."""
    old, new = _flat(stored), _flat(current)
    return {k: (old.get(k), new.get(k)) for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)}


def _matches(field: str, patterns) -> bool:
    return any(fnmatch.fnmatchcase(field, p) or field.startswith(p + ".") for p in patterns)


def _stored_record(workdir: Workdir) -> dict[str, Any] | None:
    if not os.path.isfile(workdir.config_json):
        return None
    try:
        with open(workdir.config_json) as f:
            record = json.load(f)
        ModelSpec.from_dict(record["model"])
        return record
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(
            f"workdir {workdir.root} has an unreadable config.json ({type(e).__name__}); use another workdir"
        ) from e


def check_config_changes(config, workdir: Workdir) -> None:
    """A rerun must use config.json's values, but for RESUMABLE_FIELDS and those config.allow_changed names."""
    record = _stored_record(workdir)
    if record is None or not isinstance(record.get("config"), dict):
        return
    changed = changed_fields(record["config"], json.loads(config.to_json_best_effort()))
    refused = [f for f in changed if not _matches(f, RESUMABLE_FIELDS + allowed_changes(config))]
    if refused:
        raise ConfigError(
            f"workdir {workdir.root} was run with another config: {', '.join(refused)} differ from its config.json; "
            f"rerun with its values, add --config.allow_changed={','.join(refused)} to go on with yours, "
            "or use another --workdir"
        )


def record_config(config, workdir: Workdir, spec: ModelSpec) -> None:
    """Writes config.json for a new workdir; after a rerun with changes, the new values, keeping the old ones
    under `earlier`. A rerun with the same config writes nothing."""
    current = config.to_json_best_effort()
    record = _stored_record(workdir)
    if record is None:
        atomic.write_text(workdir.config_json, config_record(current, spec))
        return
    changed = changed_fields(record.get("config") or {}, json.loads(current))
    changed = {k: v for k, v in changed.items() if not _matches(k, NOT_RECORDED)}
    if changed:
        earlier = list(record.get("earlier", [])) + [{k: old for k, (old, _) in changed.items()}]
        atomic.write_text(workdir.config_json, config_record(current, spec, earlier))


# -------------------------------------------------------------------------------------------------- checks


def pretrained_branches(config) -> list[str]:
    paths = [p.strip() for p in config.pretrained.branches.split(",") if p.strip()]
    if paths and len(paths) != NUM_CLASSES:
        raise ConfigError(
            f"config field pretrained.branches needs {NUM_CLASSES} comma-separated checkpoints, got {len(paths)}"
        )
    return paths


def _check_pretrained(path: str, expected: ModelSpec, field: str) -> None:
    if not os.path.exists(path):
        raise TrainError(f"config field {field}: checkpoint {path} does not exist")
    found = checkpointing.read_model_spec(resolve_model_dir(path))
    if found != expected:
        raise CheckpointError(
            f"config field {field}: {path} is {found.describe()}, but this config needs {expected.describe()}"
        )


def check_stage_inputs(config, workdir: Workdir, stages: tuple[str, ...]) -> None:
    """Each selected stage's inputs come from an earlier selected stage, this workdir, or config.pretrained."""
    has_model = lambda stage: os.path.isdir(workdir.model(stage))
    classsr = any(has_model(s) for s in ("joint", "finetune")) or bool(config.pretrained.classsr)
    needs_division = "branches" in stages and config.branches.tiles == "class" and "divide" not in stages
    if needs_division and not os.path.isfile(workdir.division):
        raise TrainError(f"stage branches needs the class division {workdir.division}: run stage divide first")
    original = "original" in stages or original_source(config, workdir) is not None
    if config.branches.reuse_original and ("branches" in stages or "joint" in stages) and not original:
        raise TrainError(
            "config field branches.reuse_original needs the -O network: run stage original, or give "
            "--config.pretrained.original"
        )
    if config.branches.slim_from_original and "branches" in stages and not original and not config.pretrained.branches:
        raise TrainError(
            "config field branches.slim_from_original needs the -O network: run stage original, or give "
            "--config.pretrained.original"
        )
    if "joint" in stages and "branches" not in stages:
        trained = all(has_model(b) for b in trained_branch_stages(config))
        if not (trained or config.pretrained.branches or config.pretrained.classsr):
            raise TrainError(
                "stage joint needs trained branches: run stage branches, or give "
                "--config.pretrained.branches=b1,b2,b3 or --config.pretrained.classsr"
            )
    for stage in ("finetune", "evaluate"):
        if stage in stages and not (classsr or "joint" in stages or (stage == "evaluate" and "finetune" in stages)):
            raise TrainError(
                f"stage {stage} needs a ClassSR model: run stage joint, or give --config.pretrained.classsr"
            )


def _check_fits(what: str, path: str, found: ModelSpec, want: ModelSpec) -> None:
    """A model, checkpoint or export already in the workdir must be the model this config trains."""
    if found != want:
        raise CheckpointError(
            f"workdir {what} {path} is {found.describe()}, but this config needs {want.describe()}; "
            "use another --workdir"
        )


def preflight(config, workdir: Workdir, spec: ModelSpec, stages: tuple[str, ...] = STAGES) -> None:
    """Every check that can fail before anything is written: a failing run leaves the workdir untouched."""
    if os.path.exists(workdir.root) and not os.path.isdir(workdir.root):
        raise TrainError(f"workdir {workdir.root} exists and is not a directory")
    _check_creatable(workdir.root)
    if config.data.data_dir and not os.path.isdir(os.path.expanduser(config.data.data_dir)):
        raise TrainError(
            f"data dir {config.data.data_dir} does not exist (config.data.data_dir); create it or leave it empty for "
            "~/tensorflow_datasets"
        )
    if config.data.manual_dir and not os.path.isdir(os.path.expanduser(config.data.manual_dir)):
        raise TrainError(
            f"data dir {config.data.manual_dir} does not exist (config.data.manual_dir): put the source photos there"
        )
    record = _stored_record(workdir)
    if record is not None:
        stored = ModelSpec.from_dict(record["model"])
        if stored != spec:
            raise CheckpointError(
                f"workdir {workdir.root} holds a {stored.describe()} run, but this config is {spec.describe()}; use "
                "another --workdir"
            )
        check_config_changes(config, workdir)
    # Models and checkpoints already in the workdir must fit too (e.g. a workdir copied from another run).
    expected = {"original": spec.branch(spec.num_branches - 1), "joint": spec, "finetune": spec}
    expected.update({name: spec.branch(k) for k, name in enumerate(branch_stages(spec.num_branches))})
    for stage, want in expected.items():
        if os.path.isdir(workdir.model(stage)):
            _check_fits("model", workdir.model(stage), checkpointing.read_model_spec(workdir.model(stage)), want)
        try:
            progress = checkpointing.read_train_progress(workdir.checkpoints(stage))
        except CheckpointError:
            progress = None  # a damaged latest checkpoint: the stage falls back to an earlier one (loop.py)
        if progress is not None:
            _check_fits("checkpoint", workdir.checkpoints(stage), ModelSpec.from_dict(progress["model"]), want)
    for name, want in ((ORIGINAL_EXPORT, spec.branch(spec.num_branches - 1)), (CLASSSR_EXPORT, spec)):
        if os.path.isdir(workdir.export(name)):
            _check_fits("export", workdir.export(name), checkpointing.read_model_spec(workdir.export(name)), want)
    if config.pretrained.original:
        _check_pretrained(config.pretrained.original, spec.branch(spec.num_branches - 1), "pretrained.original")
    for k, path in enumerate(pretrained_branches(config)):
        _check_pretrained(path, spec.branch(k), "pretrained.branches")
    if config.pretrained.classsr:
        _check_pretrained(config.pretrained.classsr, spec, "pretrained.classsr")
    check_stage_inputs(config, workdir, stages)


def _check_creatable(root: str) -> None:
    """The workdir can be made: its nearest existing ancestor is a folder (not a file)."""
    ancestor = os.path.dirname(root)
    while ancestor and not os.path.exists(ancestor) and ancestor != os.path.dirname(ancestor):
        ancestor = os.path.dirname(ancestor)
    if ancestor and os.path.exists(ancestor) and not os.path.isdir(ancestor):
        raise TrainError(f"cannot create workdir {root}: {ancestor} is a file, not a folder")


# ------------------------------------------------------------------------------------ where weights come from


def load_variables(path: str) -> dict[str, Any]:
    """The variables of a model checkpoint, an export or a workdir (its export/classsr)."""
    return checkpointing.open_model(path).variables


def original_source(config, workdir: Workdir) -> str | None:
    """Where the -O network comes from: this workdir's stage, else config.pretrained.original."""
    if os.path.isdir(workdir.model("original")):
        return workdir.model("original")
    return config.pretrained.original or None


def classsr_source(config, workdir: Workdir) -> str | None:
    """The final ClassSR model: finetune, else joint, in this workdir; else config.pretrained.classsr."""
    for stage in ("finetune", "joint"):
        if os.path.isdir(workdir.model(stage)):
            return workdir.model(stage)
    return config.pretrained.classsr or None


def branch_variables(config, workdir: Workdir, k: int) -> dict[str, Any] | None:
    """Branch k's variables: this workdir's stage (or, for the widest with branches.reuse_original, the -O
    network), else the pretrained branch, else the pretrained ClassSR's."""
    name = branch_stages()[k]
    stage_model = workdir.model(name)
    if os.path.isdir(stage_model):
        return load_variables(stage_model)
    if name not in trained_branch_stages(config) and original_source(config, workdir):
        return load_variables(original_source(config, workdir))
    pretrained = pretrained_branches(config)
    if pretrained:
        return load_variables(pretrained[k])
    if config.pretrained.classsr:
        classsr = checkpointing.open_model(config.pretrained.classsr)
        return classsr.spec.branch_variables(classsr.variables, k)
    return None
