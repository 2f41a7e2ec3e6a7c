"""The console scripts' entry points: check that a command's optional dependencies are installed before
importing it, so that a base install (inference only) answers `classsr-train` with one line naming the extra to
install instead of an ImportError traceback.

`pyproject.toml` points every console script here, and `python -m classsr_jax.X` goes through `launch` too.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys

# The extras of pyproject.toml: the modules each one provides (import name → the pip name to print).
EXTRAS = {
    "train": {"tensorflow": "tensorflow-cpu", "tensorflow_datasets": "tensorflow-datasets", "clu": "clu",
              "ml_collections": "ml-collections", "optax": "optax"},
    "convert": {"torch": "torch"},
}
# command → (module with main(), the extra it needs or None)
COMMANDS = {
    "classsr-train": ("classsr_jax.cli.train", "train"),
    "classsr-upscale": ("classsr_jax.cli.upscale", None),
    "classsr-evaluate": ("classsr_jax.cli.evaluate", None),
    "classsr-convert": ("classsr_jax.cli.convert", "convert"),
    "classsr-prepare": ("classsr_jax.cli.prepare", None),
}
MISSING_EXTRA = 1  # the exit code: nothing ran


def missing_modules(extra: str) -> list[str]:
    """The pip names of the extra's modules that cannot be imported here (found without importing them)."""
    return [pip_name for module, pip_name in EXTRAS[extra].items() if importlib.util.find_spec(module) is None]


def launch(command: str, argv: list[str] | None = None) -> int:
    """Runs `command` (a key of COMMANDS) with `argv`; one line on stderr and exit code 1 when its extra is
    missing."""
    module, extra = COMMANDS[command]
    missing = missing_modules(extra) if extra else []
    if missing:
        print(f"error: {command} needs {', '.join(missing)}: pip install 'classsr_jax[{extra}]'", file=sys.stderr)
        return MISSING_EXTRA
    return importlib.import_module(module).main(argv)


def train() -> int:
    return launch("classsr-train")


def upscale() -> int:
    return launch("classsr-upscale")


def evaluate() -> int:
    return launch("classsr-evaluate")


def convert() -> int:
    return launch("classsr-convert")


def prepare() -> int:
    return launch("classsr-prepare")
