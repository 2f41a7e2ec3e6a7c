"""The one way outputs reach the disk: complete or not at all, and durable.

`atomic_write` writes through a temporary file in the destination folder, flushes and fsyncs it, renames it
over the destination and fsyncs the folder, so a crash, a full disk or a kill leaves either the old file or
the new one, never half of one. JSON, text, images and arrays all go through it.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Callable
from typing import Any, BinaryIO

from classsr_jax.errors import WriteError, reason


def _fsync_folder(folder: str) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # some filesystems do not open folders; the rename itself is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def temporary_path(path: str) -> str:
    """A hidden, unique name beside `path` (listing functions skip names starting with '.')."""
    folder, name = os.path.split(os.path.abspath(path))
    return os.path.join(folder, f".{name}.{secrets.token_hex(6)}.tmp")


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], None]) -> None:
    """Calls `write(f)` on a temporary binary file beside `path`, then moves it into place.

    Raises WriteError (one line naming `path`) when the folder is missing or anything fails; the temporary
    file is removed and an existing `path` is left as it was.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise WriteError(f"cannot write {path}: folder {folder} does not exist")
    temp = temporary_path(path)
    try:
        f = open(temp, "xb")  # O_EXCL: never follow or clobber anything already there
    except OSError as exc:
        raise WriteError(f"cannot write {path}: {reason(exc)}") from exc
    try:
        with f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, path)
    except BaseException as exc:
        try:
            os.unlink(temp)
        except FileNotFoundError:
            pass
        if isinstance(exc, Exception) and not isinstance(exc, WriteError):
            raise WriteError(f"cannot write {path}: {reason(exc)}") from exc
        raise
    _fsync_folder(folder)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    atomic_write(path, lambda f: f.write(data))


def write_text(path: str | os.PathLike, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, data: Any) -> None:
    """Indented JSON with a final newline."""
    write_text(path, json.dumps(data, indent=2) + "\n")


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """True when both paths name one file: the same path, a symlink to it, or a hard link (same inode)."""
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet): compare where they would resolve
        return os.path.realpath(a) == os.path.realpath(b)


def check_output_path(path: str | os.PathLike, inputs=(), *, overwrite: bool = False, what: str = "output") -> None:
    """Raises WriteError unless `path` can be written without harm, before any work is done:
    it must not be any of `inputs` (by path, symlink or hard link), not be a folder, lie in an existing
    folder, and not exist unless `overwrite`."""
    path = os.fspath(path)
    for source in inputs:
        if same_file(path, source):
            raise WriteError(f"{what} {path} is the input {source}; inputs are never written, choose another path")
    if os.path.isdir(path):
        raise WriteError(f"{what} {path} is a folder; give a file name")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise WriteError(f"cannot write {what} {path}: folder {folder} does not exist")
    if os.path.lexists(path) and not overwrite:
        raise WriteError(f"{what} {path} exists; --overwrite replaces it")
