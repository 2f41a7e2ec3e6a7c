"""Scoring super-resolved images against their ground truth: per-image metrics, dataset averages, the
bicubic baseline, and the paper's tables. Shared by the `evaluate` command, training validation and the
`evaluate` stage.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
from tqdm import tqdm

from classsr_jax.data.bicubic import imresize
from classsr_jax.errors import DataError, UserError
from classsr_jax.evaluation import metrics
from classsr_jax.evaluation.tables import markdown_table
from classsr_jax.inference import tiling
from classsr_jax.inference.upscaler import Upscaler, UpscaleResult
from classsr_jax.io.pixels import to_uint8
from classsr_jax.models import flops as flops_lib


@dataclasses.dataclass
class Pair:
    """An LR image and its ground truth (integer samples or floats on [0, 255]), and how long reading took."""

    name: str
    lr: np.ndarray
    hr: np.ndarray
    read_s: float = 0.0


def check_pair_shapes(name: str, lr_hw: tuple[int, int], hr_hw: tuple[int, int], scale: int) -> None:
    """DataError unless the HR, cropped to a multiple of `scale` as the LR was made, is exactly scale × the LR.
    Sizes in the messages read width x height."""
    (lh, lw), (hh, hw) = lr_hw, hr_hw
    want = (scale * lh, scale * lw)
    cropped = (hh - hh % scale, hw - hw % scale)
    if cropped == want:
        return
    if hh < want[0] or hw < want[1]:
        raise DataError(f"{name}: HR is {hw}x{hh}, smaller than {scale} × its {lw}x{lh} LR ({want[1]}x{want[0]})")
    raise DataError(
        f"{name}: HR is {hw}x{hh}, not {scale} × its {lw}x{lh} LR ({want[1]}x{want[0]} after cropping the HR "
        f"to a multiple of {scale}): wrong scale or a mismatched pair"
    )


def _values_255(pixels: np.ndarray) -> np.ndarray:
    """Samples on the 0–255 scale as float64 (16-bit ground truth divided by 257)."""
    values = np.asarray(pixels)
    return values.astype(np.float64) / 257.0 if values.dtype == np.uint16 else values.astype(np.float64)


def image_metrics(result: UpscaleResult, hr: np.ndarray, scale: int) -> dict[str, float]:
    """PSNR (RGB), PSNR-Y and SSIM-Y with a scale-px border crop, as the original's test does.

    Paper protocol: the float merge against the GT cropped to the covered area, exactly as the original.
    Full protocol: the uint8 image a user gets against the GT cropped to scale × the LR size.
    """
    h, w = result.sr.shape[:2]
    if hr.shape[0] < h or hr.shape[1] < w:
        raise DataError(f"ground truth is {hr.shape[1]}x{hr.shape[0]}, smaller than the {w}x{h} output")
    gt = _values_255(hr[:h, :w, :3])
    sr = result.sr_255.astype(np.float64) if result.sr_255 is not None else _values_255(result.sr)
    return {
        "psnr": metrics.psnr(sr, gt, crop_border=scale),
        "psnr_y": metrics.psnr_y(sr, gt, crop_border=scale),
        "ssim_y": metrics.ssim_y(sr, gt, crop_border=scale),
    }


def dataset_average(images: list[dict[str, Any]], upscaler: Upscaler) -> dict[str, Any]:
    """Dataset numbers; the FLOPs figure uses the summed class counts of all tiles, as the original does."""
    counts = np.sum([i["class_counts"] for i in images], axis=0).astype(np.int64)
    figure = flops_lib.paper_flops_figure(counts, upscaler.flops, upscaler.spec.network)
    mean = lambda key: float(np.mean([i[key] for i in images]))
    timing = lambda key: float(np.mean([i["timing"].get(key, 0.0) for i in images]))
    return {
        "psnr": mean("psnr"),
        "psnr_y": mean("psnr_y"),
        "ssim_y": mean("ssim_y"),
        "flops": figure,
        "flops_percent": 100.0 * figure / upscaler.flops.original,
        "class_counts": [int(c) for c in counts],
        "class_ratio": [float(c) / max(1, int(counts.sum())) for c in counts],
        "executed_flops": float(sum(i["executed_flops"] for i in images)),
        "inference_s": timing("inference_s"),
        "read_s": timing("read_s"),
        "compile_s": float(sum(i["timing"]["compile_s"] for i in images)),
    }


def evaluate_models(
    upscalers: dict[str, Upscaler],
    pairs: Iterable[Pair | tuple[str, np.ndarray, np.ndarray]],
    *,
    options: dict[str, dict[str, Any]] | None = None,
    progress: bool = False,
    total: int | None = None,
    on_error: Callable[[str, Exception], None] | None = None,
) -> dict[str, dict[str, Any]]:
    """Upscales every pair with every model, reading each pair once; {model: {"images", "average"}}.

    options[key]: that model's routing options for `Upscaler.upscale` (budget, force_class).

    A pair whose shapes do not fit (`check_pair_shapes`) or that a model cannot upscale (an image smaller than
    a tile under the paper protocol) goes to `on_error(name, error)` and is left out of every model's numbers;
    without `on_error` it raises.
    """
    scale = next(iter(upscalers.values())).spec.scale
    items = tqdm(pairs, desc="evaluate", unit="image", total=total) if progress else pairs
    images: dict[str, list] = {key: [] for key in upscalers}
    for item in items:
        pair = item if isinstance(item, Pair) else Pair(*item)
        try:
            check_pair_shapes(pair.name, pair.lr.shape[:2], pair.hr.shape[:2], scale)
            lr = pair.lr if pair.lr.dtype.kind in "ui" else np.asarray(pair.lr, np.float32) / np.float32(255.0)
            entries = {}
            for key, upscaler in upscalers.items():
                result = upscaler.upscale(lr, **(options or {}).get(key, {}))
                entry = {"name": pair.name, **image_metrics(result, pair.hr, scale), **result.report(scale)}
                entry["timing"]["read_s"] = pair.read_s
                entries[key] = entry
        except (UserError, ValueError) as e:
            if on_error is None:
                raise
            on_error(pair.name, e)
            continue
        for key, entry in entries.items():
            images[key].append(entry)
    out = {}
    for key, upscaler in upscalers.items():
        if images[key]:
            out[key] = {"images": images[key], "average": dataset_average(images[key], upscaler)}
    return out


def evaluate_pairs(upscaler: Upscaler, pairs, progress: bool = False, **routing) -> dict[str, Any]:
    """`evaluate_models` for one model: {"images", "average"}; `routing`: its budget or force_class."""
    results = evaluate_models({"model": upscaler}, pairs, options={"model": routing}, progress=progress)
    if "model" not in results:
        raise DataError("no image pairs to evaluate")
    return results["model"]


def class_shares(class_counts) -> str:
    """'36/24/41': each branch's share of the tiles in percent (simple/medium/hard)."""
    total = max(1, int(sum(class_counts)))
    return "/".join(f"{100 * c / total:.0f}" for c in class_counts)


