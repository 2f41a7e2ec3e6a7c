"""FLOPs counted from the modules in the paper's convention (docs/original.md#flops), and the true cost alongside."""

import pytest
import torch
import torch_reference as ref

from classsr_jax.models import PAPER_WIDTHS, ModelSpec, build_network
from classsr_jax.models.flops import count_layer_macs, format_flops, model_flops

# MACs per 32x32 LR tile at ×4 of the original networks (docs/original.md#the-papers-convention).
ORIGINAL_MACS = {
    "fsrcnn": (70_631_424, 152_285_184, 233_938_944),
    "carn": (190_264_320, 385_938_432, 577_594_368),
    "srresnet": (829_108_224, 1_719_005_184, 2_596_995_072),
    "rcan": (5_164_942_464, 9_953_957_472, 16_300_045_312),
}
# The constants of the original's util.cal_FLOPs (rounded to 2-3 digits).
CODE_CONSTANTS = {
    "fsrcnn": (141e6, 304e6, 468e6),
    "carn": (0.38e9, 0.77e9, 1.15e9),
    "srresnet": (1.66e9, 3.44e9, 5.20e9),
    "rcan": (10.33e9, 19.90e9, 32.60e9),
}


@pytest.mark.parametrize("network", list(PAPER_WIDTHS))
def test_paper_convention_reproduces_the_original(network):
    flops = model_flops(ModelSpec("classsr", network, PAPER_WIDTHS[network]))
    assert flops.branches == tuple(2.0 * m for m in ORIGINAL_MACS[network])
    assert flops.classifier == 2.0 * 3_801_184
    for got, constant in zip(flops.branches, CODE_CONSTANTS[network]):
        assert abs(got - constant) / constant < 0.01  # the code's constants are rounded to 2-3 digits


def test_fsrcnn_true_convention_counts_the_deconv_on_its_input():
    true = model_flops(ModelSpec("classsr", "fsrcnn", (16, 36, 56)), convention="true")
    # P·(99·d + 5184) + 1024·243·d MACs with P = 1024 LR pixels, i.e. FSRCNN-O is 49.84 MFLOPs, not 467.88.
    assert true.branches == tuple(2.0 * (1024 * (99 * d + 5184) + 1024 * 243 * d) for d in (16, 36, 56))
    assert round(true.original / 1e6, 2) == 49.84


@pytest.mark.parametrize("network,width,scale,tile",
                         [("carn", 36, 2, 32), ("srresnet", 52, 3, 24), ("fsrcnn", 56, 3, 40)])
def test_other_scales_and_tiles_match_torch_hooks(network, width, scale, tile):
    torch_net = ref.build(network, width, scale=scale)
    expected = ref.count_macs_torch(torch_net, (1, 3, tile, tile))
    layers = count_layer_macs(build_network(network, width, scale), (tile, tile))
    assert sum(layer.paper for layer in layers) == expected


def test_rcan_other_scale_matches_torch_hooks():
    with torch.device("meta"):
        torch_net = ref.build("rcan", 50, scale=2)
    expected = ref.count_macs_torch(torch_net, (1, 3, 32, 32))
    assert model_flops(ModelSpec("network", "rcan", (50,), 2)).branches[0] == 2.0 * expected


def test_layers_are_named_and_classified():
    layers = count_layer_macs(build_network("fsrcnn", 16), (32, 32))
    kinds = {layer.path: layer.kind for layer in layers}
    assert kinds["tail_deconv"] == "deconv" and kinds["head_conv"] == "conv"
    deconv = next(layer for layer in layers if layer.kind == "deconv")
    assert deconv.paper == 16 * deconv.true == 128 * 128 * 3 * 16 * 81


def test_format_flops():
    assert format_flops(1.1552e9) == "1.16G" and format_flops(467.88e6) == "467.9M" and format_flops(12) == "12"
