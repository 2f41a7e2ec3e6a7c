"""`python -m classsr_jax.convert`, kept for scripts and docs: the command lives in `classsr_jax.cli.convert`."""

import sys

from classsr_jax.cli.convert import main

if __name__ == "__main__":
    sys.exit(main())
