"""Upscale images with a ClassSR model (or a single network) through routed, seam-free tiling.

  classsr-upscale -i IN -o OUT [--checkpoint DIR|quickstart] [--protocol full|paper] [--mask MASK.png]
      [--force-class K] [--budget F] [--dtype bfloat16] [--suffix _x4] [--recursive] [--report R.json]
      [--overwrite] [--max-output-pixels N] [--png-compression N] [--quality Q]

Without --checkpoint the bundled model `quickstart` runs (one line says so). IN and OUT are files, or folders
(every image in IN, one line per image beside a progress bar; --recursive mirrors subfolders into OUT, else
they are skipped and counted in one line; --suffix names outputs name_x4.png); in folder mode --mask names a
folder for the class maps (NAME_mask.png). Every path the run writes (outputs, masks, the report) follows one
rule, checked before any work (`classsr_jax.io.outputs`): never an input, never inside the checkpoint in use,
never another output of the run (two inputs whose outputs or masks would share a name are an error), in a folder
that exists or can be created and is writable. Existing outputs are kept unless --overwrite: for a single file
that is an error; in folder mode they are skipped and counted, so a rerun continues where a crash stopped. An
image whose output would exceed --max-output-pixels is refused from its header. A bad image is reported and
skipped, and the exit code says that something failed. Ctrl-C or SIGTERM stops with one line saying how many
images were written (exit code 130 or 143) and leaves no temporary file. While the device upscales one image,
threads decode the next one and encode the previous ones.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import sys
import threading
import time

import numpy as np
from absl import flags
from tqdm import tqdm

from classsr_jax import checkpointing, cli
from classsr_jax.cli.model_flags import MODEL_GROUPS, define_model_flags, make_upscaler
from classsr_jax.errors import ImageError, UserError
from classsr_jax.inference.class_map import class_map_overlay
from classsr_jax.inference.layouts import upscale_image
from classsr_jax.inference.upscaler import Upscaler, UpscaleResult
from classsr_jax.io import atomic, outputs
from classsr_jax.io.background import BackgroundWriter, prefetched
from classsr_jax.io.images import (
    IMAGE_EXTENSIONS,
    LoadedImage,
    image_size,
    list_images,
    output_bit_depth,
    read_image,
    write_image,
)
from classsr_jax.io.pixels import to_uint8

FLAGS = flags.FlagValues()
define_model_flags(FLAGS, default_protocol="full")
flags.DEFINE_string("input", None, "An image file or a folder of images.", short_name="i", flag_values=FLAGS)
flags.DEFINE_string("output", None, "The output file, or a folder when --input is a folder.", short_name="o",
                    flag_values=FLAGS)
flags.DEFINE_string("mask", None, "The class-map picture (a folder in folder mode).", flag_values=FLAGS)
flags.DEFINE_string("suffix", "", "Folder mode: add this to each output's name (_x4: photo.png → photo_x4.png).",
                    flag_values=FLAGS)
flags.DEFINE_bool("recursive", False, "Folder mode: also upscale the images in subfolders, mirrored into the output "
                  "folder (without it they are skipped, and counted in one line).", flag_values=FLAGS)
flags.DEFINE_integer("png-compression", None, "zlib level 0-9 for PNG outputs (6: Pillow's size); default: fast.",
                     lower_bound=0, upper_bound=9, flag_values=FLAGS)
flags.DEFINE_integer("quality", None, "1-100: JPEG quality (default 95); makes WebP lossy (default lossless).",
                     lower_bound=1, upper_bound=100, flag_values=FLAGS)
flags.DEFINE_integer("num-processes", 1, "Folder mode on several hosts or processes: how many split the files.",
                     lower_bound=1, flag_values=FLAGS)
flags.DEFINE_integer("process-index", 0, "This process's share of the files (0 to --num-processes - 1): every "
                     "N-th file, starting at this one; its report is R.processI-of-N.json.", lower_bound=0,
                     flag_values=FLAGS)
flags.DEFINE_integer("encoders", None, "Threads encoding outputs in folder mode; default min(4, cores).",
                     lower_bound=1, flag_values=FLAGS)
flags.DEFINE_integer("max-output-pixels", None, "Refuse, from its header, an image whose upscaled output would have "
                     "more pixels than this (default: what fits an eighth of this host's memory; 0: no limit).",
                     lower_bound=0, flag_values=FLAGS)
HELP = cli.CommandHelp(
    usage="classsr-upscale -i INPUT -o OUTPUT [flags]",
    summary="Upscale an image, or every image of a folder, with a ClassSR model (default: the bundled quickstart).",
    examples=("classsr-upscale -i photo.jpg -o photo_x4.png",
              "classsr-upscale -i photos/ -o big/ --suffix _x4 --recursive --checkpoint ckpt/classsr_rcan"),
    groups=(("Input and output", ("input", "output", "suffix", "recursive", "mask", "overwrite", "report")),
            ("Output files", ("png-compression", "quality", "encoders", "max-output-pixels")),
            ("Several processes", ("num-processes", "process-index")),
            *MODEL_GROUPS),
    required=("input", "output"),
)
# What a bad image can raise: a user error (unreadable, too big, unwritable) or a ValueError of the tiling
# (an image smaller than a tile under the paper protocol). Anything else is a bug and stops the command.
ITEM_ERRORS = (UserError, ValueError)


@dataclasses.dataclass(frozen=True)
class Job:
    input: str
    output: str
    mask: str | None


def write_outputs(fv: flags.FlagValues, upscaler: Upscaler, job: Job, image: LoadedImage, result: UpscaleResult,
                  alpha: np.ndarray | None) -> None:
    """The SR image (in the input's layout, depth and colour profile) and the class map, each written atomically."""
    write_image(job.output, result.sr, like=image, alpha=alpha, png_compression=fv["png-compression"].value,
                quality=fv.quality)
    if job.mask:
        sr8 = result.sr if result.sr.dtype == np.uint8 else to_uint8(result.sr / np.float32(65535.0))
        boxes = result.grid.hr_boxes(upscaler.spec.scale)
        write_image(job.mask, class_map_overlay(sr8, boxes, result.classes, num_classes=upscaler.spec.num_branches))


def report_entry(job: Job, result: UpscaleResult, scale: int, read_s: float, write_s: float) -> dict:
    report = {"input": job.input, "output": job.output, **result.report(scale)}
    report["timing"].update(read_s=read_s, write_s=write_s)
    return report


def summary_line(report: dict) -> str:
    t = report["timing"]
    return (
        f"{report['input']} → {report['output']}: {report['output_hw'][1]}x{report['output_hw'][0]}, "
        f"{report['tiles']} tiles {report['class_counts']}, FLOPs {report['flops_percent']:.0f}% of -O, "
        f"{t['inference_s']:.2f} s (+{t['compile_s']:.1f} s compile; "
        f"read {t['read_s']:.2f} s, write {t['write_s']:.2f} s)"
    )


def budget_warning(report: dict) -> None:
    """One line on stderr when a FLOPs cap could not be met (every tile already went to the cheapest branch)."""
    if report.get("budget_met") is False:
        print(f"warning: {report['input']}: the budget {report['budget']:g} cannot be met; every tile went to the "
              f"cheapest branch ({report['flops_percent']:.0f}% of the -O FLOPs)", file=sys.stderr, flush=True)


def check_extension(path: str, what: str) -> None:
    if os.path.splitext(path)[1].lower() not in IMAGE_EXTENSIONS:
        raise cli.UsageError(f"{what} {path} has an unknown extension (use one of {', '.join(IMAGE_EXTENSIONS)})")


def with_suffix(name: str, suffix: str) -> str:
    """'photo.png', '_x4' → 'photo_x4.png'."""
    stem, extension = os.path.splitext(name)
    return f"{stem}{suffix}{extension}"


def protected_paths(fv: flags.FlagValues) -> list[str]:
    """What the run reads besides its images and must never write into: the checkpoint in use."""
    model_dir = checkpointing.resolve_model_dir(fv.checkpoint)
    return [p for p in {fv.checkpoint, model_dir} if os.path.exists(p)]


def plan_file(fv: flags.FlagValues) -> tuple[Job, outputs.OutputPlan]:
    """The one job of file mode and the plan of what it writes, every path checked before any work."""
    in_folder = os.path.join(fv.output, with_suffix(os.path.basename(fv.input), fv.suffix))
    output = in_folder if os.path.isdir(fv.output) else fv.output
    check_extension(output, "output")
    plan = outputs.OutputPlan([fv.input], protected_paths(fv), overwrite=fv.overwrite)
    plan.add(output, "output")
    if fv.mask:
        check_extension(fv.mask, "--mask")
        plan.add(fv.mask, "mask")
    return Job(fv.input, output, fv.mask), plan


def plan_folder(fv: flags.FlagValues) -> tuple[list[Job], list[str], int, outputs.OutputPlan]:
    """(jobs to run, outputs kept because they exist, images found, the plan of what the run writes) in folder
    mode. Refuses before any work an output or mask folder that is a file, an output that would be an input or
    inside the checkpoint, and two inputs whose outputs or masks would land on one file."""
    inputs = list_images(fv.input, recursive=fv.recursive)
    if fv.recursive:  # an output folder inside the input folder holds outputs, not inputs
        inside = [os.path.realpath(f) + os.sep for f in (fv.output, fv.mask) if f]
        inputs = [p for p in inputs if not os.path.realpath(p).startswith(tuple(inside))]
    for folder, flag in ((fv.output, "--output"), (fv.mask, "--mask")):
        if folder and os.path.exists(folder) and not os.path.isdir(folder):
            raise cli.UsageError(f"{flag} {folder} is a file, but --input {fv.input} is a folder: give a folder")
    plan = outputs.OutputPlan(inputs, protected_paths(fv), overwrite=fv.overwrite)
    # Every process plans the whole folder, so all refuse the same collisions, and keeps every N-th file from its index.
    mine = set(inputs[fv["process-index"].value :: fv["num-processes"].value])
    jobs, kept = [], []
    for path in inputs:
        name = os.path.relpath(path, fv.input)  # subfolders (--recursive) are mirrored
        output = os.path.join(fv.output, with_suffix(name, fv.suffix))
        mask = os.path.join(fv.mask, os.path.splitext(name)[0] + "_mask.png") if fv.mask else None
        exists = plan.add(output, "output", of=path, keep_existing=True)
        if mask is not None:
            exists = plan.add(mask, "mask", of=path, keep_existing=True) or exists
        if path not in mine:
            continue
        if exists and not fv.overwrite:
            kept.append(output)
        else:
            jobs.append(Job(path, output, mask))
    plan.add_folder(fv.output)
    if fv.mask:
        plan.add_folder(fv.mask)
    return jobs, kept, len(mine), plan


def earlier_folder_report(path: str) -> bool:
    """Whether `path` holds the report of an earlier folder run (JSON with its images, failures and kept outputs)."""
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and {"images", "failed", "kept"} <= set(data)


def check_processes(fv: flags.FlagValues, folder_mode: bool) -> None:
    """--num-processes and --process-index name one share of a folder."""
    n, i = fv["num-processes"].value, fv["process-index"].value
    if i >= n:
        raise cli.UsageError(f"--process-index {i} is out of range for --num-processes {n} (0–{n - 1})")
    if n > 1 and not folder_mode:
        raise cli.UsageError("--num-processes splits a folder: give a folder as --input")


def process_report(fv: flags.FlagValues) -> str | None:
    """--report, or with several processes this process's own: R.processI-of-N.json (I counted from 1)."""
    n, i = fv["num-processes"].value, fv["process-index"].value
    if fv.report is None or n == 1:
        return fv.report
    stem, extension = os.path.splitext(fv.report)
    return f"{stem}.process{i + 1}-of-{n}{extension}"


def skipped_subfolders_line(folder: str) -> str | None:
    """One line naming the subfolders of `folder` that folder mode skips without --recursive, or None."""
    names = sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))
    if not names:
        return None
    shown = ", ".join(names[:5]) + (", …" if len(names) > 5 else "")
    return f"note: skipped {len(names)} subfolder(s) of {folder} ({shown}); --recursive upscales them too"


