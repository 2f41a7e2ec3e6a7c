"""The one place where Flax variable paths meet the original PyTorch state_dict keys.

Every entry says: torch key, Flax path (collection first), index into a `nn.scan`-stacked array (or ()),
and the layout rule that turns the torch tensor into the Flax array (PyTorch convolutions are (O, I, kh, kw),
Flax's are (kh, kw, I, O); a PReLU's single slope is a (1,) tensor in PyTorch and a scalar in Flax).
"""

from __future__ import annotations

import dataclasses
from typing import Iterator

import numpy as np
from flax.traverse_util import flatten_dict

from classsr_jax.errors import ConvertError
from classsr_jax.models.backbones import NETWORK_DEFAULTS
from classsr_jax.models.common import upsample_stages
from classsr_jax.models.spec import ModelSpec

# Layout rules, torch → Flax.
CONV = "conv"  # (O, I/g, kh, kw) → (kh, kw, I/g, O)
DECONV = "deconv"  # ConvTranspose2d (I, O, kh, kw) → (kh, kw, I, O)
DENSE = "dense"  # (out, in) → (in, out)
SCALAR = "scalar"  # (1,) → ()
SAME = "same"  # unchanged
COUNTER = "counter"  # BatchNorm's num_batches_tracked: in torch only; Flax has no counterpart


@dataclasses.dataclass(frozen=True)
class KeyMapping:
    torch_key: str
    flax_path: tuple[str, ...]
    index: tuple[int, ...]
    rule: str


def torch_to_flax_array(value: np.ndarray, rule: str) -> np.ndarray:
    if rule == CONV:
        return value.transpose(2, 3, 1, 0)
    if rule == DECONV:
        return value.transpose(2, 3, 0, 1)
    if rule == DENSE:
        return value.T
    if rule == SCALAR:
        return value.reshape(())
    return value


def torch_shape(flax_shape: tuple[int, ...], rule: str) -> tuple[int, ...]:
    """The PyTorch shape of a tensor whose Flax array has `flax_shape` (the inverse of `torch_to_flax_array`)."""
    if rule == CONV:
        kh, kw, cin, cout = flax_shape
        return (cout, cin, kh, kw)
    if rule == DECONV:
        kh, kw, cin, cout = flax_shape
        return (cin, cout, kh, kw)
    if rule == DENSE:
        return tuple(reversed(flax_shape))
    if rule == SCALAR:
        return (1,)
    return tuple(flax_shape)


def flax_to_torch_array(value: np.ndarray, rule: str) -> np.ndarray:
    if rule == CONV:
        return value.transpose(3, 2, 0, 1)
    if rule == DECONV:
        return value.transpose(2, 3, 0, 1)
    if rule == DENSE:
        return value.T
    if rule == SCALAR:
        return value.reshape((1,))
    return value


def _conv(torch_name, flax_path, index=(), bias=True) -> Iterator[KeyMapping]:
    yield KeyMapping(f"{torch_name}.weight", ("params", *flax_path, "kernel"), index, CONV)
    if bias:
        yield KeyMapping(f"{torch_name}.bias", ("params", *flax_path, "bias"), index, SAME)


def _batchnorm(torch_name, flax_path) -> Iterator[KeyMapping]:
    yield KeyMapping(f"{torch_name}.weight", ("params", *flax_path, "scale"), (), SAME)
    yield KeyMapping(f"{torch_name}.bias", ("params", *flax_path, "bias"), (), SAME)
    yield KeyMapping(f"{torch_name}.running_mean", ("batch_stats", *flax_path, "mean"), (), SAME)
    yield KeyMapping(f"{torch_name}.running_var", ("batch_stats", *flax_path, "var"), (), SAME)
    yield KeyMapping(f"{torch_name}.num_batches_tracked", (), (), COUNTER)


def _prelu(torch_name, flax_name) -> Iterator[KeyMapping]:
    yield KeyMapping(f"{torch_name}.weight", ("params", flax_name, "negative_slope"), (), SCALAR)


def _mean_shifts() -> Iterator[KeyMapping]:
    yield from _conv("sub_mean", ("sub_mean", "conv"))
    yield from _conv("add_mean", ("add_mean", "conv"))


def classifier_keys() -> Iterator[KeyMapping]:
    # The original registers lastOut before CondNet.
    yield KeyMapping("lastOut.weight", ("params", "fc", "kernel"), (), DENSE)
    yield KeyMapping("lastOut.bias", ("params", "fc", "bias"), (), SAME)
    for i in range(5):
        yield from _conv(f"CondNet.{2 * i}", (f"conv{i}",))


