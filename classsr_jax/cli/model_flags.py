"""What the `upscale` and `evaluate` commands share: the model and routing flags, and checkpoint → Upscaler.

Multi-word flags are spelled with dashes (--force-class, --max-pixels); read them as `fv["force-class"].value`.
"""

from __future__ import annotations

from absl import flags

from classsr_jax import checkpointing, parallel
from classsr_jax.cli import UsageError
from classsr_jax.inference.upscaler import DTYPES, Upscaler, check_routing
from classsr_jax.io.images import pixel_limit


def define_model_flags(fv: flags.FlagValues, default_protocol: str) -> None:
    flags.DEFINE_string("checkpoint", None, "A converted checkpoint, an exported model, a training workdir, or a "
                        "bundled model: quickstart (ClassSR-FSRCNN x4) or quickstart-original (its FSRCNN-O).",
                        flag_values=fv)
    flags.DEFINE_enum("protocol", default_protocol, ["full", "paper"],
                      "full: every pixel, overlaps blended; paper: the original's test pipeline.", flag_values=fv)
    flags.DEFINE_integer("force-class", None, "Send every tile to branch K (1 = simplest; the last is the -O network).",
                         flag_values=fv)
    flags.DEFINE_float("budget", None, "Cap the FLOPs per tile (Class-Module included) at this fraction of the -O "
                       "network's: free routing when it fits, else the least useful tiles go to cheaper branches.",
                       flag_values=fv)
    flags.DEFINE_enum("dtype", "float32", list(DTYPES),
                      "Compute dtype of parameters and activations; bfloat16 for accelerators.", flag_values=fv)
    flags.DEFINE_integer(
        "max-pixels",
        None,
        f"Refuse images with more pixels than this (default {pixel_limit():,}, Pillow's; 0: no limit).",
        flag_values=fv,
    )
    flags.DEFINE_integer("cpu-devices", None, "On a CPU, run JAX as N devices so that each band's tile columns are "
                         "dealt over the cores (default: one per core).", lower_bound=1, flag_values=fv)
    flags.DEFINE_string("report", None, "Write the report as JSON here.", flag_values=fv)
    flags.DEFINE_bool("overwrite", False, "Replace existing outputs (by default they are kept).", flag_values=fv)


# The --help groups of these flags, after each command's own.
MODEL_GROUPS = (
    ("Model", ("checkpoint", "protocol", "dtype")),
    ("Routing", ("budget", "force-class")),
    ("Limits", ("max-pixels",)),
    ("Devices", ("cpu-devices",)),
)


def routing_options(fv: flags.FlagValues, spec) -> dict:
    """{'budget', 'force_class' (0-based)} for `Upscaler.upscale`, checked against the model; --force-class counts
    branches from 1 on the command line."""
    force = fv["force-class"].value
    if force is not None and not 1 <= force <= spec.num_branches:
        raise UsageError(f"--force-class {force} is out of range: the model has branches 1–{spec.num_branches}")
    options = {"budget": fv.budget, "force_class": None if force is None else force - 1}
    try:
        check_routing(spec, **options)
    except ValueError as e:
        raise UsageError(f"--budget {fv.budget}: {e}") from None
    return options


def make_upscaler(fv: flags.FlagValues, **kw) -> tuple[checkpointing.LoadedModel, Upscaler, dict]:
    """Opens --checkpoint; returns it, the Upscaler the flags ask for, and the routing options of each call.

    Call it before anything else touches JAX: the CPU device count is read when JAX's backends start.
    """
    parallel.use_cpu_devices(fv["cpu-devices"].value or parallel.default_cpu_devices(), quiet=True)
    parallel.use_compilation_cache()
    loaded = checkpointing.open_model(fv.checkpoint)
    options = routing_options(fv, loaded.spec)
    return loaded, Upscaler(loaded.spec, loaded.variables, protocol=fv.protocol, dtype=fv.dtype, **kw), options
