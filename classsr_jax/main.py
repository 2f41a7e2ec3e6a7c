r"""Trains ClassSR: the paper's recipe as stages in one workdir (see classsr_jax.train). From the repo root:

  python -m classsr_jax.main --config configs/quickstart.py --workdir runs/quickstart

Override any config field with --config.FIELD=VALUE, e.g. --config.stages=joint,evaluate. On several hosts,
run the same command on each with --coordinator_address=HOST:PORT --num_processes=N --process_id=I (or
--distributed where the cluster is detected automatically, e.g. Cloud TPU, SLURM).
"""

from __future__ import annotations

import importlib.util
import logging as pylogging
import sys

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from classsr_jax import train

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Training config (a configs/*.py file).", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, the division, exports, TensorBoard and results.")
flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() with the cluster's auto-detected settings.")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0 in a multi-process run.")
flags.DEFINE_integer("num_processes", None, "Number of processes in a multi-process run.")
flags.DEFINE_integer("process_id", None, "This process's index in a multi-process run.")
flags.DEFINE_enum("cpu_collectives", "gloo", ["gloo", "mpi"], "Collectives between CPU processes.")


class QuietLibraries(pylogging.Filter):
    """Orbax logs every file it writes at INFO; on the console keep its warnings and errors only, less the
    warning for checkpoints saved between validations (they carry no PSNR by design)."""

    def filter(self, record: pylogging.LogRecord) -> bool:
        if "/orbax/" not in record.pathname:
            return True
        return record.levelno >= pylogging.WARNING and "did not provide metrics" not in record.getMessage()


def fail(message: str) -> None:
    print(f"error: {' '.join(str(message).split())}", file=sys.stderr)
    sys.exit(2)


def has_field(config, dotted: str) -> bool:
    node = config
    for part in dotted.split("."):
        if not hasattr(node, "keys") or part not in node.keys():
            return False
        node = node[part]
    return True


def config_file_fields(argv: list[str]):
    """The config that --config names, loaded on its own (None if it cannot be)."""
    path = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
    if path is None and "--config" in argv[:-1]:
        path = argv[argv.index("--config") + 1]
    try:
        spec = importlib.util.spec_from_file_location("config_for_error_message", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module.get_config()
    except Exception:  # any failure: fall back to the parser's own message
        return None


def describe_flag_error(error: Exception, argv: list[str]) -> str:
    """One line for a failed flag parse, naming unknown --config.FIELD overrides when there are any."""
    overrides = [a[2:].split("=", 1)[0] for a in argv[1:] if a.startswith("--config.")]
    config = config_file_fields(argv) if overrides else None
    if config is not None:
        unknown = [o for o in overrides if not has_field(config, o[len("config.") :])]
        if unknown:
            return f"unknown config field(s): {', '.join('--' + u for u in unknown)}"
    return str(error).replace("\\n", " ")


def parse_flags(argv: list[str]) -> list[str]:
    """absl's parsing, with any failure (unknown config field, bad value, missing flag) as one line."""
    try:
        rest = FLAGS(argv)
    except Exception as e:  # absl and config_flags raise several types with multi-line text
        fail(describe_flag_error(e, argv))
    for name in ("config", "workdir"):
        if FLAGS[name].value is None:
            fail(f"--{name} is required")
    try:
        FLAGS.config.get("seed")  # a config file that failed to load raises here
    except Exception as e:
        fail(f"cannot load --config: {e}")
    return rest


def main(argv: list[str]) -> None:
    logging.get_absl_handler().addFilter(QuietLibraries())
    if len(argv) > 1:
        fail(f"unexpected arguments: {' '.join(argv[1:])}")
    if FLAGS.coordinator_address or FLAGS.distributed:
        # Only the CPU backend reads this; it must be set before the backends start.
        jax.config.update("jax_cpu_collectives_implementation", FLAGS.cpu_collectives)
        jax.distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
    logging.info("process %d of %d, %d local devices", jax.process_index(), jax.process_count(), jax.local_device_count())
    try:
        train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
    except train.USER_ERRORS as e:
        fail(e)


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