def format_table(rows: list[tuple[str, dict[str, Any]]]) -> str:
    """The paper's table: one row per model/dataset with PSNR, FLOPs and % of -O, plus class ratios and time.

    A row without FLOPs (bicubic) shows '—' in the model-only columns."""

    def model_columns(avg: dict[str, Any]) -> list[str]:
        if "flops" not in avg:
            return ["—"] * 4
        return [
            flops_lib.format_flops(avg["flops"]),
            f"{avg['flops_percent']:.0f}%",
            class_shares(avg["class_counts"]),
            f"{avg['inference_s']:.2f}",
        ]

    return markdown_table(
        ["model", "PSNR (dB)", "PSNR-Y", "SSIM-Y", "FLOPs/tile", "% of -O", "class ratio", "s/image"],
        [
            [name, f"{avg['psnr']:.2f}", f"{avg['psnr_y']:.2f}", f"{avg['ssim_y']:.4f}", *model_columns(avg)]
            for name, avg in rows
        ],
    )


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


def format_results_table(results: dict[str, Any], collapse_threshold: float = 0.9) -> str:
    """The paper's table, one row per dataset and model: PSNR and PSNR-Y (dB), FLOPs per 32×32 tile (% of -O)
    and the share of tiles each branch got; below it, a line for every dataset where ClassSR sends more than
    `collapse_threshold` of the tiles to one branch (the classifier collapses there)."""
    rows, notes = [], []
    for dataset, row in results["datasets"].items():
        for model in results["models"]:
            avg = row.get(model["key"])
            if avg is None:
                continue
            params = f"{model['params']:,}" if model.get("params") else "—"
            flops = f"{flops_lib.format_flops(avg['flops'])} ({avg['flops_percent']:.0f}%)" if avg.get("flops") else "—"
            routed = model["key"].startswith("classsr")
            shares = class_shares(avg["class_counts"]) if routed else "—"
            psnr_y = f"{avg['psnr_y']:.2f}" if "psnr_y" in avg else "—"
            rows.append([dataset, model["name"], params, f"{avg['psnr']:.2f}", psnr_y, flops, shares])
            counts = avg.get("class_counts") if model["key"] == "classsr" else None
            if counts and sum(counts) and max(counts) / sum(counts) > collapse_threshold:
                k = max(range(len(counts)), key=counts.__getitem__)
                notes.append(
                    f"On {dataset}, {model['name']} sends {100 * counts[k] / sum(counts):.0f}% of the tiles to "
                    f"branch {k + 1} of {len(counts)}: the classifier does not route these images."
                )
    table = markdown_table(
        [
            "Dataset",
            "Model",
            "Params",
            "PSNR (dB)",
            "PSNR-Y (dB)",
            "FLOPs/tile (% of -O)",
            "tiles simple/medium/hard (%)",
        ],
        rows,
    )
    return "\n\n".join([table, *notes])