def fsrcnn_keys(m: int = 4, **_) -> Iterator[KeyMapping]:
    yield from _conv("head_conv.0", ("head_conv",))
    yield from _prelu("head_conv.1", "head_prelu")
    yield from _conv("body_conv.0.0", ("shrink_conv",))
    yield from _prelu("body_conv.0.1", "shrink_prelu")
    for i in range(m):
        yield from _conv(f"body_conv.{i + 1}", (f"map_conv_{i}",))
    yield from _prelu(f"body_conv.{m + 1}", "map_prelu")
    yield from _conv(f"body_conv.{m + 2}.0", ("expand_conv",))
    yield from _prelu(f"body_conv.{m + 2}.1", "expand_prelu")
    yield KeyMapping("tail_conv.weight", ("params", "tail_deconv", "kernel"), (), DECONV)
    yield KeyMapping("tail_conv.bias", ("params", "tail_deconv", "bias"), (), SAME)


def _carn_fusions(torch_prefix: str, flax_prefix: tuple[str, ...]) -> Iterator[KeyMapping]:
    for i in range(3):
        yield from _conv(f"{torch_prefix}c{i + 1}.0", (*flax_prefix, f"fusion_{i}", "conv"), bias=False)
        yield from _batchnorm(f"{torch_prefix}c{i + 1}.1", (*flax_prefix, f"fusion_{i}", "bn"))


def carn_keys(scale: int = 4, **_) -> Iterator[KeyMapping]:
    yield from _mean_shifts()
    yield from _conv("entry", ("entry",))
    for b in range(3):
        for torch_i, flax_i in ((0, 0), (2, 1), (4, 2)):
            yield from _conv(f"b{b + 1}.b1.body.{torch_i}", (f"block_{b}", "erb", f"conv{flax_i}"))
        yield from _carn_fusions(f"b{b + 1}.", (f"block_{b}",))
    yield from _carn_fusions("", ())
    # Each upsampling stage is [conv, ReLU, PixelShuffle]: torch indices 0, 3, …
    for i, _r in enumerate(upsample_stages(scale)):
        yield from _conv(f"upsample.up.body.{3 * i}", (f"upsample_{i}",))
    yield from _conv("exit", ("exit",))


def srresnet_keys(scale: int = 4, nb: int = 16, scan: bool = True, **_) -> Iterator[KeyMapping]:
    yield from _conv("conv_first", ("conv_first",))
    for b in range(nb):
        path, index = (("trunk",), (b,)) if scan else ((f"trunk_{b}",), ())
        yield from _conv(f"recon_trunk.{b}.conv1", (*path, "conv1"), index)
        yield from _conv(f"recon_trunk.{b}.conv2", (*path, "conv2"), index)
    for i, _r in enumerate(upsample_stages(scale)):
        yield from _conv(f"upconv{i + 1}", (f"upconv{i + 1}",))
    yield from _conv("HRconv", ("hr_conv",))
    yield from _conv("conv_last", ("conv_last",))


def rcan_keys(scale: int = 4, n_resgroups: int = 10, n_resblocks: int = 20, scan: bool = True, **_):
    yield from _mean_shifts()
    yield from _conv("head.0", ("head",))
    for g in range(n_resgroups):
        group_path, group_index = (("groups",), (g,)) if scan else ((f"groups_{g}",), ())
        for b in range(n_resblocks):
            if scan:
                path, index = (*group_path, "blocks"), (*group_index, b)
            else:
                path, index = (*group_path, f"blocks_{b}"), ()
            rcab = f"body.{g}.body.{b}.body"
            yield from _conv(f"{rcab}.0", (*path, "conv1"), index)
            yield from _conv(f"{rcab}.2", (*path, "conv2"), index)
            yield from _conv(f"{rcab}.3.conv_du.0", (*path, "attention", "squeeze"), index)
            yield from _conv(f"{rcab}.3.conv_du.2", (*path, "attention", "excite"), index)
        yield from _conv(f"body.{g}.body.{n_resblocks}", (*group_path, "conv"), group_index)
    yield from _conv(f"body.{n_resgroups}", ("body_conv",))
    # The Upsampler is [conv, PixelShuffle] per stage: torch indices tail.0.0, tail.0.2, …
    for i, _r in enumerate(upsample_stages(scale)):
        yield from _conv(f"tail.0.{2 * i}", (f"upsample_{i}",))
    yield from _conv("tail.1", ("tail",))


