"""What the Colab notebooks (colab/*.ipynb) compute, so that the notebooks themselves are only calls.

- Training (colab/train_tpu.ipynb): `training_setup` picks the config, data source and workdir (the tiny
  smoke run, configs/smoke.py:bundled, on the bundled photos, or a configs/*.py recipe on DIV2K from a Drive
  manual dir or the TFDS catalogue); `training_curves` / `curves_figure` read the TensorBoard event files back
  into a plot; `exported_models` lists the Orbax models a run exported.
- Upscaling demo (colab/upscale_demo.ipynb): `demo_setup` / `open_checkpoint` (converting an official
  .pth on first use), `demo_pair` (HR photo → the paper's bicubic LR), `compare` / `comparison_figure`
  (LR, bicubic, ClassSR and the class map side by side, with the FLOPs saved) and `budget_sweep` /
  `budget_figure` (FLOPs and PSNR against the `budget` setting).

Nothing here reads environment variables: each notebook reads its smoke switch (`CLASSSR_SMOKE=1`) once, in
its first cell, and passes `smoke=` on. Figures are `matplotlib.figure.Figure`s made
without pyplot, so they render the same under any backend (Agg in the tests, inline in Colab); `show`
displays one as a PNG.
"""

from __future__ import annotations

import dataclasses
import io
import os
import tempfile
from pathlib import Path
from typing import Any, Sequence

import jax
import numpy as np
from matplotlib.figure import Figure

from classsr_jax import checkpointing
from classsr_jax.checkpointing import EXPORT_DIR
from classsr_jax.data.bicubic import bicubic_degrade, imresize, modcrop
from classsr_jax.data.bundled import BUNDLED_FILES, bundled_paths
from classsr_jax.evaluation import metrics
from classsr_jax.evaluation.scoring import image_metrics
from classsr_jax.evaluation.tables import markdown_table
from classsr_jax.inference.class_map import class_map_overlay
from classsr_jax.inference.upscaler import check_routing
from classsr_jax.io.images import read_image
from classsr_jax.io.pixels import to_uint8
from classsr_jax.models import conversion
from classsr_jax.training.configuration import apply_overrides, load_config, validate_config
from classsr_jax.training.workdir import Workdir

DATA_SOURCES = ("drive", "catalogue", "bundled")
DEFAULT_BUDGETS = (0.4, 0.6, 0.8, 1.0)
DEFAULT_CURVE_TAGS = ("train/loss", "val/psnr")


# ---------------------------------------------------------------------------------------------- configs


def training_config(name: str, *, data: str, manual_dir: str = "", data_dir: str = "", overrides=None):
    """A configs/*.py recipe with its data source chosen:

    data='drive': the config's `classsr_div2k` builder over `manual_dir` (DIV2K's HR PNGs 0001–0900 in one
    folder, e.g. on Google Drive); data='catalogue': the TFDS catalogue's `div2k/bicubic_x<scale>` (TFDS
    downloads it), validated on the first 10 validation images (val_10); data='bundled': the config's own data
    as it is (the quickstart's: scikit-image's photos). `data_dir` is where TFDS keeps the
    prepared data (created if missing; keep it on Drive to prepare only once).
    """
    if data not in DATA_SOURCES:
        raise ValueError(f"unknown data source {data!r}: use one of {', '.join(DATA_SOURCES)}")
    config = load_config(name)  # configs/<name>.py
    if data == "bundled":
        pass
    elif data == "drive":
        if not manual_dir:
            raise ValueError("data='drive' needs manual_dir: the folder holding DIV2K's HR PNGs 0001.png … 0900.png")
        config.data.manual_dir = manual_dir
    else:
        catalogue = f"div2k/bicubic_x{int(config.model.scale)}"
        config.data.dataset = catalogue
        config.data.validation_dataset = catalogue
        config.data.validation_split = "validation[:10]"
        config.data.manual_dir = ""
    if data_dir:
        os.makedirs(data_dir, exist_ok=True)
        config.data.data_dir = data_dir
    return apply_overrides(config, overrides)


