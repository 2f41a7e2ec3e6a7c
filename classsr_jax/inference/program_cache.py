"""Compiled band programs kept on disk between runs, so that a command's start-up skips tracing too.

JAX's persistent compilation cache (`parallel.use_compilation_cache`) skips XLA's compile, but every new process
still traces the Flax model and lowers it to find the cache key: most of a warm command's `compile_s`. Here the
executable itself is stored, under a key made of everything that decides it without tracing anything: the
jax, jaxlib and flax versions, the backend and its devices, XLA_FLAGS, the source of the modules that build the
programs, and the program's own key (model description, buckets, dtype, band shape, output format).

Entries live beside JAX's cache (`<its folder>/classsr_programs/`) and only while that cache is on: the commands
turn it on, the library leaves it to the caller. They are written atomically; an entry that fails to load is
logged and compiled again. Loading unpickles an executable (`jax.experimental.serialize_executable`), so only
files in the cache folder this user's own runs write are read, as JAX does with its own cache.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import pickle

import flax
import jax
import jaxlib
from jax.experimental import serialize_executable

from classsr_jax.io import atomic

SUBFOLDER = "classsr_programs"
# The packages whose code decides what a band program computes.
_SOURCE_PACKAGES = ("inference", "models")


@functools.lru_cache(maxsize=1)
def source_digest() -> str:
    """sha256 of the source files that build band programs: an edited module never loads an old executable."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    digest = hashlib.sha256()
    files = [os.path.join(root, "parallel.py")]
    for package in _SOURCE_PACKAGES:
        folder = os.path.join(root, package)
        files += sorted(os.path.join(folder, name) for name in os.listdir(folder) if name.endswith(".py"))
    for path in files:
        with open(path, "rb") as f:
            digest.update(os.path.relpath(path, root).encode() + b"\0" + f.read() + b"\0")
    return digest.hexdigest()


def folder() -> str | None:
    """Where executables are kept, or None when JAX's compilation cache is off."""
    jax_folder = jax.config.jax_compilation_cache_dir
    return os.path.join(jax_folder, SUBFOLDER) if jax_folder else None


def entry_name(key, devices) -> str:
    """The file name of a program's executable: a digest of its key and of everything else that decides it."""
    device_part = [(d.platform, d.device_kind, d.id, d.process_index) for d in devices]
    backend = devices[0].client
    versions = (jax.__version__, jaxlib.__version__, flax.__version__, backend.platform, backend.platform_version)
    parts = (versions, device_part, os.environ.get("XLA_FLAGS", ""), source_digest(), repr(key))
    return hashlib.sha256(repr(parts).encode()).hexdigest() + ".executable"


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
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        atomic.write_bytes(path, blob)
    except Exception as e:
        logging.info("compiled program not kept in %s (%s: %s)", path, type(e).__name__, e)


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
    where = folder()
    if not where:
        return lower().compile()
    path = os.path.join(where, entry_name(key, devices))
    compiled = load(path, devices)
    if compiled is None:
        compiled = compile_fresh(lower())
        store(path, compiled)
    return compiled
