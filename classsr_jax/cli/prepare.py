"""Builds evaluation folders (HR/X<s> and LR/X<s>) for the evaluate command.

    python -m classsr_jax.prepare testsets --div8k DIR --output OUT [--scale 4]   # Test2K, Test4K, Test8K
    python -m classsr_jax.prepare val10 --div2k DIR --output OUT [--scale 4]      # DIV2K 0801–0810
    python -m classsr_jax.prepare bundled --output OUT [--scale 4]                # no download needed

How each set is made is documented in `classsr_jax.data.testsets`. Bad input ends with one line on stderr
(exit code 1; a bad or missing flag, exit code 2). Unreadable source images are skipped and missing ones listed
in the summary; either makes the exit code 1, with one line that counts them.
"""

from __future__ import annotations

import functools
import sys

from absl import flags

from classsr_jax import cli
from classsr_jax.data.testsets import DIV8K_TEST_SETS, build_bundled, build_div8k_test_sets, build_val10
from classsr_jax.errors import WriteError

PROGRAM = "classsr-prepare"
# Each set, and the flags it takes besides --output, --scale and --no-progress.
SETS = {
    "testsets": ("div8k", "factor-2k", "factor-4k"),  # Test2K/4K/8K from DIV8K 1201–1500
    "val10": ("div2k",),  # val_10 from DIV2K 0801–0810
    "bundled": (),  # the bundled validation photos (no download)
}
COMMON = ("output", "scale", "no-progress")

FLAGS = flags.FlagValues()
flags.DEFINE_string("output", None, "Folder that receives <set>/HR/X<s> and <set>/LR/X<s>.", flag_values=FLAGS)
flags.DEFINE_enum("scale", "4", ["2", "3", "4"], "SR factor.", flag_values=FLAGS)
flags.DEFINE_boolean("no-progress", False, "Hide the progress bar.", flag_values=FLAGS)
flags.DEFINE_string("div8k", None, "testsets: folder with the DIV8K HR images (1201.png … 1500.png).",
                    flag_values=FLAGS)
flags.DEFINE_integer("factor-2k", DIV8K_TEST_SETS["Test2K"][2], "testsets: downscale factor from DIV8K to Test2K.",
                     lower_bound=1, flag_values=FLAGS)
flags.DEFINE_integer("factor-4k", DIV8K_TEST_SETS["Test4K"][2], "testsets: downscale factor from DIV8K to Test4K.",
                     lower_bound=1, flag_values=FLAGS)
flags.DEFINE_string("div2k", None, "val10: folder with the DIV2K HR images (0801.png … 0810.png).", flag_values=FLAGS)


HELP = cli.CommandHelp(
    usage="classsr-prepare {testsets,val10,bundled} --output DIR [flags]",
    summary="Build evaluation folders (HR/X<s> and LR/X<s>) for classsr-evaluate.",
    examples=("classsr-prepare bundled --output data", "classsr-prepare val10 --div2k DIV2K_HR --output data"),
    groups=(
        ("Output", ("output", "scale", "no-progress")),
        ("testsets", ("div8k", "factor-2k", "factor-4k")),
        ("val10", ("div2k",)),
    ),
    required=("output",),
)


def prepare(which: str, flag_values: flags.FlagValues) -> int:
    given = [name for name in flag_values if flag_values[name].present and name not in COMMON + SETS[which]]
    if given:
        raise cli.UsageError(f"--{given[0]} is not a flag of prepare {which}")
    required = {"testsets": ("div8k",), "val10": ("div2k",)}.get(which, ())
    cli.require_flags(flag_values, "output", *required)
    output, scale = flag_values.output, int(flag_values.scale)
    progress = not flag_values["no-progress"].value
    try:
        if which == "testsets":
            factors = {"Test2K": flag_values["factor-2k"].value, "Test4K": flag_values["factor-4k"].value}
            reports = build_div8k_test_sets(flag_values.div8k, output, scale, factors, progress=progress)
        elif which == "val10":
            reports = [build_val10(flag_values.div2k, output, scale, progress=progress)]
        else:
            reports = [build_bundled(output, scale, progress=progress)]
    except OSError as e:  # a folder that cannot be made (read-only disk, a file in the way): one line
        raise WriteError(f"cannot write to output folder {output}: {e.strerror or e} ({e.filename})") from None
    for report in reports:
        print(report.line())
    skipped, missing = sum(len(r.skipped) for r in reports), sum(len(r.missing) for r in reports)
    if skipped or missing:  # the sets are incomplete: scores on them would not be comparable
        return cli.fail(f"the sets are incomplete: {skipped} source images skipped and {missing} missing "
                        "(listed above)")
    return cli.OK


def main(argv: list[str] | None = None) -> int:
    """`classsr-prepare SET [flags]`, SET one of testsets, val10, bundled."""
    argv = list(sys.argv[1:] if argv is None else argv)
    which = argv[0] if argv and not argv[0].startswith("-") else None
    if which is None and any(a in (*cli.HELP_FLAGS, cli.VERSION_FLAG) for a in argv):
        return cli.run(lambda _: None, FLAGS, argv, program="classsr-prepare", command_help=HELP)
    if which not in SETS:
        given = f"unknown set {which!r}" if which else "no set given"
        return cli.fail(f"{given}: use prepare {{{','.join(SETS)}}} [flags]", cli.USAGE_ERROR)
    return cli.run(functools.partial(prepare, which), FLAGS, argv[1:], program=f"{PROGRAM} {which}", command_help=HELP)


if __name__ == "__main__":
    sys.exit(main())
