"""One way for every command: absl flags, one-line errors on stderr, and an exit code that says what happened.

    def main(argv) -> int: ...          # 0: all done; 1: a user error or some items failed
    if __name__ == "__main__":
        cli.run(main)

`run` parses the flags (a bad or missing flag is one line and exit code 2), calls `main`, and turns any
`UserError` it raises into one line and exit code 1. Other exceptions are bugs and keep their traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

from absl import app, flags

from classsr_jax.errors import UserError, one_line

USAGE_ERROR = 2
FAILED = 1


def print_error(message: object) -> None:
    print(f"error: {one_line(message)}", file=sys.stderr, flush=True)


def fail(message: object, code: int = FAILED) -> int:
    """Prints `error: <message>` on one line and returns `code`, for `return fail(...)` in a command."""
    print_error(message)
    return code


def require_flags(*names: str) -> None:
    """A UsageError for the first of these flags that was not given."""
    for name in names:
        if flags.FLAGS[name].value is None:
            raise app.UsageError(f"--{name} is required")


def parse_flags(argv: list[str], describe: Callable[[Exception, list[str]], str] | None = None) -> list[str]:
    """absl's parsing with any failure as one line and exit code 2 (`describe` may word the message)."""
    try:
        return flags.FLAGS(argv)
    except Exception as e:  # absl raises several flag errors, with multi-line text
        print_error(describe(e, argv) if describe else e)
        sys.exit(USAGE_ERROR)


def run(main: Callable[[list[str]], int | None], argv: Sequence[str] | None = None,
        describe_flag_error: Callable[[Exception, list[str]], str] | None = None) -> None:
    """Parses flags, runs `main(argv)` and exits with its code; UserErrors become one line and exit code 1."""

    def guarded(args: list[str]) -> int:
        if len(args) > 1:
            return fail(f"unexpected arguments: {' '.join(args[1:])}", USAGE_ERROR)
        try:
            return int(main(args) or 0)
        except app.UsageError as e:
            return fail(e, USAGE_ERROR)
        except UserError as e:
            return fail(e)

    app.run(guarded, argv=list(argv) if argv is not None else None,
            flags_parser=lambda a: parse_flags(a, describe_flag_error))