def training_setup(
    smoke: bool,
    config: str = "fsrcnn",
    *,
    data: str = "drive",
    manual_dir: str = "",
    data_dir: str = "",
    workdir: str = "",
    overrides=None,
):
    """(config, workdir) for the training notebook. Smoke mode ignores the other arguments: the tiny
    quickstart-like config (configs/smoke.py:bundled) on the bundled photos, with TFDS data and the workdir in a
    new temporary folder."""
    if smoke:
        root = tempfile.mkdtemp(prefix="classsr_smoke_")
        tfds_dir = os.path.join(root, "tensorflow_datasets")
        os.makedirs(tfds_dir)
        cfg = load_config("smoke:bundled", {"data.data_dir": tfds_dir})
        work = os.path.join(root, "workdir")
        print(f"smoke mode: a tiny ClassSR-FSRCNN on the bundled photos in {root} (instead of {config!r} on {data})")
    else:
        if not workdir:
            raise ValueError("give a workdir (e.g. a folder on Drive, so that a disconnected run resumes)")
        cfg = training_config(config, data=data, manual_dir=manual_dir, data_dir=data_dir, overrides=overrides)
        work = workdir
    validate_config(cfg)
    return cfg, os.path.abspath(os.path.expanduser(work))


def evaluation_table(results: dict[str, Any] | None, workdir: str) -> str:
    """The paper's table of a run: from train_and_evaluate's results, or the one a finished run saved."""
    if results and results.get("evaluation"):
        return results["evaluation"]["table"]
    path = Workdir(workdir).table_md
    if os.path.isfile(path):
        with open(path) as f:
            return f.read().strip()
    return "_No evaluation yet: run the `evaluate` stage (it is in `config.stages='all'`)._"


def describe_config(config) -> str:
    """A few lines: model, data, steps per stage."""
    m, d = config.model, config.data
    lines = [
        f"model: ClassSR-{m.network} x{m.scale}, branch widths {'/'.join(map(str, m.widths))}",
        f"data: {d.dataset} (validation {d.validation_dataset} {d.validation_split!r})"
        + (f", manual dir {d.manual_dir}" if d.manual_dir else "")
        + f", TFDS data dir {d.data_dir or '~/tensorflow_datasets'}",
        f"stages: {config.stages}; half precision: {config.half_precision}",
    ]
    for stage in ("original", "branches", "joint"):
        s = config[stage]
        lines.append(f"  {stage}: {s.num_steps:,} steps of batch {s.batch_size}, lr {s.learning_rate:g}")
    return "\n".join(lines)


# -------------------------------------------------------------------------------------- training outputs


def training_curves(
    workdir: str, tags: Sequence[str] = DEFAULT_CURVE_TAGS
) -> dict[str, dict[str, tuple[list[int], list[float]]]]:
    """{stage: {tag: (steps, values)}} of the scalar summaries a run wrote under WORKDIR/tensorboard/."""
    # Deferred: tensorboard is only needed to read curves back, and is slow to import.
    from tensorboard.backend.event_processing import event_accumulator
    from tensorboard.util import tensor_util

    root = os.path.join(workdir, "tensorboard")
    curves: dict[str, dict[str, tuple[list[int], list[float]]]] = {}
    if not os.path.isdir(root):
        return curves
    for stage in sorted(os.listdir(root)):
        path = os.path.join(root, stage)
        if not os.path.isdir(path):
            continue
        acc = event_accumulator.EventAccumulator(
            path, size_guidance={event_accumulator.TENSORS: 0, event_accumulator.SCALARS: 0}
        )
        acc.Reload()
        found = acc.Tags()
        per_tag = {}
        for tag in tags:
            points = []
            if tag in found.get("tensors", []):
                for ev in acc.Tensors(tag):
                    value = tensor_util.make_ndarray(ev.tensor_proto)
                    if value.size == 1 and np.issubdtype(value.dtype, np.number):
                        points.append((int(ev.step), float(value.reshape(()))))
            elif tag in found.get("scalars", []):
                points = [(int(ev.step), float(ev.value)) for ev in acc.Scalars(tag)]
            if points:
                points.sort()
                per_tag[tag] = ([p[0] for p in points], [p[1] for p in points])
        if per_tag:
            curves[stage] = per_tag
    return curves