def item_error(path: str, error: BaseException) -> str:
    """The error of one image as one line that names its file."""
    message = str(error)
    return message if path in message else f"{path}: {message}"


def read_checked(fv: flags.FlagValues, path: str, scale: int) -> LoadedImage:
    """Decodes `path` once its header shows that the output fits --max-output-pixels."""
    limit = fv["max-output-pixels"].value
    limit = outputs.memory_output_limit() if limit is None else limit
    if limit:
        outputs.check_output_size(path, image_size(path, fv["max-pixels"].value), scale, limit)
    return read_image(path, fv["max-pixels"].value)


def run_file(fv: flags.FlagValues, upscaler: Upscaler, routing: dict, job: Job) -> int:
    t0 = time.perf_counter()
    image = read_checked(fv, job.input, upscaler.spec.scale)
    read_s = time.perf_counter() - t0
    try:
        result, alpha = upscale_image(upscaler, image, bit_depth=output_bit_depth(image, job.output), **routing)
    except ValueError as e:  # e.g. an image smaller than a tile under the paper protocol
        raise ImageError(item_error(job.input, e)) from None
    t0 = time.perf_counter()
    write_outputs(fv, upscaler, job, image, result, alpha)
    report = report_entry(job, result, upscaler.spec.scale, read_s, time.perf_counter() - t0)
    if fv.report:
        atomic.write_json(fv.report, report)
    print(summary_line(report))
    budget_warning(report)
    return cli.OK


