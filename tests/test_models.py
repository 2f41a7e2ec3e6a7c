"""Parameter counts (docs/original.md#architectures), output shapes at every scale, and the scanned form equal to
the unrolled one."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from classsr_jax.models import PAPER_WIDTHS, ModelSpec, build_network
from classsr_jax.models.torch_names import model_keys

BRANCH_PARAMS = {
    "fsrcnn": (10_755, 17_635, 24_515),
    "carn": (94_851, 195_651, 294_939),
    "srresnet": (481_683, 1_002_771, 1_517_571),
    "rcan": (4_940_707, 9_521_827, 15_592_379),
}
CLASSSR_PARAMS = {"fsrcnn": 112_940, "carn": 645_476, "srresnet": 3_062_060, "rcan": 30_114_948}
TORCH_KEYS = {"fsrcnn": (20, 72), "carn": (102, 318), "srresnet": (74, 234), "rcan": (1634, 4914)}


def n_params(tree):
    return sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(tree))


@pytest.mark.parametrize("network", list(PAPER_WIDTHS))
def test_parameter_counts_equal_the_original(network):
    variables = ModelSpec("classsr", network, PAPER_WIDTHS[network]).abstract()
    params = variables["params"]
    assert n_params(params["classifier"]) == 60_035
    assert tuple(n_params(params[f"net{k}"]) for k in (1, 2, 3)) == BRANCH_PARAMS[network]
    assert n_params(params) == CLASSSR_PARAMS[network]


@pytest.mark.parametrize("network", list(PAPER_WIDTHS))
def test_torch_key_counts_equal_the_original(network):
    single, composite = TORCH_KEYS[network]
    assert len(model_keys(ModelSpec("network", network, (PAPER_WIDTHS[network][0],)))) == single
    assert len(model_keys(ModelSpec("classsr", network, PAPER_WIDTHS[network]))) == composite


def test_any_number_of_branches():
    spec = ModelSpec("classsr", "fsrcnn", (8, 16, 24, 32, 56))
    variables = spec.abstract()
    assert sorted(variables["params"]) == ["classifier", "net1", "net2", "net3", "net4", "net5"]
    assert variables["params"]["classifier"]["fc"]["kernel"].shape == (32, 5)


@pytest.mark.parametrize("network", list(PAPER_WIDTHS))
@pytest.mark.parametrize("scale", [2, 3, 4])
def test_output_shapes_at_every_scale(network, scale):
    extra = {"n_resgroups": 1, "n_resblocks": 2} if network == "rcan" else {}
    model = build_network(network, PAPER_WIDTHS[network][0], scale, **extra)
    x = jax.ShapeDtypeStruct((2, 20, 28, 3), jnp.float32)
    out = jax.eval_shape(lambda x: model.init_with_output(jax.random.PRNGKey(0), x)[0], x)
    assert out.shape == (2, 20 * scale, 28 * scale, 3)


def test_unknown_network_and_scale_are_one_line_errors():
    with pytest.raises(ValueError, match=r"^unknown network 'edsr': use one of fsrcnn, carn, srresnet, rcan$"):
        build_network("edsr", 64)
    with pytest.raises(ValueError, match=r"^unsupported scale 8: use one of 2, 3, 4$"):
        build_network("rcan", 64, 8)
    with pytest.raises(ValueError, match=r"^unknown field\(s\) for carn: nb$"):
        build_network("carn", 64, nb=3)


@pytest.mark.parametrize("network,extra", [("srresnet", {"nb": 3}), ("rcan", {"n_resgroups": 2, "n_resblocks": 3})])
def test_scanned_blocks_equal_unrolled_blocks(network, extra):
    """nn.scan is only a compile-time device: same numbers as the plain Python loop over blocks."""
    from flax.traverse_util import flatten_dict, unflatten_dict

    from classsr_jax.models.torch_names import model_keys

    spec = ModelSpec("network", network, (16,), 4, extra)
    x = jax.random.uniform(jax.random.PRNGKey(1), (1, 12, 12, 3))
    scanned = spec.build().init(jax.random.PRNGKey(0), x)
    flat_scanned = flatten_dict(scanned)
    # Re-home every stacked slice into the unrolled layout through the two key maps.
    by_torch = {m.torch_key: m for m in model_keys(spec, scan=True)}
    unrolled = {}
    for m in model_keys(spec, scan=False):
        s = by_torch[m.torch_key]
        if not s.flax_path:
            continue
        value = flat_scanned[s.flax_path]
        unrolled[m.flax_path] = value[s.index] if s.index else value
    unrolled = unflatten_dict(unrolled)
    out_scanned = spec.build().apply(scanned, x)
    out_unrolled = spec.build(scan=False).apply(unrolled, x)
    np.testing.assert_allclose(out_scanned, out_unrolled, atol=1e-6, rtol=0)


def test_rcan_value_range_lives_inside():
    """Callers pass [0, 1]; an identity-like RCAN (zero convs) returns its input through the MeanShifts."""
    spec = ModelSpec("network", "rcan", (16,), 2, {"n_resgroups": 1, "n_resblocks": 1})
    variables = jax.tree_util.tree_map(jnp.zeros_like,
                                       spec.build().init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 3))))
    params = variables["params"]
    eye = jnp.eye(3).reshape(1, 1, 3, 3)
    mean = 255.0 * jnp.array([0.4488, 0.4371, 0.4040])
    params["sub_mean"]["conv"] = {"kernel": eye, "bias": -mean}
    params["add_mean"]["conv"] = {"kernel": eye, "bias": mean}
    out = spec.build().apply(variables, jnp.full((1, 8, 8, 3), 0.25))
    # Every conv is zero, so the output is add_mean of 0: the mean colour, back on the [0, 1] scale.
    np.testing.assert_allclose(out[0, 0, 0], [0.4488, 0.4371, 0.4040], atol=1e-6)
