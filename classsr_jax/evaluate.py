"""Evaluate a model on LR/HR folders: PSNR, PSNR-Y, SSIM-Y, the paper's FLOPs figure, class ratios, time.

  python -m classsr_jax.evaluate --checkpoint DIR --lr-dir LR --hr-dir HR [--protocol paper|full]
      [--force-class K] [--budget F] [--with-original] [--report R.json]

LR and HR images are paired by name; an LR name may carry the scale suffix of DIV2K (0801x4.png ↔ 0801.png).
"""

from __future__ import annotations

import argparse
import os
import re
import sys

import numpy as np

from classsr_jax.cli_common import add_routing_flags, fail, make_upscaler, write_json_atomic


def pair_folders(lr_dir: str, hr_dir: str, scale: int) -> list[tuple[str, str, str]]:
    """(name, lr path, hr path) for every LR image; a one-line error names the first unmatched one."""
    from classsr_jax.image_io import list_images

    lr_paths, hr_paths = list_images(lr_dir), list_images(hr_dir)
    hr_by_stem = {os.path.splitext(os.path.basename(p))[0]: p for p in hr_paths}
    pairs = []
    for lr in lr_paths:
        stem = os.path.splitext(os.path.basename(lr))[0]
        bare = re.sub(rf"x{scale}$", "", stem, flags=re.IGNORECASE)
        hr = hr_by_stem.get(stem) or hr_by_stem.get(bare)
        if hr is None:
            raise ValueError(f"no HR image in {hr_dir} for {lr} (looked for {stem} and {bare})")
        pairs.append((bare, lr, hr))
    return pairs


def load_pairs(pairs, failures):
    """Yields (name, lr [0,255] float, hr [0,255] float); unreadable files are recorded and skipped."""
    from classsr_jax.image_io import ImageError, read_image

    for name, lr_path, hr_path in pairs:
        try:
            lr, hr = read_image(lr_path), read_image(hr_path)
        except ImageError as e:
            failures.append({"name": name, "error": str(e)})
            print(f"error: {e}", file=sys.stderr)
            continue
        yield name, np.rint(lr.rgb * 255.0), np.rint(hr.rgb * 255.0)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Evaluate ClassSR on LR/HR folders.")
    add_routing_flags(parser)
    parser.add_argument("--lr-dir", required=True)
    parser.add_argument("--hr-dir", required=True)
    parser.add_argument("--protocol", choices=("paper", "full"), default="paper")
    parser.add_argument("--with-original", action="store_true", help="also evaluate the -O network (the last branch)")
    args = parser.parse_args(argv)

    from classsr_jax.checkpointing import CheckpointError
    from classsr_jax.image_io import ImageError
    from classsr_jax.evaluation import evaluate_pairs, format_table
    from classsr_jax.inference import Upscaler

    try:
        loaded, upscaler = make_upscaler(args, args.protocol)
        pairs = pair_folders(args.lr_dir, args.hr_dir, loaded.spec.scale)
    except (CheckpointError, ImageError, ValueError) as e:
        return fail(str(e))
    failures: list[dict] = []
    label = f"ClassSR-{loaded.spec.network}" if loaded.spec.kind == "classsr" else loaded.spec.network
    try:
        report = evaluate_pairs(upscaler, load_pairs(pairs, failures), progress=True)
        rows = [(label, report["average"])]
        if args.with_original and loaded.spec.kind == "classsr":
            original = Upscaler(loaded.spec, loaded.variables, protocol=args.protocol, force_class=loaded.spec.num_branches - 1)
            report["original"] = evaluate_pairs(original, load_pairs(pairs, []), progress=True)
            rows.append((f"{loaded.spec.network}-O", report["original"]["average"]))
    except ValueError as e:
        return fail(str(e))
    report["failed"] = failures
    report["protocol"] = args.protocol
    print(format_table(rows))
    if args.report:
        write_json_atomic(args.report, report)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
