"""The evaluation module: pair checks, the paper's tables and the collapse note, metrics on 16-bit ground truth."""

import numpy as np
import pytest

from classsr_jax.errors import DataError
from classsr_jax.evaluation.scoring import check_pair_shapes, class_shares, format_results_table, image_metrics
from classsr_jax.evaluation.tables import markdown_table


def test_pairs_must_be_scale_times_their_lr_after_the_modcrop():
    check_pair_shapes("ok", (40, 50), (160, 200), 4)
    check_pair_shapes("modcropped", (40, 50), (163, 203), 4)  # the LR was made from the HR cropped to 160x200
    with pytest.raises(DataError, match=r"^small: HR is 100x100, smaller than 4 × its 40x40 LR \(160x160\)$"):
        check_pair_shapes("small", (40, 40), (100, 100), 4)
    with pytest.raises(
        DataError, match=r"^big: HR is 160x164, not 4 × its 40x40 LR .*wrong scale or a mismatched pair$"
    ):
        check_pair_shapes("big", (40, 40), (164, 160), 4)
    with pytest.raises(DataError) as err:  # sizes read width x height: (h, w) = (40, 50) is 50x40
        check_pair_shapes("wide", (40, 50), (100, 120), 4)
    assert str(err.value) == "wide: HR is 120x100, smaller than 4 × its 50x40 LR (200x160)"


def test_markdown_table_and_class_shares():
    assert markdown_table(["a", "b"], [[1, "x"], [2.5, "y"]]) == "| a | b |\n|---|---|\n| 1 | x |\n| 2.5 | y |"
    assert class_shares([36, 24, 40]) == "36/24/40"
    assert class_shares([0, 0, 0]) == "0/0/0"


def results(counts):
    avg = lambda psnr, flops, pct, c: {
        "psnr": psnr,
        "psnr_y": psnr + 1.5,
        "flops": flops,
        "flops_percent": pct,
        "class_counts": c,
    }
    return {
        "models": [
            {"key": "bicubic", "name": "Bicubic", "params": 0},
            {"key": "original", "name": "FSRCNN-O", "params": 24515},
            {"key": "classsr", "name": "ClassSR-FSRCNN", "params": 112940},
        ],
        "datasets": {
            "held-out": {
                "bicubic": {"psnr": 27.0, "psnr_y": 28.5},
                "original": avg(28.0, 467.9e6, 100.0, [0, 0, 9]),
                "classsr": avg(28.1, 320.3e6, 68.5, counts),
            },
        },
    }


def test_results_table_rows_and_collapse_note():
    table = format_results_table(results([36, 24, 40]))
    assert table.splitlines() == [
        "| Dataset | Model | Params | PSNR (dB) | PSNR-Y (dB) | FLOPs/tile (% of -O) | tiles simple/medium/hard (%) |",
        "|---|---|---|---|---|---|---|",
        "| held-out | Bicubic | — | 27.00 | 28.50 | — | — |",
        "| held-out | FSRCNN-O | 24,515 | 28.00 | 29.50 | 467.9M (100%) | — |",
        "| held-out | ClassSR-FSRCNN | 112,940 | 28.10 | 29.60 | 320.3M (68%) | 36/24/40 |",
    ]
    collapsed = format_results_table(results([1, 2, 97]))
    assert collapsed.split("\n\n")[1] == (
        "On held-out, ClassSR-FSRCNN sends 97% of the tiles to branch 3 of 3: "
        "the classifier does not route these images."
    )


def test_metrics_on_sixteen_bit_ground_truth_use_the_8_bit_scale():
    class Result:  # what image_metrics reads of an UpscaleResult
        sr = np.full((16, 16, 3), 100, np.uint8)
        sr_255 = None

    hr8 = np.full((16, 16, 3), 110, np.uint8)
    eight = image_metrics(Result(), hr8, 2)
    sixteen = image_metrics(Result(), hr8.astype(np.uint16) * 257, 2)
    assert eight["psnr"] == pytest.approx(20 * np.log10(255 / 10)) and sixteen == pytest.approx(eight)
