"""Class division of the training tiles by how well a reference SR network restores them (the original's data
preparation, before the branches are trained).

The original cuts every LR training image into 32x32 tiles on a fixed grid (step 16, plus a last tile flush with
the border when more than 12 px would be left over), runs a pre-trained MSRResNet on each tile, and sorts the
tiles into three classes by the RGB PSNR of the output (uint8-rounded, `scale`-px border crop, as its test.py):

    PSNR ≥ t2       → class 0 (simple)
    t1 ≤ PSNR < t2  → class 1 (medium)
    PSNR < t1       → class 2 (hard)

The authors' thresholds are `PAPER_THRESHOLDS`; they split their 1.59M tiles into equal thirds. `divide` does
the same for any dataset and any SR function, with the thresholds either given or taken as the tertiles of the
measured PSNRs. Without a reference network, `bicubic_sr_fn` gives a MATLAB-bicubic stand-in.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from classsr_jax.data.bicubic import imresize
from classsr_jax.errors import DataError
from classsr_jax.io import atomic
from classsr_jax.io.pixels import to_float01

PAPER_THRESHOLDS: tuple[float, float] = (27.16882, 35.149761)
CLASS_NAMES: tuple[str, str, str] = ("simple", "medium", "hard")
# The paper's LR training grid (extract_subimages_train.py, LR side): crop 32, step 16, and a last tile flush
# with the border when more than 12 px would stay uncovered (its `thres_sz`).
LR_TILE, GRID_STEP, GRID_MAX_UNCOVERED = 32, 16, 12
ZERO_MSE_PSNR = 80.0  # What the original reports for identical images.
FORMAT_VERSION = 1

SRFunction = Callable[[np.ndarray], Any]


def grid_positions(
    length: int, crop: int = LR_TILE, step: int = GRID_STEP, max_uncovered: int = GRID_MAX_UNCOVERED
) -> list[int]:
    """Tile starts along one axis: 0, step, … while start + crop ≤ length, then length − crop if the leftover
    length − (last + crop) exceeds `max_uncovered`. Empty when the axis is shorter than one tile."""
    if length < crop:
        return []
    positions = list(range(0, length - crop + 1, step))
    if length - (positions[-1] + crop) > max_uncovered:
        positions.append(length - crop)
    return positions


def tile_grid(
    height: int, width: int, crop: int = LR_TILE, step: int = GRID_STEP, max_uncovered: int = GRID_MAX_UNCOVERED
) -> np.ndarray:
    """(n, 2) int32 array of (y, x) tile corners, row-major (the original's `_s001`, `_s002`, … order)."""
    ys, xs = grid_positions(height, crop, step, max_uncovered), grid_positions(width, crop, step, max_uncovered)
    if not ys or not xs:
        return np.zeros((0, 2), dtype=np.int32)
    yy, xx = np.meshgrid(np.asarray(ys, np.int32), np.asarray(xs, np.int32), indexing="ij")
    return np.stack([yy.ravel(), xx.ravel()], axis=1)


def tile_psnr(sr: np.ndarray, hr: np.ndarray, border: int) -> np.ndarray:
    """Per-tile RGB PSNR as the original's test.py: SR clipped to [0, 1], ×255, rounded half to even (uint8),
    `border` px cropped from every side of both, MSE over all channels in float64, 80 dB at zero MSE.

    Args:
      sr: (N, H, W, 3) float SR output in [0, 1] (values outside are clipped).
      hr: (N, H, W, 3) uint8 ground truth.
    """
    sr_u8 = np.rint(np.clip(np.asarray(sr, np.float64), 0.0, 1.0) * 255.0)
    hr = np.asarray(hr, np.float64)
    if border:
        sr_u8 = sr_u8[:, border:-border, border:-border]
        hr = hr[:, border:-border, border:-border]
    mse = np.mean((sr_u8 - hr) ** 2, axis=(1, 2, 3))
    with np.errstate(divide="ignore"):
        psnr = 20.0 * np.log10(255.0 / np.sqrt(mse))
    return np.where(mse == 0, ZERO_MSE_PSNR, psnr)


def classify(psnr: np.ndarray, thresholds: tuple[float, float]) -> np.ndarray:
    """int8 labels: 0 (simple) if psnr ≥ t2, 1 (medium) if t1 ≤ psnr < t2, 2 (hard) if psnr < t1."""
    t1, t2 = (float(t) for t in thresholds)
    if not t1 <= t2:
        raise ValueError(f"thresholds must satisfy t1 <= t2, got ({t1}, {t2})")
    psnr = np.asarray(psnr, np.float64)
    labels = np.full(psnr.shape, 1, dtype=np.int8)
    labels[psnr >= t2] = 0
    labels[psnr < t1] = 2
    return labels


def tertile_thresholds(psnr: np.ndarray) -> tuple[float, float]:
    """Thresholds that split the tiles into thirds whose sizes differ by at most one (barring tied PSNRs).

    With the PSNRs sorted ascending as p, t1 = p[round(N/3)] and t2 = p[round(2N/3)]: the hard class gets the
    round(N/3) lowest tiles, the simple class the N − round(2N/3) highest. Like the paper's thresholds, each is an
    observed PSNR (the lowest one of the class above it).
    """
    values = np.sort(np.asarray(psnr, np.float64).ravel())
    n = values.size
    if n < 3:
        raise DataError(f"tertile thresholds need at least 3 tiles, got {n}")
    return float(values[int(round(n / 3))]), float(values[int(round(2 * n / 3))])


@dataclasses.dataclass(frozen=True, eq=False)
class Division:
    """Every grid tile of a dataset with its PSNR and class; positions are LR pixels (HR = × scale).

    `names[i]` is the name of the dataset's i-th example, so `image_index` refers to dataset order.
    """

    names: tuple[str, ...]
    image_index: np.ndarray  # int32 (N,)
    y: np.ndarray  # int32 (N,)
    x: np.ndarray  # int32 (N,)
    psnr: np.ndarray  # float32 (N,)
    label: np.ndarray  # int8 (N,)
    thresholds: tuple[float, float]
    scale: int
    lr_tile: int = LR_TILE
    step: int = GRID_STEP
    max_uncovered: int = GRID_MAX_UNCOVERED  # border pixels left without a tile before a flush tile is added
    threshold_rule: str = "tertiles"
    skipped: tuple[tuple[str, str], ...] = ()

    @property
    def num_tiles(self) -> int:
        return int(self.label.shape[0])

    def counts(self) -> tuple[int, int, int]:
        """Tiles per class (simple, medium, hard)."""
        counts = np.bincount(self.label.astype(np.int64), minlength=3)
        return int(counts[0]), int(counts[1]), int(counts[2])

    def positions_of_class(self, label: int) -> dict[int, np.ndarray]:
        """{image index: (n, 2) int32 LR (y, x) corners of its tiles of class `label`}, images without any left out."""
        if label not in (0, 1, 2):
            raise ValueError(f"class must be 0, 1 or 2, got {label!r}")
        chosen = np.nonzero(self.label == label)[0]
        result: dict[int, np.ndarray] = {}
        for image in np.unique(self.image_index[chosen]):
            rows = chosen[self.image_index[chosen] == image]
            result[int(image)] = np.stack([self.y[rows], self.x[rows]], axis=1).astype(np.int32)
        return result

    def summary(self) -> dict[str, Any]:
        """What the JSON file beside the division holds."""
        counts = self.counts()
        finite = self.psnr[self.psnr != ZERO_MSE_PSNR]  # 80 dB is the stand-in for a zero error, not a measurement.
        return {
            "format_version": FORMAT_VERSION,
            "scale": self.scale,
            "grid": {"lr_tile": self.lr_tile, "step": self.step, "max_uncovered": self.max_uncovered},
            "threshold_rule": self.threshold_rule,
            "thresholds": [float(self.thresholds[0]), float(self.thresholds[1])],
            "num_images": len(self.names),
            "num_tiles": self.num_tiles,
            "counts": dict(zip(CLASS_NAMES, counts)),
            "zero_error_tiles": int(self.num_tiles - finite.size),
            "psnr_min": float(self.psnr.min()) if self.num_tiles else None,
            "psnr_max": float(self.psnr.max()) if self.num_tiles else None,
            "psnr_mean_of_nonzero_error": float(finite.mean()) if finite.size else None,
            "skipped": [list(item) for item in self.skipped],
        }


def _as_name(value: Any) -> str | None:
    if value is None:
        return None
    if hasattr(value, "numpy"):  # an eager tf.Tensor
        value = value.numpy()
    if isinstance(value, np.ndarray) and value.shape == ():
        value = value.item()
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def example_arrays(example: Any) -> tuple[str | None, np.ndarray, np.ndarray]:
    """(name or None, hr, lr) from a dict {'hr', 'lr'[, 'name']} or a 2-tuple of images in either order.

    A tuple is ordered by size (HR is the larger), so both (hr, lr) pairs and TFDS' as_supervised (lr, hr) work.
    """

    def array(value: Any) -> np.ndarray:
        return value.numpy() if hasattr(value, "numpy") else np.asarray(value)

    if isinstance(example, dict):
        return _as_name(example.get("name")), array(example["hr"]), array(example["lr"])
    first, second = (array(v) for v in example)
    return (None, first, second) if first.shape[0] >= second.shape[0] else (None, second, first)


def iter_pairs(examples: Any) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    """(name, hr, lr) from a tf.data dataset or an iterable of examples (see `example_arrays`); unnamed
    examples are named by their position."""
    iterable: Iterable[Any] = examples.as_numpy_iterator() if hasattr(examples, "as_numpy_iterator") else examples
    for index, example in enumerate(iterable):
        name, hr, lr = example_arrays(example)
        yield (name if name is not None else str(index)), hr, lr


def check_pair(name: str, hr: np.ndarray, lr: np.ndarray, scale: int) -> None:
    """One-line DataError unless hr and lr are uint8 HxWx3 with hr exactly scale × lr."""
    if hr.dtype != np.uint8 or lr.dtype != np.uint8:
        raise DataError(f"example {name}: hr and lr must be uint8, got {hr.dtype} and {lr.dtype}")
    if hr.ndim != 3 or lr.ndim != 3 or hr.shape[2] != 3 or lr.shape[2] != 3:
        raise DataError(f"example {name}: hr and lr must be HxWx3, got {hr.shape} and {lr.shape}")
    if hr.shape[0] != lr.shape[0] * scale or hr.shape[1] != lr.shape[1] * scale:
        raise DataError(f"example {name}: hr {hr.shape[:2]} is not {scale} x lr {lr.shape[:2]}")


def bicubic_sr_fn(scale: int) -> Callable[[np.ndarray], np.ndarray]:
    """A stand-in reference SR: MATLAB bicubic ×scale of each tile, float32 (N, h·s, w·s, 3), not clipped."""

    def upscale(lr_tiles: np.ndarray) -> np.ndarray:
        tiles = np.asarray(lr_tiles, np.float64)
        n, h, w, c = tiles.shape
        # One resize for the whole batch: tiles become channels, which imresize treats independently.
        stacked = tiles.transpose(1, 2, 0, 3).reshape(h, w, n * c)
        up = imresize(stacked, scale=scale)
        return up.reshape(h * scale, w * scale, n, c).transpose(2, 0, 1, 3).astype(np.float32)

    return upscale


class _TileScorer:
    """Scores LR tiles in fixed batches of `batch_size` (so a jitted `sr_fn` compiles once): the PSNR of each
    tile's SR against its HR, border `scale` cropped, in the order the tiles were added."""

    def __init__(self, sr_fn: SRFunction, scale: int, lr_tile: int, batch_size: int):
        self.sr_fn, self.scale, self.lr_tile = sr_fn, scale, lr_tile
        self.hr_tile = lr_tile * scale
        self.lr_batch = np.zeros((batch_size, lr_tile, lr_tile, 3), np.float32)
        self.hr_batch = np.zeros((batch_size, self.hr_tile, self.hr_tile, 3), np.uint8)
        self.filled = 0
        self.parts: list[np.ndarray] = []

    def add_image(self, hr: np.ndarray, lr: np.ndarray, grid: np.ndarray) -> None:
        """Queues the tiles at LR corners `grid` (n, 2) of one image."""
        lr_float = to_float01(lr)
        t, s, ht = self.lr_tile, self.scale, self.hr_tile
        for y, x in grid:
            self.lr_batch[self.filled] = lr_float[y : y + t, x : x + t]
            self.hr_batch[self.filled] = hr[y * s : y * s + ht, x * s : x * s + ht]
            self.filled += 1
            if self.filled == len(self.lr_batch):
                self._flush()

    def _flush(self) -> None:
        out = np.asarray(self.sr_fn(self.lr_batch))
        expected = (len(self.lr_batch), self.hr_tile, self.hr_tile, 3)
        if out.shape != expected:
            raise ValueError(f"sr_fn returned shape {out.shape}, expected {expected}")
        self.parts.append(tile_psnr(out[: self.filled], self.hr_batch[: self.filled], border=self.scale))
        self.filled = 0

    def finish(self) -> np.ndarray:
        """Every queued tile's PSNR; the last batch is padded with zero tiles, whose outputs are dropped."""
        if self.filled:
            self.lr_batch[self.filled :] = 0.0
            self._flush()
        return np.concatenate(self.parts) if self.parts else np.zeros(0, np.float32)


def _chosen_thresholds(psnr: np.ndarray, thresholds) -> tuple[tuple[float, float], str]:
    """(t1, t2) in dB and the rule's name: tertiles of the measured PSNRs, the paper's, or the given pair."""
    if thresholds == "tertiles":
        return tertile_thresholds(psnr), "tertiles"
    if thresholds == "paper":
        return PAPER_THRESHOLDS, "paper"
    return (float(thresholds[0]), float(thresholds[1])), "given"


def divide(
    dataset_examples: Any,
    sr_fn: SRFunction,
    scale: int,
    *,
    thresholds: str | tuple[float, float] = "tertiles",
    batch_size: int = 64,
    lr_tile: int = LR_TILE,
    step: int = GRID_STEP,
    max_uncovered: int = GRID_MAX_UNCOVERED,
) -> Division:
    """Scores every grid tile of every example with `sr_fn` and splits them into three classes.

    Args:
      dataset_examples: tf.data dataset or iterable of {'name', 'hr', 'lr'} dicts (uint8, hr = scale × lr) or
        (hr, lr) pairs; order defines the image index.
      sr_fn: batch SR function, float32 (batch_size, lr_tile, lr_tile, 3) in [0, 1] → (batch_size, lr_tile·s,
        lr_tile·s, 3) in [0, 1]. It always receives exactly `batch_size` tiles (the last batch is padded with
        zeros, whose outputs are dropped), so a jitted function compiles once.
      scale: SR factor; also the border cropped before the PSNR, as the original's test.py.
      thresholds: 'tertiles' (balanced thirds of the measured PSNRs), 'paper' (PAPER_THRESHOLDS) or (t1, t2).
      batch_size: tiles per sr_fn call.

    Examples too small for one tile are skipped and listed in `Division.skipped`.
    """
    if isinstance(thresholds, str) and thresholds not in ("tertiles", "paper"):
        raise ValueError(f"thresholds must be 'tertiles', 'paper' or (t1, t2), got {thresholds!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    scorer = _TileScorer(sr_fn, scale, lr_tile, batch_size)
    names: list[str] = []
    skipped: list[tuple[str, str]] = []
    index_parts, yx_parts = [], []
    for image, (name, hr, lr) in enumerate(iter_pairs(dataset_examples)):
        names.append(name)
        check_pair(name, hr, lr, scale)
        grid = tile_grid(lr.shape[0], lr.shape[1], lr_tile, step, max_uncovered)
        if grid.shape[0] == 0:
            skipped.append((name, f"LR {lr.shape[0]}x{lr.shape[1]} px holds no {lr_tile} px tile"))
            continue
        index_parts.append(np.full(grid.shape[0], image, np.int32))
        yx_parts.append(grid)
        scorer.add_image(hr, lr, grid)
    psnr = scorer.finish()
    if not index_parts:
        raise DataError(f"no example holds a {lr_tile} px LR tile (examples seen: {len(names)})")
    yx = np.concatenate(yx_parts)
    chosen, rule = _chosen_thresholds(psnr, thresholds)
    return Division(
        names=tuple(names), image_index=np.concatenate(index_parts), y=yx[:, 0].astype(np.int32),
        x=yx[:, 1].astype(np.int32), psnr=psnr.astype(np.float32), label=classify(psnr, chosen),
        thresholds=(float(chosen[0]), float(chosen[1])), scale=int(scale), lr_tile=lr_tile, step=step,
        max_uncovered=max_uncovered, threshold_rule=rule, skipped=tuple(skipped),
    )


def division_files(path: str | os.PathLike[str]) -> tuple[Path, Path, Path]:
    """The three files of a saved division: `X.npz`, its summary `X.json` and histogram `X_hist.png`."""
    path = Path(path)
    if path.suffix != ".npz":
        raise ValueError(f"a division file must end in .npz, got {path}")
    return path, path.with_suffix(".json"), path.with_name(path.stem + "_hist.png")


def _histogram_png(division: Division, handle: Any) -> None:
    # Figure + Agg canvas directly: no pyplot, so no global backend switch for the rest of the program. Imported
    # here: matplotlib (slow to import) is needed only when a division is saved, not to read one or to train.
    fig = Figure(figsize=(7, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    psnr = division.psnr.astype(np.float64)
    finite = psnr[psnr != ZERO_MSE_PSNR]
    if finite.size:
        ax.hist(finite, bins=min(100, max(10, int(math.sqrt(finite.size)))), color="0.6")
    colours = ("tab:green", "tab:red")
    for value, label, colour in zip(division.thresholds, ("t1 (hard | medium)", "t2 (medium | simple)"), colours):
        ax.axvline(value, color=colour, linestyle="--", label=f"{label} = {value:.3f} dB")
    simple, medium, hard = division.counts()
    zero = int(psnr.size - finite.size)
    extra = f", {zero} zero-error tiles (80 dB) not drawn" if zero else ""
    ax.set_title(f"{division.num_tiles} tiles: {simple} simple / {medium} medium / {hard} hard{extra}", fontsize=9)
    ax.set_xlabel("tile PSNR (dB)")
    ax.set_ylabel("tiles")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(handle, format="png")


def save_division(division: Division, path: str | os.PathLike[str]) -> tuple[Path, Path, Path]:
    """Writes the division as one .npz, plus a JSON summary and a PSNR histogram PNG beside it, each atomically.

    Returns the three paths (npz, json, png).
    """
    npz_path, json_path, png_path = division_files(path)
    arrays = {
        "format_version": np.asarray(FORMAT_VERSION, np.int32),
        "names": np.asarray(division.names, dtype=np.str_).reshape(-1),
        "image_index": division.image_index.astype(np.int32),
        "y": division.y.astype(np.int32),
        "x": division.x.astype(np.int32),
        "psnr": division.psnr.astype(np.float32),
        "label": division.label.astype(np.int8),
        "thresholds": np.asarray(division.thresholds, np.float64),
        "grid": np.asarray([division.scale, division.lr_tile, division.step, division.max_uncovered], np.int32),
        "threshold_rule": np.asarray(division.threshold_rule),
        "skipped_names": np.asarray([n for n, _ in division.skipped], dtype=np.str_).reshape(-1),
        "skipped_reasons": np.asarray([r for _, r in division.skipped], dtype=np.str_).reshape(-1),
    }
    npz_path.parent.mkdir(parents=True, exist_ok=True)
    atomic.atomic_write(npz_path, lambda handle: np.savez_compressed(handle, **arrays))
    atomic.write_json(json_path, division.summary())
    atomic.atomic_write(png_path, lambda handle: _histogram_png(division, handle))
    return npz_path, json_path, png_path


_REQUIRED_KEYS = ("names", "image_index", "y", "x", "psnr", "label", "thresholds", "grid")


def load_division(path: str | os.PathLike[str]) -> Division:
    """Reads a division written by `save_division`; a wrong or damaged file is a one-line DataError."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"division file {path} does not exist")
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = [key for key in _REQUIRED_KEYS if key not in data.files]
            if missing:
                raise DataError(f"{path} is not a division file (missing {', '.join(missing)})")
            arrays = {key: data[key] for key in data.files}
    except DataError:
        raise
    except (OSError, ValueError, EOFError) as err:  # np.load's errors for non-npz or truncated files.
        raise DataError(f"cannot read division file {path}: {str(err).splitlines()[0]}") from None
    scale, lr_tile, step, max_uncovered = (int(v) for v in arrays["grid"])
    sizes = {key: arrays[key].shape[0] for key in ("image_index", "y", "x", "psnr", "label")}
    if len(set(sizes.values())) != 1:
        raise DataError(f"{path} is damaged: per-tile arrays differ in length {sizes}")
    skipped_names = arrays.get("skipped_names", np.zeros(0, np.str_))
    skipped_reasons = arrays.get("skipped_reasons", np.zeros(0, np.str_))
    return Division(
        names=tuple(str(n) for n in arrays["names"]),
        image_index=arrays["image_index"].astype(np.int32),
        y=arrays["y"].astype(np.int32),
        x=arrays["x"].astype(np.int32),
        psnr=arrays["psnr"].astype(np.float32),
        label=arrays["label"].astype(np.int8),
        thresholds=(float(arrays["thresholds"][0]), float(arrays["thresholds"][1])),
        scale=scale,
        lr_tile=lr_tile,
        step=step,
        max_uncovered=max_uncovered,
        threshold_rule=str(arrays.get("threshold_rule", "given")),
        skipped=tuple(zip((str(n) for n in skipped_names), (str(r) for r in skipped_reasons))),
    )
