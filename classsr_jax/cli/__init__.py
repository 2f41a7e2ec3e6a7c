"""One way for every command: absl flags, one-line errors on stderr, and an exit code that says what happened.

Each command defines its flags in its own `flags.FlagValues` (so commands can share flag names and be called
again in one process, as the tests do) and ends with

    def main(argv=None) -> int:
        return cli.run(run_command, FLAGS, argv)

`run` parses the flags (a bad or missing flag is one line and exit code 2; --help prints the flags), calls
`run_command(flag_values)`, and turns any `UserError` it raises into one line and exit code 1. 0 means all
done; 1 also means that some items of a batch failed (the command says which). Other exceptions are bugs and
keep their traceback.

Ctrl-C and SIGTERM end a command with one line, `interrupted: <progress>`, and exit code 130 or 143 (128 + the
signal, as shells report it). SIGTERM is raised as `Terminated` in the main thread, so both unwind the same way:
`atomic_write` removes its temporary file, and a command may attach what it finished as the exception's
`progress` (e.g. "3 of 10 images written; rerun to resume"). File names that are not valid UTF-8 are printed
with backslash escapes instead of crashing a strict stdout or stderr.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence

from absl import flags
from absl import logging as absl_logging

from classsr_jax.errors import UserError, one_line

OK = 0
FAILED = 1
USAGE_ERROR = 2
INTERRUPTED = 128 + signal.SIGINT  # 130
TERMINATED = 128 + signal.SIGTERM  # 143
HELP_FLAGS = ("--help", "-h", "--helpshort", "--helpfull", "-help")


class UsageError(UserError):
    """A missing or contradictory flag (exit code 2)."""


class Terminated(BaseException):
    """SIGTERM, raised in the main thread like KeyboardInterrupt (not an Exception: no handler swallows it)."""


def _raise_terminated(signum, frame) -> None:
    raise Terminated()


@contextlib.contextmanager
def _signals_and_safe_streams():
    """SIGTERM raises Terminated, and stdout/stderr escape what they cannot encode, while a command runs."""
    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _raise_terminated) if in_main else None
    streams = [(s, s.errors) for s in (sys.stdout, sys.stderr) if hasattr(s, "reconfigure") and s.errors == "strict"]
    for stream, _ in streams:  # a name with surrogates (undecodable bytes) prints as \udce9, never a crash
        stream.reconfigure(errors="backslashreplace")
    try:
        yield
    finally:
        for stream, errors in streams:
            stream.reconfigure(errors=errors)
        if in_main:
            signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


def print_error(message: object) -> None:
    print(f"error: {one_line(message)}", file=sys.stderr, flush=True)


def fail(message: object, code: int = FAILED) -> int:
    """Prints `error: <message>` on one line and returns `code`, for `return fail(...)` in a command."""
    print_error(message)
    return code


def require_flags(flag_values: flags.FlagValues, *names: str) -> None:
    """A UsageError for the first of these flags that was not given."""
    for name in names:
        if flag_values[name].value is None:
            raise UsageError(f"--{name} is required")


def parse(flag_values: flags.FlagValues, argv: Sequence[str], program: str,
          describe: Callable[[Exception, list[str]], str] | None = None) -> list[str]:
    """Parses argv (without the program name) from scratch; returns the positional arguments."""
    args = [program, *argv]
    flag_values.unparse_flags()  # a second call in one process starts from the defaults again
    try:
        rest = flag_values(args)
    except Exception as e:  # absl raises several flag errors, with multi-line text
        raise UsageError(describe(e, args) if describe else e) from None
    return rest[1:]


def run(command: Callable[[flags.FlagValues], int | None], flag_values: flags.FlagValues | None = None,
        argv: Sequence[str] | None = None, *, program: str | None = None,
        describe_flag_error: Callable[[Exception, list[str]], str] | None = None) -> int:
    """Parses `argv` (default: the process's arguments) and runs `command`; returns the exit code."""
    flag_values = flag_values if flag_values is not None else flags.FLAGS
    argv = list(sys.argv[1:] if argv is None else argv)
    program = program or os.path.basename(sys.argv[0] or "classsr")
    if any(a in HELP_FLAGS for a in argv):
        print(flag_values.get_help())
        return OK
    if flag_values is not flags.FLAGS and not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()  # absl's logging reads its own flags from the global set: use their defaults
    absl_logging.use_absl_handler()
    with _signals_and_safe_streams():
        try:
            extra = parse(flag_values, argv, program, describe_flag_error)
            if extra:
                raise UsageError(f"unexpected arguments: {' '.join(extra)}")
            return int(command(flag_values) or OK)
        except UsageError as e:
            return fail(e, USAGE_ERROR)
        except UserError as e:
            return fail(e)
        except (KeyboardInterrupt, Terminated) as e:
            progress = getattr(e, "progress", "stopped before the end; rerun to finish")
            print(f"interrupted: {progress}", file=sys.stderr, flush=True)
            return TERMINATED if isinstance(e, Terminated) else INTERRUPTED
