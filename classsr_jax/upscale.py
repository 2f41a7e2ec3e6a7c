"""Upscale images with a ClassSR model (or a single network) through routed, seam-free tiling.

  python -m classsr_jax.upscale --checkpoint DIR --input IN --output OUT [--protocol full|paper]
      [--mask MASK.png] [--force-class K] [--budget F] [--report R.json]

IN and OUT are files, or folders (every image in IN, with a progress bar). In folder mode --mask names a
folder for the class maps. A bad file is reported and skipped; the exit code says that something failed.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

from classsr_jax.cli_common import add_routing_flags, fail, make_upscaler, write_json_atomic


def upscale_alpha(alpha: np.ndarray, out_hw: tuple[int, int], scale: int) -> np.ndarray:
    """Bicubic upscaling of an alpha channel, cropped to the SR output (the paper protocol crops)."""
    import jax

    h, w = alpha.shape
    big = jax.image.resize(alpha.astype(np.float32), (h * scale, w * scale), "bicubic")
    return np.clip(np.asarray(big)[: out_hw[0], : out_hw[1]], 0.0, 1.0)


def upscale_file(upscaler, in_path: str, out_path: str, mask_path: str | None) -> dict:
    """Upscales one file and writes the result (and class map) atomically; returns its report."""
    from classsr_jax.image_io import class_map_overlay, read_image, to_uint8, write_image

    image = read_image(in_path)
    result = upscaler.upscale(image.rgb)
    scale = upscaler.spec.scale
    alpha = None if image.alpha is None else upscale_alpha(image.alpha, result.sr.shape[:2], scale)
    write_image(out_path, result.sr, like=image, alpha=alpha)
    if mask_path:
        overlay = class_map_overlay(
            to_uint8(result.sr), result.grid.hr_boxes(scale), result.classes, num_classes=upscaler.spec.num_branches
        )
        write_image(mask_path, overlay.astype(np.float32) / 255.0)
    return {"input": in_path, "output": out_path, **result.report(scale)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Upscale images with ClassSR.")
    add_routing_flags(parser)
    parser.add_argument("--input", required=True, help="an image file or a folder of images")
    parser.add_argument("--output", required=True, help="output file, or folder when --input is a folder")
    parser.add_argument("--protocol", choices=("full", "paper"), default="full")
    parser.add_argument("--mask", default=None, help="class-map picture (a folder in folder mode)")
    args = parser.parse_args(argv)

    from classsr_jax.checkpointing import CheckpointError
    from classsr_jax.image_io import ImageError, list_images

    if not os.path.exists(args.input):
        return fail(f"input {args.input} does not exist")
    try:
        if os.path.isdir(args.input):
            inputs = list_images(args.input)
        loaded, upscaler = make_upscaler(args, args.protocol)
    except (CheckpointError, ImageError, ValueError) as e:
        return fail(str(e))

    if not os.path.isdir(args.input):
        out = args.output
        if os.path.isdir(out):
            out = os.path.join(out, os.path.basename(args.input))
        try:
            report = upscale_file(upscaler, args.input, out, args.mask)
        except (ImageError, ValueError) as e:
            return fail(str(e))
        if args.report:
            write_json_atomic(args.report, report)
        print(
            f"{args.input} → {out}: {report['output_hw'][0]}x{report['output_hw'][1]}, "
            f"{report['tiles']} tiles {report['class_counts']}, FLOPs {report['flops_percent']:.0f}% of -O, "
            f"{report['timing']['inference_s']:.2f} s (+{report['timing']['compile_s']:.1f} s compile)"
        )
        return 0

    from tqdm import tqdm

    os.makedirs(args.output, exist_ok=True)
    if args.mask:
        os.makedirs(args.mask, exist_ok=True)
    reports, failures = [], []
    for path in tqdm(inputs, desc="upscale", unit="image"):
        name = os.path.basename(path)
        mask = os.path.join(args.mask, os.path.splitext(name)[0] + "_mask.png") if args.mask else None
        try:
            reports.append(upscale_file(upscaler, path, os.path.join(args.output, name), mask))
        except (ImageError, ValueError) as e:
            failures.append({"input": path, "error": str(e)})
            tqdm.write(f"error: {e}", file=sys.stderr)
    if args.report:
        write_json_atomic(args.report, {"images": reports, "failed": failures})
    print(f"upscaled {len(reports)} of {len(inputs)} images into {args.output}" + (f"; {len(failures)} failed" if failures else ""))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
