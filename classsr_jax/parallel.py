"""Data parallelism in the pmap model on the current API.

One 1-D mesh with a single axis `'data'` spans every device of every process. A step is written per device
(it sees its shard of the batch and averages with `lax.pmean(…, 'data')`) and runs through `jax.shard_map`
inside `jax.jit`: the train state is replicated (`P()`), the batch split along its first axis
(`P('data')`). Each process feeds only its own share of the global batch; `global_batch` assembles the
shares into one global array without moving data between hosts.

With several processes, every process runs the same program; `is_primary_process` picks the one that writes
shared files, `sync_processes` waits for all of them, and `process0_value` gives every process process 0's
answer to a question whose answer could differ between processes (e.g. whether a file exists yet).

The mesh axis is `AxisType.Auto`: pixel shuffle's reshapes raise ShardingTypeError under Explicit axes.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DATA_AXIS = "data"


def default_cpu_devices() -> int:
    """Inference's default on a CPU: one JAX device per core this process may use, unless XLA_FLAGS sets its
    own count (then 0: leave it)."""
    if "xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", ""):
        return 0
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def use_compilation_cache(folder: str | None = None) -> str | None:
    """Keeps compiled programs on disk, so that a command's second run loads them instead of compiling (a 2K
    image with CARN-M compiles for longer than it computes). JAX_COMPILATION_CACHE_DIR, when set, wins; the
    default is ~/.cache/classsr_jax/xla (XDG_CACHE_HOME honoured). Returns the folder, or None when it cannot be
    used (then nothing is cached)."""
    if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        return os.environ["JAX_COMPILATION_CACHE_DIR"]  # JAX reads it itself
    cache_home = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    folder = folder or os.path.join(cache_home, "classsr_jax", "xla")
    try:
        os.makedirs(folder, exist_ok=True)
        jax.config.update("jax_compilation_cache_dir", folder)
    except (OSError, RuntimeError) as e:  # a read-only home: compile every time
        logging.info("no compilation cache (%s): %s", folder, e)
        return None
    return folder


def use_cpu_devices(count: int, *, quiet: bool = False) -> None:
    """Runs JAX's CPU backend as `count` devices (0: leave JAX's default), so that the 'data' mesh splits each
    batch between the cores. One XLA:CPU program leaves a small CPU partly idle between its many small ops;
    programs on two devices overlap (benchmarks/JOURNAL.md, "CPU devices"). GPUs and TPUs are not affected.

    JAX reads the setting only before its backends start: once they have, a different count changes nothing
    and is logged as a warning (the results then differ from a fresh process's in float rounding), unless
    `quiet` (inference's default count, which a notebook that started JAX earlier simply does without).
    """
    if count == 0:
        return
    try:
        jax.config.update("jax_num_cpu_devices", count)
    except RuntimeError:  # the backends have started
        started = len(jax.local_devices(backend="cpu"))
        if started != count and not quiet:
            logging.warning("cpu_devices=%d not applied: JAX started with %d CPU device(s) before it was read; "
                            "set it in a fresh process, before any JAX computation", count, started)


def create_mesh(devices=None) -> Mesh:
    """A 1-D `'data'` mesh over `devices` (default: every device of every process)."""
    devices = np.asarray(jax.devices() if devices is None else list(devices))
    return Mesh(devices, (DATA_AXIS,), axis_types=(AxisType.Auto,))


def local_mesh() -> Mesh:
    """A 1-D `'data'` mesh over this process's devices only (work that each process does on its own)."""
    return create_mesh(jax.local_devices())


def is_primary_process() -> bool:
    """Whether this is process 0, the one that writes files every process shares."""
    return jax.process_index() == 0


def sync_processes(name: str) -> None:
    """Waits until every process has reached the barrier `name` (a no-op with one process)."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def process0_value(value: int | bool) -> int | bool:
    """Process 0's `value` on every process (an int or a bool).

    Processes must take the same branch wherever they meet in collectives, but a file that process 0 is writing
    may be visible to one process and not yet to another: each asks, and all follow process 0's answer.
    """
    if jax.process_count() == 1:
        return value
    agreed = int(multihost_utils.broadcast_one_to_all(np.int32(int(value))))
    return bool(agreed) if isinstance(value, bool) else agreed


def gather_rows(local: np.ndarray) -> np.ndarray:
    """Every process's rows of `local` (the same shape on each), concatenated in process order, on every process."""
    if jax.process_count() == 1:
        return np.asarray(local)
    return np.asarray(multihost_utils.process_allgather(np.asarray(local), tiled=True))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P(DATA_AXIS))


def num_local_mesh_devices(mesh: Mesh) -> int:
    return sum(d.process_index == jax.process_index() for d in mesh.devices.flat)


def process_batch_size(global_batch_size: int, mesh: Mesh) -> int:
    """This process's share of a global batch; the batch must split evenly over all devices of the mesh."""
    devices = mesh.devices.size
    if global_batch_size % devices:
        raise ValueError(f"batch size {global_batch_size} does not split evenly over {devices} devices")
    return global_batch_size // devices * num_local_mesh_devices(mesh)


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Places host values, identical on every process, as arrays replicated over the whole mesh."""
    sharding = replicated(mesh)

    def place(x):
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

    return jax.tree_util.tree_map(place, tree)


def global_batch(local_batch: Any, mesh: Mesh) -> Any:
    """This process's share of a batch (numpy) → global arrays sharded along `'data'`."""
    sharding = batch_sharded(mesh)
    return jax.tree_util.tree_map(
        lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), local_batch)


def host_copy(tree: Any) -> Any:
    """Numpy copies of replicated arrays, read from this process's first shard (no cross-host transfer)."""

    def fetch(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return np.asarray(x.addressable_data(0))
        return np.asarray(x)

    return jax.tree_util.tree_map(fetch, tree)


def data_parallel(
    per_device_step: Callable, mesh: Mesh, *, donate_state: bool = True, out_specs: Any = (P(), P())
) -> Callable:
    """jit(shard_map(step)): `step(state, batch)` with a replicated state, a batch split over `'data'` and
    replicated outputs (by default `(state, metrics)`; `out_specs=P()` for one output). The step must make
    its outputs replicated (`lax.pmean` / `lax.psum` over `'data'`)."""
    sharded = jax.shard_map(
        per_device_step,
        mesh=mesh,
        in_specs=(P(), P(DATA_AXIS)),
        out_specs=out_specs,
    )
    return jax.jit(sharded, donate_argnums=(0,) if donate_state else ())


def local_batch_fn(apply_fn: Callable, variables: Any, mesh: Mesh | None = None) -> Callable[[np.ndarray], np.ndarray]:
    """A numpy → numpy batch function `apply_fn(variables, x)` split over this process's devices.

    The batch size must be a multiple of the local device count (e.g. the division's fixed batch).
    """
    mesh = mesh or local_mesh()
    placed = jax.device_put(variables, replicated(mesh))
    sharded = jax.jit(
        jax.shard_map(lambda v, x: apply_fn(v, x), mesh=mesh, in_specs=(P(), P(DATA_AXIS)), out_specs=P(DATA_AXIS))
    )
    sharding = batch_sharded(mesh)

    def run(x: np.ndarray) -> np.ndarray:
        return np.asarray(sharded(placed, jax.device_put(np.asarray(x, np.float32), sharding)))

    return run
