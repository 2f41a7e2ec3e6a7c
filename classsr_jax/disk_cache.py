"""Small derived results kept between runs beside JAX's compilation cache, so a command's start-up does not
recompute them: compiled band programs (`inference.program_cache`) and the variable shapes of a model
description (`models.spec.ModelSpec.abstract`).

Everything lives under the folder JAX's persistent cache uses (`parallel.use_compilation_cache`, which every
command calls; the library leaves it to its caller), one subfolder per kind, and only while that cache is on.
An entry's name is a digest of everything that decides its content: the jax, jaxlib and flax versions, the
source of the package's modules that compute it, and the caller's own key. Entries are written atomically.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os

import flax
import jax
import jaxlib

from classsr_jax.errors import WriteError
from classsr_jax.io import atomic

_ROOT = os.path.dirname(os.path.abspath(__file__))


def folder(kind: str) -> str | None:
    """`<JAX's cache folder>/<kind>`, or None when JAX's compilation cache is off."""
    jax_folder = jax.config.jax_compilation_cache_dir
    return os.path.join(jax_folder, kind) if jax_folder else None


@functools.lru_cache(maxsize=None)
def source_digest(*packages: str) -> str:
    """sha256 of the package's top-level modules and of these subpackages' sources: an edited module never
    reuses an old entry."""
    files = sorted(os.path.join(_ROOT, n) for n in os.listdir(_ROOT) if n.endswith(".py"))
    for package in packages:
        sub = os.path.join(_ROOT, package)
        files += sorted(os.path.join(sub, n) for n in os.listdir(sub) if n.endswith(".py"))
    digest = hashlib.sha256()
    for path in files:
        with open(path, "rb") as f:
            digest.update(os.path.relpath(path, _ROOT).encode() + b"\0" + f.read() + b"\0")
    return digest.hexdigest()


def entry_path(kind: str, packages: tuple[str, ...], key, suffix: str) -> str | None:
    """Where the entry for `key` lives (None when the cache is off)."""
    where = folder(kind)
    if where is None:
        return None
    parts = (jax.__version__, jaxlib.__version__, flax.__version__, source_digest(*packages), repr(key))
    return os.path.join(where, hashlib.sha256(repr(parts).encode()).hexdigest() + suffix)


def write(path: str, data: bytes) -> None:
    """Writes an entry atomically; a cache that cannot be written is only logged (it saves time, nothing more)."""
    try:
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        atomic.write_bytes(path, data)
    except (OSError, WriteError) as e:
        logging.info("cache entry %s not written: %s", path, e)


def json_memo(kind: str, packages: tuple[str, ...]):
    """Decorates a pure function of hashable arguments whose result is JSON (tuples come back as lists): its
    results are kept in `kind` (keyed by the function's name and arguments), and a damaged entry is recomputed."""

    def decorate(fn):
        @functools.wraps(fn)
        def memoized(*args):
            path = entry_path(kind, packages, (fn.__module__, fn.__qualname__, args), ".json")
            if path is not None:
                try:
                    with open(path, encoding="utf-8") as f:
                        return json.load(f)
                except (OSError, ValueError):  # not there yet, or damaged
                    pass
            value = fn(*args)
            if path is not None:
                write(path, json.dumps(value).encode())
            return value

        return memoized

    return decorate
