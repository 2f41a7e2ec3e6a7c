"""FLOPs counted from the module definitions, in two conventions.

- `paper`: the paper's and original code's convention (docs/original.md#flops): FLOPs = 2 × MACs of conv
  and linear layers, with FSRCNN's transposed conv counted on its HR output (stride² = 16× its real cost at ×4).
- `true`: the same, but the transposed conv counted on its LR input, i.e. the work it really needs.

Counting intercepts every `nn.Conv`, `nn.Dense` and `SubPixelConvTranspose` call while the module is
traced abstractly (`jax.eval_shape`: nothing is computed). Scanned blocks are traced once under
`nn.scan`, so counting uses the unrolled twin of the module (`scan=False`), which has the same layers.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from classsr_jax import disk_cache
from classsr_jax.models.classifier import Classifier
from classsr_jax.models.common import SubPixelConvTranspose
from classsr_jax.models.spec import ModelSpec


@dataclasses.dataclass(frozen=True)
class LayerMacs:
    path: str
    kind: str  # "conv", "dense" or "deconv"
    true: int
    paper: int


def count_layer_macs(module: nn.Module, input_hw: tuple[int, int] = (32, 32)) -> list[LayerMacs]:
    """MACs of every conv/dense/deconv call of `module` on one (1, H, W, 3) input."""
    layers: list[LayerMacs] = []
    if getattr(module, "scan", False):  # a scanned block is traced once: count the unrolled twin
        module = module.clone(scan=False)

    def interceptor(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        if context.method_name != "__call__":
            return out
        m = context.module
        path = "/".join(m.path)
        x = args[0]
        if isinstance(m, nn.Conv):
            per_out = math.prod(m.kernel_size) * (x.shape[-1] // m.feature_group_count) * out.shape[-1]
            macs = math.prod(out.shape[1:-1]) * per_out
            layers.append(LayerMacs(path, "conv", macs, macs))
        elif isinstance(m, nn.Dense):
            macs = x.shape[-1] * out.shape[-1]
            layers.append(LayerMacs(path, "dense", macs, macs))
        elif isinstance(m, SubPixelConvTranspose):
            per_pixel = m.kernel_size**2 * x.shape[-1] * m.features
            true = math.prod(x.shape[1:-1]) * per_pixel
            paper = math.prod(out.shape[1:-1]) * per_pixel
            layers.append(LayerMacs(path, "deconv", true, paper))
        return out

    x = jax.ShapeDtypeStruct((1, *input_hw, 3), jnp.float32)
    with nn.intercept_methods(interceptor):
        jax.eval_shape(lambda x: module.init_with_output(jax.random.PRNGKey(0), x), x)
    return layers


def _total(layers: list[LayerMacs], convention: str) -> int:
    if convention not in ("paper", "true"):
        raise ValueError(f"unknown FLOPs convention {convention!r}: use 'paper' or 'true'")
    return sum(getattr(layer, convention) for layer in layers)


@functools.lru_cache(maxsize=None)
@disk_cache.json_memo("classsr_flops", ("models",))  # a trace per network: seconds at every start-up otherwise
def _network_macs(network: str, width: int, scale: int, extra: tuple, tile: int) -> tuple[int, int]:
    spec = ModelSpec("network", network, (width,), scale, dict(extra))
    layers = count_layer_macs(spec.build(), (tile, tile))
    return _total(layers, "true"), _total(layers, "paper")


@functools.lru_cache(maxsize=None)
@disk_cache.json_memo("classsr_flops", ("models",))
def _classifier_macs(num_classes: int, tile: int) -> int:
    return _total(count_layer_macs(Classifier(num_classes), (tile, tile)), "true")


@dataclasses.dataclass(frozen=True)
class ModelFlops:
    """FLOPs of one tile (tile×tile LR pixels) for each branch and for the Class-Module."""

    branches: tuple[float, ...]
    classifier: float
    convention: str
    tile: int

    @property
    def original(self) -> float:
        """The -O network is the last (widest) branch."""
        return self.branches[-1]


def model_flops(spec: ModelSpec, tile: int = 32, convention: str = "paper") -> ModelFlops:
    """Per-tile FLOPs (2 × MACs) of every branch of `spec` and of its classifier."""
    index = 0 if convention == "true" else 1
    if convention not in ("paper", "true"):
        raise ValueError(f"unknown FLOPs convention {convention!r}: use 'paper' or 'true'")
    extra = tuple(sorted(spec.extra.items()))
    branches = tuple(2.0 * _network_macs(spec.network, w, spec.scale, extra, tile)[index] for w in spec.widths)
    classifier = 2.0 * _classifier_macs(max(spec.num_branches, 1), tile) if spec.kind == "classsr" else 0.0
    return ModelFlops(branches, classifier, convention, tile)


def format_flops(flops: float) -> str:
    """1.15e9 → '1.15G', 4.68e8 → '468.0M'."""
    for unit, size in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(flops) >= size:
            return f"{flops / size:.{2 if unit in 'GT' else 1}f}{unit}"
    return f"{flops:.0f}"


def paper_flops_figure(class_counts, flops: ModelFlops, network: str) -> float:
    """The paper's FLOPs figure: mean per-tile FLOPs of the chosen branches
    (docs/original.md#the-figure-of-a-routed-image-and-of-a-dataset).

    Like the original's `cal_FLOPs`, the Class-Module's cost is added for FSRCNN only (it is negligible for
    the others). Unlike it, a class with no tiles counts as 0, not 1 (a bug that adds phantom tiles; see
    docs/original.md#flops-of-an-empty-class).
    """
    counts = [int(c) for c in class_counts]
    total = sum(counts)
    if total == 0:
        return 0.0
    mean = sum(n * f for n, f in zip(counts, flops.branches)) / total
    return mean + (flops.classifier if network == "fsrcnn" else 0.0)


def executed_flops(flops: ModelFlops, padded_counts, classified_tiles: int) -> float:
    """FLOPs actually computed for an image: every bucket's padded tiles and the classifier on every tile."""
    return sum(n * f for n, f in zip(padded_counts, flops.branches)) + classified_tiles * flops.classifier
