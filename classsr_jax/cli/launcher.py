"""The console scripts' entry points: check that a command's optional dependencies are installed before
importing it, so that a base install (inference only) answers `classsr-train` with one line naming the extra to
install instead of an ImportError traceback.

`pyproject.toml` points every console script here, and `python -m classsr_jax.X` goes through `launch` too.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import importlib
import importlib.util
import logging
import os
import sys
from typing import NoReturn

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
# Short-lived commands that run band programs: their freed memory stays with them (`keep_freed_memory`).
BAND_COMMANDS = ("classsr-upscale", "classsr-evaluate")


def missing_modules(extra: str) -> list[str]:
    """The pip names of the extra's modules that cannot be imported here (found without importing them)."""
    return [pip_name for module, pip_name in EXTRAS[extra].items() if importlib.util.find_spec(module) is None]


# glibc's mallopt parameters (malloc.h).
M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4


def keep_freed_memory() -> bool:
    """Makes glibc's malloc serve big buffers from its heap and keep what is freed, instead of mapping each big
    buffer afresh and unmapping it when freed. XLA:CPU allocates a band's canvas and rows anew for every call:
    mapped anew, every page faults on first touch, and the page faults of two CPU devices contend for the
    process's memory map (the band programs of an 8K image with a stand-in network on two devices: 1.22 s
    against 0.65 s; benchmarks/JOURNAL.md, "Every core without a canvas sum"). Freed memory stays with the
    process until it exits, so only the short-lived inference commands ask for it; their peak memory rose a little
    with the change that brought this in (docs/performance.md). A no-op (False) without glibc."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        return bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, 2**30))
    except (OSError, AttributeError, TypeError):  # not glibc (musl, macOS): leave malloc alone
        return False


def launch(command: str, argv: list[str] | None = None) -> int:
    """Runs `command` (a key of COMMANDS) with `argv`; one line on stderr and exit code 1 when its extra is
    missing."""
    if command in BAND_COMMANDS:
        keep_freed_memory()
    module, extra = COMMANDS[command]
    missing = missing_modules(extra) if extra else []
    if missing:
        print(f"error: {command} needs {', '.join(missing)}: pip install 'classsr_jax[{extra}]'", file=sys.stderr)
        return MISSING_EXTRA
    return importlib.import_module(module).main(argv)


def end_process(code: int) -> NoReturn:
    """Ends a band command's process with `code`, without the interpreter's teardown of JAX and its modules
    (about 0.3 s of a 2K upscale's 4 s; benchmarks/JOURNAL.md, "Every core without a canvas sum"). Safe once the
    command has returned: its outputs are complete files (written under temporary names and renamed), its
    threads are joined; the standard streams and the log handlers are flushed here."""
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    os._exit(code)


def train() -> int:
    return launch("classsr-train")


def upscale() -> NoReturn:
    end_process(launch("classsr-upscale"))


def evaluate() -> NoReturn:
    end_process(launch("classsr-evaluate"))


def convert() -> int:
    return launch("classsr-convert")


def prepare() -> int:
    return launch("classsr-prepare")
