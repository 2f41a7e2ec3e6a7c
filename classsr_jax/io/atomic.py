"""The one way outputs reach the disk: complete or not at all, and durable.

`atomic_write` writes through a temporary file in the destination folder, flushes and fsyncs it, renames it
over the destination and fsyncs the folder, so a crash, a full disk or a kill leaves either the old file or
the new one, never half of one; an interrupt (Ctrl-C, SIGTERM turned into SystemExit) removes the temporary
file too. Only `kill -9` can leave one behind: `outputs.remove_stale_temps` clears those on the next run.
JSON, text, images and arrays all go through it.
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


def _why(exc: BaseException) -> str:
    """The cause in one line, without the temporary file's name that OS errors carry: errors name the user's path."""
    if isinstance(exc, OSError) and exc.strerror:
        return f"[Errno {exc.errno}] {exc.strerror}" if exc.errno else exc.strerror
    return reason(exc)


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
    created = False  # an existing file of that name (never ours) is never removed
    try:
        # O_EXCL: never follow or clobber anything already there. Inside the try, so that an interrupt (Ctrl-C,
        # SystemExit) arriving just after the open still removes the file.
        with open(temp, "xb") as f:
            created = True
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, path)
    except BaseException as exc:  # KeyboardInterrupt and SystemExit too: no temporary file survives
        if created:
            try:
                os.unlink(temp)
            except OSError:  # already gone
                pass
        if isinstance(exc, Exception) and not isinstance(exc, WriteError):
            raise WriteError(f"cannot write {path}: {_why(exc).replace(temp, path)}") from exc
        raise
    _fsync_folder(folder)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    atomic_write(path, lambda f: f.write(data))


def write_text(path: str | os.PathLike, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, data: Any) -> None:
    """Indented JSON with a final newline."""
    write_text(path, json.dumps(data, indent=2) + "\n")
