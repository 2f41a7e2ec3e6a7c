"""How a quickstart run's models do on photos they never saw, and on flat colours.

  python -m benchmarks.bench_quickstart WORKDIR [WORKDIR ...] [--budget 0.75]
  python -m benchmarks.bench_quickstart quickstart --budget 0.75      # the models bundled with the package

For each workdir of `python -m classsr_jax.main --config configs/quickstart.py` (or of a run of only its
`original` stage), this opens `export/original` and, when there is one, `export/classsr`, and measures:
- on the held-out photos (chelsea, coffee), on their recoloured copies (channels permuted; hue turned by 90°
  and 270°) and on the bundled photos outside the quickstart's train split ("unused": hubble_deep_field, ihc,
  retina and the grey camera, coins, moon), the mean RGB PSNR and PSNR-Y gain over MATLAB bicubic, every
  pixel (full protocol), and ClassSR's FLOPs (% of -O, per tile) and its share of tiles per branch; with
  `--budget`, ClassSR again with its logits shifted to that share of the -O FLOPs;
- with the workdir's class division, the share of each set's tiles that the division's own thresholds put in
  each class when scored with -O: what the Class-Module should find if it generalised;
- flat colours: constant LR images over the grid of every channel at 32, 128 and 224 (27 colours, saturated
  greens and blues among them) plus the two dark colours (30, 80, 40) and (20, 40, 160); the worst deviation
  of any output pixel away from the border, in uint8 levels.

`tests/test_quickstart_models.py` asserts the issue's bounds on the models bundled with the package
(classsr_jax/pretrained/quickstart and quickstart-original; the name `quickstart` stands for them here) with
these same functions.
"""

from __future__ import annotations

import argparse
import itertools
import os
from typing import Any

import jax
import numpy as np

from benchmarks import harness
from classsr_jax import checkpointing
from classsr_jax.checkpointing import load_model
from classsr_jax.data import bundled
from classsr_jax.data.bicubic import bicubic_degrade, modcrop
from classsr_jax.data.division import divide
from classsr_jax.evaluation.scoring import Pair, bicubic_average, evaluate_models
from classsr_jax.evaluation.tables import markdown_table
from classsr_jax.inference.upscaler import Upscaler
from classsr_jax.io.pixels import to_uint8

SCALE = 4
UNSEEN_SPLITS = ("validation", "validation_permuted", "validation_hue", "unused")
# Bundled photos the quickstart never trains on besides the validation split: colour photos its train split
# leaves out, and grey ones (read as RGB).
UNUSED_PHOTOS = ("hubble_deep_field", "ihc", "retina", "camera", "coins", "moon")
FLAT_LEVELS = (32, 128, 224)
FLAT_COLOURS = [*itertools.product(FLAT_LEVELS, repeat=3), (30, 80, 40), (20, 40, 160)]
FLAT_SIDE = 48  # LR pixels
FLAT_BORDER = 16  # HR pixels left out at each side: the networks zero-pad at the image border


def unseen_pairs(split: str) -> list[Pair]:
    """(name, LR, HR) of a bundled split ('unused': UNUSED_PHOTOS), made as the `classsr_bundled/x4` builder
    makes them."""
    if split == "unused":
        photos = [(n, p) for s in ("train", "grey") for n, p in bundled.bundled_photos(s) if n in UNUSED_PHOTOS]
    else:
        photos = bundled.bundled_photos(split)
    pairs = []
    for name, photo in photos:
        hr = modcrop(photo, SCALE)
        pairs.append(Pair(name, bicubic_degrade(hr, SCALE), hr))
    return pairs


def unseen_results(upscalers: dict[str, Upscaler], options: dict[str, dict] | None = None
                   ) -> dict[str, dict[str, dict[str, Any]]]:
    """{split: {'bicubic' | model key: average}} on every unseen split, full protocol: each average has psnr,
    psnr_y and, for the models, flops_percent (per tile, as the paper's tables) and class_counts."""
    out = {}
    for split in UNSEEN_SPLITS:
        pairs = unseen_pairs(split)
        results = evaluate_models(upscalers, pairs, options=options)
        out[split] = {"bicubic": bicubic_average([(p.name, p.lr, p.hr) for p in pairs], SCALE, "full", 32)}
        out[split].update({key: value["average"] for key, value in results.items()})
    return out


