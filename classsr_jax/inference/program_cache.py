"""Compiled band programs kept on disk between runs, so that a command's start-up skips tracing too.

JAX's persistent compilation cache (`parallel.use_compilation_cache`) skips XLA's compile, but every new process
still traces the Flax model and lowers it to find the cache key: most of a warm command's `compile_s`. Here the
executable itself is stored (`classsr_jax.disk_cache`: beside JAX's cache, only while it is on), under a key made
of everything that decides it without tracing anything: the versions and the source of the modules that build
the programs, the backend and its devices, XLA_FLAGS, and the program's own key (model description, buckets,
dtype, band shape, output format). An entry that fails to load is logged and compiled again. Loading unpickles
an executable (`jax.experimental.serialize_executable`), so only files in the cache folder this user's own runs
write are read, as JAX does with its own cache.
"""

from __future__ import annotations

import logging
import os
import pickle

import jax
from jax.experimental import serialize_executable

from classsr_jax import disk_cache

KIND = "classsr_programs"
# The subpackages whose code decides what a band program computes (with the top-level modules).
SOURCES = ("inference", "models")


def entry_path(key, devices) -> str | None:
    """The file of a program's executable (None when the cache is off)."""
    device_part = [(d.platform, d.device_kind, d.id, d.process_index) for d in devices]
    backend = devices[0].client
    full_key = (backend.platform, backend.platform_version, device_part, os.environ.get("XLA_FLAGS", ""), key)
    return disk_cache.entry_path(KIND, SOURCES, full_key, ".executable")


def load(path: str, devices):
    """The stored executable at `path`, or None (missing, or unreadable: logged)."""
    try:
        with open(path, "rb") as f:
            payload, in_tree, out_tree = pickle.load(f)
        return serialize_executable.deserialize_and_load(payload, in_tree, out_tree, execution_devices=list(devices))
    except FileNotFoundError:
        return None
    except Exception as e:  # a truncated or foreign entry: compile instead
        logging.info("compiled program %s not loaded (%s: %s); compiling", path, type(e).__name__, e)
        return None


def store(path: str, compiled) -> None:
    """Writes `compiled` to `path` atomically; a program that cannot be serialized is simply not kept."""
    try:
        blob = pickle.dumps(serialize_executable.serialize(compiled))
    except Exception as e:  # jax declines some executables (constants captured in the program)
        logging.info("compiled program not kept in %s (%s: %s)", path, type(e).__name__, e)
        return
    disk_cache.write(path, blob)


def compile_fresh(lowered):
    """`lowered.compile()` past JAX's own cache: an executable JAX loaded from its cache serializes without some
    of its functions (running the reloaded copy fails with 'Function … not found'), a fresh one completely."""
    enabled = jax.config.jax_enable_compilation_cache
    jax.config.update("jax_enable_compilation_cache", False)
    try:
        return lowered.compile()
    finally:
        jax.config.update("jax_enable_compilation_cache", enabled)


def load_or_compile(key, devices, lower):
    """The compiled program for `key` on `devices`: from the cache folder when it holds it, else compiled
    (`lower().compile()`) and stored there. With the cache off: `lower().compile()`."""
    path = entry_path(key, devices)
    if path is None:
        return lower().compile()
    compiled = load(path, devices)
    if compiled is None:
        compiled = compile_fresh(lower())
        store(path, compiled)
    return compiled
