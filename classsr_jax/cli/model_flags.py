"""What the `upscale` and `evaluate` commands share: the model and routing flags, and checkpoint → Upscaler.

Multi-word flags are spelled with dashes (--force-class, --max-pixels); read them as `fv["force-class"].value`.
"""

from __future__ import annotations

from absl import flags

from classsr_jax import checkpointing
from classsr_jax.cli import UsageError
from classsr_jax.inference.upscaler import DTYPES, Upscaler
from classsr_jax.io.images import pixel_limit
from classsr_jax.training.workdir import resolve_model_dir


def define_model_flags(fv: flags.FlagValues, default_protocol: str) -> None:
    flags.DEFINE_string("checkpoint", None, "A converted checkpoint, an exported model or a training workdir.",
                        flag_values=fv)
    flags.DEFINE_enum("protocol", default_protocol, ["full", "paper"],
                      "full: every pixel, overlaps blended; paper: the original's test pipeline.", flag_values=fv)
    flags.DEFINE_integer("force-class", None, "Send every tile to branch K (1 = simplest; the last is the -O network).",
                         flag_values=fv)
    flags.DEFINE_float("budget", None, "At most this fraction of the -O network's FLOPs per tile (Class-Module included), by shifting the logits.",
                       flag_values=fv)
    flags.DEFINE_enum("dtype", "float32", list(DTYPES),
                      "Compute dtype of parameters and activations; bfloat16 for accelerators.", flag_values=fv)
    flags.DEFINE_integer("max-pixels", None,
                         f"Refuse images with more pixels than this (default {pixel_limit():,}, Pillow's; 0: no limit).",
                         flag_values=fv)
    flags.DEFINE_string("report", None, "Write the report as JSON here.", flag_values=fv)
    flags.DEFINE_bool("overwrite", False, "Replace existing outputs (by default they are kept).", flag_values=fv)


def make_upscaler(fv: flags.FlagValues, **kw) -> tuple[checkpointing.LoadedModel, Upscaler]:
    """Opens --checkpoint and builds the Upscaler the flags ask for."""
    loaded = checkpointing.load_model(resolve_model_dir(fv.checkpoint))
    force = fv["force-class"].value
    if force is not None:
        if not 1 <= force <= loaded.spec.num_branches:
            raise UsageError(f"--force-class {force} is out of range: the model has branches 1–{loaded.spec.num_branches}")
        force -= 1
    if fv.budget is not None and not fv.budget > 0:
        raise UsageError(f"--budget must be a positive fraction of the -O FLOPs, got {fv.budget}")
    if fv.budget is not None and loaded.spec.kind != "classsr":
        raise UsageError(f"--budget needs a ClassSR model; {fv.checkpoint} is a single network")
    upscaler = Upscaler(loaded.spec, loaded.variables, protocol=fv.protocol, force_class=force, budget=fv.budget,
                        dtype=fv.dtype, **kw)
    return loaded, upscaler
