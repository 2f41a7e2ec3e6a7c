"""Evaluate a model on LR/HR folders: PSNR, PSNR-Y, SSIM-Y, the paper's FLOPs figure, class ratios, time.

  classsr-evaluate --checkpoint DIR --lr-dir LR --hr-dir HR [--protocol paper|full]
      [--force-class K] [--budget F] [--with-original] [--nobicubic] [--dtype bfloat16] [--report R.json]

The table has a row for MATLAB bicubic on the same pixels (the paper's baseline), unless --nobicubic.

LR and HR images are paired by name; an LR name may carry the scale suffix of DIV2K (0801x4.png ↔ 0801.png;
see `classsr_jax.evaluation.pairing`). Every bad pair (no partner, two LR files for one HR image, an HR that is
not scale × its LR, an unreadable or too-large image, an image the protocol cannot tile) is named in one line,
skipped and listed under `failed` in the report; the others are evaluated, and the exit code says that some
failed. A thread decodes the next pair while the device works on the current one. --report is checked before
any work (never an LR or HR image, never inside the checkpoint, in a writable folder), so a finished
evaluation cannot lose its report.
"""

from __future__ import annotations

import os
import sys

import numpy as np
from absl import flags
from tqdm import tqdm

from classsr_jax import cli
from classsr_jax.cli.model_flags import MODEL_GROUPS, define_model_flags, make_upscaler
from classsr_jax.errors import DataError, UserError
from classsr_jax.evaluation.pairing import pair_folders
from classsr_jax.evaluation.scoring import Pair, bicubic_average, check_pair_shapes, evaluate_models, format_table
from classsr_jax.inference.upscaler import Upscaler
from classsr_jax.io import atomic, outputs
from classsr_jax.io.background import prefetched
from classsr_jax.io.images import image_size, list_images, read_image

FLAGS = flags.FlagValues()
define_model_flags(FLAGS, default_protocol="paper")
flags.DEFINE_string("lr-dir", None, "Folder of LR images.", flag_values=FLAGS)
flags.DEFINE_string("hr-dir", None, "Folder of the ground-truth HR images.", flag_values=FLAGS)
flags.DEFINE_bool("with-original", False, "Also evaluate the -O network (the last branch).", flag_values=FLAGS)
flags.DEFINE_bool("bicubic", True, "Add a row for MATLAB bicubic interpolation on the same pixels.", flag_values=FLAGS)
HELP = cli.CommandHelp(
    usage="classsr-evaluate --checkpoint MODEL --lr-dir LR --hr-dir HR [flags]",
    summary="PSNR, PSNR-Y, SSIM-Y, FLOPs and class ratios of a model on LR/HR folders, as the paper's table.",
    examples=("classsr-evaluate --checkpoint quickstart --lr-dir data/LR/X4 --hr-dir data/HR",
              "classsr-evaluate --checkpoint ckpt/classsr_rcan --lr-dir LR --hr-dir HR --with-original --budget 0.5"),
    groups=(("Data", ("lr-dir", "hr-dir")), ("Table", ("with-original", "bicubic", "report", "overwrite")),
            *MODEL_GROUPS),
    required=("checkpoint", "lr-dir", "hr-dir"),
)
TILE = 32  # the LR tile, for the bicubic row's covered area under the paper protocol


def checked_pairs(pairs, scale: int, max_pixels: int | None, failures: list[dict]) -> list[tuple[str, str, str]]:
    """The pairs whose headers fit (sizes within the pixel limit, HR = scale × LR); the others go to failures."""
    good = []
    for name, lr_path, hr_path in pairs:
        try:
            lr_hw, hr_hw = image_size(lr_path, max_pixels), image_size(hr_path, max_pixels)
            check_pair_shapes(f"{name} ({os.path.basename(lr_path)}, {os.path.basename(hr_path)})", lr_hw, hr_hw, scale)
        except UserError as e:
            failures.append({"name": name, "error": str(e)})
            continue
        good.append((name, lr_path, hr_path))
    return good


def report_failure(failures: list[dict], name: str, error: Exception, files: dict[str, str] | None = None) -> None:
    """Lists and prints the failure of one pair, its message naming the LR file (`files`: name -> LR path)."""
    message, path = str(error), (files or {}).get(name)
    if path and path not in message:
        message = f"{name} ({path}): {message}"
    failures.append({"name": name, "error": message})
    tqdm.write(f"error: {message}", file=sys.stderr)  # on its own line, not glued to the progress bar


