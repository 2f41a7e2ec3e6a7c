"""`python -m classsr_jax.evaluate`, kept for scripts and docs: the command lives in `classsr_jax.cli.evaluate`."""

import sys

from classsr_jax.cli.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