def write_all(fv: flags.FlagValues, upscaler: Upscaler, routing: dict, jobs: list[Job], read, reports: list,
              failed) -> None:
    """Upscales every job, decoding ahead and encoding behind on threads; appends a report entry per image
    written and calls `failed(job, error)` for each bad image. An interrupt waits for the encoder thread to
    finish the image it holds (written whole, atomically) before it propagates."""
    lock = threading.Lock()
    with BackgroundWriter(encoders=fv.encoders) as writer:
        for job, image, error, read_s in tqdm(prefetched(jobs, read), total=len(jobs), desc="upscale", unit="image"):
            if error is not None:
                if not isinstance(error, ITEM_ERRORS):
                    raise error
                failed(job, error)
                continue
            try:
                result, alpha = upscale_image(upscaler, image, bit_depth=output_bit_depth(image, job.output), **routing)
            except ITEM_ERRORS as e:
                failed(job, e)
                continue

            def done(_, error, write_s, job=job, result=result, read_s=read_s):
                if error is not None:
                    if not isinstance(error, ITEM_ERRORS):
                        raise error
                    failed(job, error)
                else:
                    entry = report_entry(job, result, upscaler.spec.scale, read_s, write_s)
                    tqdm.write(summary_line(entry))
                    budget_warning(entry)
                    with lock:
                        reports.append(entry)

            writer.submit(functools.partial(write_outputs, fv, upscaler, job, image, result, alpha), done)


