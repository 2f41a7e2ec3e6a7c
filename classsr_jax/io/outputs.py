"""One rule for every path a command writes (outputs, masks, reports, checkpoints), checked before any work.

A path a run writes is

  * never one of the run's inputs: compared by real path (symlinks resolved) and, for files that exist, by
    device and inode, so a symlink or a hard link to an input is refused too;
  * never inside a protected folder, such as the checkpoint in use (nor a hard link to a file in it);
  * never another output of the same run: two outputs that would land on one file are refused, naming both
    (for example a.png and a.jpg in one folder would both write the mask a_mask.png; an input called
    a_mask.png would collide with the mask of a.png when the masks go into the output folder). The rule is an
    error before any work, never a silent suffix: rename one of the inputs or choose other folders;
  * never a folder, and its folder exists or can be created and is writable (`OutputPlan.prepare_folders`
    creates it, then creates and removes a probe file).

An existing file that passes these checks is an earlier output: `--overwrite` replaces it, otherwise the
command keeps it (folder mode) or refuses (one file). `prepare_folders` also removes the hidden temporary files
(`.NAME.<12 hex>.tmp`, see `atomic.temporary_path`) that a killed run left in an output folder, once they are
older than a minute; it touches no other file.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterable

from classsr_jax.errors import ImageError, WriteError
from classsr_jax.io import atomic

# The exact names atomic.temporary_path makes; only these are ever removed.
STALE_TEMP_NAME = re.compile(r"\..+\.[0-9a-f]{12}\.tmp")
STALE_AFTER_S = 60.0
# The default output limit: the float32 RGB output may take this share of the host's memory (the device program
# holds the LR tiles, the blended HR accumulators and the quantised result besides).
OUTPUT_MEMORY_SHARE = 1 / 8


def _file_id(path: str) -> tuple[int, int] | None:
    """(device, inode) of the file `path` names (symlinks followed), or None when there is no such file."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def is_inside(path: str, folder: str) -> bool:
    """Whether `path` is `folder` or lies below it (both spelled alike: absolute or real paths)."""
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _files_under(folder: str) -> Iterable[str]:
    if not os.path.isdir(folder):
        yield folder
        return
    for root, _, names in os.walk(folder):
        for name in names:
            yield os.path.join(root, name)


def _why(exc: OSError) -> str:
    """The cause without the file name the OS error carries (which may be a temporary name)."""
    return exc.strerror or type(exc).__name__


class OutputPlan:
    """Collects the paths one run will write and refuses, before any work, each one that breaks the rule."""

    def __init__(self, inputs: Iterable[str] = (), protected: Iterable[str] = (), *, overwrite: bool = False):
        """
        Args:
          inputs: the files the run reads (never written).
          protected: folders (or files) the run must not write into, e.g. the checkpoint in use.
          overwrite: whether an existing earlier output may be replaced.
        """
        self.overwrite = overwrite
        self._inputs: dict[object, str] = {}
        for path in map(os.fspath, inputs):
            self._inputs[os.path.realpath(path)] = path
            if (file_id := _file_id(path)) is not None:
                self._inputs[file_id] = path
        self._protected = [(os.path.realpath(os.fspath(p)), os.fspath(p)) for p in protected]
        self._protected_ids = {
            file_id: shown for real, shown in self._protected for f in _files_under(real)
            if (file_id := _file_id(f)) is not None
        }
        self._outputs: dict[object, str] = {}
        self.folders: list[str] = []

    def add(self, path: str | os.PathLike, what: str, *, of: str | None = None, keep_existing: bool = False) -> bool:
        """Checks one path the run will write; returns True when an earlier output exists there.

        Args:
          path: the file to write.
          what: what it is, for messages ("output", "mask", "report").
          of: the input it is made from, named when two outputs collide.
          keep_existing: an existing file is kept (True returned) rather than refused without --overwrite.
        Raises:
          WriteError: one line naming `path` and the rule it breaks.
        """
        path = os.fspath(path)
        real, file_id = os.path.realpath(path), _file_id(path)
        source = self._inputs.get(real) or (file_id is not None and self._inputs.get(file_id))
        if source:
            raise WriteError(f"{what} {path} is the input {source}; inputs are never written, choose another path")
        inside = [shown for folder, shown in self._protected if is_inside(real, folder)]
        if inside or (file_id is not None and file_id in self._protected_ids):
            shown = inside[0] if inside else self._protected_ids[file_id]
            raise WriteError(f"{what} {path} lies inside {shown}, which this run reads; choose another path")
        other = self._outputs.get(real) or (file_id is not None and self._outputs.get(file_id))
        role = f"{what} of {of}" if of else what
        if other:
            raise WriteError(f"{path} would be written twice: as the {other} and as the {role}; "
                             "give each output its own name")
        if os.path.isdir(path):
            raise WriteError(f"{what} {path} is a folder; give a file name")
        self._outputs[real] = role
        if file_id is not None:
            self._outputs[file_id] = role
        self.add_folder(os.path.dirname(path))
        exists = os.path.lexists(path)
        if exists and not (self.overwrite or keep_existing):
            raise WriteError(f"{what} {path} exists; --overwrite replaces it")
        return exists

    def add_folder(self, folder: str | os.PathLike) -> None:
        """A folder the run writes into: it must be a folder or creatable (no file on its way)."""
        folder = os.fspath(folder) or "."  # messages keep the user's spelling; comparisons use the absolute path
        ancestor = folder
        while not os.path.exists(ancestor):
            ancestor = os.path.dirname(ancestor) or "."
        if not os.path.isdir(ancestor):
            raise WriteError(f"cannot create folder {folder}: {ancestor} is a file")
        if os.path.abspath(folder) not in map(os.path.abspath, self.folders):
            self.folders.append(folder)

    def prepare_folders(self) -> None:
        """Creates every folder of the plan, proves each writable, and removes stale temporary files in it."""
        for folder in self.folders:
            ensure_writable_folder(folder)
            remove_stale_temps(folder)