_STAGE_ORDER = ("original", "branch1", "branch2", "branch3", "joint", "finetune")


def curves_figure(
    curves: dict[str, dict[str, tuple[list[int], list[float]]]], tags: Sequence[str] = DEFAULT_CURVE_TAGS
):
    """One panel per tag, one line per stage (what TensorBoard shows, as a static picture)."""
    tags = [t for t in tags if any(t in per_tag for per_tag in curves.values())] or list(tags)
    fig = Figure(figsize=(5 * len(tags), 3.4), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(tags)))
    order = sorted(curves, key=lambda s: (_STAGE_ORDER.index(s) if s in _STAGE_ORDER else len(_STAGE_ORDER), s))
    for ax, tag in zip(axes, tags):
        for stage in order:
            if tag in curves[stage]:
                steps, values = curves[stage][tag]
                ax.plot(steps, values, marker="o" if len(steps) < 20 else None, label=stage)
        ax.set_title(tag)
        ax.set_xlabel("step")
        if tag.endswith("loss"):
            ax.set_yscale("log")
        if ax.lines:
            ax.legend(fontsize="small")
    return fig


def exported_models(workdir: str) -> list[dict[str, Any]]:
    """[{name, path, model, params}] of the Orbax models under WORKDIR/export (classsr, original)."""
    root = os.path.join(workdir, EXPORT_DIR)
    out = []
    for name in sorted(os.listdir(root)) if os.path.isdir(root) else []:
        path = os.path.join(root, name)
        if not os.path.isdir(path) or ".tmp-" in name or ".old-" in name:
            continue
        loaded = checkpointing.load_model(path)
        params = checkpointing.count_params(loaded.variables)
        out.append({"name": name, "path": path, "model": loaded.spec.describe(), "params": params})
    return out


def format_exports(exports: list[dict[str, Any]]) -> str:
    return markdown_table(
        ["export", "model", "params", "path"],
        [[e["name"], e["model"], f"{e['params']:,}", f"`{e['path']}`"] for e in exports],
    )


# ------------------------------------------------------------------------------------------- checkpoints


def demo_setup(smoke: bool, checkpoint: str, image: str) -> tuple[str, str]:
    """(checkpoint, image) for the upscaling demo. Smoke mode: the bundled model and the bundled photo 'chelsea'
    (the arguments are ignored: nothing on Drive)."""
    if not smoke:
        return checkpoint, image
    print(f"smoke mode: the bundled model {checkpointing.DEFAULT_MODEL} and the bundled photo 'chelsea'")
    return checkpointing.DEFAULT_MODEL, "chelsea"


def require_tpu(allow_cpu: bool) -> str:
    """The platform of JAX's devices; a RuntimeError saying what to do when it is not a TPU, unless `allow_cpu`
    (training the paper's recipes on a CPU or one GPU would take days)."""
    platform = jax.devices()[0].platform
    if platform != "tpu" and not allow_cpu:
        raise RuntimeError(
            f"this runtime has no TPU (JAX sees {jax.device_count()} {platform.upper()} device(s)): choose "
            "Runtime → Change runtime type → TPU and run the notebook again, or set ALLOW_CPU = True to go on here"
        )
    return platform


def open_checkpoint(path: str, official_pth: str | None = None, network: str | None = None, scale: int | None = None):
    """A LoadedModel from a converted or exported checkpoint or a training workdir. With `official_pth`
    (an official ClassSR / branch .pth; needs torch), it is converted into `path` first, unless `path`
    already holds a checkpoint."""
    if official_pth and not os.path.exists(path):
        if not network:
            raise ValueError("converting an official checkpoint needs network= (fsrcnn, carn, srresnet or rcan)")
        state_dict = conversion.load_torch_state_dict(official_pth)
        spec, variables = conversion.convert_state_dict(network, state_dict, official_pth, scale=scale)
        checkpointing.save_model(path, spec, variables, metadata={"converted_from": official_pth})
    return checkpointing.open_model(path)