def scale_255(pixels: np.ndarray) -> np.ndarray:
    """Samples on the 0–255 scale (16-bit divided by 257), as the bicubic baseline reads them."""
    return pixels.astype(np.float64) / 257.0 if pixels.dtype == np.uint16 else pixels


def read_pairs(
    pairs,
    max_pixels: int | None,
    failures: list[dict],
    bicubic: dict[str, dict] | None = None,
    scale: int = 4,
    protocol: str = "paper",
):
    """Pairs decoded on a background thread, one ahead of the device; unreadable ones go to failures. With a
    `bicubic` dict, each pair's bicubic metrics are stored in it under the pair's name."""
    load = lambda job: (read_image(job[1], max_pixels), read_image(job[2], max_pixels))
    for (name, _, _), images, error, seconds in prefetched(pairs, load):
        if error is not None:
            if not isinstance(error, UserError):
                raise error
            report_failure(failures, name, error)
            continue
        lr, hr = images
        if bicubic is not None:
            try:
                bicubic[name] = bicubic_average(
                    [(name, scale_255(lr.pixels), scale_255(hr.pixels))], scale, protocol, TILE
                )
            except ValueError:  # too small for the protocol: evaluate_models reports the pair
                pass
        yield Pair(name, lr.pixels, hr.pixels, seconds)


def plan_report(fv: flags.FlagValues) -> None:
    """Checks --report against the rule of `classsr_jax.io.outputs` before any work: not an LR or HR image, not
    inside the checkpoint, in a writable folder (created if needed)."""
    if not fv.report:
        return
    inputs = [*list_images(fv["lr-dir"].value), *list_images(fv["hr-dir"].value)]
    plan = outputs.OutputPlan(inputs, [fv.checkpoint], overwrite=fv.overwrite)
    plan.add(fv.report, "report")
    plan.prepare_folders()


def run(fv: flags.FlagValues) -> int:
    cli.require_flags(fv, "checkpoint", "lr-dir", "hr-dir")
    plan_report(fv)
    loaded, upscaler, routing = make_upscaler(fv)
    spec, max_pixels = loaded.spec, fv["max-pixels"].value
    pairs, failures = pair_folders(fv["lr-dir"].value, fv["hr-dir"].value, spec.scale)
    pairs = checked_pairs(pairs, spec.scale, max_pixels, failures)
    lr_files = {name: lr_path for name, lr_path, _ in pairs}
    for failure in failures:
        print(f"error: {failure['error']}", file=sys.stderr)
    label = f"ClassSR-{spec.network}" if spec.kind == "classsr" else spec.network
    upscalers = {"model": upscaler}
    if fv["with-original"].value and spec.kind == "classsr":  # the -O network alone: no Class-Module, 100% of itself
        last = spec.num_branches - 1
        upscalers["original"] = Upscaler(
            spec.branch(last), spec.branch_variables(loaded.variables, last), protocol=fv.protocol, dtype=fv.dtype
        )
    bicubic = {} if fv.bicubic else None
    results = evaluate_models(
        upscalers,
        read_pairs(pairs, max_pixels, failures, bicubic, spec.scale, fv.protocol),
        options={"model": routing},
        progress=True,
        total=len(pairs),
        on_error=lambda name, e: report_failure(failures, name, e, lr_files),
    )
    if "model" not in results:
        raise DataError(f"no pair could be evaluated ({len(failures)} failed)")
    report = dict(results["model"])
    rows = [(label, report["average"])]
    if "original" in results:
        report["original"] = results["original"]
        rows.append((f"{spec.network}-O", results["original"]["average"]))
    if bicubic is not None:
        names = [image["name"] for image in report["images"]]
        report["bicubic"] = {k: float(np.mean([bicubic[n][k] for n in names])) for k in ("psnr", "psnr_y", "ssim_y")}
        rows.append(("Bicubic", report["bicubic"]))
    report.update(failed=failures, protocol=fv.protocol)
    print(format_table(rows))
    if fv.report:
        atomic.write_json(fv.report, report)
    if failures:
        print(f"evaluated {len(report['images'])} pairs; {len(failures)} failed (listed above)", file=sys.stderr)
    return cli.FAILED if failures else cli.OK


def main(argv=None) -> int:
    return cli.run(run, FLAGS, argv, program="classsr-evaluate", command_help=HELP)


if __name__ == "__main__":
    sys.exit(main())
