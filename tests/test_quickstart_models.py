"""The quickstart's exported models keep flat colours and beat bicubic on photos they never saw, including ones in
colours the training photos lack and the bundled photos outside its train split (grey ones among them).

The package bundles `export/original` and `export/classsr` of one run of the README's main command as
classsr_jax/pretrained/quickstart-original and quickstart (classsr_jax/pretrained/README.md says which). The
measurements are `benchmarks.bench_quickstart`'s, which benchmarks/JOURNAL.md quotes for every candidate recipe.
"""

from pathlib import Path

import numpy as np
import pytest

from benchmarks import bench_quickstart
from classsr_jax.checkpointing import bundled_model_dir, load_model
from classsr_jax.inference.upscaler import Upscaler
from configs import quickstart

pytestmark = pytest.mark.slow  # the trained models on every unseen photo set: out of the quick loop

MODELS = {"original": Path(bundled_model_dir("quickstart-original")), "classsr": Path(bundled_model_dir("quickstart"))}
TOLERANCE = 3  # uint8 levels per channel


@pytest.fixture(scope="module")
def upscalers():
    """The quickstart's models as its evaluate stage runs them: -O, ClassSR, and ClassSR at the configured budget."""
    budget = quickstart.get_config().evaluate.budget
    return bench_quickstart.workdir_upscalers("quickstart", budget or None)[0]


def test_the_models_are_the_quickstarts_and_small(upscalers):
    size = sum(f.stat().st_size for folder in MODELS.values() for f in folder.rglob("*") if f.is_file())
    assert size < 2_000_000
    config = quickstart.get_config()
    original, classsr = upscalers["original"].spec, upscalers["classsr"].spec
    assert (original.network, original.num_branches, original.scale) == ("fsrcnn", 1, 4)
    assert (classsr.network, classsr.widths, classsr.scale) == ("fsrcnn", tuple(config.model.widths), 4)


def test_the_flat_colour_grid_has_saturated_greens_and_blues():
    colours = bench_quickstart.FLAT_COLOURS
    assert len(set(colours)) == 29 and {(32, 224, 32), (32, 32, 224), (30, 80, 40), (20, 40, 160)} <= set(colours)


def colours_changed(upscaler) -> list:
    """(colour, worst error, mean output) of every flat colour the model moves by more than TOLERANCE levels."""
    rows = bench_quickstart.flat_colour_errors(upscaler)
    assert len(rows) == 29
    return [row for row in rows if row[1] > TOLERANCE]


def test_fsrcnn_o_keeps_flat_colours(upscalers):
    changed = colours_changed(upscalers["original"])
    assert not changed, f"colours changed by more than {TOLERANCE} levels (colour, error, mean output): {changed}"


def test_classsr_keeps_flat_colours(upscalers):
    changed = colours_changed(upscalers["classsr"])
    assert not changed, f"colours changed by more than {TOLERANCE} levels (colour, error, mean output): {changed}"


@pytest.fixture(scope="module")
def unseen():
    budget = quickstart.get_config().evaluate.budget
    return bench_quickstart.unseen_results(*bench_quickstart.workdir_upscalers("quickstart", budget or None))


@pytest.mark.parametrize("split", bench_quickstart.UNSEEN_SPLITS)
def test_fsrcnn_o_beats_bicubic_on_unseen_photos(unseen, split):
    bicubic, original = unseen[split]["bicubic"], unseen[split]["original"]
    assert original["psnr"] - bicubic["psnr"] >= 0.3, (split, original["psnr"], bicubic["psnr"])
    assert original["psnr_y"] - bicubic["psnr_y"] >= 0.3, (split, original["psnr_y"], bicubic["psnr_y"])


@pytest.mark.parametrize("split", bench_quickstart.UNSEEN_SPLITS)
def test_the_budget_row_holds_classsr_to_three_quarters_of_the_o_flops(unseen, split):
    budget, free = unseen[split]["classsr_budget"], unseen[split]["classsr"]
    # A cap per image, the Class-Module's FLOPs included: never over 75%, never above free routing, and the images
    # over the cap keep most of their FLOPs (the tiles that gain least move first, not every tile).
    assert budget["flops_percent"] <= min(75.0, free["flops_percent"] + 1e-9), (split, budget, free)
    assert budget["flops_percent"] >= 0.8 * min(75.0, free["flops_percent"]), (split, budget["flops_percent"])
    assert np.count_nonzero(budget["class_counts"]) >= 2  # really routed


def test_classsr_is_within_0_1_db_of_o_at_no_more_than_75_percent_of_its_flops(unseen):
    for split in bench_quickstart.UNSEEN_SPLITS:
        original = unseen[split]["original"]
        assert any(
            row["flops_percent"] <= 75.0
            and min(row["psnr"] - original["psnr"], row["psnr_y"] - original["psnr_y"]) >= -0.1
            for row in (unseen[split]["classsr"], unseen[split]["classsr_budget"])
        ), split


@pytest.mark.parametrize("split", bench_quickstart.UNSEEN_SPLITS)
def test_classsr_routes_unseen_photos_without_collapsing(unseen, split):
    counts = np.asarray(unseen[split]["classsr"]["class_counts"])
    # No branch gets more than the collapse warning's 90%, and every branch gets some tiles.
    assert counts.max() <= 0.9 * counts.sum() and counts.min() > 0, (split, counts.tolist())


def test_routing_does_not_hang_on_float_rounding(upscalers):
    # A Class-Module whose logits differ from tile to tile by a few float32 ulps routes by rounding: another
    # machine or dtype would route the same photo differently. In bfloat16 (8 bits of mantissa) almost every
    # tile of a held-out photo must still go to the same branch.
    model = load_model(str(MODELS["classsr"]))
    half = Upscaler(model.spec, model.variables, dtype="bfloat16")
    for photo in bench_quickstart.unseen_pairs("validation"):
        full_classes, half_classes = (u.upscale(photo.lr).classes for u in (upscalers["classsr"], half))
        assert np.mean(full_classes == half_classes) >= 0.95, photo.name


def test_bfloat16_stays_close_to_float32_on_the_trained_models(upscalers):
    photo = bench_quickstart.unseen_pairs("validation")[0]
    for name in ("original", "classsr"):
        model = load_model(str(MODELS[name]))
        half = Upscaler(model.spec, model.variables, dtype="bfloat16")
        full_sr, half_sr = (u.upscale(photo.lr, float_merge=True).sr_255 for u in (upscalers[name], half))
        mse = np.mean((full_sr.astype(np.float64) - half_sr) ** 2)
        assert 10 * np.log10(255.0**2 / mse) > 40.0, name
