"""Official PyTorch checkpoints into Flax variables: reading a `.pth` safely (`torch.load(weights_only=True)`,
never unpickling anything else), reading widths, depth, scale and value range off the tensor shapes, and
matching every key strictly through the one name map (`torch_names`). The `classsr-convert` command and the
notebooks call it; torch is imported only when a file is read.
"""

from __future__ import annotations

import pickle
import re

import numpy as np

from classsr_jax.errors import ConvertError, one_line, reason
from classsr_jax.models.spec import ModelSpec
from classsr_jax.models.torch_names import state_dict_to_variables


def refused_pickle(error: Exception) -> str:
    """Why torch's safe unpickler refused a file, in one line, without torch's advice to retry unsafely."""
    text = str(error)
    named = re.search(r"GLOBAL (\S+)", text)
    if named:
        return f"it is not a plain state_dict of tensors (it asks for the Python object {named.group(1)}); " \
            "such files are never unpickled, as that could run code"
    detail = re.search(r"WeightsUnpickler error:\s*(.+?)\s*(?:\n\n|$)", text, re.DOTALL)
    cause = f" ({one_line(detail.group(1))})" if detail else ""
    return f"it is not a plain state_dict of tensors{cause}"


def read_state_dict(path: str) -> tuple[dict[str, np.ndarray], list[str]]:
    """Reads a .pth state_dict safely (weights_only=True) into numpy arrays, every floating tensor as float32.

    Returns the arrays and the names of the floating dtypes that were cast (e.g. ["bfloat16"]); numpy has no
    bfloat16, so the cast happens in torch. Integer tensors (BatchNorm's num_batches_tracked) stay as they are.
    """
    import torch  # only the converter needs torch, a heavy optional dependency

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as e:
        raise ConvertError(f"input {path} does not exist") from e
    except pickle.UnpicklingError as e:  # refused by the safe unpickler: say why, never advise weights_only=False
        raise ConvertError(f"cannot read {path} as a PyTorch checkpoint: {refused_pickle(e)}") from e
    except Exception as e:  # torch raises many types for a file that is not a checkpoint
        raise ConvertError(f"cannot read {path} as a PyTorch checkpoint: {reason(e)}") from e
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(k, str) and torch.is_tensor(v) for k, v in obj.items()):
        raise ConvertError(f"{path} does not hold a state_dict (a dict of tensors)")
    arrays, cast = {}, set()
    for key, tensor in obj.items():
        if tensor.is_complex():
            raise ConvertError(f"{path}: {key} holds complex numbers ({tensor.dtype}), which no model has")
        if tensor.is_floating_point() and tensor.dtype != torch.float32:
            cast.add(str(tensor.dtype).removeprefix("torch."))
            tensor = tensor.float()
        try:
            arrays[key] = tensor.detach().cpu().numpy()
        except (RuntimeError, TypeError) as e:  # sparse, quantised or meta tensors have no numpy form
            raise ConvertError(f"{path}: cannot read tensor {key}: {reason(e)}") from e
    return arrays, sorted(cast)


def load_torch_state_dict(path: str) -> dict[str, np.ndarray]:
    """The arrays of `read_state_dict`, for callers that need not say what was cast."""
    return read_state_dict(path)[0]