# ------------------------------------------------------------------------------------------------ images


def demo_pair(source: str, scale: int) -> tuple[str, np.ndarray, np.ndarray]:
    """(name, LR uint8, HR uint8) from an HR photo: a bundled photo's name (e.g. 'coffee') or an image file.
    The HR is cropped to a multiple of the scale and the LR made from it with the MATLAB bicubic (the
    paper's degradation), so the SR result can be scored against the HR."""
    if source in BUNDLED_FILES:
        split = next(s for s in ("validation", "train") if source in dict(bundled_paths(s)))
        path, name = str(dict(bundled_paths(split))[source]), source
    else:
        path, name = source, Path(source).stem
    hr = modcrop(to_uint8(read_image(path).rgb), scale)
    return name, bicubic_degrade(hr, scale), hr


@dataclasses.dataclass
class Comparison:
    name: str
    scale: int
    lr: np.ndarray  # uint8 (h, w, 3)
    hr: np.ndarray  # uint8 (scale·h, scale·w, 3)
    bicubic: np.ndarray  # uint8, MATLAB bicubic ×scale
    sr: np.ndarray  # uint8, ClassSR
    class_map: np.ndarray  # uint8, the SR image with every tile tinted by its class (green/yellow/red)
    psnr_bicubic: float
    psnr_sr: float
    class_counts: list[int]
    flops_percent: float  # the paper's FLOPs figure, % of the -O network

    @property
    def flops_saved_percent(self) -> float:
        return 100.0 - self.flops_percent

    def summary(self) -> str:
        counts = "/".join(map(str, self.class_counts))
        return (
            f"{self.name}: {self.lr.shape[1]}x{self.lr.shape[0]} → {self.sr.shape[1]}x{self.sr.shape[0]}; "
            f"PSNR bicubic {self.psnr_bicubic:.2f} dB, ClassSR {self.psnr_sr:.2f} dB; "
            f"tiles simple/medium/hard {counts}; "
            f"FLOPs {self.flops_percent:.0f}% of -O ({self.flops_saved_percent:.0f}% saved)"
        )


def compare(upscaler, lr_uint8: np.ndarray, hr_uint8: np.ndarray, name: str = "image") -> Comparison:
    """Upscales `lr_uint8` with `upscaler` (an inference.Upscaler) and with bicubic; PSNR against the HR."""
    scale = upscaler.spec.scale
    result = upscaler.upscale(np.asarray(lr_uint8))
    sr = to_uint8(result.sr)
    h, w = sr.shape[:2]
    hr = np.asarray(hr_uint8)[:h, :w]
    bicubic = np.clip(np.rint(imresize(np.asarray(lr_uint8), scale=scale)), 0, 255).astype(np.uint8)[:h, :w]
    psnr_bicubic = metrics.psnr(bicubic.astype(np.float64), hr.astype(np.float64), crop_border=scale)
    overlay = class_map_overlay(
        sr, result.grid.hr_boxes(scale), result.classes, num_classes=max(3, upscaler.spec.num_branches)
    )
    return Comparison(
        name=name,
        scale=scale,
        lr=np.asarray(lr_uint8),
        hr=hr,
        bicubic=bicubic,
        sr=sr,
        class_map=overlay,
        psnr_bicubic=float(psnr_bicubic),
        psnr_sr=float(image_metrics(result, hr, scale)["psnr"]),
        class_counts=list(result.class_counts),
        flops_percent=float(result.flops_percent),
    )


