"""`python -m classsr_jax.prepare`, kept for scripts and docs: the command lives in `classsr_jax.cli.prepare`."""

import sys

from classsr_jax.cli.prepare import main

if __name__ == "__main__":
    sys.exit(main())