def run_folder(fv: flags.FlagValues, upscaler: Upscaler, routing: dict, jobs: list[Job], kept: list[str],
               found: int) -> int:
    """Runs the jobs of folder mode; bad images are reported and skipped, the others written."""
    reports, failures = [], []
    lock = threading.Lock()

    def failed(job: Job, error: BaseException) -> None:
        with lock:
            failures.append({"input": job.input, "error": item_error(job.input, error)})
        tqdm.write(f"error: {item_error(job.input, error)}", file=sys.stderr)

    read = lambda job: read_checked(fv, job.input, upscaler.spec.scale)
    try:
        write_all(fv, upscaler, routing, jobs, read, reports, failed)
    except (KeyboardInterrupt, cli.Terminated) as e:  # the writer has finished what it held: count it
        e.progress = f"{len(reports)} of {len(jobs)} images written; rerun to resume"
        raise
    if fv.report:
        atomic.write_json(fv.report, {"images": reports, "failed": failures, "kept": kept})
    line = f"upscaled {len(reports)} of {found} images into {fv.output}"
    if kept:
        line += f"; {len(kept)} kept because their outputs exist (--overwrite replaces them)"
    if failures:
        line += f"; {len(failures)} failed"
    if fv["num-processes"].value > 1:
        line += f" (process {fv['process-index'].value + 1} of {fv['num-processes'].value})"
    print(line)
    return cli.FAILED if failures else cli.OK


def run(fv: flags.FlagValues) -> int:
    cli.require_flags(fv, "input", "output")
    if not os.path.exists(fv.input):
        raise cli.UsageError(f"input {fv.input} does not exist")
    if fv.checkpoint is None:
        fv.checkpoint = checkpointing.DEFAULT_MODEL
        print(f"note: no --checkpoint: using the bundled model {checkpointing.DEFAULT_MODEL} (a small ClassSR-FSRCNN "
              "x4 trained on a few photos, a demonstration; --checkpoint picks another)", file=sys.stderr, flush=True)
    folder_mode = os.path.isdir(fv.input)
    check_processes(fv, folder_mode)
    fv.report = process_report(fv)
    if folder_mode:
        jobs, kept, found, plan = plan_folder(fv)
        skipped = None if fv.recursive else skipped_subfolders_line(fv.input)
        if skipped:
            print(skipped, file=sys.stderr, flush=True)
    else:
        job, plan = plan_file(fv)
    if fv.report:  # a folder run's own earlier report is brought up to date by a rerun (a resumed job)
        plan.add(fv.report, "report", keep_existing=folder_mode and earlier_folder_report(fv.report))
    plan.prepare_folders()
    _, upscaler, routing = make_upscaler(fv)
    if folder_mode:
        return run_folder(fv, upscaler, routing, jobs, kept, found)
    try:
        return run_file(fv, upscaler, routing, job)
    except (KeyboardInterrupt, cli.Terminated) as e:
        e.progress = "0 of 1 images written; rerun to resume"
        raise


def main(argv=None) -> int:
    return cli.run(run, FLAGS, argv, program="classsr-upscale", command_help=HELP)


if __name__ == "__main__":
    sys.exit(main())
