"""Widened branches (zero-padded channels) compute exactly the narrow network, for every backbone."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from classsr_jax.inference.reference import ReferenceRouter
from classsr_jax.inference.routing import RoutedModel, default_compute_widths
from classsr_jax.models import ModelSpec, build_network
from classsr_jax.models.widen import cpu_compute_widths, widen, widen_network_variables, wider_spec

pytestmark = pytest.mark.slow  # every network at several widths: out of the quick loop

# Small depths keep the test fast; every kind of layer of each network is still there.
CASES = [
    ("srresnet", 52, 64, 4, {"nb": 2}),
    ("srresnet", 36, 48, 4, {"nb": 2}),
    ("carn", 52, 64, 4, {}),  # grouped convs (4 groups of 13 → 16) and cascades of concatenations
    ("rcan", 50, 64, 4, {"n_resgroups": 2, "n_resblocks": 2}),  # channel attention squeeze 3 → 4
    ("fsrcnn", 36, 56, 4, {}),
    # ×3: one pixel shuffle by 3 (channel c at phases 9c … 9c + 8) instead of two by 2.
    ("srresnet", 52, 64, 3, {"nb": 2}),
    ("carn", 52, 64, 3, {}),
]


def random_variables(model, seed):
    """Random weights everywhere, biases included, so that a wrongly placed channel cannot hide."""
    variables = model.init(jax.random.PRNGKey(seed), jnp.zeros((1, 16, 16, 3)))
    leaves, treedef = jax.tree_util.tree_flatten_with_path(variables)
    rng = np.random.default_rng(seed)
    out = []
    for path, x in leaves:
        value = rng.normal(0, 0.1, np.shape(x)).astype(np.float32)
        if getattr(path[-1], "key", None) == "var":  # BatchNorm running variances must be positive
            value = 0.5 + np.abs(value)
        out.append(value)
    return jax.tree_util.tree_unflatten(treedef, out)


@pytest.mark.parametrize("network,width,wide,scale,extra", CASES)
def test_widened_network_computes_the_narrow_one(network, width, wide, scale, extra):
    narrow = build_network(network, width, scale, **extra)
    variables = random_variables(narrow, seed=width + scale)
    wide_vars = widen_network_variables(network, width, wide, scale, variables, extra)
    wide_model = build_network(network, wide, scale, **extra)
    shapes = jax.tree_util.tree_map(np.shape, wide_model.init(jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 3))))
    assert jax.tree_util.tree_map(np.shape, wide_vars) == shapes
    x = jnp.asarray(np.random.default_rng(0).random((2, 20, 24, 3), np.float32))
    expected = np.asarray(jax.jit(narrow.apply)(variables, x))  # one compile each, not one per operation
    got = np.asarray(jax.jit(wide_model.apply)(wide_vars, x))
    assert np.isfinite(expected).all() and np.abs(expected).max() > 1e-3
    assert got.shape == (2, 20 * scale, 24 * scale, 3)
    np.testing.assert_allclose(got, expected, atol=2e-5 * max(1.0, np.abs(expected).max()))


def test_widened_classsr_keeps_classifier_and_computes_every_branch():
    spec = ModelSpec("classsr", "srresnet", (36, 52, 64), 4, {"nb": 2})
    variables = spec.init(seed=3)
    wide_spec, wide_vars = widen(spec, variables, (36, 64, 64))
    assert wide_spec.widths == (36, 64, 64)
    for name in ("classifier", "net1", "net3"):
        assert jax.tree_util.tree_all(
            jax.tree_util.tree_map(np.array_equal, wide_vars["params"][name], variables["params"][name]))
    x = jnp.asarray(np.random.default_rng(1).random((3, 32, 32, 3), np.float32))
    model, wide_model = spec.build(), wide_spec.build()
    for k in range(3):
        a = np.asarray(model.apply(variables, x, k, method=model.branch))
        b = np.asarray(wide_model.apply(wide_vars, x, k, method=wide_model.branch))
        np.testing.assert_allclose(b, a, atol=1e-5)


def test_routed_model_widens_on_cpu_and_routes_the_same_numbers():
    spec = ModelSpec("classsr", "carn", (36, 52, 64), 4)
    assert default_compute_widths(spec, "cpu") == (36, 64, 64)
    assert default_compute_widths(spec, "gpu") == (36, 52, 64)
    assert cpu_compute_widths(ModelSpec("classsr", "rcan", (36, 50, 64), 4)) == (36, 64, 64)
    assert cpu_compute_widths(ModelSpec("classsr", "fsrcnn", (16, 36, 56), 4)) == (16, 36, 56)
    variables = spec.init(seed=0)
    tiles = np.random.default_rng(0).random((16, 32, 32, 3), dtype=np.float32)
    valid = np.ones(16, bool)
    outs = []
    for widths in ((36, 52, 64), (36, 64, 64)):
        routed = RoutedModel(spec, compute_widths=widths)
        assert routed.compute_spec.widths == widths
        sr = ReferenceRouter(routed).route(routed.place_variables(variables), tiles, valid, np.zeros(3), 1)[0]
        outs.append(np.asarray(sr))
    np.testing.assert_allclose(outs[1], outs[0], atol=1e-5)


def test_widths_can_only_grow():
    spec = ModelSpec("classsr", "srresnet", (36, 52, 64))
    with pytest.raises(ValueError,
                       match=r"^cannot compute branches of widths \[36, 52, 64\] at widths \[36, 48, 64\]$"):
        wider_spec(spec, (36, 48, 64))
    with pytest.raises(ValueError, match=r"^carn widths 50 and 64 must both be multiples of its 4 groups$"):
        widen_network_variables("carn", 50, 64, 4, {}, {})