def comparison_figure(c: Comparison, panel_width: float = 4.0):
    """LR, bicubic, ClassSR and the class map side by side (the LR drawn at the same size, pixelated)."""
    h, w = c.sr.shape[:2]
    fig = Figure(figsize=(4 * panel_width, panel_width * h / w + 0.9), layout="constrained")
    axes = fig.subplots(1, 4)
    counts = "/".join(map(str, c.class_counts))
    panels = [
        (c.lr, f"LR {c.lr.shape[1]}x{c.lr.shape[0]}"),
        (c.bicubic, f"bicubic x{c.scale}: {c.psnr_bicubic:.2f} dB"),
        (c.sr, f"ClassSR: {c.psnr_sr:.2f} dB, {c.flops_percent:.0f}% FLOPs"),
        (c.class_map, f"classes (simple/medium/hard) {counts}"),
    ]
    for ax, (image, title) in zip(axes, panels):
        ax.imshow(image, extent=(0, w, h, 0), interpolation="nearest")
        ax.set_title(title, fontsize="medium")
        ax.set_axis_off()
    fig.suptitle(f"{c.name}: ClassSR saves {c.flops_saved_percent:.0f}% of the -O network's FLOPs")
    return fig


# ------------------------------------------------------------------------------------------------ budget


def budget_sweep(
    upscaler, lr_uint8: np.ndarray, hr_uint8: np.ndarray, budgets: Sequence[float] = DEFAULT_BUDGETS
) -> list[dict[str, Any]]:
    """[{budget, flops_percent, psnr, class_counts}] for each FLOPs cap (fraction of the -O FLOPs); the budget is
    an argument of each call, so the upscaler's compiled programs are reused."""
    for budget in budgets:
        check_routing(upscaler.spec, float(budget), None)
    scale = upscaler.spec.scale
    rows = []
    for budget in budgets:
        result = upscaler.upscale(np.asarray(lr_uint8), budget=float(budget))
        rows.append(
            {
                "budget": float(budget),
                "flops_percent": float(result.flops_percent),
                "psnr": float(image_metrics(result, np.asarray(hr_uint8), scale)["psnr"]),
                "class_counts": list(result.class_counts),
            }
        )
    return rows


def format_sweep(rows: list[dict[str, Any]]) -> str:
    return markdown_table(
        ["budget", "FLOPs (% of -O)", "PSNR (dB)", "tiles simple/medium/hard"],
        [
            [
                f"{r['budget']:.2f}",
                f"{r['flops_percent']:.1f}",
                f"{r['psnr']:.2f}",
                "/".join(map(str, r["class_counts"])),
            ]
            for r in rows
        ],
    )


def budget_figure(rows: list[dict[str, Any]]):
    """FLOPs (% of -O) and PSNR against the budget, side by side."""
    budgets = [r["budget"] for r in rows]
    fig = Figure(figsize=(8, 3), layout="constrained")
    ax_flops, ax_psnr = fig.subplots(1, 2)
    ax_flops.plot(budgets, [r["flops_percent"] for r in rows], marker="o")
    ax_flops.plot(budgets, [100 * b for b in budgets], linestyle=":", color="grey", label="target")
    ax_flops.set_xlabel("budget (fraction of -O FLOPs)")
    ax_flops.set_ylabel("FLOPs (% of -O)")
    ax_flops.legend(fontsize="small")
    ax_psnr.plot(budgets, [r["psnr"] for r in rows], marker="o", color="tab:red")
    ax_psnr.set_xlabel("budget (fraction of -O FLOPs)")
    ax_psnr.set_ylabel("PSNR (dB)")
    return fig


# ------------------------------------------------------------------------------------------------ display


def figure_png(fig, dpi: int = 100) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def show(fig, dpi: int = 100) -> None:
    """Displays a Figure in the notebook as a PNG (independent of the matplotlib backend)."""
    from IPython.display import Image, display  # deferred: IPython exists only inside a notebook

    display(Image(data=figure_png(fig, dpi)))


def show_markdown(text: str) -> None:
    from IPython.display import Markdown, display  # deferred: IPython exists only inside a notebook

    display(Markdown(text))
