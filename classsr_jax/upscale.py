"""`python -m classsr_jax.upscale`, kept for scripts and docs: the command lives in `classsr_jax.cli.upscale`."""

import sys

from classsr_jax.cli.upscale import main

if __name__ == "__main__":
    sys.exit(main())