def flat_colour_errors(upscaler: Upscaler) -> list[tuple[tuple[int, int, int], int, list[float]]]:
    """(colour, worst |output − colour| over the pixels and channels away from the border, mean output colour)
    for every flat colour, worst first."""
    rows = []
    for colour in FLAT_COLOURS:
        lr = np.empty((FLAT_SIDE, FLAT_SIDE, 3), np.uint8)
        lr[:] = colour
        sr = to_uint8(upscaler.upscale(lr).sr).astype(np.int64)
        inside = sr[FLAT_BORDER:-FLAT_BORDER, FLAT_BORDER:-FLAT_BORDER]
        rows.append(
            (colour, int(np.abs(inside - np.array(colour)).max()), inside.reshape(-1, 3).mean(0).round(1).tolist())
        )
    return sorted(rows, key=lambda row: -row[1])


def division_shares(workdir: str) -> dict[str, list[float]] | None:
    """{split: % of its grid tiles per class} by the workdir's division thresholds, scored with its -O network;
    None without a division."""
    path = os.path.join(workdir, "division", "division.npz")
    if not os.path.isfile(path):
        return None
    thresholds = tuple(float(t) for t in np.load(path)["thresholds"])
    model = load_model(os.path.join(workdir, "export", "original"))
    network = model.spec.build()
    apply = jax.jit(lambda tiles: network.apply(model.variables, tiles))
    out = {}
    for split in UNSEEN_SPLITS:
        division = divide(
            [(p.hr, p.lr) for p in unseen_pairs(split)], lambda x: np.asarray(apply(x)), SCALE, thresholds=thresholds
        )
        counts = np.bincount(division.label, minlength=3)
        out[split] = (100 * counts / counts.sum()).tolist()
    return out


def export_paths(workdir: str) -> dict[str, str]:
    """{'original': …, 'classsr': …}: a workdir's exports, or the bundled models for the name `quickstart`."""
    if workdir == checkpointing.DEFAULT_MODEL and not os.path.exists(workdir):
        return {
            "original": checkpointing.bundled_model_dir("quickstart-original"),
            "classsr": checkpointing.bundled_model_dir("quickstart"),
        }
    return {key: os.path.join(workdir, "export", key) for key in ("original", "classsr")}


def workdir_upscalers(workdir: str, budget: float | None) -> tuple[dict[str, Upscaler], dict[str, dict]]:
    """'original' and, when exported, 'classsr' (and 'classsr_budget' with a budget), full protocol; and each
    one's routing options."""
    out, options = {}, {}
    for key, path in export_paths(workdir).items():
        if os.path.isdir(path):
            model = load_model(path)
            out[key] = Upscaler(model.spec, model.variables)
            if key == "classsr" and budget is not None:
                out["classsr_budget"] = out["classsr"]
                options["classsr_budget"] = {"budget": budget}
    return out, options


def report(workdir: str, budget: float | None) -> str:
    upscalers, options = workdir_upscalers(workdir, budget)
    results = unseen_results(upscalers, options)
    rows = []
    for split, row in results.items():
        base = row["bicubic"]
        for key, avg in row.items():
            if key == "bicubic":
                continue
            counts = avg.get("class_counts") or []
            shares = "/".join(f"{100 * c / max(1, sum(counts)):.0f}" for c in counts) if key != "original" else "—"
            rows.append(
                [
                    split,
                    key,
                    f"{avg['psnr'] - base['psnr']:+.2f}",
                    f"{avg['psnr_y'] - base['psnr_y']:+.2f}",
                    f"{avg['flops_percent']:.0f}%",
                    shares,
                ]
            )
    oracle = division_shares(workdir)
    if oracle:
        for split, shares in oracle.items():
            rows.append([split, "tiles by the division's thresholds", "", "", "", "/".join(f"{v:.0f}" for v in shares)])
    lines = [
        f"### {workdir}",
        "",
        markdown_table(
            ["photos", "model", "RGB PSNR − bicubic (dB)", "PSNR-Y − bicubic (dB)", "FLOPs (% of -O)", "tiles (%)"],
            rows,
        ),
    ]
    for key in ("original", "classsr"):
        if key in upscalers:
            worst = flat_colour_errors(upscalers[key])
            over = [row for row in worst if row[1] > 3]
            lines.append(
                f"\n{key}: flat colours worst {worst[0][1]} levels at {worst[0][0]} (mean output "
                f"{worst[0][2]}); {len(over)} of {len(worst)} colours beyond ±3"
            )
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("workdirs", nargs="+")
    parser.add_argument("--budget", type=float, default=None, help="also ClassSR at this share of the -O FLOPs")
    args = parser.parse_args(argv)
    print(harness.machine_line())
    for workdir in args.workdirs:
        print(report(workdir, args.budget), flush=True)


if __name__ == "__main__":
    main()
