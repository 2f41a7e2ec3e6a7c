"""Parity with an independent PyTorch reference of the original networks (tests/torch_reference.py).

Random weights, with non-trivial BatchNorm statistics and MeanShift values, are converted by the same code
as `classsr_jax.convert` and must give the reference's outputs to 1e-5 max abs on [0, 1] images.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch_reference as ref

from classsr_jax.models import ModelSpec, conversion
from classsr_jax.models.common import SubPixelConvTranspose, deconv_as_subpixel_kernel, pixel_shuffle

pytestmark = pytest.mark.slow  # every network against the PyTorch reference: out of the quick loop

torch.set_grad_enabled(False)
TOL = 1e-5


def state_dict_np(module):
    return {k: v.detach().cpu().numpy() for k, v in module.state_dict().items()}


def nchw(x):
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def nhwc(t):
    return t.detach().cpu().numpy().transpose(0, 2, 3, 1)


def random_images(n, size=32, seed=0):
    return np.random.default_rng(seed).random((n, size, size, 3), dtype=np.float32)


SMALL_RCAN = {"n_resgroups": 2, "n_resblocks": 3}

CASES = [
    ("fsrcnn", 16, 4, {}),
    ("fsrcnn", 56, 4, {}),
    ("fsrcnn", 36, 2, {}),
    ("fsrcnn", 36, 3, {}),
    ("carn", 36, 4, {}),
    ("carn", 52, 2, {}),
    ("carn", 64, 3, {}),
    ("srresnet", 36, 4, {}),
    ("srresnet", 52, 3, {}),
    ("srresnet", 64, 2, {}),
    ("rcan", 36, 4, {}),  # full depth: 10 groups × 20 blocks
    ("rcan", 50, 2, SMALL_RCAN),
    ("rcan", 64, 3, SMALL_RCAN),
]


@pytest.mark.parametrize("network,width,scale,extra", CASES)
def test_backbone_matches_reference(network, width, scale, extra):
    torch_net = ref.build(network, width, scale=scale, **extra).eval()
    ref.randomize_(torch_net, seed=width + scale)
    spec, variables = conversion.convert_state_dict(network, state_dict_np(torch_net), "reference")
    assert spec.widths == (width,) and spec.scale == (scale if network != "fsrcnn" else 4)
    if network == "fsrcnn":  # a 9x9 deconv cannot tell its scale; the caller says it
        spec, variables = conversion.convert_state_dict(network, state_dict_np(torch_net), "reference", scale=scale)
    x = random_images(2, seed=scale)
    rgb_range = 255.0 if network == "rcan" else 1.0
    expected = nhwc(torch_net(nchw(x) * rgb_range)) / rgb_range
    got = np.asarray(jax.jit(spec.build().apply)(variables, jnp.asarray(x)))
    assert got.shape == (2, 32 * scale, 32 * scale, 3)
    assert np.abs(got - expected).max() < TOL


def test_classifier_matches_reference():
    torch_net = ref.Classifier().eval()
    ref.randomize_(torch_net, seed=3)
    from classsr_jax.models.classifier import Classifier
    from classsr_jax.models.torch_names import classifier_keys

    model = Classifier()
    abstract = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3))))
    # The classifier alone goes through the composite mapping with a "classifier." prefix stripped.
    spec = ModelSpec("classsr", "fsrcnn", (16, 36, 56))
    del spec
    mappings = list(classifier_keys())
    sd = state_dict_np(torch_net)
    assert {m.torch_key for m in mappings} == set(sd)
    variables = {"params": {}}
    from classsr_jax.models.torch_names import torch_to_flax_array

    for m in mappings:
        node = variables
        for name in m.flax_path[:-1]:
            node = node.setdefault(name, {})
        node[m.flax_path[-1]] = torch_to_flax_array(sd[m.torch_key], m.rule)
    assert jax.tree_util.tree_map(np.shape, variables) == jax.tree_util.tree_map(lambda s: s.shape, dict(abstract))
    x = random_images(4, seed=1)
    np.testing.assert_allclose(np.asarray(model.apply(variables, x)), torch_net(nchw(x)).numpy(), atol=TOL, rtol=0)


@pytest.mark.parametrize("network", ["fsrcnn", "carn", "srresnet", "rcan"])
def test_composite_checkpoint_routes_like_reference(network):
    extra = SMALL_RCAN if network == "rcan" else {}
    torch_model = ref.build_classsr(network, **extra).eval()
    ref.randomize_(torch_model, seed=11)
    x = random_images(8, seed=5)
    scale_in = 255.0 if network == "rcan" else 1.0
    ref.calibrate_classifier_(torch_model.classifier, nchw(x))
    sd = state_dict_np(torch_model)
    spec, variables = conversion.convert_state_dict(network, sd, "reference")
    assert spec.kind == "classsr" and spec.widths == ref.WIDTHS[network]
    model = spec.build()
    sr_ref, probs_ref, classes_ref = torch_model.forward_test(nchw(x) * scale_in)
    assert len(set(classes_ref.tolist())) >= 2, "the calibrated classifier should use several branches"
    logits = np.asarray(model.apply(variables, x, method=model.classify))
    np.testing.assert_allclose(jax.nn.softmax(logits), probs_ref.numpy(), atol=TOL, rtol=0)
    classes = logits.argmax(-1)
    np.testing.assert_array_equal(classes, classes_ref.numpy())
    for k in range(3):
        picked = classes == k
        if picked.any():
            out = np.asarray(model.apply(variables, x[picked], k, method=model.branch))
            assert np.abs(out - nhwc(sr_ref)[picked] / scale_in).max() < TOL
    # The soft mixture of joint training (branches in eval mode).
    mixed_ref, p_ref = torch_model.forward_train(nchw(x) * scale_in)
    mixed, p = model.apply(variables, x)
    # RCAN mixes on [0, 255]: its float32 rounding, brought back to [0, 1], is larger, and its size depends on
    # the CPU's kernels (1.9e-5 on an AMD EPYC with AVX-512, under 1e-5 elsewhere): 0.005 grey levels.
    mixed_tol = 3 * TOL if network == "rcan" else TOL
    assert np.abs(np.asarray(mixed) - nhwc(mixed_ref) / scale_in).max() < mixed_tol
    np.testing.assert_allclose(np.asarray(p), p_ref.numpy(), atol=TOL, rtol=0)


# --- the tricky mappings, one by one -------------------------------------------------------------------------


def test_grouped_conv_mapping():
    tconv = torch.nn.Conv2d(16, 32, 3, padding=1, groups=4)
    ref.randomize_(tconv, seed=0)
    import flax.linen as nn

    conv = nn.Conv(32, (3, 3), padding=((1, 1), (1, 1)), feature_group_count=4)
    params = {"params": {"kernel": tconv.weight.numpy().transpose(2, 3, 1, 0), "bias": tconv.bias.numpy()}}
    x = np.random.default_rng(0).random((2, 9, 7, 16), dtype=np.float32)
    np.testing.assert_allclose(conv.apply(params, x), nhwc(tconv(nchw(x))), atol=TOL, rtol=0)


@pytest.mark.parametrize("scale,padding,output_padding", [(4, 3, 1), (2, 4, 1), (3, 3, 0), (4, 4, 3)])
def test_transposed_conv_with_output_padding(scale, padding, output_padding):
    tconv = torch.nn.ConvTranspose2d(8, 3, 9, stride=scale, padding=padding, output_padding=output_padding)
    ref.randomize_(tconv, seed=scale)
    x = np.random.default_rng(1).random((2, 7, 5, 8), dtype=np.float32)
    kernel = tconv.weight.numpy().transpose(2, 3, 0, 1)
    params = {"params": {"kernel": kernel, "bias": tconv.bias.numpy()}}
    module = SubPixelConvTranspose(3, 9, scale, padding, output_padding)
    got = np.asarray(module.apply(params, x))
    expected = nhwc(tconv(nchw(x)))
    assert got.shape == expected.shape == (2, 7 * scale, 5 * scale, 3)
    np.testing.assert_allclose(got, expected, atol=TOL, rtol=0)
    # The dilated ("zero-insertion") form of the transposed conv gives the same numbers.
    k = 9
    dilated = jax.lax.conv_general_dilated(
        x,
        np.flip(kernel, (0, 1)),
        (1, 1),
        ((k - 1 - padding, k - 1 - padding + output_padding),) * 2,
        lhs_dilation=(scale, scale),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    ) + tconv.bias.numpy()
    np.testing.assert_allclose(got, np.asarray(dilated), atol=TOL, rtol=0)


def test_subpixel_kernel_is_small():
    """At ×4 the sub-pixel conv has 3x3 taps, not the 9x9 over a 4×-dilated grid of the direct form."""
    sub, padding = deconv_as_subpixel_kernel(jnp.ones((9, 9, 5, 3)), 4, 3)
    assert sub.shape == (3, 3, 5, 48) and padding == ((1, 1), (1, 1))
    # Every one of the 81 taps appears exactly once per (phase-row, phase-col) combination: 81 · 5 · 3 ones.
    assert float(sub.sum()) == 81 * 5 * 3


def test_pixel_shuffle_channel_order():
    x = np.arange(2 * 3 * 4 * 12, dtype=np.float32).reshape(2, 3, 4, 12)
    expected = nhwc(torch.nn.functional.pixel_shuffle(nchw(x), 2))
    np.testing.assert_array_equal(np.asarray(pixel_shuffle(jnp.asarray(x), 2)), expected)
    # Channel c·r² + i·r + j lands on output channel c at sub-position (i, j).
    out = np.asarray(pixel_shuffle(jnp.asarray(x), 2))
    assert out[0, 1, 0 * 2 + 1, 2] == x[0, 0, 0, 2 * 4 + 1 * 2 + 1]


def test_scalar_prelu():
    import flax.linen as nn

    tprelu = torch.nn.PReLU(num_parameters=1, init=0.3)
    x = np.linspace(-2, 2, 24, dtype=np.float32).reshape(1, 2, 3, 4)
    out = nn.PReLU().apply({"params": {"negative_slope": np.float32(0.3)}}, x)
    np.testing.assert_allclose(out, nhwc(tprelu(nchw(x))), atol=1e-7, rtol=0)
    np.testing.assert_allclose(out, np.where(x > 0, x, 0.3 * x), atol=1e-7, rtol=0)


def test_batchnorm_in_eval_mode():
    import flax.linen as nn

    tbn = torch.nn.BatchNorm2d(6).eval()
    ref.randomize_(tbn, seed=2)
    variables = {
        "params": {"scale": tbn.weight.numpy(), "bias": tbn.bias.numpy()},
        "batch_stats": {"mean": tbn.running_mean.numpy(), "var": tbn.running_var.numpy()},
    }
    x = np.random.default_rng(2).normal(size=(2, 5, 5, 6)).astype(np.float32)
    bn = nn.BatchNorm(use_running_average=True, momentum=0.9, epsilon=1e-5)
    np.testing.assert_allclose(bn.apply(variables, x), nhwc(tbn(nchw(x))), atol=TOL, rtol=0)
