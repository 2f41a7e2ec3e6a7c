"""Routing calibration (classsr_jax/calibration.py): logit offsets whose argmax shares match target shares,
checked against the exact two-class answer (a quantile); the calibrated model differs only in its
Class-Module's last bias and routes its tiles in equal shares."""

import jax
import numpy as np
import pytest

from classsr_jax.models.spec import ModelSpec
from classsr_jax.training.calibration import RoutingCalibrator, argmax_shares, balance_offsets


def test_two_classes_match_the_quantile_threshold():
    # Two classes: routing to class 0 exactly the rows whose margin l0 − l1 is in the top 30% is the only
    # routing with those shares that keeps the order of the margins; the offsets must reproduce it.
    rng = np.random.default_rng(0)
    logits = (rng.normal(size=(2000, 2)) * 1e-4 + [0.02, 0.0]).astype(np.float32)
    offsets = balance_offsets(logits, np.array([0.3, 0.7]))
    assert offsets.shape == (2,) and offsets[1] == 0.0
    margin = logits[:, 0] - logits[:, 1]
    expected = margin > np.quantile(margin, 0.7)
    routed = np.argmax(logits + offsets, axis=1) == 0
    assert abs(int(routed.sum()) - int(expected.sum())) <= 2
    assert np.count_nonzero(routed != expected) <= 2
    # Uncalibrated, the shared bias sends every row to class 0.
    np.testing.assert_array_equal(argmax_shares(logits), [1.0, 0.0])


@pytest.mark.parametrize("target", [(1 / 3, 1 / 3, 1 / 3), (0.5, 0.3, 0.2), (0.1, 0.2, 0.7)])
def test_three_classes_reach_the_target_shares(target):
    rng = np.random.default_rng(1)
    logits = (rng.normal(size=(4096, 3)) * 3e-5 + [0.0, 1e-4, 3e-4]).astype(np.float32)
    offsets = balance_offsets(logits, np.array(target))
    np.testing.assert_allclose(argmax_shares(logits + offsets), target, atol=0.01)


def test_a_confident_classifier_keeps_its_routing_and_ties_get_no_offset():
    rng = np.random.default_rng(2)
    classes = rng.integers(0, 3, size=3000)
    logits = rng.normal(size=(3000, 3)).astype(np.float32)
    logits[np.arange(3000), classes] += 12.0  # one-hot-like: the argmax shares are the probability mass
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    offsets = balance_offsets(logits, probs.mean(0))
    assert np.mean(np.argmax(logits + offsets, axis=1) == classes) > 0.995
    np.testing.assert_array_equal(balance_offsets(np.ones((10, 3), np.float32), np.array([0.2, 0.3, 0.5])), [0, 0, 0])


def test_calibrated_model_differs_only_in_the_class_module_bias_and_routes_in_equal_shares():
    spec = ModelSpec("classsr", "fsrcnn", (4, 6, 8), 4, {"s": 4, "m": 1})
    variables = jax.tree_util.tree_map(np.asarray, spec.init(seed=3))
    # Flat tiles of random colours: the fresh Class-Module's logits differ by about 1e-6 from tile to tile, and
    # its random last bias (0.07 apart) sends every tile to class 2, as a barely trained one does.
    tiles = np.random.default_rng(4).random((512, 1, 1, 3)).astype(np.float32) * np.ones((1, 32, 32, 1), np.float32)
    calibrator = RoutingCalibrator(spec, tiles)
    assert argmax_shares(calibrator.logits(variables)).tolist() == [0.0, 0.0, 1.0]
    calibrated, report = calibrator.calibrate_with_report(variables)
    jax.tree_util.tree_map(np.testing.assert_array_equal, calibrator.calibrate(variables), calibrated)
    flat_before = dict(jax.tree_util.tree_leaves_with_path(variables))
    for path, value in jax.tree_util.tree_leaves_with_path(calibrated):
        keys = tuple(getattr(k, "key", k) for k in path)
        if keys == ("params", "classifier", "fc", "bias"):
            np.testing.assert_allclose(
                value, variables["params"]["classifier"]["fc"]["bias"] + np.array(report["offsets"], np.float32))
        else:
            np.testing.assert_array_equal(value, flat_before[path], err_msg=str(keys))
    assert report["tiles"] == 512 and report["argmax_shares_before"] == [0.0, 0.0, 1.0]
    np.testing.assert_allclose(report["argmax_shares_after"], [1 / 3, 1 / 3, 1 / 3], atol=0.02)
    np.testing.assert_allclose(argmax_shares(calibrator.logits(calibrated)), report["argmax_shares_after"])
