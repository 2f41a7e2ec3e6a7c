"""Routing tiles to branches on device, with static shapes.

One jitted program classifies a batch of tiles, builds the class masks, and runs every branch only on its
own tiles: the indices of class k are compacted with `jnp.nonzero(size=n)`, and a `lax.fori_loop` whose trip
count follows the class count gathers fixed-size buckets of them, runs the branch, and scatters the SR tiles
back. Big buckets carry the bulk and small buckets the remainder, so at most `small − 1` padded tiles per
class are computed in vain. No per-tile Python loop, no host round trip per tile.

The batch is split over all local devices with `shard_map`: each device routes its own share. Bucket sizes
and the widths the branches are computed at depend on the backend (`default_buckets`,
`default_compute_widths`): small buckets and 64-channel branches on a CPU, big buckets on GPUs and TPUs.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from classsr_jax.models import widen
from classsr_jax.models.spec import ModelSpec
from classsr_jax.parallel import DATA_AXIS, local_mesh


@dataclasses.dataclass(frozen=True)
class Buckets:
    """Bucket sizes (tiles per branch call): the bulk goes in `big` buckets, the remainder in `small` ones."""

    big: int = 32
    small: int = 8

    def __post_init__(self):
        if not (1 <= self.small <= self.big):
            raise ValueError(f"bucket sizes must satisfy 1 <= small <= big, got small={self.small}, big={self.big}")

    def calls(self, count: int) -> tuple[int, int]:
        """(big buckets, small buckets) that route `count` tiles."""
        n_big = count // self.big
        return n_big, -(-(count - n_big * self.big) // self.small)

    def padded(self, count: int) -> int:
        """Tiles actually computed for `count` tiles of one class (bucket padding included)."""
        n_big, n_small = self.calls(count)
        return n_big * self.big + n_small * self.small


# Measured on a 2-core CPU (BENCHMARKS.md, "Routed inference"): buckets of 4 tiles keep a branch's activations
# in the L2 cache; with chunks of 128 they ran ClassSR-SRResNet 1.3x and ClassSR-CARN 1.7x faster than the
# accelerator sizes (buckets of 32, chunks of 256), and 1.1-1.2x faster than buckets of 8; a remainder
# bucket of 1 wastes no work. FSRCNN's tiles cost ~30x less, so its calls need 8 tiles to amortise their fixed
# cost. GPUs want big batches to fill their cores, and every branch call of a deep network launches hundreds
# of kernels (RCAN: about a thousand), so fewer, bigger calls: 128-tile buckets for the bulk, 16 for the rest
# (at most 15 padded tiles per class and band). Not measured yet: benchmarks/gpu_suite.sh sweeps 32/8,
# 64/16 and 128/16 on a GPU.
CPU_BUCKETS = Buckets(big=4, small=1)
CPU_BUCKETS_CHEAP_NETWORK = Buckets(big=8, small=2)
GPU_BUCKETS = Buckets(big=128, small=16)
# TPUs: XLA pads a convolution's feature dimension to a multiple of 128 unless the module's most common
# convolution batch is at least 64, and then pads the features to 8 and the batch to 128 instead (Cloud TPU
# performance guide). With batches of 32 and 8 the 36-, 50- and 52-wide branches would cost about as much as
# the 64-wide one and ClassSR would save nothing, so every TPU call carries at least 64 tiles and the bulk
# 128. Not measured yet (no TPU run; BENCHMARKS.md).
TPU_BUCKETS = Buckets(big=128, small=64)


def default_buckets(spec: ModelSpec | None = None, platform: str | None = None) -> Buckets:
    """The bucket sizes for a model on a JAX platform ('cpu', 'gpu', 'tpu'; default: the default backend's)."""
    platform = platform or jax.default_backend()
    if platform == "tpu":
        return TPU_BUCKETS
    if platform != "cpu":
        return GPU_BUCKETS
    return CPU_BUCKETS_CHEAP_NETWORK if spec is not None and spec.network == "fsrcnn" else CPU_BUCKETS


def _run_buckets(apply_branch, tiles, indices, count, state, size, start, n_calls, consume):
    """For i < n_calls: gather tiles[indices[start + i·size : … + size]], run the branch, and hand the SR tiles
    to `consume(state, sel, valid, sr)` (the first `valid` entries of `sel` are real tile indices)."""
    n = tiles.shape[0]

    def body(i, state):
        first = start + i * size
        sel = jax.lax.dynamic_slice(indices, (first,), (size,))
        batch = tiles[jnp.minimum(sel, n - 1)]  # fill entries (= n) read any tile; their results are dropped
        valid = jnp.clip(count - first, 0, size)
        return consume(state, sel, valid, apply_branch(batch).astype(jnp.float32))

    return jax.lax.fori_loop(0, n_calls, body, state)


def classify(model, variables, tiles, valid, logit_offsets, force_class, *, has_classifier: bool = True):
    """(logits (n, K), classes (n,)): argmax of the logits plus the offsets (the FLOPs budget), or
    `force_class` when it is ≥ 0; −1 for padding."""
    if has_classifier:
        logits = model.apply(variables, tiles, method=model.classify).astype(jnp.float32)
    else:
        logits = jnp.zeros((tiles.shape[0], 1), jnp.float32)
    classes = jnp.argmax(logits + logit_offsets, axis=-1).astype(jnp.int32)
    classes = jnp.where(force_class >= 0, force_class, classes)
    return logits, jnp.where(valid, classes, -1)


def route_classes(model, variables, tiles, classes, state, consume, *, num_branches: int, buckets: Buckets,
                  has_classifier: bool = True):
    """Runs every branch on its own tiles in buckets and hands each bucket's SR tiles to `consume`.

    For class k the tile indices are compacted on device (`jnp.nonzero(size=n)`), then a `lax.fori_loop`
    whose trip count follows the class count runs big buckets for the bulk and small ones for the rest.
    Returns (state, counts (K,)).
    """
    n = tiles.shape[0]
    counts = []
    for k in range(num_branches):
        mask = classes == k
        count = jnp.sum(mask, dtype=jnp.int32)
        # Sorted indices of class k, then fill (= n, out of range) so every dynamic slice stays in bounds.
        indices = jnp.nonzero(mask, size=n, fill_value=n)[0].astype(jnp.int32)
        indices = jnp.concatenate([indices, jnp.full((buckets.big,), n, jnp.int32)])
        if has_classifier:
            apply_branch = lambda x, k=k: model.apply(variables, x, k, method=model.branch)
        else:
            apply_branch = lambda x: model.apply(variables, x)
        n_big = count // buckets.big
        state = _run_buckets(apply_branch, tiles, indices, count, state, buckets.big, 0, n_big, consume)
        start = n_big * buckets.big
        n_small = (count - start + buckets.small - 1) // buckets.small
        state = _run_buckets(apply_branch, tiles, indices, count, state, buckets.small, start, n_small, consume)
        counts.append(count)
    return state, jnp.stack(counts)


def route_tiles(
    model,
    variables,
    tiles: jax.Array,
    valid: jax.Array,
    logit_offsets: jax.Array,
    force_class: jax.Array,
    *,
    num_branches: int,
    scale: int,
    buckets: Buckets,
    has_classifier: bool = True,
):
    """Per-device routing of a batch of tiles, returning every SR tile.

    tiles (n, t, t, 3) in [0, 1]; valid (n,) bool marks real tiles (padding is neither classified into a
    branch nor computed); logit_offsets (K,) are added to the logits before the argmax (the FLOPs budget);
    force_class (): a branch index that takes every tile, or −1.
    Returns (sr (n, t·s, t·s, 3), classes (n,) with −1 for padding, logits (n, K), counts (K,)).
    """
    n, t = tiles.shape[0], tiles.shape[1]
    logits, classes = classify(model, variables, tiles, valid, logit_offsets, force_class, has_classifier=has_classifier)
    scatter = lambda out, sel, _, sr: out.at[sel].set(sr, mode="drop")
    out = jnp.zeros((n, t * scale, t * scale, 3), jnp.float32)
    out, counts = route_classes(model, variables, tiles, classes, out, scatter, num_branches=num_branches,
                                buckets=buckets, has_classifier=has_classifier)
    return out, classes, logits, counts


def classify_tiles(model, variables, tiles):
    return model.apply(variables, tiles, method=model.classify).astype(jnp.float32)


def default_compute_widths(spec: ModelSpec, platform: str | None = None) -> tuple[int, ...]:
    """The widths the branches are computed at: on a CPU, 50/52-wide branches run at 64 (`models.widen`)."""
    platform = platform or jax.default_backend()
    return widen.cpu_compute_widths(spec) if platform == "cpu" else tuple(spec.widths)


class RoutedModel:
    """A model ready for routed inference: compiled programs per padded tile count, shared by all images.

    `route(variables, tiles, valid, offsets, force)` runs one chunk on all local devices; programs are compiled
    ahead of time per chunk size and cached, and their compile time is recorded separately.
    compute_widths: compute branch k at this width with zero-padded weights (same numbers; default
    `default_compute_widths`); `place_variables` takes the checkpoint's own variables and widens them.
    """

    def __init__(
        self,
        spec: ModelSpec,
        buckets: Buckets | None = None,
        mesh: jax.sharding.Mesh | None = None,
        dtype=jnp.float32,
        compute_widths: tuple[int, ...] | None = None,
    ):
        self.spec = spec
        buckets = buckets or default_buckets(spec)
        self.compute_spec = widen.wider_spec(spec, compute_widths or default_compute_widths(spec))
        self.dtype = dtype
        self.model = self.compute_spec.build(dtype=dtype)
        self.has_classifier = spec.kind == "classsr"
        self.num_branches = spec.num_branches
        self.buckets = buckets
        self.mesh = mesh or local_mesh()
        self.num_devices = self.mesh.devices.size
        self.compile_seconds = 0.0
        self._route_programs: dict[int, Any] = {}
        self._classify_programs: dict[int, Any] = {}
        per_device = functools.partial(
            route_tiles,
            self.model,
            num_branches=self.num_branches,
            scale=spec.scale,
            buckets=buckets,
            has_classifier=self.has_classifier,
        )

        def sharded_route(variables, tiles, valid, offsets, force):
            def local(tiles, valid):
                sr, classes, logits, counts = per_device(variables, tiles, valid, offsets, force)
                return sr, classes, logits, counts[None]

            return jax.shard_map(
                local,
                mesh=self.mesh,
                in_specs=(P(DATA_AXIS), P(DATA_AXIS)),
                out_specs=(P(DATA_AXIS), P(DATA_AXIS), P(DATA_AXIS), P(DATA_AXIS)),
                check_vma=False,
            )(tiles, valid)

        def sharded_classify(variables, tiles):
            return jax.shard_map(
                lambda t: classify_tiles(self.model, variables, t),
                mesh=self.mesh,
                in_specs=P(DATA_AXIS),
                out_specs=P(DATA_AXIS),
                check_vma=False,
            )(tiles)

        self._route = jax.jit(sharded_route)
        self._classify = jax.jit(sharded_classify)
        self.data_sharding = NamedSharding(self.mesh, P(DATA_AXIS))
        self.replicated = NamedSharding(self.mesh, P())

    @property
    def num_compilations(self) -> int:
        return len(self._route_programs)

    def place_variables(self, variables):
        """The checkpoint's variables, widened to the compute widths, cast to the compute dtype (bfloat16
        parameters with bfloat16 activations) and replicated on every device."""
        _, variables = widen.widen(self.spec, variables, self.compute_spec.widths)
        if self.dtype != jnp.float32:
            variables = jax.tree_util.tree_map(
                lambda a: np.asarray(a).astype(self.dtype) if np.issubdtype(np.asarray(a).dtype, np.floating) else a,
                variables,
            )
        return jax.device_put(variables, self.replicated)

    def _compiled(self, cache, fn, n, *example):
        if n not in cache:
            t0 = time.perf_counter()
            cache[n] = fn.lower(*example).compile()
            self.compile_seconds += time.perf_counter() - t0
        return cache[n]

    def route(self, variables, tiles: np.ndarray, valid: np.ndarray, offsets: np.ndarray, force: int):
        """Dispatches one chunk (n tiles, n a multiple of the device count); returns device arrays (async)."""
        n = tiles.shape[0]
        tiles = jax.device_put(tiles, self.data_sharding)
        valid = jax.device_put(valid, self.data_sharding)
        offsets = jax.device_put(np.asarray(offsets, np.float32), self.replicated)
        force = jax.device_put(np.asarray(force, np.int32), self.replicated)
        program = self._compiled(self._route_programs, self._route, n, variables, tiles, valid, offsets, force)
        return program(variables, tiles, valid, offsets, force)

    def classify(self, variables, tiles: np.ndarray):
        n = tiles.shape[0]
        tiles = jax.device_put(tiles, self.data_sharding)
        program = self._compiled(self._classify_programs, self._classify, n, variables, tiles)
        return program(variables, tiles)
