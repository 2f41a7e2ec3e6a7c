"""What keeps a training run safe to stop and to start twice, and its console readable: the workdir lock, Ctrl-C or
SIGTERM turned into one `interrupted: …` line, and Orbax's log kept off the console.

The lock is an OS file lock (`fcntl.flock`) on WORKDIR/.lock, which holds the owner's PID. The kernel releases it
when its process ends, however it ends (kill -9 included), so a lock left by a dead run never blocks.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging as pylogging
import os
import signal
import threading
from collections.abc import Iterator

from absl import logging

from classsr_jax.errors import TrainError

LOCK_FILE = ".lock"
# A workdir on a read-only disk cannot be locked, and needs no lock: no run can write to it.
READ_ONLY_ERRNOS = (errno.EROFS, errno.EACCES, errno.EPERM)


class WorkdirLock:
    """An exclusive lock on a workdir, held from `acquire` until `release` (or the process's end)."""

    def __init__(self, root: str):
        self.root = root
        self.path = os.path.join(root, LOCK_FILE)
        self.fd: int | None = None

    def acquire(self) -> None:
        """Takes the lock; a TrainError naming the holder's PID if another run has it."""
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            if e.errno in READ_ONLY_ERRNOS:
                logging.info("workdir %s is read-only (%s): not locked, nothing can be written", self.root, e.strerror)
                return
            raise TrainError(f"cannot create the lock file {self.path}: {e.strerror or e}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise TrainError(
                f"workdir {self.root} is in use by another run (PID {holder}); wait for it to end, "
                "or use another --workdir"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


# ------------------------------------------------------------------------------------------------ interrupts


class Terminated(BaseException):
    """SIGTERM, raised in the main thread; like KeyboardInterrupt it is no Exception, so nothing swallows it."""


class TrainingInterrupted(Exception):
    """A run stopped by Ctrl-C or SIGTERM: `str()` is the one line to print, `exit_code` 130 or 143."""

    def __init__(self, where: str, signum: int):
        super().__init__(f"interrupted: {where}; rerun to resume")
        self.exit_code = 128 + signum


def signal_number(interrupt: BaseException) -> int:
    return signal.SIGTERM if isinstance(interrupt, Terminated) else signal.SIGINT


def _raise_terminated(signum, frame):
    raise Terminated()


@contextlib.contextmanager
def sigterm_raises() -> Iterator[None]:
    """While inside, SIGTERM raises `Terminated` in the main thread (Ctrl-C raises KeyboardInterrupt anyway);
    the previous handler comes back afterwards. Elsewhere than in the main thread, nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# ------------------------------------------------------------------------------------------------ the console


class QuietOrbax(pylogging.Filter):
    """Keeps Orbax's log off the console but for its one-line warnings: it logs every file it writes at INFO,
    and a failed save at ERROR with tracebacks, which the run reports again as its last line (`error: …`).
    The warning for checkpoints saved between validations (they carry no PSNR by design) goes too."""

    def filter(self, record: pylogging.LogRecord) -> bool:
        if "/orbax/" not in record.pathname:
            return True
        return (record.levelno == pylogging.WARNING and not record.exc_info
                and "did not provide metrics" not in record.getMessage())