def infer_network_spec(
    network: str, sd: dict[str, np.ndarray], path: str, scale: int | None, prefix: str = ""
) -> ModelSpec:
    """Width, depth, scale and value range of one network from its tensor shapes (`prefix` names its keys in
    messages, e.g. "net2." for a branch of a composite file)."""
    sd = {k[len("module.") :] if k.startswith("module.") else k: v for k, v in sd.items()}
    extra: dict = {}

    def dim(key: str, axis: int = 0) -> int:
        # Only the sizes read here must be sound; every other shape is checked, all at once, by the key match.
        if key not in sd:
            raise ConvertError(f"{path} lacks key {prefix}{key}: is it a {network} checkpoint?")
        shape = tuple(np.shape(sd[key]))
        if len(shape) <= axis or shape[axis] < 1:
            raise ConvertError(f"{path}: {prefix}{key} has shape {shape}, which is no {network} layer")
        return int(shape[axis])

    def upsampler_scale(first_key, second_key, width):
        if second_key in sd:
            return 4
        return 3 if dim(first_key) == 9 * width else 2

    def divided(width: int, key: str, axis: int) -> int:
        part = dim(key, axis)
        if part > width or width % part:
            raise ConvertError(
                f"{path}: {prefix}{key} has shape {tuple(np.shape(sd[key]))}, which does not divide width {width}"
            )
        return width // part

    if network == "fsrcnn":
        width = dim("head_conv.0.weight")
        shrunk = dim("body_conv.0.0.weight")
        # body_conv holds the shrink block, m mapping convs, one PReLU and the expand block: indices 0 … m + 2.
        last = max(int(m.group(1)) for k in sd if (m := re.match(r"body_conv\.(\d+)\.", k)))
        extra = {"s": shrunk, "m": last - 2}
        inferred = scale or 4  # a 9x9 deconv looks the same at every scale
    elif network == "carn":
        width = dim("entry.weight")
        extra = {"group": divided(width, "b1.b1.body.0.weight", 1)}
        inferred = upsampler_scale("upsample.up.body.0.weight", "upsample.up.body.3.weight", width)
    elif network == "srresnet":
        width = dim("conv_first.weight")
        extra = {"nb": len({k for k in sd if re.fullmatch(r"recon_trunk\.\d+\.conv1\.weight", k)})}
        inferred = upsampler_scale("upconv1.weight", "upconv2.weight", width)
    else:
        width = dim("head.0.weight")
        groups = {int(m.group(1)) for k in sd if (m := re.fullmatch(r"body\.(\d+)\.body\.0\.body\.0\.weight", k))}
        blocks = {int(m.group(1)) for k in sd if (m := re.fullmatch(r"body\.0\.body\.(\d+)\.body\.0\.weight", k))}
        squeezed_key = "body.0.body.0.body.3.conv_du.0.weight"
        # width // reduction = squeezed width; several reductions fit (36 // 16 = 36 // 18): prefer the original 16.
        reduction = 16 if width // 16 == dim(squeezed_key) else divided(width, squeezed_key, 0)
        # The official RCAN works on [0, 255]: its MeanShift bias is ±255·mean, not ±mean.
        rgb_range = 255.0 if float(np.abs(sd.get("add_mean.bias", np.array([114.0]))).max()) > 2.0 else 1.0
        extra = {"n_resgroups": len(groups), "n_resblocks": len(blocks), "reduction": reduction, "rgb_range": rgb_range}
        inferred = upsampler_scale("tail.0.0.weight", "tail.0.2.weight", width)
    if scale is not None and scale != inferred:
        raise ConvertError(f"{path} is a x{inferred} {network}, not x{scale}")
    return ModelSpec("network", network, (width,), inferred, extra)


def split_composite(sd: dict[str, np.ndarray]) -> tuple[dict, list[dict]]:
    """`classifier.*` and `net1.*`, `net2.*`, … of a composite ClassSR state_dict."""
    sd = {k[len("module.") :] if k.startswith("module.") else k: v for k, v in sd.items()}
    classifier = {k[len("classifier.") :]: v for k, v in sd.items() if k.startswith("classifier.")}
    indices = sorted({int(m.group(1)) for k in sd if (m := re.match(r"net(\d+)\.", k))})
    branches = [{k[len(f"net{i}.") :]: v for k, v in sd.items() if k.startswith(f"net{i}.")} for i in indices]
    return classifier, branches


def convert_state_dict(
    network: str,
    sd: dict[str, np.ndarray],
    path: str = "checkpoint",
    branch: int | None = None,
    scale: int | None = None,
) -> tuple[ModelSpec, dict]:
    """Returns (spec, Flax variables) for a composite or single-network state_dict; ConvertError names every
    missing, unexpected or mis-shaped key at once."""
    is_composite = any(k.startswith(("classifier.", "net1.", "module.classifier.", "module.net1.")) for k in sd)
    if is_composite:
        _, branches = split_composite(sd)
        if not branches:
            raise ConvertError(f"{path} has classifier keys but no net1., net2., … branches")
        specs = [infer_network_spec(network, b, path, scale, f"net{i + 1}.") for i, b in enumerate(branches)]
        if branch is not None:
            if not 1 <= branch <= len(branches):
                raise ConvertError(f"--branch {branch} is out of range: {path} has {len(branches)} branches")
            spec = specs[branch - 1]
            sd = branches[branch - 1]
        else:
            first = specs[0]
            spec = ModelSpec("classsr", network, tuple(s.widths[0] for s in specs), first.scale, first.extra)
    else:
        if branch is not None:
            raise ConvertError(f"--branch needs a composite checkpoint, and {path} is a single network")
        spec = infer_network_spec(network, sd, path, scale)
    return spec, state_dict_to_variables(sd, spec, spec.abstract(), source=path)
