"""Compute a narrow branch at a wider width with zero-padded parameters: the same numbers, a faster shape.

XLA's CPU convolutions run widths such as 50 and 52 channels at a lower rate per FLOP than 64: SRResNet's
52-wide branch took longer than its 64-wide one (benchmarks/JOURNAL.md, "Routed inference"). A branch of width w can
be computed exactly by the width-W network whose extra channels are zero everywhere: zero weights into and
out of every extra channel and zero biases, so every extra activation stays 0 (ReLU/PReLU(0) = 0; RCAN's
channel attention multiplies a zero channel) and never reaches a real one. Parameter trees are widened
leaf by leaf from their shapes:

- an axis of size w becomes W, real channels first;
- an axis of size m·w that concatenates m feature maps (CARN's cascades, a 1×1 conv over [x, y]) keeps the
  segments apart: segment j, channel c → j·W + c;
- the output axis of a pixel-shuffle conv (`upconv*`, `upsample*`) holds channel c at phases c·r² … c·r² + r² − 1,
  so channel c moves to c·r² … in the wider layout;
- grouped convs (CARN-M, g groups) keep their groups: channel c of group g → g·(W/g) + c mod (w/g), and the
  per-group input axis (w/g) is padded at the end;
- anything else that differs (RCAN's squeeze width w//16) is padded at the end.

Exactness is tested for every network (`tests/test_widen.py`).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import numpy as np

from classsr_jax.models.backbones import NETWORK_DEFAULTS
from classsr_jax.models.spec import ModelSpec

# Convs whose output channels are c·r² + phase (the pixel-shuffle order).
_SHUFFLE_LAYERS = ("upconv", "upsample")


def _channel_map(width: int, wide: int, groups: int) -> np.ndarray:
    """Where channel c of the narrow layout lives in the wide one (groups stay groups)."""
    per, wide_per = width // groups, wide // groups
    c = np.arange(width)
    return (c // per) * wide_per + c % per


def _pad_axis(
    x: np.ndarray, axis: int, size: int, width: int, wide: int, cmap: np.ndarray, shuffle: bool
) -> np.ndarray:
    n = x.shape[axis]
    out_shape = list(x.shape)
    out_shape[axis] = size
    out = np.zeros(out_shape, x.dtype)
    if n % width == 0 and size == (n // width) * wide:
        m = n // width
        if shuffle:  # index c·m + phase
            dest = (cmap[:, None] * m + np.arange(m)[None, :]).reshape(-1)
        else:  # concatenated segments: segment·width + c
            dest = (np.arange(m)[:, None] * wide + cmap[None, :]).reshape(-1)
    else:  # a per-group local index or a reduced width: pad at the end
        dest = np.arange(n)
    index = [slice(None)] * x.ndim
    index[axis] = dest
    out[tuple(index)] = x
    return out


@functools.lru_cache(maxsize=None)
def _variable_shapes(network: str, width: int, scale: int, extra: tuple) -> dict:
    """{path: shape} of a network's variables (training validation widens often; `abstract` keeps them on disk)."""
    shapes = ModelSpec("network", network, (width,), scale, dict(extra)).abstract(tile=8)
    return {path: leaf.shape for path, leaf in jax.tree_util.tree_flatten_with_path(shapes)[0]}


def widen_network_variables(network: str, width: int, wide: int, scale: int, variables, extra: dict | None = None):
    """The variables of one `network` of `width` channels, laid out for the same network at `wide` channels."""
    extra = dict(extra or {})
    groups = int({**NETWORK_DEFAULTS[network], **extra}.get("group", 1))
    if width % groups or wide % groups:
        raise ValueError(f"{network} widths {width} and {wide} must both be multiples of its {groups} groups")
    targets = _variable_shapes(network, wide, scale, tuple(sorted(extra.items())))
    cmap = _channel_map(width, wide, groups)
    leaves, treedef = jax.tree_util.tree_flatten_with_path(variables)
    if set(targets) != {path for path, _ in leaves}:
        raise ValueError(f"the variables are not those of a {network} network")
    out = []
    for path, leaf in leaves:
        x = np.asarray(leaf)
        names = "/".join(str(getattr(p, "key", p)) for p in path)
        shuffle = any(s in names for s in _SHUFFLE_LAYERS) and names.endswith(("kernel", "bias"))
        for axis, size in enumerate(targets[path]):
            if x.shape[axis] != size:
                x = _pad_axis(x, axis, size, width, wide, cmap, shuffle and axis == x.ndim - 1)
        out.append(x)
    return jax.tree_util.tree_unflatten(treedef, out)


def wider_spec(spec: ModelSpec, widths: tuple[int, ...]) -> ModelSpec:
    """`spec` with branch k at widths[k] ≥ spec.widths[k]."""
    if len(widths) != len(spec.widths) or any(wide < w for w, wide in zip(spec.widths, widths)):
        raise ValueError(f"cannot compute branches of widths {list(spec.widths)} at widths {list(widths)}")
    return ModelSpec(spec.kind, spec.network, tuple(widths), spec.scale, dict(spec.extra))


def widen(spec: ModelSpec, variables, widths: tuple[int, ...]) -> tuple[ModelSpec, Any]:
    """(spec, variables) with branch k computed at widths[k] ≥ spec.widths[k]; the classifier is unchanged."""
    wide_spec = wider_spec(spec, widths)
    if tuple(widths) == tuple(spec.widths):
        return wide_spec, variables

    def one(branch_vars, width, wide):
        if width == wide:
            return branch_vars
        return widen_network_variables(spec.network, width, wide, spec.scale, branch_vars, spec.extra)

    if spec.kind == "network":
        return wide_spec, one(variables, spec.widths[0], widths[0])
    out = {collection: dict(tree) for collection, tree in variables.items()}
    for k, (width, wide) in enumerate(zip(spec.widths, widths)):
        name = f"net{k + 1}"
        branch = {c: tree[name] for c, tree in variables.items() if name in tree}
        for c, tree in one(branch, width, wide).items():
            out[c][name] = tree
    return wide_spec, out


def cpu_compute_widths(spec: ModelSpec, target: int = 64) -> tuple[int, ...]:
    """Widths between 48 and `target` are computed at `target` on a CPU (FSRCNN is left alone: not measured faster)."""
    if spec.network == "fsrcnn":
        return tuple(spec.widths)
    return tuple(target if 48 < w < target else w for w in spec.widths)
