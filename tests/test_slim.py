"""Narrow branches cut out of the -O network (models/slim.py)."""

import jax
import numpy as np
import pytest

from classsr_jax.models import slim
from classsr_jax.models.spec import ModelSpec


def fsrcnn(width, seed=0):
    spec = ModelSpec("network", "fsrcnn", (width,), 4, {})
    return spec, jax.tree_util.tree_map(np.array, spec.init(seed=seed))


def test_importance_is_the_product_of_the_write_and_read_norms_and_ties_keep_the_lower_index():
    writes = np.array([[3.0, 0.0, 1.0, 2.0], [4.0, 1.0, 0.0, 0.0]])  # column norms 5, 1, 1, 2
    reads = np.array([[1.0, 0.0], [0.0, 6.0], [0.0, 2.0], [1.0, 1.0]])  # row norms 1, 6, 2, √2
    importance = slim.channel_importance(writes, reads)
    np.testing.assert_allclose(importance, [5.0, 6.0, 2.0, 2.0 * np.sqrt(2.0)])
    np.testing.assert_array_equal(slim.most_important(importance, 2), [0, 1])
    np.testing.assert_array_equal(slim.most_important(np.array([1.0, 2.0, 2.0, 2.0]), 2), [1, 2])


def test_a_branch_cut_from_channels_that_carry_everything_computes_what_o_computes():
    # -O (56 wide) whose channels outside `kept` are never read: the 16-wide cut must give -O's output.
    spec_o, variables = fsrcnn(56)
    params = variables["params"]
    rng = np.random.default_rng(0)
    head_kept = np.sort(rng.choice(56, 16, replace=False))
    expand_kept = np.sort(rng.choice(56, 16, replace=False))
    params["shrink_conv"]["kernel"][:, :, np.setdiff1d(np.arange(56), head_kept), :] = 0.0
    params["tail_deconv"]["kernel"][:, :, np.setdiff1d(np.arange(56), expand_kept), :] = 0.0
    cut = slim.slim_params("fsrcnn", params, 16)
    np.testing.assert_array_equal(cut["head_conv"]["kernel"], params["head_conv"]["kernel"][..., head_kept])
    np.testing.assert_array_equal(cut["expand_conv"]["bias"], params["expand_conv"]["bias"][expand_kept])
    np.testing.assert_array_equal(cut["map_conv_2"]["kernel"], params["map_conv_2"]["kernel"])
    spec_16, fresh = fsrcnn(16)
    spec_16.check({"params": cut}, "the cut")
    lr = rng.random((2, 20, 24, 3), dtype=np.float32)
    expected = spec_o.build().apply({"params": params}, lr)
    np.testing.assert_allclose(spec_16.build().apply({"params": cut}, lr), expected, atol=2e-6)
    # Cut at -O's own width, every channel is kept: the same network.
    jax.tree_util.tree_map(np.testing.assert_array_equal, slim.slim_params("fsrcnn", params, 56), params)


def test_unsupported_networks_and_widths_are_refused():
    _, variables = fsrcnn(8)
    with pytest.raises(ValueError,
                       match=r"^cutting a branch out of the -O network is implemented for fsrcnn, not carn$"):
        slim.slim_params("carn", variables["params"], 4)
    with pytest.raises(ValueError, match=r"^a branch cut out of the -O network must be 1 to 8 channels wide, got 9$"):
        slim.slim_params("fsrcnn", variables["params"], 9)
