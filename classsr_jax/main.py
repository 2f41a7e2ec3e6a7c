"""`python -m classsr_jax.main`, kept for scripts and docs: the command lives in `classsr_jax.cli.train`."""

import sys

from classsr_jax.cli.train import main

if __name__ == "__main__":
    sys.exit(main())
