"""Converts official ClassSR / branch PyTorch checkpoints into classsr_jax model checkpoints.

  python -m classsr_jax.convert --model rcan --input ClassSR_RCAN.pth --output ckpt/classsr_rcan
  python -m classsr_jax.convert --model rcan --input RCAN_branch3.pth --output ckpt/rcan_o
  python -m classsr_jax.convert --model rcan --input ClassSR_RCAN.pth --branch 3 --output ckpt/rcan_o

A composite file (keys `classifier.`, `net1.`, …) becomes a ClassSR model; a branch file a single network.
`--branch K` takes branch K of a composite as a single network (K = 3 is the -O network).
Widths, depth, scale and RCAN's value range are read off the tensor shapes.
"""

from __future__ import annotations

import re
import sys

import numpy as np
from absl import app, flags

from classsr_jax.errors import ConvertError
from classsr_jax.models.registry import NETWORKS, ModelSpec

FLAGS = flags.FLAGS
flags.DEFINE_enum("model", None, list(NETWORKS), "Backbone of the checkpoint.")
flags.DEFINE_string("input", None, "PyTorch .pth file (a state_dict).")
flags.DEFINE_string("output", None, "Output checkpoint directory (must not exist unless --overwrite).")
flags.DEFINE_integer("branch", None, "Take only this branch (1-based) of a composite checkpoint.")
flags.DEFINE_integer("scale", None, "Scale, where the shapes cannot tell it (FSRCNN); default 4.")
flags.DEFINE_bool("overwrite", False, "Replace an existing output directory.")


def load_torch_state_dict(path: str) -> dict[str, np.ndarray]:
    """Reads a .pth state_dict safely (weights_only=True) into numpy arrays."""
    import torch  # only the converter needs torch

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as e:
        raise ConvertError(f"input {path} does not exist") from e
    except Exception as e:
        raise ConvertError(f"cannot read {path} as a PyTorch checkpoint: {str(e).splitlines()[0]}") from e
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(hasattr(v, "shape") for v in obj.values()):
        raise ConvertError(f"{path} does not hold a state_dict (a dict of tensors)")
    return {k: v.detach().cpu().numpy() for k, v in obj.items()}


def _shape(sd, key, path):
    if key not in sd:
        raise ConvertError(f"{path} lacks key {key}: is it a {{network}} checkpoint?")
    return sd[key].shape


def infer_network_spec(network: str, sd: dict[str, np.ndarray], path: str, scale: int | None) -> ModelSpec:
    """Width, depth, scale and value range of one network from its tensor shapes."""
    sd = {k[len("module.") :] if k.startswith("module.") else k: v for k, v in sd.items()}
    extra: dict = {}

    def shape(key):
        if key not in sd:
            raise ConvertError(f"{path} lacks key {key}: is it a {network} checkpoint?")
        return sd[key].shape

    def upsampler_scale(first_key, second_key, width):
        if second_key in sd:
            return 4
        return 3 if shape(first_key)[0] == 9 * width else 2

    if network == "fsrcnn":
        width = shape("head_conv.0.weight")[0]
        mapping = [k for k in sd if re.fullmatch(r"body_conv\.\d+\.weight", k) and sd[k].ndim == 4]
        extra = {"s": shape("body_conv.0.0.weight")[0], "m": len(mapping)}
        inferred = scale or 4  # a 9x9 deconv looks the same at every scale
    elif network == "carn":
        width = shape("entry.weight")[0]
        extra = {"group": width // shape("b1.b1.body.0.weight")[1]}
        inferred = upsampler_scale("upsample.up.body.0.weight", "upsample.up.body.3.weight", width)
    elif network == "srresnet":
        width = shape("conv_first.weight")[0]
        extra = {"nb": len([k for k in sd if re.fullmatch(r"recon_trunk\.\d+\.conv1\.weight", k)])}
        inferred = upsampler_scale("upconv1.weight", "upconv2.weight", width)
    else:
        width = shape("head.0.weight")[0]
        groups = {int(m.group(1)) for k in sd if (m := re.fullmatch(r"body\.(\d+)\.body\.0\.body\.0\.weight", k))}
        blocks = {int(m.group(1)) for k in sd if (m := re.fullmatch(r"body\.0\.body\.(\d+)\.body\.0\.weight", k))}
        squeezed = shape("body.0.body.0.body.3.conv_du.0.weight")[0]
        # width // reduction = squeezed width; several reductions fit (36 // 16 = 36 // 18): prefer the original 16.
        reduction = 16 if width // 16 == squeezed else width // squeezed
        # The official RCAN works on [0, 255]: its MeanShift bias is ±255·mean, not ±mean.
        rgb_range = 255.0 if float(np.abs(sd.get("add_mean.bias", np.array([114.0]))).max()) > 2.0 else 1.0
        extra = {"n_resgroups": len(groups), "n_resblocks": len(blocks), "reduction": reduction, "rgb_range": rgb_range}
        inferred = upsampler_scale("tail.0.0.weight", "tail.0.2.weight", width)
    if scale is not None and scale != inferred:
        raise ConvertError(f"{path} is a x{inferred} {network}, not x{scale}")
    return ModelSpec("network", network, (int(width),), inferred, extra)


def split_composite(sd: dict[str, np.ndarray]) -> tuple[dict, list[dict]]:
    """`classifier.*` and `net1.*`, `net2.*`, … of a composite ClassSR state_dict."""
    sd = {k[len("module.") :] if k.startswith("module.") else k: v for k, v in sd.items()}
    classifier = {k[len("classifier.") :]: v for k, v in sd.items() if k.startswith("classifier.")}
    indices = sorted({int(m.group(1)) for k in sd if (m := re.match(r"net(\d+)\.", k))})
    branches = [{k[len(f"net{i}.") :]: v for k, v in sd.items() if k.startswith(f"net{i}.")} for i in indices]
    return classifier, branches


def convert_state_dict(
    network: str, sd: dict[str, np.ndarray], path: str = "checkpoint", branch: int | None = None, scale: int | None = None
) -> tuple[ModelSpec, dict]:
    """Returns (spec, Flax variables) for a composite or single-network state_dict."""
    from classsr_jax.checkpointing import abstract_variables
    from classsr_jax.models.torch_names import state_dict_to_variables

    is_composite = any(k.startswith(("classifier.", "net1.", "module.classifier.", "module.net1.")) for k in sd)
    if is_composite:
        _, branches = split_composite(sd)
        if not branches:
            raise ConvertError(f"{path} has classifier keys but no net1., net2., … branches")
        specs = [infer_network_spec(network, b, path, scale) for b in branches]
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
    try:
        variables = state_dict_to_variables(sd, spec, abstract_variables(spec), source=path)
    except ValueError as e:
        raise ConvertError(str(e)) from e
    return spec, variables


def main(argv):
    del argv
    from classsr_jax.checkpointing import CheckpointError, describe, save_model

    for name in ("model", "input", "output"):
        if getattr(FLAGS, name) is None:
            print(f"error: --{name} is required", file=sys.stderr)
            return 2
    try:
        sd = load_torch_state_dict(FLAGS.input)
        spec, variables = convert_state_dict(FLAGS.model, sd, FLAGS.input, FLAGS.branch, FLAGS.scale)
        out = save_model(
            FLAGS.output, spec, variables, metadata={"converted_from": FLAGS.input}, overwrite=FLAGS.overwrite
        )
    except (ConvertError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"converted {FLAGS.input} → {out}: {describe(spec)}")
    return 0


if __name__ == "__main__":
    app.run(lambda argv: sys.exit(main(argv)))
