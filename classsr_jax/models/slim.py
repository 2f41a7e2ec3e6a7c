"""A narrow branch cut out of the -O network: its most important channels, as a starting point for training.

ClassSR's branches are one network at several widths, and the paper trains each narrow one from scratch. Cut
from a trained -O network instead, a narrow branch starts with -O's filters and needs a fraction of the steps
to learn what it would learn from scratch (benchmarks/JOURNAL.md, "Narrow branches cut from -O").

FSRCNN (the only network supported) has two groups of d channels: the head conv's outputs, read by the shrink
conv, and the expand conv's outputs, read by the tail deconv. A channel's importance is the product of the L2
norms of the weights that write it and the weights that read it; each group keeps its `width` most important
channels, in their original order. The shrink and mapping convs and the scalar PReLUs are copied. When every
dropped channel is read with zero weights, the cut network computes exactly what -O does.
"""

from __future__ import annotations

from typing import Any

import numpy as np

SUPPORTED = ("fsrcnn",)


def channel_importance(writes: np.ndarray, reads: np.ndarray) -> np.ndarray:
    """writes: (..., C) the weights producing each of C channels; reads: (C, ...) the weights consuming them."""
    writes = np.asarray(writes, np.float64)
    reads = np.asarray(reads, np.float64)
    return (np.linalg.norm(writes.reshape(-1, writes.shape[-1]), axis=0)
            * np.linalg.norm(reads.reshape(reads.shape[0], -1), axis=1))


def most_important(importance: np.ndarray, width: int) -> np.ndarray:
    """The indices of the `width` largest entries, ascending (ties: the lower index)."""
    return np.sort(np.argsort(-importance, kind="stable")[:width])


def slim_params(network: str, params: dict[str, Any], width: int) -> dict[str, Any]:
    """The -O network's parameters cut to a branch of `width` channels (see the module docstring)."""
    if network not in SUPPORTED:
        raise ValueError(f"cutting a branch out of the -O network is implemented for {', '.join(SUPPORTED)}, "
                         f"not {network}")
    p = {name: {k: np.asarray(v) for k, v in layer.items()} for name, layer in params.items()}
    d = p["head_conv"]["bias"].shape[0]
    if not 0 < width <= d:
        raise ValueError(f"a branch cut out of the -O network must be 1 to {d} channels wide, got {width}")
    # The kernels are HWIO; the tail deconv's kernel is (K, K, C_in, C_out) too.
    head = most_important(channel_importance(p["head_conv"]["kernel"], p["shrink_conv"]["kernel"][0, 0]), width)
    tail_reads = np.moveaxis(p["tail_deconv"]["kernel"], 2, 0)
    expand = most_important(channel_importance(p["expand_conv"]["kernel"], tail_reads), width)
    out = {name: dict(layer) for name, layer in p.items()}
    out["head_conv"] = {"kernel": p["head_conv"]["kernel"][..., head], "bias": p["head_conv"]["bias"][head]}
    out["shrink_conv"] = {**p["shrink_conv"], "kernel": p["shrink_conv"]["kernel"][:, :, head, :]}
    out["expand_conv"] = {"kernel": p["expand_conv"]["kernel"][..., expand], "bias": p["expand_conv"]["bias"][expand]}
    out["tail_deconv"] = {**p["tail_deconv"], "kernel": p["tail_deconv"]["kernel"][:, :, expand, :]}
    return out
