"""Routed inference on 8 simulated devices: exact per-tile results, bucket accounting, compile reuse, budget."""

import jax
import numpy as np
import pytest
from routing_fixtures import SPEC, spread_classifier, textured_image, textured_tiles

from classsr_jax.evaluation.scoring import evaluate_pairs
from classsr_jax.inference.reference import ReferenceRouter
from classsr_jax.inference.routing import Buckets, RoutedModel
from classsr_jax.inference.upscaler import Upscaler, budget_offsets
from classsr_jax.models import ModelSpec


@pytest.fixture(scope="module")
def variables():
    return spread_classifier(SPEC.init(seed=1))


def test_eight_devices_are_used():
    assert jax.local_device_count() == 8
    assert RoutedModel(SPEC).num_devices == 8


def test_routed_tiles_equal_each_branch_on_its_own_tiles(variables):
    routed = RoutedModel(SPEC, Buckets(big=4, small=2))
    rng = np.random.default_rng(0)
    tiles = rng.random((64, 32, 32, 3), dtype=np.float32)
    tiles[::2] = textured_tiles(32, rng)  # smooth tiles beside the noisy ones
    valid = np.arange(64) < 59
    placed = routed.place_variables(variables)
    sr, classes, logits, counts = ReferenceRouter(routed).route(placed, tiles, valid, np.zeros(3), -1)
    sr, classes, counts = np.asarray(sr), np.asarray(classes), np.asarray(counts)
    model = SPEC.build()
    expected_classes = np.asarray(model.apply(variables, tiles, method=model.classify)).argmax(-1)
    np.testing.assert_array_equal(classes[:59], expected_classes[:59])
    assert (classes[59:] == -1).all() and (sr[59:] == 0).all()
    assert len(set(classes[:59].tolist())) == 3, "the test needs tiles in every branch"
    assert counts.shape == (8, 3) and counts.sum() == 59
    for k in range(3):
        picked = np.flatnonzero(classes == k)
        direct = np.asarray(model.apply(variables, tiles[picked], k, method=model.branch))
        assert np.abs(sr[picked] - direct).max() < 1e-5


def test_force_class_sends_everything_to_one_branch(variables):
    up = Upscaler(SPEC, variables)
    result = up.upscale(textured_image(70, 90), force_class=2)
    assert result.class_counts == [0, 0, result.grid.num_tiles]
    assert (result.classes == 2).all()
    assert result.flops_percent == pytest.approx(100.0 * (1 + up.flops.classifier / up.flops.original))


def test_bucket_accounting():
    b = Buckets(big=32, small=8)
    assert b.calls(0) == (0, 0) and b.padded(0) == 0
    assert b.calls(70) == (2, 1) and b.padded(70) == 72
    assert b.calls(64) == (2, 0) and b.padded(64) == 64
    assert b.calls(5) == (0, 1) and b.padded(5) == 8
    with pytest.raises(ValueError, match=r"^bucket sizes must satisfy 1 <= small <= big, got small=9, big=4$"):
        Buckets(big=4, small=9)


def test_executed_flops_count_bucket_padding_and_classifier(variables):
    buckets = Buckets(big=8, small=4)
    up = Upscaler(SPEC, variables, buckets=buckets, band_tiles=64)
    result = up.upscale(textured_image(80, 80))  # full grid: positions 0, 24, 48 per axis
    assert result.grid.num_tiles == 9
    shape = up.band_shape(result.grid)
    # One band of 8 rows (a quarter of 64 // 2: the image has 3) and 8 blocks of 2 columns: 128 slots, every one
    # of them classified.
    assert (shape.rows, shape.device_cols, shape.cols, shape.slots) == (8, 2, 16, 128)
    # The 3 tile columns go to the first 3 devices, a column each; the bucket padding is per device.
    per_device = [result.classes[i::3] for i in range(3)]
    padded = sum(
        buckets.padded(int((tiles == k).sum())) * up.flops.branches[k] for tiles in per_device for k in range(3)
    )
    assert result.executed_flops == pytest.approx(padded + 128 * up.flops.classifier)
    counts = np.bincount(result.classes, minlength=3)
    assert result.class_counts == counts.tolist()
    expected_figure = (counts @ np.array(up.flops.branches)) / 9 + up.flops.classifier  # FSRCNN adds the classifier
    assert result.flops == pytest.approx(expected_figure)


def test_ten_image_sizes_compile_at_most_three_programs(variables):
    up = Upscaler(SPEC, variables)
    sizes = [(1, 1), (7, 300), (32, 32), (33, 47), (64, 64), (90, 60), (120, 130), (150, 40), (200, 210), (33, 400)]
    for i, (h, w) in enumerate(sizes):
        result = up.upscale(textured_image(h, w, seed=i))
        assert result.sr.shape == (4 * h, 4 * w, 3)
    assert up.num_compilations <= 3


