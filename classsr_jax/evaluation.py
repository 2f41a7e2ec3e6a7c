"""Scoring super-resolved images against their ground truth: per-image metrics, dataset averages, the
bicubic baseline, and the paper's tables. Shared by the `evaluate` command, training validation and the
`evaluate` stage.
"""

from __future__ import annotations

from typing import Any, Iterable

import numpy as np

from classsr_jax import flops as flops_lib
from classsr_jax import metrics, tiling
from classsr_jax.bicubic import imresize
from classsr_jax.pixels import to_uint8
from classsr_jax.inference import UpscaleResult, Upscaler


def image_metrics(result: UpscaleResult, hr_uint8: np.ndarray, scale: int) -> dict[str, float]:
    """PSNR (RGB), PSNR-Y and SSIM-Y with a scale-px border crop (spec §5 step 6).

    Paper protocol: the float merge against the GT cropped to the covered area, exactly as the original.
    Full protocol: the uint8 image a user gets against the GT cropped to scale × the LR size.
    """
    h, w = result.sr.shape[:2]
    if hr_uint8.shape[0] < h or hr_uint8.shape[1] < w:
        raise ValueError(f"ground truth is {hr_uint8.shape[0]}x{hr_uint8.shape[1]}, smaller than the {h}x{w} output")
    hr = hr_uint8[:h, :w, :3].astype(np.float64)
    if result.sr_255 is not None:
        sr = result.sr_255.astype(np.float64)
    else:
        sr = to_uint8(result.sr).astype(np.float64)
    return {
        "psnr": metrics.psnr(sr, hr, crop_border=scale),
        "psnr_y": metrics.psnr_y(sr, hr, crop_border=scale),
        "ssim_y": metrics.ssim_y(sr, hr, crop_border=scale),
    }


def evaluate_pairs(
    upscaler: Upscaler,
    pairs: Iterable[tuple[str, np.ndarray, np.ndarray]],
    variables=None,
    progress: bool = False,
) -> dict[str, Any]:
    """Upscales every (name, lr_uint8, hr_uint8) pair and reports per-image and dataset numbers.

    The dataset FLOPs figure uses the summed class counts of all tiles, as the original does.
    """
    if variables is not None:
        upscaler.set_variables(variables)
    scale = upscaler.spec.scale
    pairs = list(pairs)
    if progress:
        from tqdm import tqdm

        pairs = tqdm(pairs, desc="evaluate", unit="image")
    images = []
    total_counts = np.zeros(upscaler.spec.num_branches, np.int64)
    for name, lr, hr in pairs:
        result = upscaler.upscale(np.asarray(lr, np.float32) / 255.0)
        entry = {"name": name, **image_metrics(result, np.asarray(hr), scale), **result.report(scale)}
        images.append(entry)
        total_counts += result.class_counts
    if not images:
        raise ValueError("no image pairs to evaluate")
    figure = flops_lib.paper_flops_figure(total_counts, upscaler.flops, upscaler.spec.network)
    average = {
        "psnr": float(np.mean([i["psnr"] for i in images])),
        "psnr_y": float(np.mean([i["psnr_y"] for i in images])),
        "ssim_y": float(np.mean([i["ssim_y"] for i in images])),
        "flops": figure,
        "flops_percent": 100.0 * figure / upscaler.flops.original,
        "class_counts": [int(c) for c in total_counts],
        "class_ratio": [float(c) / max(1, int(total_counts.sum())) for c in total_counts],
        "executed_flops": float(sum(i["executed_flops"] for i in images)),
        "inference_s": float(np.mean([i["timing"]["inference_s"] for i in images])),
        "compile_s": float(sum(i["timing"]["compile_s"] for i in images)),
    }
    return {"images": images, "average": average}


def format_table(rows: list[tuple[str, dict[str, Any]]]) -> str:
    """The paper's table: one row per model/dataset with PSNR, FLOPs and % of -O, plus class ratios and time."""
    lines = [
        "| model | PSNR (dB) | PSNR-Y | SSIM-Y | FLOPs/tile | % of -O | class ratio | s/image |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, avg in rows:
        ratio = "/".join(f"{100 * r:.0f}" for r in avg["class_ratio"])
        lines.append(
            f"| {name} | {avg['psnr']:.2f} | {avg['psnr_y']:.2f} | {avg['ssim_y']:.4f} | "
            f"{flops_lib.format_flops(avg['flops'])} | {avg['flops_percent']:.0f}% | {ratio} | {avg['inference_s']:.2f} |"
        )
    return "\n".join(lines)


def bicubic_average(pairs, scale: int, protocol: str, lr_patch: int) -> dict[str, float]:
    """MATLAB bicubic on the same pixels as the models (paper protocol: the area its tile grid covers)."""
    values = {"psnr": [], "psnr_y": [], "ssim_y": []}
    for _, lr, hr in pairs:
        grid = tiling.make_grid(lr.shape[0], lr.shape[1], protocol, lr_patch, lr_patch * 7 // 8, lr_patch // 4)
        h, w = grid.covered_hw[0] * scale, grid.covered_hw[1] * scale
        sr = to_uint8(imresize(lr, scale=scale), 255.0)[:h, :w].astype(np.float64)
        gt = hr[:h, :w].astype(np.float64)
        values["psnr"].append(metrics.psnr(sr, gt, crop_border=scale))
        values["psnr_y"].append(metrics.psnr_y(sr, gt, crop_border=scale))
        values["ssim_y"].append(metrics.ssim_y(sr, gt, crop_border=scale))
    return {k: float(np.mean(v)) for k, v in values.items()}


def format_results_table(results: dict[str, Any]) -> str:
    """The paper's table: one row per model, PSNR and FLOPs (per 32x32 tile, % of -O) per dataset."""
    datasets = list(results["datasets"])
    header = "| Model | Params | " + " | ".join(f"{d} PSNR (dB) | {d} FLOPs" for d in datasets) + " |"
    lines = [header, "|---|---|" + "---|---|" * len(datasets)]
    for model in results["models"]:
        params = f"{model['params']:,}" if model.get("params") else "—"
        cells = []
        for d in datasets:
            avg = results["datasets"][d].get(model["key"])
            if avg is None:
                cells += ["—", "—"]
                continue
            flops = f"{flops_lib.format_flops(avg['flops'])} ({avg['flops_percent']:.0f}%)" if avg.get("flops") else "—"
            cells += [f"{avg['psnr']:.2f}", flops]
        lines.append(f"| {model['name']} | {params} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