def ensure_writable_folder(folder: str | os.PathLike) -> None:
    """Creates `folder` if needed and writes and removes a probe file in it; WriteError (naming the folder)
    when either fails, e.g. on a read-only file system."""
    folder = os.fspath(folder)
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as exc:
        raise WriteError(f"cannot create folder {folder}: {_why(exc)}") from exc
    probe = atomic.temporary_path(os.path.join(folder, "write-test"))
    try:
        with open(probe, "xb"):
            pass
        os.unlink(probe)
    except OSError as exc:
        raise WriteError(f"cannot write in folder {folder}: {_why(exc)}") from exc


def remove_stale_temps(folder: str | os.PathLike, older_than_s: float = STALE_AFTER_S) -> list[str]:
    """Removes this tool's temporary files (`.NAME.<12 hex>.tmp`, regular files only) older than `older_than_s`
    from `folder` (not its subfolders); returns their paths. A younger one may belong to a run in progress."""
    removed = []
    now = time.time()
    try:
        entries = list(os.scandir(os.fspath(folder)))
    except OSError:
        return removed
    for entry in entries:
        if not STALE_TEMP_NAME.fullmatch(entry.name):
            continue
        try:
            if entry.is_file(follow_symlinks=False) and now - entry.stat(follow_symlinks=False).st_mtime > older_than_s:
                os.unlink(entry.path)
                removed.append(entry.path)
        except OSError:  # gone already, or not ours to remove: leave it
            continue
    return removed


def memory_output_limit(fraction: float = OUTPUT_MEMORY_SHARE, bytes_per_pixel: int = 12) -> int | None:
    """The most output pixels whose float32 RGB samples (12 bytes a pixel) fit in `fraction` of this host's
    physical memory; None where the OS does not say how much it has."""
    try:
        memory = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, OSError, ValueError):
        return None
    return max(1, int(memory * fraction) // bytes_per_pixel)


def check_output_size(path: str, lr_hw: tuple[int, int], scale: int, limit: int | None) -> None:
    """ImageError naming `path` and the output's width x height when `scale` x its size exceeds `limit` pixels."""
    height, width = lr_hw[0] * scale, lr_hw[1] * scale
    if limit and height * width > limit:
        raise ImageError(f"{path}: its x{scale} output would be {width}x{height} ({height * width:,} pixels), more "
                         f"than --max-output-pixels {limit:,}; raise it (0: no limit) or upscale a smaller image")