def test_new_weights_reuse_the_compiled_programs(variables):
    first = Upscaler(SPEC, variables).upscale(textured_image(40, 40))
    other = jax.tree_util.tree_map(lambda a: a * 0.5, variables)
    up = Upscaler(SPEC, other)  # same model description: the band programs come from the process's cache
    second = up.upscale(textured_image(40, 40))
    assert second.compile_s == 0.0
    assert not np.allclose(first.sr, second.sr)


def test_budget_is_a_cap():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(1000, 3)).astype(np.float32)  # as the routing program has them
    branch_flops = (1.0, 2.0, 3.0)
    free = np.mean(np.asarray(branch_flops)[np.argmax(logits, axis=-1)]) / 3.0  # about 2/3
    for budget in (0.4, 0.6):  # under free routing: held to the cap, as close to it as the tiles allow
        for overhead in (0.0, 0.15):  # the Class-Module's FLOPs per tile count against the budget
            offsets, met = budget_offsets(logits, branch_flops, budget, overhead)
            chosen = np.argmax(logits + offsets, axis=-1)
            mean = (np.mean(np.asarray(branch_flops)[chosen]) + overhead) / 3.0
            assert met and budget - 0.01 < mean <= budget, (budget, overhead, mean)
    for budget in (0.8, 1.0):  # free routing fits: left as it is, never raised to the cap
        offsets, met = budget_offsets(logits, branch_flops, budget)
        assert met and free < budget and not offsets.any()
    # Below the cheapest branch: everything goes to branch 1, and the cap is reported as not met.
    offsets, met = budget_offsets(logits, branch_flops, 0.1)
    assert not met and (np.argmax(logits + offsets, -1) == 0).all()


def test_budget_caps_the_flops_of_an_image(variables):
    image = textured_image(160, 160)
    up = Upscaler(SPEC, variables)
    free = up.upscale(image)
    low = 0.9 * free.flops_percent / 100  # under free routing: held to it, close to it
    result = up.upscale(image, budget=low)
    # FSRCNN's table figure includes the Class-Module, as the budget does: at most the budget, close to it.
    assert 100 * low - 5.0 < result.flops_percent <= 100 * low and result.budget_met
    high = up.upscale(image, budget=min(1.0, free.flops_percent / 100 + 0.1))  # free routing fits: unchanged
    assert high.class_counts == free.class_counts and high.budget_met
    unreachable = up.upscale(image, budget=0.01)
    assert unreachable.budget_met is False and unreachable.class_counts[1:] == [0, 0]


def test_single_network_checkpoint_upscales_through_the_same_tiling():
    spec = ModelSpec("network", "srresnet", (16,), 2, {"nb": 2})
    variables = jax.tree_util.tree_map(np.zeros_like, spec.init())
    up = Upscaler(spec, variables)
    # All convs zero: the network is its bilinear base, exact on constants, so a constant stays constant.
    result = up.upscale(np.full((45, 70, 3), 0.3, np.float32), float_merge=True)
    assert result.sr.shape == (90, 140, 3)
    np.testing.assert_allclose(result.sr_255 / 255.0, 0.3, atol=1e-6)
    assert result.class_counts == [result.grid.num_tiles] and result.flops_percent == 100.0


def original_paper_pipeline(model, variables, lr_uint8, hr_uint8, scale=4):
    """The original's test(): one tile at a time (batch 1), argmax, uint8 per tile, strip-halving merge."""
    h, w = lr_uint8.shape[:2]
    ys = list(range(0, h - 32 + 1, 28))
    xs = list(range(0, w - 32 + 1, 28))
    canvas = np.zeros(((ys[-1] + 32) * scale, (xs[-1] + 32) * scale, 3), np.float32)
    classes = []
    for y in ys:
        for x in xs:
            tile = lr_uint8[None, y : y + 32, x : x + 32].astype(np.float32) / 255.0
            k = int(np.asarray(model.apply(variables, tile, method=model.classify)).argmax())
            sr = np.asarray(model.apply(variables, tile, k, method=model.branch))[0]
            canvas[y * scale : (y + 32) * scale, x * scale : (x + 32) * scale] += np.rint(np.clip(sr, 0, 1) * 255.0)
            classes.append(k)
    overlap, step = (32 - 28) * scale, 28 * scale
    for j in range(1, len(xs)):
        canvas[:, j * step : j * step + overlap] /= 2
    for i in range(1, len(ys)):
        canvas[i * step : i * step + overlap] /= 2
    from classsr_jax.evaluation import metrics

    gt = hr_uint8[: canvas.shape[0], : canvas.shape[1]]
    return canvas, classes, metrics.psnr(canvas, gt, crop_border=scale)