_BRANCH_KEYS = {"fsrcnn": fsrcnn_keys, "carn": carn_keys, "srresnet": srresnet_keys, "rcan": rcan_keys}


def branch_keys(network: str, scale: int = 4, scan: bool = True, **extra) -> list[KeyMapping]:
    fields = {**NETWORK_DEFAULTS[network], **extra}
    return list(_BRANCH_KEYS[network](scale=scale, scan=scan, **fields))


def _prefixed(mappings, torch_prefix: str, flax_module: str) -> Iterator[KeyMapping]:
    for m in mappings:
        flax_path = (m.flax_path[0], flax_module, *m.flax_path[1:]) if m.flax_path else ()
        yield KeyMapping(torch_prefix + m.torch_key, flax_path, m.index, m.rule)


def model_keys(spec: ModelSpec, scan: bool = True) -> list[KeyMapping]:
    """All keys of a model: a bare network, or a composite `classifier.`/`net1.`/… ClassSR state_dict."""
    if spec.kind == "network":
        return branch_keys(spec.network, spec.scale, scan, **spec.extra)
    keys = list(_prefixed(classifier_keys(), "classifier.", "classifier"))
    for k in range(spec.num_branches):
        keys += _prefixed(branch_keys(spec.network, spec.scale, scan, **spec.extra), f"net{k + 1}.", f"net{k + 1}")
    return keys


def _nested_set(tree: dict, path: tuple[str, ...], value) -> None:
    for name in path[:-1]:
        tree = tree.setdefault(name, {})
    tree[path[-1]] = value


def _listed(items: list[str], shown: int = 6) -> str:
    return ", ".join(items[:shown]) + (f" … ({len(items)} in all)" if len(items) > shown else "")


def state_dict_to_variables(
    state_dict: dict[str, np.ndarray], spec: ModelSpec, abstract: dict, source: str = "state_dict"
) -> dict:
    """Maps a PyTorch state_dict onto Flax variables with strict key matching.

    `abstract` holds the expected Flax shapes (e.g. `spec.abstract()`). Every tensor is
    checked against its PyTorch shape before any transpose, so a wrong rank is reported like a wrong size; every
    missing, unexpected or mis-shaped key is reported together in one ConvertError.
    """
    state_dict = {k[len("module.") :] if k.startswith("module.") else k: v for k, v in state_dict.items()}
    mappings = model_keys(spec)
    known = {m.torch_key for m in mappings}
    expected = flatten_dict(dict(abstract))
    arrays = {path: np.zeros(s.shape, np.float32) for path, s in expected.items()}
    missing, wrong = [], []
    for m in mappings:
        if m.rule == COUNTER:  # num_batches_tracked carries nothing we use, present or not
            continue
        if m.torch_key not in state_dict:
            missing.append(m.torch_key)
            continue
        got = tuple(np.shape(state_dict[m.torch_key]))
        target = arrays[m.flax_path]
        wanted = torch_shape(target.shape[len(m.index) :], m.rule)
        if got != wanted:
            wrong.append(f"{m.torch_key} {got} (expected {wanted})")
            continue
        value = torch_to_flax_array(np.asarray(state_dict[m.torch_key], np.float32), m.rule)
        if m.index:
            target[m.index] = value
        else:
            arrays[m.flax_path] = value
    unexpected = sorted(set(state_dict) - known)
    if missing or unexpected or wrong:
        parts = [
            f"{len(items)} {label} key{'s' if len(items) > 1 else ''}: {_listed(items)}"
            for label, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong))
            if items
        ]
        raise ConvertError(f"{source} does not match {spec.describe()}: {'; '.join(parts)}")
    variables: dict = {}
    for path, value in arrays.items():
        _nested_set(variables, path, value)
    return variables


def variables_to_state_dict(variables: dict, spec: ModelSpec) -> dict[str, np.ndarray]:
    """The inverse mapping: Flax variables → a PyTorch-layout state_dict (numpy arrays), in the original's key order."""
    flat = flatten_dict(dict(variables))
    out = {}
    for m in model_keys(spec):
        if m.rule == COUNTER:
            out[m.torch_key] = np.array(0, np.int64)
            continue
        value = np.asarray(flat[m.flax_path])
        out[m.torch_key] = np.ascontiguousarray(flax_to_torch_array(value[m.index] if m.index else value, m.rule))
    return out
