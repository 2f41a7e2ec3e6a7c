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
import sys

from absl import flags

from classsr_jax import cli
from classsr_jax.checkpointing import save_model
from classsr_jax.errors import ConvertError
from classsr_jax.io.outputs import ensure_writable_folder, is_inside
from classsr_jax.models.backbones import NETWORKS, SCALES
from classsr_jax.models.conversion import convert_state_dict, read_state_dict

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
    if any(is_inside(t, s) for s in sources for t in targets):
        raise ConvertError(f"--output {output} lies inside the input {input_path}; choose another output")
    if any(is_inside(s, t) for s in sources for t in targets):
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
