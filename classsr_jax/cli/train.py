r"""Trains ClassSR: the paper's recipe as stages in one workdir (see classsr_jax.training.train).

  python -m classsr_jax.main --config configs/quickstart.py --workdir runs/quickstart

Override any config field with --config.FIELD=VALUE, e.g. --config.stages=joint,evaluate. On several hosts,
run the same command on each with --coordinator_address=HOST:PORT --num_processes=N --process_id=I (or
--distributed where the cluster is detected automatically, e.g. Cloud TPU, SLURM).
"""

from __future__ import annotations

import logging as pylogging
import sys

import jax
from absl import flags, logging
from ml_collections import config_flags

from classsr_jax import cli, parallel
from classsr_jax.errors import ConfigError
from classsr_jax.training import configuration, train

FLAGS = flags.FlagValues()
config_flags.DEFINE_config_file(
    "config", None, "Training config (a configs/*.py file).", flag_values=FLAGS, lock_config=True
)
flags.DEFINE_string(
    "workdir", None, "Directory for checkpoints, the division, exports, TensorBoard and results.", flag_values=FLAGS
)
flags.DEFINE_bool(
    "distributed",
    False,
    "Call jax.distributed.initialize() with the cluster's auto-detected settings.",
    flag_values=FLAGS,
)
flags.DEFINE_string("coordinator_address", None, "host:port of process 0 in a multi-process run.", flag_values=FLAGS)
flags.DEFINE_integer("num_processes", None, "Number of processes in a multi-process run.", flag_values=FLAGS)
flags.DEFINE_integer("process_id", None, "This process's index in a multi-process run.", flag_values=FLAGS)
flags.DEFINE_enum("cpu_collectives", "gloo", ["gloo", "mpi"], "Collectives between CPU processes.", flag_values=FLAGS)


HELP = cli.CommandHelp(
    usage="classsr-train --config CONFIG --workdir DIR [--config.FIELD=VALUE ...]",
    summary="Train ClassSR: the paper's recipe as stages in one workdir; a rerun resumes.",
    examples=(
        "classsr-train --config quickstart --workdir runs/quickstart",
        "classsr-train --config configs/rcan.py --workdir runs/rcan --config.data.manual_dir=/data/DIV2K_HR",
    ),
    groups=(
        ("Run", ("config", "workdir")),
        ("Several processes", ("distributed", "coordinator_address", "num_processes", "process_id", "cpu_collectives")),
    ),
    required=("config", "workdir"),
)


class QuietLibraries(pylogging.Filter):
    """Orbax logs every file it writes at INFO; on the console keep its warnings and errors only, less the
    warning for checkpoints saved between validations (they carry no PSNR by design)."""

    def filter(self, record: pylogging.LogRecord) -> bool:
        if "/orbax/" not in record.pathname:
            return True
        return record.levelno >= pylogging.WARNING and "did not provide metrics" not in record.getMessage()


def config_argument(argv: list[str]) -> str | None:
    """The value of --config in a command line, if given."""
    path = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
    return argv[argv.index("--config") + 1] if path is None and "--config" in argv[:-1] else path


def describe_flag_error(error: Exception, argv: list[str]) -> str:
    """One line for a failed flag parse: the config's own error, or the unknown --config.FIELD overrides."""
    try:
        config = configuration.load_config(config_argument(argv)) if config_argument(argv) else None
    except ConfigError as e:
        return str(e)
    overrides = [a[2:].split("=", 1)[0] for a in argv[1:] if a.startswith("--config.")]
    unknown = [o for o in overrides if config is not None and not configuration.has_field(config, o[len("config.") :])]
    return f"unknown config field(s): {', '.join('--' + u for u in unknown)}" if unknown else str(error)


def train_command(flag_values: flags.FlagValues) -> None:
    cli.require_flags(flag_values, "config", "workdir")
    logging.set_verbosity(logging.INFO)  # each stage's progress
    logging.get_absl_handler().addFilter(QuietLibraries())
    parallel.use_cpu_devices(configuration.cpu_devices(flag_values.config))  # before JAX starts its backends
    if flag_values.coordinator_address or flag_values.distributed:
        # Only the CPU backend reads this; it must be set before the backends start.
        jax.config.update("jax_cpu_collectives_implementation", flag_values.cpu_collectives)
        jax.distributed.initialize(flag_values.coordinator_address, flag_values.num_processes, flag_values.process_id)
    logging.info(
        "process %d of %d, %d local devices", jax.process_index(), jax.process_count(), jax.local_device_count()
    )
    train.train_and_evaluate(flag_values.config, flag_values.workdir)


def with_config_file(argv: list[str]) -> list[str]:
    """argv with a bare --config name ('quickstart') replaced by the path of its file, which absl loads."""
    value = config_argument(argv)
    if value is None:
        return argv
    path = configuration.config_file_argument(value)
    if "--config" in argv[:-1] and argv[argv.index("--config") + 1] == value:
        at = argv.index("--config") + 1
        return [*argv[:at], path, *argv[at + 1 :]]
    return [f"--config={path}" if a == f"--config={value}" else a for a in argv]


def main(argv: list[str] | None = None) -> int:
    """The `classsr-train` command. A bare --config name means configs/<name>.py (of the working directory, the
    checkout or the installed package); its repository root goes on sys.path before absl loads --config, so that
    its `from configs import …` works from any working directory."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        argv = with_config_file(argv)
    except ConfigError as e:
        return cli.fail(e, cli.USAGE_ERROR)
    configuration.add_config_root_to_path(config_argument(argv))
    return cli.run(
        train_command, FLAGS, argv, program="classsr-train", describe_flag_error=describe_flag_error, command_help=HELP
    )


if __name__ == "__main__":
    sys.exit(main())
