"""Faults injected into Orbax's array writes, for tests: a full disk, a slow background write, and a damaged step.

Orbax writes arrays through `StandardCheckpointHandler.async_save`, which starts the writes and returns futures
that a background thread (asynchronous saves) or the caller (synchronous saves) waits on before the
temporary folder is renamed into place. An extra future that fails or sleeps is what a full disk or a slow
disk looks like to Orbax.
"""

import errno
import os
import time

import orbax.checkpoint as ocp

ORIGINAL_ASYNC_SAVE = ocp.StandardCheckpointHandler.async_save
TMP_SUFFIX = ".orbax-checkpoint-tmp"


class DiskFull:
    def result(self, timeout=None):
        raise OSError(errno.ENOSPC, "No space left on device")

    def cancel(self):
        return None


class SlowDisk:
    def __init__(self, seconds):
        self.seconds = seconds

    def result(self, timeout=None):
        time.sleep(self.seconds)

    def cancel(self):
        return None


def faulty_async_save(fault, *, skip=0, where=lambda directory: True):
    """An `async_save` that adds `fault()` to every array write after the first `skip` whose directory
    satisfies `where`."""
    seen = {"writes": 0}

    async def async_save(self, directory, *args, **kwargs):
        futures = await ORIGINAL_ASYNC_SAVE(self, directory, *args, **kwargs)
        if not where(str(directory)):
            return futures
        seen["writes"] += 1
        if seen["writes"] <= skip:
            return futures
        return list(futures or []) + [fault()]

    return async_save


def install(fault, **kwargs) -> None:
    """For a subprocess: patches Orbax for the rest of the process."""
    ocp.StandardCheckpointHandler.async_save = faulty_async_save(fault, **kwargs)


def corrupt_step(step_dir, item="state") -> None:
    """Damages a saved step as a failing disk would: every file of its `item` (the train state's arrays and
    index, or the progress JSON) is overwritten with garbage of another length; the step still looks finished."""
    for folder, _, files in os.walk(os.path.join(step_dir, item)):
        for name in files:
            if name != "commit_success.txt":
                with open(os.path.join(folder, name), "wb") as f:
                    f.write(b"\x00garbage\xff")
