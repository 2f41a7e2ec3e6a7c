"""Host I/O beside the device: decode the next items and encode the previous ones on threads while the device
computes, so a folder runs at the device's speed.

Decoding and encoding (Pillow, libpng, zlib, tifffile) release the GIL for their heavy parts, so threads overlap
them with the device programs and, with several encoder threads, with each other (fpng holds the GIL, but takes
0.3 s for an 8K image). Both helpers bound how many items are in flight, which bounds host memory.
"""

from __future__ import annotations

import collections
import concurrent.futures
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

Job = TypeVar("Job")
Result = TypeVar("Result")


def prefetched(jobs: Iterable[Job], load: Callable[[Job], Result], ahead: int = 2
               ) -> Iterator[tuple[Job, Result | None, BaseException | None, float]]:
    """Yields (job, load(job) or None, the exception it raised or None, seconds it took), in order, with up
    to `ahead` jobs loading on a background thread while the caller works on the current one."""

    def timed(job):
        t0 = time.perf_counter()
        try:
            return load(job), None, time.perf_counter() - t0
        except Exception as e:  # handed to the caller, who decides whether it is fatal
            return None, e, time.perf_counter() - t0

    with concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="decode") as pool:
        queue: collections.deque = collections.deque()
        for job in jobs:
            queue.append((job, pool.submit(timed, job)))
            if len(queue) > ahead:
                done_job, future = queue.popleft()
                yield (done_job, *future.result())
        while queue:
            done_job, future = queue.popleft()
            yield (done_job, *future.result())


def default_encoders() -> int:
    """Encoder threads for this host: one per core, at most 4 (each holds one image in memory)."""
    return max(1, min(4, os.cpu_count() or 1))


class BackgroundWriter:
    """Runs write jobs on `encoders` threads, at most `encoders + pending` jobs in flight (submit blocks beyond
    that), which bounds the images held in memory.

    `submit(fn, on_done)` calls `fn()` on a thread, then `on_done(result, exception, seconds)` on that thread, one
    `on_done` at a time (callers need no lock); jobs finish in any order. `close()` waits for everything.
    Exceptions are never lost: those of `fn` reach `on_done`, and one raised by `on_done` itself is raised again
    by `close()`.
    """

    def __init__(self, pending: int = 1, encoders: int | None = None):
        self.encoders = default_encoders() if encoders is None else encoders
        if self.encoders < 1 or pending < 0:
            raise ValueError(f"need at least one encoder and pending >= 0, got {self.encoders} and {pending}")
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=self.encoders, thread_name_prefix="encode")
        self._slots = threading.Semaphore(self.encoders + pending)
        self._report_lock = threading.Lock()
        self._futures: list[concurrent.futures.Future] = []

    def submit(self, fn: Callable[[], Any], on_done: Callable[[Any, BaseException | None, float], None]) -> None:
        self._slots.acquire()

        def run():
            t0 = time.perf_counter()
            try:
                result, error = fn(), None
            except Exception as e:  # reported through on_done
                result, error = None, e
            try:
                with self._report_lock:
                    on_done(result, error, time.perf_counter() - t0)
            finally:
                self._slots.release()

        self._futures.append(self._pool.submit(run))

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        for future in self._futures:
            future.result()  # re-raises a bug in on_done itself

    def __enter__(self) -> "BackgroundWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
