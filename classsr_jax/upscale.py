"""`python -m classsr_jax.upscale`, kept for scripts and docs: the command lives in `classsr_jax.cli.upscale`.

It starts through the launcher, which names a missing optional dependency in one line, and its process ends
without the interpreter's teardown (`launcher.end_process`).
"""

from classsr_jax.cli.launcher import end_process, launch


def main(argv: list[str] | None = None) -> int:
    return launch("classsr-upscale", argv)


if __name__ == "__main__":
    end_process(main())
