"""`python -m classsr_jax.summary`, kept for scripts and docs: the command lives in `classsr_jax.cli.summary`."""

import sys

from classsr_jax.cli.summary import main

if __name__ == "__main__":
    sys.exit(main())
