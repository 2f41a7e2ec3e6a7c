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


# Measured on a 2-core CPU (benchmarks/JOURNAL.md, "Routed inference"): buckets of 4 tiles keep a branch's activations
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
# 128. Not measured yet (no TPU run; benchmarks/JOURNAL.md).
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


def class_logits(model, variables, tiles):
    """The Class-Module's logits (n, K) in float32: the one forward pass of the classifier that routing, the
    budget's first pass and training's routing calibration share."""
    return model.apply(variables, tiles, method=model.classify).astype(jnp.float32)


def classify(model, variables, tiles, valid, logit_offsets, force_class, *, has_classifier: bool = True):
    """(logits (n, K), classes (n,)): argmax of the logits plus the offsets (the FLOPs budget), or
    `force_class` when it is ≥ 0; −1 for padding."""
    if has_classifier:
        logits = class_logits(model, variables, tiles)
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


def default_compute_widths(spec: ModelSpec, platform: str | None = None) -> tuple[int, ...]:
    """The widths the branches are computed at: on a CPU, 50/52-wide branches run at 64 (`models.widen`)."""
    platform = platform or jax.default_backend()
    return widen.cpu_compute_widths(spec) if platform == "cpu" else tuple(spec.widths)


class RoutedModel:
    """A model ready for routed inference: the module built at its compute widths and dtype, the bucket sizes and
    the local devices. The band programs (`bands.BandPrograms`) compile and cache what runs on it.

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
        self.buckets = buckets or default_buckets(spec)
        self.compute_spec = widen.wider_spec(spec, compute_widths or default_compute_widths(spec))
        self.dtype = dtype
        self.model = self.compute_spec.build(dtype=dtype)
        self.has_classifier = spec.kind == "classsr"
        self.num_branches = spec.num_branches
        self.mesh = mesh or local_mesh()
        self.num_devices = self.mesh.devices.size
        self.data_sharding = NamedSharding(self.mesh, P(DATA_AXIS))
        self.replicated = NamedSharding(self.mesh, P())

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
