"""The one Orbax door: save, restore and export model checkpoints (and, for training, the train state).

A model checkpoint is a self-describing directory with two items:
- `variables`: the Flax variables (`params`, and `batch_stats` for CARN), float32;
- `model`: JSON with the format marker and the `ModelSpec` that rebuilds the module.
`load_model` opens one from its directory; `open_model` also takes a training workdir (its exported
`export/classsr`) or the name of a model bundled with the package (`quickstart`, `quickstart-original`), and is
what every command, the Python API and the notebooks call. A model with a non-finite parameter is never written
and never opened: it would upscale to black images.
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import importlib.util
import io
import json
import os
import shutil
import sys
import uuid
from typing import Any

import jax
import numpy as np
from flax.traverse_util import flatten_dict, unflatten_dict

from classsr_jax import disk_cache, parallel
from classsr_jax.errors import CheckpointError, reason
from classsr_jax.models.spec import ModelSpec


def _lazy_module(name: str):
    """`name`, imported on its first attribute access (importlib's LazyLoader)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.find_spec(name)
    spec.loader = importlib.util.LazyLoader(spec.loader)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


# Orbax takes about 0.3 s to import, and a command whose model is kept opened (`_read_opened`) never calls it.
ocp = _lazy_module("orbax.checkpoint")

FORMAT = "classsr_jax.model"
FORMAT_VERSION = 1
EXPORT_DIR = "export"  # a training workdir's inference models: export/classsr and export/original
CLASSSR_EXPORT = "classsr"  # what a workdir means as a model
ORIGINAL_EXPORT = "original"
# Models shipped inside the package (package data): the quickstart's exports, small enough to install everywhere.
PRETRAINED_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pretrained")
BUNDLED_MODELS = ("quickstart", "quickstart-original")
DEFAULT_MODEL = "quickstart"  # what `classsr-upscale` runs without --checkpoint


@dataclasses.dataclass
class LoadedModel:
    spec: ModelSpec
    variables: dict[str, Any]
    metadata: dict[str, Any]
    path: str


def count_params(variables: dict[str, Any]) -> int:
    """The number of parameters (BatchNorm statistics are not parameters); works on shapes too."""
    return int(sum(int(np.prod(np.shape(x))) for x in jax.tree_util.tree_leaves(variables["params"])))


def first_non_finite(variables: dict[str, Any]) -> str | None:
    """The path ('params/net1/…/kernel') of the first array, in sorted order, holding a NaN or an infinity."""
    for key, value in sorted(flatten_dict(dict(variables)).items()):
        if not np.all(np.isfinite(np.asarray(value))):
            return "/".join(key)
    return None


def variables_digest(variables: dict[str, Any]) -> str:
    """sha256 of every array's path, dtype, shape and bytes: equal digests, equal models."""
    digest = hashlib.sha256()
    for key, value in sorted(flatten_dict(dict(variables)).items()):
        value = np.ascontiguousarray(np.asarray(value))
        digest.update(f"{'/'.join(key)}|{value.dtype.str}|{value.shape}|".encode())
        digest.update(value.tobytes())
    return f"sha256:{digest.hexdigest()}"


def _atomic_replace_dir(tmp: str, final: str) -> None:
    """Moves a finished directory into place; an existing one is swapped out only after tmp is complete."""
    if os.path.exists(final):
        old = f"{final}.old-{uuid.uuid4().hex[:8]}"
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)


def _model_items(
    directory: str, spec: ModelSpec, variables: dict[str, Any], metadata: dict[str, Any] | None, where: str
):
    """Checks what is about to be written (shapes, finite values); returns the float32 variables and the
    description JSON."""
    spec.check(variables, where)
    bad = first_non_finite(variables)
    if bad is not None:
        raise CheckpointError(f"refusing to write {directory}: parameter {bad} is not finite (NaN or infinity)")
    variables = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float32), dict(variables))
    variables.setdefault("batch_stats", {})
    description = {"format": FORMAT, "version": FORMAT_VERSION, "model": spec.to_dict(), "metadata": metadata or {}}
    return ocp.args.Composite(variables=ocp.args.StandardSave(variables), model=ocp.args.JsonSave(description))


