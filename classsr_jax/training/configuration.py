"""Loading and checking a training config: a `configs/*.py` file whose `get_config()` is the only schema.

    config = load_config("quickstart")                        # configs/quickstart.py
    config = load_config("configs/smoke.py:bundled", {"original.num_steps": 8})

A config names every field it has; ml_collections refuses an override of a field that does not exist or of
another type, and `validate_config` checks the values (a positive batch, a known network, …). Every problem is a
one-line `ConfigError`.

The configs import each other (`from configs import fsrcnn`), so the folder that holds `configs/` goes on
`sys.path` before a config file is run: `load_config` does it, and `classsr_jax.main` does it before absl
parses `--config`, from any working directory and as an installed console script.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from pathlib import Path
from typing import Any

from classsr_jax.data.colour_augment import ColourAugment
from classsr_jax.errors import ConfigError, reason
from classsr_jax.models import interpolation_init, slim
from classsr_jax.models.backbones import NETWORKS
from classsr_jax.models.spec import ModelSpec

STAGES = ("original", "divide", "branches", "joint", "finetune", "evaluate")
TRAINING_STAGES = ("original", "branches", "joint", "finetune")  # the stages with an optimiser (and a config section)
# Where each stage draws its training tiles: the choices of its config field `tiles`, the paper's first. 'class':
# the division's tiles of the branch's class; 'grid': every tile of the division's grid; 'any': random tiles of
# the training set (stage original always does this).
TILE_SOURCES = {"branches": ("class", "any"), "joint": ("grid", "any"), "finetune": ("grid", "any")}
NUM_CLASSES = 3  # The division makes three classes (simple, medium, hard).
PROTOCOLS = ("paper", "full")
CONFIGS_FOLDER = "configs"


# ------------------------------------------------------------------------------------------------ loading


def _search_roots() -> list[Path]:
    """Where configs/<name>.py may live: the working directory, the checkout this package came from, and the
    package itself (a wheel carries the configs as classsr_jax/configs)."""
    package = Path(__file__).resolve().parents[1]
    roots = [Path.cwd()]
    for root in (package.parent, package):
        if root not in roots:
            roots.append(root)
    return roots


def split_config_argument(text: str) -> tuple[str, str | None]:
    """'configs/smoke.py:bundled' → ('configs/smoke.py', 'bundled'), as ml_collections' config_flags reads it."""
    path, sep, arg = text.rpartition(":")
    if sep and path and os.sep not in arg and not arg.startswith("\\"):
        return path, arg
    return text, None


def _available_configs() -> tuple[str, str]:
    """(where configs were looked for, the names found there)."""
    roots = _search_roots()
    names = sorted({p.stem for r in roots for p in (r / CONFIGS_FOLDER).glob("*.py") if p.stem != "__init__"})
    where = " or ".join(str(r / CONFIGS_FOLDER) for r in roots)
    return where, ", ".join(names) or "none (run from a checkout of the repository)"


def find_config(name: str) -> str:
    """The absolute path of a config: a .py file, or a bare name such as 'fsrcnn' (configs/<name>.py)."""
    if name.endswith(".py"):
        if os.path.isfile(name):
            return os.path.abspath(name)
        where, names = _available_configs()
        raise ConfigError(f"config file {name} does not exist; the configs in {where}: {names}")
    for root in _search_roots():
        path = root / CONFIGS_FOLDER / f"{name}.py"
        if path.is_file():
            return str(path)
    where, names = _available_configs()
    raise ConfigError(f"no config {name!r} in {where}; available: {names}")


def config_flag(argv: list[str]) -> tuple[int, str] | None:
    """(index in argv, value) of the --config flag in a command line, if given."""
    for i, arg in enumerate(argv):
        if arg.startswith("--config="):
            return i, arg.split("=", 1)[1]
        if arg == "--config" and i + 1 < len(argv):
            return i + 1, argv[i + 1]
    return None


def resolve_config_flag(argv: list[str]) -> list[str]:
    """argv with its --config value resolved (`resolve_config_argument`); a ConfigError if it cannot be loaded."""
    found = config_flag(argv)
    if found is None:
        return argv
    index, value = found
    resolved = resolve_config_argument(value)
    value = f"--config={resolved}" if argv[index].startswith("--config=") else resolved
    return [*argv[:index], value, *argv[index + 1:]]


def resolve_config_argument(text: str) -> str:
    """A --config value ('path[:arg]' or 'name[:arg]') as 'absolute path[:arg]', after loading it once, so
    that a missing or failing config is one ConfigError before absl reads it."""
    load_config(text)
    path, arg = split_config_argument(text)
    path = find_config(path)
    return f"{path}:{arg}" if arg is not None else path


def config_root(path: str) -> str | None:
    """The folder holding the `configs` folder that holds `path` (what `from configs import …` needs), if any."""
    folder = os.path.dirname(os.path.abspath(path))
    return os.path.dirname(folder) if os.path.basename(folder) == CONFIGS_FOLDER else None