def test_paper_protocol_reproduces_the_original_pipeline(variables):
    rng = np.random.default_rng(3)
    lr = (textured_image(100, 130, seed=3) * 255).round().astype(np.uint8)
    hr = rng.integers(0, 256, size=(400, 520, 3), dtype=np.uint8)
    model = SPEC.build()
    canvas, classes, psnr = original_paper_pipeline(model, variables, lr, hr)
    up = Upscaler(SPEC, variables, protocol="paper")
    result = up.upscale(lr.astype(np.float32) / 255.0)
    assert result.grid.grid_shape == (3, 4) and result.sr.shape == canvas.shape == (4 * 88, 4 * 116, 3)
    np.testing.assert_array_equal(result.classes, classes)
    # Batched and batch-1 convs differ by float noise, which can flip a rounding tie now and then.
    diff = np.abs(result.sr_255 - canvas)
    assert diff.max() <= 1.0 and (diff > 0).mean() < 1e-3
    report = evaluate_pairs(up, [("img", lr, hr)])
    assert report["images"][0]["psnr"] == pytest.approx(psnr, abs=1e-3)
    assert report["images"][0]["output_hw"] == [352, 464]


def test_full_protocol_has_no_seams_on_smooth_input():
    """A per-tile linear network (FSRCNN with zero inner layers is not; use SRResNet's bilinear base) on a
    ramp: the blended full-protocol output stays a ramp, with no jumps at tile borders."""
    spec = ModelSpec("network", "srresnet", (8,), 4, {"nb": 1})
    variables = jax.tree_util.tree_map(np.zeros_like, spec.init())
    lr = np.tile(np.linspace(0.1, 0.9, 100, dtype=np.float32)[None, :, None], (60, 1, 3))
    result = Upscaler(spec, variables).upscale(lr, float_merge=True)
    whole = np.asarray(jax.image.resize(lr, (240, 400, 3), "bilinear"))
    # Away from the image border (where tile padding differs from the whole-image edge handling) they agree.
    np.testing.assert_allclose(result.sr_255[:, 8:-8] / 255.0, whole[:, 8:-8], atol=1e-5)


def test_errors_are_one_line(variables):
    with pytest.raises(ValueError, match=r"^unknown protocol 'tiles': use 'full' or 'paper'$"):
        Upscaler(SPEC, variables, protocol="tiles")
    with pytest.raises(ValueError, match=r"^force_class 3 is out of range: the model has branches 0 \(simplest\) "
                                         r"to 2 \(the -O network\)$"):
        Upscaler(SPEC, variables).upscale(np.zeros((8, 8, 3)), force_class=3)
    with pytest.raises(ValueError, match=r"^the budget must be a positive fraction of the -O network's FLOPs, "
                                         r"got 0.0$"):
        Upscaler(SPEC, variables).upscale(np.zeros((8, 8, 3)), budget=0.0)
    with pytest.raises(ValueError, match=r"^image of 20x20 LR pixels is smaller than the 32x32 tile; the paper "
                                         r"protocol cannot handle it, use protocol .full.$"):
        Upscaler(SPEC, variables, protocol="paper").upscale(np.zeros((20, 20, 3)))


def test_default_sizes_depend_on_the_backend():
    from classsr_jax.inference.band_plan import default_band_tiles
    from classsr_jax.inference.routing import default_buckets

    srresnet = ModelSpec("classsr", "srresnet", (36, 52, 64))
    assert default_buckets(srresnet, "cpu") == Buckets(4, 1)
    assert default_buckets(SPEC, "cpu") == Buckets(8, 2)  # FSRCNN: cheap tiles, bigger calls
    assert default_buckets(SPEC, "gpu") == default_buckets(srresnet, "gpu") == Buckets(128, 16)
    # TPUs: calls of at least 64 tiles, so XLA pads the features to 8 and not to 128.
    assert default_buckets(srresnet, "tpu") == Buckets(128, 64)
    assert default_band_tiles("cpu") < default_band_tiles("gpu") == default_band_tiles("tpu")
    # This test session runs on the CPU backend: the Upscaler picks the CPU sizes.
    zeros = jax.tree_util.tree_map(lambda s: np.zeros(s.shape, s.dtype), srresnet.abstract())
    up = Upscaler(srresnet, zeros)
    assert up.buckets == Buckets(4, 1) and up.band_tiles == default_band_tiles("cpu")
    assert up.routed.compute_spec.widths == (36, 64, 64)
