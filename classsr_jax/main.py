"""`python -m classsr_jax.main`, kept for scripts and docs: the command lives in `classsr_jax.cli.train`.

It starts through the launcher, which names a missing optional dependency in one line.
"""

import sys

from classsr_jax.cli.launcher import launch


def main(argv: list[str] | None = None) -> int:
    return launch("classsr-train", argv)


if __name__ == "__main__":
    sys.exit(main())