def add_config_root_to_path(path: str | None) -> None:
    """Makes the config's `from configs import …` work: puts its repository root on sys.path (first), or, for a
    config of the installed package, makes `configs` another name of `classsr_jax.configs`."""
    root = config_root(split_config_argument(path)[0]) if path else None
    if root and Path(root).resolve() == Path(__file__).resolve().parents[1]:
        sys.modules.setdefault(CONFIGS_FOLDER, importlib.import_module(f"classsr_jax.{CONFIGS_FOLDER}"))
    elif root and root not in sys.path:
        sys.path.insert(0, root)


def load_config(path_or_name: str, overrides: dict[str, Any] | None = None):
    """`get_config()` of a config file or of configs/<name>.py, with dotted `overrides` applied.

    'path:arg' (or 'name:arg') calls `get_config(arg)`, as `--config=path:arg` does.
    """
    text, arg = split_config_argument(path_or_name)
    path = find_config(text)
    add_config_root_to_path(path)
    spec = importlib.util.spec_from_file_location(f"_classsr_config_{Path(path).stem}", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
        config = module.get_config() if arg is None else module.get_config(arg)
    except ConfigError:
        raise
    except Exception as e:  # a config file is code: any failure in it is the config's problem
        raise ConfigError(f"cannot load config {path_or_name}: {type(e).__name__}: {reason(e)}") from e
    return apply_overrides(config, overrides)


def has_field(config, dotted: str) -> bool:
    node = config
    for part in dotted.split("."):
        if not hasattr(node, "keys") or part not in node.keys():
            return False
        node = node[part]
    return True


def apply_overrides(config, overrides: dict[str, Any] | None):
    """Sets dotted fields, e.g. {'original.num_steps': 1000, 'half_precision': True}. A field the config does
    not have, or a value of another type, is a ConfigError (ml_collections checks the type)."""
    unknown = [key for key in (overrides or {}) if not has_field(config, key)]
    if unknown:
        raise ConfigError(f"unknown config field(s): {', '.join(unknown)}")
    for key, value in (overrides or {}).items():
        *path, last = key.split(".")
        node = config
        for part in path:
            node = node[part]
        try:
            node[last] = value
        except (TypeError, ValueError) as e:
            raise ConfigError(f"config field {key}: {reason(e)}") from None
    return config


# ------------------------------------------------------------------------------------------------ checking


def _field(config, dotted: str):
    node = config
    for part in dotted.split("."):
        if not hasattr(node, "keys") or part not in node.keys():
            raise ConfigError(f"config lacks field(s): {dotted}")
        node = node[part]
    return node


def _bool(config, dotted: str) -> bool:
    value = _field(config, dotted)
    if not isinstance(value, bool):
        raise ConfigError(f"config field {dotted} is {value!r}: use True or False")
    return value


def _positive_int(config, dotted: str) -> int:
    value = _field(config, dotted)
    if not isinstance(value, int) or isinstance(value, bool):
        raise ConfigError(f"config field {dotted} must be int, got {value!r}")
    if value < 1:
        raise ConfigError(f"config field {dotted} must be positive, got {value}")
    return value


def cpu_devices(config) -> int:
    """config.cpu_devices, checked: how many devices JAX's CPU backend runs as (0: JAX's default)."""
    value = _field(config, "cpu_devices")
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ConfigError(f"config field cpu_devices is {value!r}: use a number of devices, or 0 for JAX's default")
    return value


def _validate_model(config) -> tuple[str, Any]:
    """(network, widths) of config.model, checked."""
    network = _field(config, "model.network")
    if network not in NETWORKS:
        raise ConfigError(f"config field model.network is {network!r}: use one of {', '.join(NETWORKS)}")
    widths = _field(config, "model.widths")
    if len(widths) != NUM_CLASSES:
        raise ConfigError(
            f"config field model.widths needs {NUM_CLASSES} widths (simple, medium, hard), got {tuple(widths)}"
        )
    init = _field(config, "model.init")
    if init not in interpolation_init.INITS:
        raise ConfigError(
            f"config field model.init is {init!r}: use {' or '.join(repr(i) for i in interpolation_init.INITS)}"
        )
    if init == "interpolation" and network not in interpolation_init.SUPPORTED:
        raise ConfigError(
            "config field model.init: an interpolating start is implemented for "
            f"{', '.join(interpolation_init.SUPPORTED)}, not {network}"
        )
    return network, widths


def validate_config(config) -> None:
    """One-line ConfigError for a missing field or an impossible value (unknown fields and wrong types are
    refused earlier, by ml_collections, when an override is applied)."""
    cpu_devices(config)
    network, widths = _validate_model(config)
    for stage in TRAINING_STAGES:
        for field in ("batch_size", "num_steps", "cosine_period", "log_every_steps", "eval_every_steps",
                      "checkpoint_every_steps"):
            _positive_int(config, f"{stage}.{field}")
    for stage, choices in TILE_SOURCES.items():
        if _field(config, f"{stage}.tiles") not in choices:
            raise ConfigError(
                f"config field {stage}.tiles is {_field(config, f'{stage}.tiles')!r}: use "
                f"{' or '.join(repr(c) for c in choices)}"
            )
    if _bool(config, "branches.slim_from_original") and network not in slim.SUPPORTED:
        raise ConfigError(
            "config field branches.slim_from_original: cutting branches out of -O is implemented for "
            f"{', '.join(slim.SUPPORTED)}, not {network}"
        )
    if config.branches.slim_from_original and max(widths) != widths[-1]:
        raise ConfigError(
            "config field branches.slim_from_original needs branches no wider than -O (the last width), got "
            f"{tuple(widths)}"
        )
    for stage in ("joint", "finetune"):
        _bool(config, f"{stage}.calibrate_routing")
        _positive_int(config, f"{stage}.calibration_tiles")
    for name in ("validation.protocol", "evaluate.protocol"):
        if _field(config, name) not in PROTOCOLS:
            raise ConfigError(f"config field {name} is {_field(config, name)!r}: use 'paper' or 'full'")
    reference = _field(config, "division.reference")
    if reference not in ("original", "bicubic"):
        raise ConfigError(f"config field division.reference is {reference!r}: use 'original' or 'bicubic'")
    try:
        ColourAugment(**_field(config, "data.colour_augment"))
    except ValueError as e:
        raise ConfigError(f"config field data.colour_augment: {e}") from None
    budget = _field(config, "evaluate.budget")
    if not 0.0 <= budget:
        raise ConfigError(
            f"config field evaluate.budget is {budget}: use a positive share of the -O FLOPs, or 0 for none"
        )
    division_thresholds(config)
    allowed_changes(config)
    selected_stages(config)
    evaluation_sources(config)
    _positive_int(config, "checkpoint.keep_last")
    try:
        spec = model_spec(config)
        spec.branch(spec.num_branches - 1).build()  # unknown extra fields, an unsupported scale
    except ValueError as e:
        raise ConfigError(f"config field model: {e}") from None


def allowed_changes(config) -> tuple[str, ...]:
    """The dotted fields (or sections) config.allow_changed names: a rerun may change them in a used workdir."""
    text = _field(config, "allow_changed")
    if not isinstance(text, str):
        raise ConfigError(
            f"config field allow_changed is {text!r}: use comma-separated field names, e.g. 'original.learning_rate'"
        )
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    unknown = [n for n in names if not has_field(config, n)]
    if unknown:
        raise ConfigError(f"config field allow_changed names unknown field(s): {', '.join(unknown)}")
    return names


def division_thresholds(config) -> str | tuple[float, float]:
    """'tertiles', 'paper' or the (t1, t2) in dB that config.division.thresholds names."""
    value = _field(config, "division.thresholds").strip()
    if value in ("tertiles", "paper"):
        return value
    try:
        t1, t2 = (float(v) for v in value.split(","))
    except ValueError:
        raise ConfigError(
            f"config field division.thresholds is {value!r}: use 'tertiles', 'paper' or 't1,t2' in dB"
        ) from None
    return (t1, t2)


def selected_stages(config) -> tuple[str, ...]:
    """The stages to run, in recipe order. 'all' includes finetune only when finetune.enabled."""
    text = _field(config, "stages").strip()
    if text == "all":
        return tuple(s for s in STAGES if s != "finetune" or _field(config, "finetune.enabled"))
    names = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in names if s not in STAGES]
    if unknown or not names:
        raise ConfigError(
            f"config field stages has unknown stage(s) {', '.join(unknown) or '(none given)'}: use 'all' or some of "
            f"{', '.join(STAGES)}"
        )
    return tuple(s for s in STAGES if s in names)


def evaluation_sources(config) -> list[tuple[str, str]]:
    """(label, source) for every entry of config.evaluate.datasets: 'validation' or 'tfds_name:split', each
    optionally labelled for the table as 'label=…'."""
    out = []
    for entry in [e.strip() for e in _field(config, "evaluate.datasets").split(",") if e.strip()]:
        label, _, source = entry.rpartition("=") if "=" in entry else (entry, "", entry)
        if source != "validation" and ":" not in source:
            raise ConfigError(f"config field evaluate.datasets: {source!r} is neither 'validation' nor 'dataset:split'")
        out.append((label, source))
    if not out:
        raise ConfigError("config field evaluate.datasets is empty")
    return out


def model_spec(config) -> ModelSpec:
    """The ClassSR model the config trains."""
    model = config.model
    return ModelSpec("classsr", model.network, tuple(int(w) for w in model.widths), int(model.scale), dict(model.extra))
