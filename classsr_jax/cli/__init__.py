"""One way for every command: absl flags, one-line errors on stderr, and an exit code that says what happened.

Each command defines its flags in its own `flags.FlagValues` (so commands can share flag names and be called
again in one process, as the tests do) and ends with

    def main(argv=None) -> int:
        return cli.run(run_command, FLAGS, argv)

`run` parses the flags (a bad or missing flag is one line and exit code 2; --help prints the command's
`CommandHelp`: a usage line, an example and the flags by purpose, required ones marked; --helpfull prints
absl's listing; --version the version), calls
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
import dataclasses
import os
import signal
import sys
import textwrap
import threading
from collections.abc import Callable, Sequence

from absl import flags
from absl import logging as absl_logging

from classsr_jax import __version__
from classsr_jax.errors import UserError, one_line

OK = 0
FAILED = 1
USAGE_ERROR = 2
INTERRUPTED = 128 + signal.SIGINT  # 130
TERMINATED = 128 + signal.SIGTERM  # 143
HELP_FLAGS = ("--help", "-h", "--helpshort", "--helpfull", "-help")
FULL_HELP_FLAG = "--helpfull"
VERSION_FLAG = "--version"
HELP_WIDTH = 100
METAVARS = {"string": "TEXT", "int": "N", "float": "X"}  # absl's flag_type() → what the value looks like


@dataclasses.dataclass(frozen=True)
class CommandHelp:
    """What `--help` prints for a command.

    Attributes:
      usage: the command line in brief, e.g. 'classsr-upscale -i INPUT -o OUTPUT [flags]'.
      summary: what the command does, one sentence.
      examples: command lines to copy.
      groups: (heading, flag names) in the order to print; flags in no group are listed last, as 'Other flags'.
      required: the flags without which the command refuses to run.
    """

    usage: str
    summary: str
    examples: tuple[str, ...]
    groups: tuple[tuple[str, tuple[str, ...]], ...]
    required: tuple[str, ...] = ()


def flag_entry(flag: flags.Flag, required: bool) -> str:
    """'  -i, --input=TEXT  (required)' and the flag's help, wrapped and indented below it."""
    kind, text = flag.flag_type(), flag.help
    if flag.boolean:
        names = f"--[no]{flag.name}"
    elif isinstance(flag.parser, flags.EnumParser):
        names = f"--{flag.name}={{{','.join(flag.parser.enum_values)}}}"
        text = text.removeprefix(f"<{'|'.join(flag.parser.enum_values)}>: ")  # absl's own listing of the choices
    else:
        names = f"--{flag.name}={METAVARS.get(kind, 'VALUE')}"
    if flag.short_name:
        names = f"-{flag.short_name}, {names}"
    if required:
        names += "  (required)"
    elif flag.default not in (None, False, ""):
        names += f"  (default: {flag.default})"
    body = textwrap.fill(text, HELP_WIDTH, initial_indent=" " * 6, subsequent_indent=" " * 6)
    return f"  {names}\n{body}"


def format_help(flag_values: flags.FlagValues, command_help: CommandHelp) -> str:
    """The usage line, the summary, the examples and every flag of `flag_values`, grouped by purpose."""
    lines = [f"usage: {command_help.usage}", "", command_help.summary, "", "examples:"]
    lines += [f"  {example}" for example in command_help.examples]
    names = [name for name in flag_values if flag_values[name].name == name]  # skip the short aliases
    grouped = {name for _, members in command_help.groups for name in members}
    groups = [*command_help.groups, ("Other flags", tuple(n for n in names if n not in grouped))]
    for heading, members in groups:
        members = [m for m in members if m in names]
        if members:
            lines += ["", f"{heading}:"]
            lines += [flag_entry(flag_values[m], m in command_help.required) for m in members]
    lines += ["", f"{FULL_HELP_FLAG}: every flag as absl lists it; {VERSION_FLAG}: the version."]
    return "\n".join(lines)


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
        describe_flag_error: Callable[[Exception, list[str]], str] | None = None,
        command_help: CommandHelp | None = None) -> int:
    """Parses `argv` (default: the process's arguments) and runs `command`; returns the exit code.

    --help prints `command_help` (absl's listing when there is none, and for --helpfull); --version the version.
    """
    flag_values = flag_values if flag_values is not None else flags.FLAGS
    argv = list(sys.argv[1:] if argv is None else argv)
    program = program or os.path.basename(sys.argv[0] or "classsr")
    if VERSION_FLAG in argv:
        print(f"{program} {__version__}")
        return OK
    if any(a in HELP_FLAGS for a in argv):
        full = FULL_HELP_FLAG in argv or command_help is None
        print(flag_values.get_help() if full else format_help(flag_values, command_help))
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