def _write_model(tmp: str, directory: str, items) -> None:
    """Orbax writes the model into `tmp`; any failure (a full disk) is one line naming `directory`."""
    try:
        with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as ckptr:
            ckptr.save(tmp, items)
    except Exception as e:  # Orbax and the file system raise many types; the user needs one line.
        for leftover in glob.glob(glob.escape(tmp) + "*"):  # Orbax's own temporary folder of the failed write
            shutil.rmtree(leftover, ignore_errors=True)
        raise CheckpointError(f"cannot write model {directory}: {reason(e, with_type=True)}") from e


def save_model(
    directory: str,
    spec: ModelSpec,
    variables: dict[str, Any],
    metadata: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> str:
    """Writes a self-describing model checkpoint to `directory` (complete or not at all)."""
    directory = os.path.abspath(directory)
    if os.path.exists(directory) and not overwrite:
        raise CheckpointError(f"output {directory} exists already; choose another directory or remove it")
    items = _model_items(directory, spec, variables, metadata, "the variables to save")
    os.makedirs(os.path.dirname(directory), exist_ok=True)
    tmp = f"{directory}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        _write_model(tmp, directory, items)
        _atomic_replace_dir(tmp, directory)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return directory


def load_model(model_dir: str) -> LoadedModel:
    """Opens the model checkpoint in `model_dir` (a converted checkpoint or an exported model)."""
    if not os.path.exists(model_dir):
        raise CheckpointError(f"checkpoint {model_dir} does not exist")
    path = os.path.abspath(model_dir)
    if not os.path.isdir(os.path.join(path, "model")) or not os.path.isdir(os.path.join(path, "variables")):
        raise CheckpointError(f"{model_dir} is not a classsr_jax checkpoint (no model/ and variables/ inside)")
    entry = disk_cache.entry_path(OPENED_KIND, ("models",), (FORMAT_VERSION, path, _fingerprint(path)), ".npz")
    kept = _read_opened(entry) if entry else None
    description, variables = kept or _restore_model(model_dir, path)
    if not isinstance(description, dict) or description.get("format") != FORMAT:
        raise CheckpointError(f"{model_dir} is not a classsr_jax model checkpoint (format marker missing)")
    try:
        spec = ModelSpec.from_dict(description["model"])
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{model_dir} has a bad model description: {e}") from e
    spec.check(variables, f"checkpoint {model_dir}")
    bad = first_non_finite(variables)
    if bad is not None:
        raise CheckpointError(
            f"checkpoint {model_dir} has non-finite values (NaN or infinity) in {bad}; it cannot be used"
        )
    if entry and not kept:
        _keep_opened(entry, description, variables)
    return LoadedModel(spec, variables, description.get("metadata", {}), path)


def _restore_model(model_dir: str, path: str) -> tuple[Any, dict[str, Any]]:
    """(description, variables as numpy) of a model checkpoint, through Orbax."""
    try:
        with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as ckptr:
            restored = ckptr.restore(
                path, ocp.args.Composite(variables=ocp.args.StandardRestore(), model=ocp.args.JsonRestore())
            )
    except Exception as e:  # Orbax raises many types; the user needs one line.
        raise CheckpointError(f"cannot read checkpoint {model_dir}: {reason(e, with_type=True)}") from e
    variables = jax.tree_util.tree_map(np.asarray, dict(restored["variables"]))
    return restored["model"], {k: v for k, v in variables.items() if v or k == "params"}


# Opened models are kept beside JAX's cache (`disk_cache`) as .npz, keyed by every file of the checkpoint with its
# size and modification time: Orbax's restore costs about 0.3 s of every command, an .npz a few milliseconds. The
# checks above run on the kept copy too.
OPENED_KIND = "classsr_models"
_DESCRIPTION = "__model__"


def _fingerprint(path: str) -> list[tuple[str, int, int]]:
    rows = []
    for folder, _, names in os.walk(path):
        for name in names:
            stat = os.stat(os.path.join(folder, name))
            rows.append((os.path.relpath(os.path.join(folder, name), path), stat.st_size, stat.st_mtime_ns))
    return sorted(rows)


def _read_opened(entry: str) -> tuple[Any, dict[str, Any]] | None:
    try:
        with np.load(entry, allow_pickle=False) as kept:
            description = json.loads(str(kept[_DESCRIPTION]))
            flat = {tuple(name.split("/")): kept[name] for name in kept.files if name != _DESCRIPTION}
        return description, unflatten_dict(flat)
    except (OSError, ValueError, KeyError, EOFError):  # not kept yet, or damaged: restore
        return None


def _keep_opened(entry: str, description: Any, variables: dict[str, Any]) -> None:
    arrays = {"/".join(key): value for key, value in flatten_dict(variables).items()}
    buffer = io.BytesIO()
    np.savez(buffer, **arrays, **{_DESCRIPTION: np.array(json.dumps(description))})
    disk_cache.write(entry, buffer.getvalue())


def bundled_model_dir(name: str) -> str | None:
    """The folder of the bundled model called `name` ('quickstart', 'quickstart-original'), or None."""
    return os.path.join(PRETRAINED_DIR, name) if name in BUNDLED_MODELS else None


def resolve_model_dir(path: str) -> str:
    """The model directory a path names: a model checkpoint itself, a training workdir's export/classsr, or a
    bundled model's name (an existing path of that name wins: it is what the user pointed at).

    A path that is none of these is a one-line CheckpointError.
    """
    if not os.path.exists(path) and bundled_model_dir(path) is not None:
        return bundled_model_dir(path)
    if not os.path.exists(path):
        bundled = ", ".join(BUNDLED_MODELS)
        raise CheckpointError(f"checkpoint {path} does not exist (and it is not a bundled model: {bundled})")
    if os.path.isdir(os.path.join(path, "model")):
        return path
    exported = os.path.join(path, EXPORT_DIR, CLASSSR_EXPORT)
    if os.path.isdir(exported):
        return exported
    raise CheckpointError(
        f"{path} is not a classsr_jax checkpoint (no model/ and variables/ inside, "
        f"and no {EXPORT_DIR}/{CLASSSR_EXPORT})"
    )


def open_model(path: str) -> LoadedModel:
    """A model from a converted checkpoint, an exported model, a training workdir (its export/classsr) or a
    bundled model's name."""
    return load_model(resolve_model_dir(path))


# --------------------------------------------------------------------------------------------------------------
# Training: the train state under an Orbax CheckpointManager, and exports that are safe with several processes.
#
# A stage's checkpoint directory holds one step folder per saved step, each with two items:
# - `state`: the train state pytree (step, parameters, optimiser state, BatchNorm statistics);
# - `progress`: JSON with the stage name, the model description and what the data pipeline needs to resume.

STATE_ITEM = "state"
PROGRESS_ITEM = "progress"
BEST_METRIC = "psnr"


def read_model_spec(model_dir: str) -> ModelSpec:
    """The ModelSpec of the model checkpoint in `model_dir`, without reading its arrays."""
    if not os.path.isdir(os.path.join(model_dir, "model")):
        raise CheckpointError(f"{model_dir} is not a classsr_jax checkpoint (no model/ inside)")
    try:
        with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as ckptr:
            restored = ckptr.restore(os.path.abspath(model_dir), ocp.args.Composite(model=ocp.args.JsonRestore()))
        description = restored["model"]
        return ModelSpec.from_dict(description["model"])
    except (ValueError, KeyError, TypeError, OSError) as e:
        raise CheckpointError(f"cannot read the model description of {model_dir}: {reason(e, with_type=True)}") from e


def export_model(
    directory: str, spec: ModelSpec, variables: dict[str, Any], metadata: dict[str, Any] | None = None
) -> str:
    """`save_model` for training runs: replaces an existing model atomically, and works with several processes:
    every process calls it with the same replicated values, Orbax writes them once, process 0 moves the result
    into place and the others wait for it."""
    if jax.process_count() == 1:
        return save_model(directory, spec, variables, metadata, overwrite=True)
    directory = os.path.abspath(directory)
    items = _model_items(directory, spec, variables, metadata, "the variables to export")
    token = parallel.process0_value(uuid.uuid4().int % (1 << 31))
    tmp = f"{directory}.tmp-{token:08x}"
    if parallel.is_primary_process():
        os.makedirs(os.path.dirname(directory), exist_ok=True)
    parallel.sync_processes(f"export_model:start:{directory}")
    _write_model(tmp, directory, items)
    parallel.sync_processes(f"export_model:saved:{directory}")
    if parallel.is_primary_process():
        try:
            _atomic_replace_dir(tmp, directory)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    parallel.sync_processes(f"export_model:done:{directory}")
    return directory


def train_checkpoint_manager(
    directory: str,
    *,
    keep_last: int = 3,
    save_every_steps: int = 1000,
    asynchronous: bool = True,
) -> ocp.CheckpointManager:
    """A CheckpointManager that keeps the last `keep_last` steps and the step with the best validation PSNR
    (saves given `metrics={'psnr': …}`), saving every `save_every_steps` steps (or when forced) in the
    background. Unfinished saves of a killed run are never listed and are cleaned up on the next start."""
    if keep_last < 1:
        raise ValueError(f"keep_last must be at least 1, got {keep_last}")
    policies = ocp.checkpoint_managers
    preservation = policies.AnyPreservationPolicy(
        [
            policies.LatestN(n=keep_last),
            policies.BestN(
                get_metric_fn=lambda metrics: metrics[BEST_METRIC], n=1, keep_checkpoints_without_metrics=False
            ),
        ]
    )
    options = ocp.CheckpointManagerOptions(
        save_interval_steps=max(1, int(save_every_steps)),
        preservation_policy=preservation,
        # best_fn makes the manager store the metrics (and answer best_step); preservation follows the policy.
        best_fn=lambda metrics: metrics[BEST_METRIC],
        best_mode="max",
        enable_async_checkpointing=asynchronous,
        cleanup_tmp_directories=True,
    )
    return ocp.CheckpointManager(os.path.abspath(directory), item_names=(STATE_ITEM, PROGRESS_ITEM), options=options)


def latest_train_step(directory: str) -> int | None:
    """The last finished step saved under `directory`, or None; creates and changes nothing."""
    steps = ocp.path.step.checkpoint_steps(directory) if os.path.isdir(directory) else []
    return max(steps, default=None)


def read_train_progress(directory: str, step: int | None = None) -> dict[str, Any] | None:
    """The `progress` JSON of a saved step (default: the latest), or None if nothing is saved; no arrays read."""
    step = latest_train_step(directory) if step is None else step
    if step is None:
        return None
    try:
        with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as ckptr:
            restored = ckptr.restore(
                os.path.join(os.path.abspath(directory), str(step)),
                ocp.args.Composite(**{PROGRESS_ITEM: ocp.args.JsonRestore()}),
            )
        return dict(restored[PROGRESS_ITEM])
    except Exception as e:  # Orbax raises many types; the user needs one line.
        raise CheckpointError(f"cannot read the training checkpoint in {directory}: {reason(e, with_type=True)}") from e


def save_train_state(
    manager: ocp.CheckpointManager,
    step: int,
    state: Any,
    progress: dict[str, Any],
    metrics: dict[str, float] | None = None,
    force: bool = False,
) -> bool:
    """Starts saving `state` at `step` (in the background when asynchronous); False if the interval says no.

    A failed save (a full disk) is a one-line CheckpointError naming the directory: this save's, or an earlier
    background save's, which Orbax reports here.
    """
    try:
        return manager.save(
            int(step),
            args=ocp.args.Composite(
                **{STATE_ITEM: ocp.args.StandardSave(state), PROGRESS_ITEM: ocp.args.JsonSave(progress)}
            ),
            metrics=metrics,
            force=force,
        )
    except Exception as e:  # Orbax and the file system raise many types; the user needs one line.
        raise CheckpointError(
            f"cannot save the training checkpoint of step {step} in {manager.directory}: {reason(e, with_type=True)}"
        ) from e


def wait_for_train_saves(manager: ocp.CheckpointManager) -> None:
    """Waits for the background saves; one that failed is a one-line CheckpointError naming the directory."""
    try:
        manager.wait_until_finished()
    except Exception as e:  # Orbax and the file system raise many types; the user needs one line.
        raise CheckpointError(
            f"cannot save a training checkpoint in {manager.directory}: {reason(e, with_type=True)}"
        ) from e


def restore_train_state(manager: ocp.CheckpointManager, step: int, abstract_state: Any) -> tuple[Any, dict[str, Any]]:
    """The state saved at `step`, laid out like `abstract_state` (ShapeDtypeStructs with shardings), and its
    progress JSON. A checkpoint of another structure (e.g. another architecture) is a one-line CheckpointError."""
    try:
        restored = manager.restore(
            int(step),
            args=ocp.args.Composite(
                **{STATE_ITEM: ocp.args.StandardRestore(abstract_state), PROGRESS_ITEM: ocp.args.JsonRestore()}
            ),
        )
    except Exception as e:  # Orbax raises many types; the user needs one line.
        raise CheckpointError(
            f"the training checkpoint at step {step} in {manager.directory} does not fit this run: "
            f"{reason(e, with_type=True)}"
        ) from e
    return restored[STATE_ITEM], dict(restored[PROGRESS_ITEM])
