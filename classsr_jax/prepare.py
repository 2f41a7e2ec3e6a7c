"""Builds evaluation folders (HR/X<s> and LR/X<s>) for the evaluate command.

    python -m classsr_jax.prepare testsets --div8k DIR --output OUT [--scale 4]   # Test2K, Test4K, Test8K
    python -m classsr_jax.prepare val10 --div2k DIR --output OUT [--scale 4]      # DIV2K 0801–0810
    python -m classsr_jax.prepare bundled --output OUT [--scale 4]                # no download needed

How each set is made is documented in `classsr_jax.datasets.testsets`. Bad input ends with one line on stderr and
exit code 2; unreadable source images are skipped and listed in the summary.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from classsr_jax.datasets.files import DataError
from classsr_jax.datasets.testsets import DIV8K_TEST_SETS, build_bundled, build_div8k_test_sets, build_val10


class _OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is a single line (the full usage stays available with --help)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


def _positive_factor(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(prog="python -m classsr_jax.prepare", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_OneLineParser)

    def common(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--output", required=True, help="folder that receives <set>/HR/X<s> and <set>/LR/X<s>")
        sub.add_argument("--scale", type=int, default=4, choices=(2, 3, 4), help="SR factor (default 4)")
        sub.add_argument("--no-progress", action="store_true", help="hide the progress bar")

    testsets = commands.add_parser("testsets", help="Test2K/4K/8K from DIV8K 1201–1500")
    testsets.add_argument("--div8k", required=True, help="folder with the DIV8K HR images (1201.png … 1500.png)")
    testsets.add_argument(
        "--factor-2k", type=_positive_factor, default=DIV8K_TEST_SETS["Test2K"][2],
        help="downscale factor from DIV8K to Test2K (default 4)",
    )
    testsets.add_argument(
        "--factor-4k", type=_positive_factor, default=DIV8K_TEST_SETS["Test4K"][2],
        help="downscale factor from DIV8K to Test4K (default 2)",
    )
    common(testsets)

    val10 = commands.add_parser("val10", help="val_10 from DIV2K 0801–0810")
    val10.add_argument("--div2k", required=True, help="folder with the DIV2K HR images (0801.png … 0810.png)")
    common(val10)

    bundled = commands.add_parser("bundled", help="the bundled validation photos (no download)")
    common(bundled)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    progress = not args.no_progress
    try:
        if args.command == "testsets":
            factors = {"Test2K": args.factor_2k, "Test4K": args.factor_4k}
            reports = build_div8k_test_sets(args.div8k, args.output, args.scale, factors, progress=progress)
        elif args.command == "val10":
            reports = [build_val10(args.div2k, args.output, args.scale, progress=progress)]
        else:
            reports = [build_bundled(args.output, args.scale, progress=progress)]
    except DataError as err:
        print(f"prepare: error: {err}", file=sys.stderr)
        return 2
    for report in reports:
        print(report.line())
    return 0


if __name__ == "__main__":
    sys.exit(main())
