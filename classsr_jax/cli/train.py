r"""Trains ClassSR: the paper's recipe as stages in one workdir (see classsr_jax.training.train).
  python -m classsr_jax.main --config configs/quickstart.py --workdir runs/quickstart

Override any config field with --config.FIELD=VALUE, e.g. --config.stages=joint,evaluate. On several hosts, run
the same command on each with --coordinator_address=HOST:PORT --num_processes=N --process_id=I (or --distributed
where the cluster is detected, e.g. Cloud TPU, SLURM). Ctrl-C, SIGTERM: `interrupted: …`, exit code 130, 143.
"""

from __future__ import annotations

import sys

import jax
from absl import flags, logging
from ml_collections import config_flags

from classsr_jax import cli, parallel
from classsr_jax.errors import ConfigError
from classsr_jax.training import configuration, guard, train


def define_flags() -> flags.FlagValues:
    """The command's flags, new for each call: ml_collections defines --config.FIELD flags as it parses."""
    fv = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "Training config (a configs/*.py file, or a config's name).",
                                    flag_values=fv, lock_config=True)
    flags.DEFINE_string("workdir", None, "Folder for checkpoints, exports, TensorBoard and results.", flag_values=fv)
    flags.DEFINE_bool("distributed", False, "jax.distributed.initialize() with the cluster's settings.", flag_values=fv)
    flags.DEFINE_string("coordinator_address", None, "host:port of process 0 in a multi-process run.", flag_values=fv)
    flags.DEFINE_integer("num_processes", None, "Number of processes in a multi-process run.", flag_values=fv)
    flags.DEFINE_integer("process_id", None, "This process's index in a multi-process run.", flag_values=fv)
    flags.DEFINE_enum("cpu_collectives", "gloo", ["gloo", "mpi"], "Collectives between CPU processes.", flag_values=fv)
    return fv


HELP = cli.CommandHelp(
    usage="classsr-train --config CONFIG --workdir DIR [--config.FIELD=VALUE ...]",
    summary="Train ClassSR: the paper's recipe as stages in one workdir; a rerun resumes.",
    examples=("classsr-train --config quickstart --workdir runs/quickstart",
              "classsr-train --config configs/rcan.py --workdir runs/rcan --config.data.manual_dir=/data/DIV2K_HR"),
    groups=(("Run", ("config", "workdir")),
            ("Several processes", ("distributed", "coordinator_address", "num_processes", "process_id",
                                   "cpu_collectives"))),
    required=("config", "workdir"),
)


def describe_flag_error(error: Exception, argv: list[str]) -> str:
    """One line for a failed flag parse: the unknown --config.FIELD overrides, or absl's own message."""
    found = configuration.config_flag(argv)
    config = configuration.load_config(found[1]) if found else None
    overrides = [a[2:].split("=", 1)[0] for a in argv[1:] if a.startswith("--config.")]
    unknown = [o for o in overrides if config is not None and not configuration.has_field(config, o[len("config.") :])]
    return f"unknown config field(s): {', '.join('--' + u for u in unknown)}" if unknown else str(error)


def train_command(flag_values: flags.FlagValues) -> int:
    cli.require_flags(flag_values, "config", "workdir")
    logging.set_verbosity(logging.INFO)  # each stage's progress
    logging.get_absl_handler().addFilter(guard.QuietOrbax())
    parallel.use_cpu_devices(configuration.cpu_devices(flag_values.config))  # before JAX starts its backends
    if flag_values.coordinator_address or flag_values.distributed:
        # Only the CPU backend reads this; it must be set before the backends start.
        jax.config.update("jax_cpu_collectives_implementation", flag_values.cpu_collectives)
        jax.distributed.initialize(flag_values.coordinator_address, flag_values.num_processes, flag_values.process_id)
    logging.info("process %d of %d, %d local devices", jax.process_index(), jax.process_count(),
                 jax.local_device_count())
    try:
        train.train_and_evaluate(flag_values.config, flag_values.workdir)
    except guard.TrainingInterrupted as e:
        print(e, file=sys.stderr, flush=True)
        return e.exit_code
    return cli.OK


def main(argv: list[str] | None = None) -> int:
    """`classsr-train`. --config is loaded first (its repository root goes on sys.path for `from configs import`)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:  # absl would defer a failing config to a traceback
        argv = argv if any(a in cli.HELP_FLAGS for a in argv) else configuration.resolve_config_flag(argv)
    except ConfigError as e:
        return cli.fail(e, cli.USAGE_ERROR)
    saved, sys.argv = sys.argv, [sys.argv[0], *argv]  # ml_collections reads --config.FIELD overrides from sys.argv
    try:
        return cli.run(train_command, define_flags(), argv, program="classsr-train",
                       describe_flag_error=describe_flag_error, command_help=HELP)
    finally:
        sys.argv = saved


if __name__ == "__main__":
    sys.exit(main())
