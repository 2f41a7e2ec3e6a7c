"""Prints the paper's model table (parameters and per-tile FLOPs of every branch), computed from the modules.

  python -m classsr_jax.summary [--scale 4]
"""

from __future__ import annotations

import argparse

from classsr_jax.checkpointing import count_params
from classsr_jax.models import PAPER_WIDTHS, ModelSpec
from classsr_jax.models.flops import format_flops, model_flops


def summary_rows(scale: int = 4):
    for network, widths in PAPER_WIDTHS.items():
        spec = ModelSpec("classsr", network, widths, scale)
        params = spec.abstract()["params"]
        paper, true = model_flops(spec), model_flops(spec, convention="true")
        for k, width in enumerate(widths):
            count = count_params({"params": params[f"net{k + 1}"]})
            yield network, k + 1, width, count, paper.branches[k], true.branches[k]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=int, default=4, choices=(2, 3, 4))
    args = parser.parse_args(argv)
    print(f"ClassSR branches at x{args.scale}, FLOPs per 32x32 LR tile (paper convention; true cost alongside)")
    print("| network | branch | width | params | FLOPs (paper) | FLOPs (true) |\n|---|---|---|---|---|---|")
    for network, k, width, count, paper, true in summary_rows(args.scale):
        print(f"| {network} | {k} | {width} | {count:,} | {format_flops(paper)} | {format_flops(true)} |")


if __name__ == "__main__":
    main()
