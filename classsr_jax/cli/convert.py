"""Converts official ClassSR / branch PyTorch checkpoints into classsr_jax model checkpoints.

  python -m classsr_jax.convert --model rcan --input ClassSR_RCAN.pth --output ckpt/classsr_rcan
  python -m classsr_jax.convert --model rcan --input RCAN_branch3.pth --output ckpt/rcan_o
  python -m classsr_jax.convert --model rcan --input ClassSR_RCAN.pth --branch 3 --output ckpt/rcan_o

A composite file (keys `classifier.`, `net1.`, …) becomes a ClassSR model; a branch file a single network.
`--branch K` takes branch K of a composite as a single network (K = 3 is the -O network).
Widths, depth, scale and RCAN's value range are read off the tensor shapes.
"""

from __future__ import annotations

import os
import pickle
import re
import sys

import numpy as np
from absl import flags

from classsr_jax import cli
from classsr_jax.checkpointing import save_model
from classsr_jax.errors import ConvertError, one_line, reason
from classsr_jax.io.outputs import ensure_writable_folder
from classsr_jax.models.backbones import NETWORKS, SCALES
from classsr_jax.models.spec import ModelSpec
from classsr_jax.models.torch_names import state_dict_to_variables

FLAGS = flags.FlagValues()
flags.DEFINE_enum("model", None, list(NETWORKS), "Backbone of the checkpoint.", flag_values=FLAGS)
flags.DEFINE_string("input", None, "PyTorch .pth file (a state_dict).", short_name="i", flag_values=FLAGS)
flags.DEFINE_string(
    "output", None, "Output checkpoint directory (must not exist unless --overwrite).", short_name="o",
    flag_values=FLAGS
)
flags.DEFINE_integer(
    "branch", None, "Take only this branch (1-based) of a composite checkpoint.", lower_bound=1, flag_values=FLAGS
)
flags.DEFINE_integer("scale", None, "Scale, where the shapes cannot tell it (FSRCNN); default 4.", flag_values=FLAGS)
flags.DEFINE_bool("overwrite", False, "Replace an existing output checkpoint.", flag_values=FLAGS)
flags.register_validator(
    "scale",
    lambda s: s is None or s in SCALES,
    f"--scale must be {', '.join(map(str, SCALES[:-1]))} or {SCALES[-1]}",
    flag_values=FLAGS,
)


HELP = cli.CommandHelp(
    usage="classsr-convert --model NETWORK -i FILE.pth -o CHECKPOINT [flags]",
    summary="Convert an official ClassSR or branch PyTorch checkpoint into a classsr_jax checkpoint.",
    examples=("classsr-convert --model rcan -i ClassSR_RCAN.pth -o ckpt/classsr_rcan",
              "classsr-convert --model rcan -i ClassSR_RCAN.pth --branch 3 -o ckpt/rcan_o"),
    groups=(("Input and output", ("model", "input", "output", "overwrite")), ("Network", ("branch", "scale"))),
    required=("model", "input", "output"),
)


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


def _inside(path: str, folder: str) -> bool:
    return path.startswith(folder.rstrip(os.sep) + os.sep)


def check_paths(input_path: str, output: str, overwrite: bool) -> None:
    """One-line errors, before any work, for an input that is not there, an output that would replace it, and an
    output folder that cannot be created or written (its parent is created here)."""
    if not os.path.exists(input_path):
        raise ConvertError(f"input {input_path} does not exist")
    # Both spellings: a symlink resolves elsewhere, but deleting a folder deletes the link inside it too.
    sources = {os.path.abspath(input_path), os.path.realpath(input_path)}
    targets = {os.path.abspath(output), os.path.realpath(output)}
    if sources & targets or (os.path.exists(output) and os.path.samefile(input_path, output)):
        raise ConvertError(f"--output {output} is the input {input_path}; choose another output")
    if any(_inside(t, s) for s in sources for t in targets):
        raise ConvertError(f"--output {output} lies inside the input {input_path}; choose another output")
    if any(_inside(s, t) for s in sources for t in targets):
        raise ConvertError(f"--output {output} holds the input {input_path}; choose another output")
    if os.path.lexists(output):
        if not overwrite:
            raise ConvertError(f"--output {output} exists already; pass --overwrite to replace it")
        if not (os.path.isdir(os.path.join(output, "model")) and os.path.isdir(os.path.join(output, "variables"))):
            raise ConvertError(
                f"--output {output} exists and is not a classsr_jax checkpoint; --overwrite replaces only a checkpoint"
            )
    ensure_writable_folder(os.path.dirname(os.path.abspath(output)))  # one line naming the folder, e.g. read-only


def _joined(names: list[str]) -> str:
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def run_command(flag_values: flags.FlagValues) -> int:
    f = flag_values
    cli.require_flags(f, "model", "input", "output")
    check_paths(f.input, f.output, f.overwrite)
    sd, cast = read_state_dict(f.input)
    spec, variables = convert_state_dict(f.model, sd, f.input, f.branch, f.scale)
    metadata = {"converted_from": f.input, **({"cast_to_float32": cast} if cast else {})}
    out = save_model(f.output, spec, variables, metadata=metadata, overwrite=f.overwrite)
    note = f" ({_joined(cast)} tensors cast to float32)" if cast else ""
    print(f"converted {f.input} → {out}: {spec.describe()}{note}")
    return cli.OK


def main(argv: list[str] | None = None) -> int:
    return cli.run(run_command, FLAGS, argv, program="classsr-convert", command_help=HELP)


if __name__ == "__main__":
    sys.exit(main())
