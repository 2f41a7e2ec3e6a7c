"""The PyTorch reference (tests/torch_reference.py) matches the original code: its architectures, parameter counts,
FLOPs and state_dict layout (docs/original.md#architectures, #flops, #checkpoints).

These facts are the ground truth that the Flax parity tests rely on.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch_reference import (
    CARN_M,
    FSRCNN,
    FSRCNN_DECONV_PADDING,
    RCAN,
    RGB_MEAN,
    WIDTHS,
    Classifier,
    ClassSR,
    MSRResNet,
    build,
    build_classsr,
    calibrate_classifier_,
    count_macs_torch,
    randomize_,
)

pytestmark = pytest.mark.slow  # the PyTorch reference networks: out of the quick loop

torch.set_num_threads(2)

NETWORKS = ("fsrcnn", "carn", "srresnet", "rcan")

# The original's per-tile FLOPs table (docs/original.md#the-papers-convention).
PARAMS = {
    "fsrcnn": (10_755, 17_635, 24_515),
    "carn": (94_851, 195_651, 294_939),
    "srresnet": (481_683, 1_002_771, 1_517_571),
    "rcan": (4_940_707, 9_521_827, 15_592_379),
}
MACS = {
    "fsrcnn": (70_631_424, 152_285_184, 233_938_944),
    "carn": (190_264_320, 385_938_432, 577_594_368),
    "srresnet": (829_108_224, 1_719_005_184, 2_596_995_072),
    "rcan": (5_164_942_464, 9_953_957_472, 16_300_045_312),
}
CLASSIFIER_PARAMS = 60_035
CLASSIFIER_MACS = 3_801_184
COMPOSITE_PARAMS = {"fsrcnn": 112_940, "carn": 645_476, "srresnet": 3_062_060, "rcan": 30_114_948}
KEYS = {"fsrcnn": 20, "carn": 102, "srresnet": 74, "rcan": 1634}
COMPOSITE_KEYS = {"fsrcnn": 72, "carn": 318, "srresnet": 234, "rcan": 4914}


def _nparams(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def _meta(network, width, **kw):
    # Building on the meta device is instant and allocates nothing; shapes/keys/MAC hooks still work.
    with torch.device("meta"):
        return build(network, width, **kw)


# ----------------------------------------------------------------------------------------------------------------
# The original's state_dict key lists (docs/original.md#checkpoints), written out independently of
# torch_reference, in the original's order.
# ----------------------------------------------------------------------------------------------------------------
def _original_keys_classifier():
    ks = [("lastOut.weight", (3, 32)), ("lastOut.bias", (3,)),
          ("CondNet.0.weight", (128, 3, 4, 4)), ("CondNet.0.bias", (128,))]
    for i in (2, 4, 6):
        ks += [(f"CondNet.{i}.weight", (128, 128, 1, 1)), (f"CondNet.{i}.bias", (128,))]
    ks += [("CondNet.8.weight", (32, 128, 1, 1)), ("CondNet.8.bias", (32,))]
    return ks


def _original_keys_fsrcnn(d, s=12):
    ks = [("head_conv.0.weight", (d, 3, 5, 5)), ("head_conv.0.bias", (d,)), ("head_conv.1.weight", (1,)),
          ("body_conv.0.0.weight", (s, d, 1, 1)), ("body_conv.0.0.bias", (s,)), ("body_conv.0.1.weight", (1,))]
    for i in (1, 2, 3, 4):
        ks += [(f"body_conv.{i}.weight", (s, s, 3, 3)), (f"body_conv.{i}.bias", (s,))]
    ks += [("body_conv.5.weight", (1,)),
           ("body_conv.6.0.weight", (d, s, 1, 1)), ("body_conv.6.0.bias", (d,)), ("body_conv.6.1.weight", (1,)),
           ("tail_conv.weight", (d, 3, 9, 9)), ("tail_conv.bias", (3,))]
    return ks


def _original_keys_bn_fusion(prefix, nf, k):
    return [(f"{prefix}.0.weight", (nf, k * nf, 1, 1))] + [
        (f"{prefix}.1.{n}", (nf,)) for n in ("weight", "bias", "running_mean", "running_var")
    ] + [(f"{prefix}.1.num_batches_tracked", ())]


def _original_keys_carn(nf, g=4):
    ks = [("sub_mean.weight", (3, 3, 1, 1)), ("sub_mean.bias", (3,)),
          ("add_mean.weight", (3, 3, 1, 1)), ("add_mean.bias", (3,)),
          ("entry.weight", (nf, 3, 3, 3)), ("entry.bias", (nf,))]
    for B in ("b1", "b2", "b3"):
        ks += [(f"{B}.b1.body.0.weight", (nf, nf // g, 3, 3)), (f"{B}.b1.body.0.bias", (nf,)),
               (f"{B}.b1.body.2.weight", (nf, nf // g, 3, 3)), (f"{B}.b1.body.2.bias", (nf,)),
               (f"{B}.b1.body.4.weight", (nf, nf, 1, 1)), (f"{B}.b1.body.4.bias", (nf,))]
        for c, k in (("c1", 2), ("c2", 3), ("c3", 4)):
            ks += _original_keys_bn_fusion(f"{B}.{c}", nf, k)
    for c, k in (("c1", 2), ("c2", 3), ("c3", 4)):
        ks += _original_keys_bn_fusion(c, nf, k)
    ks += [("upsample.up.body.0.weight", (4 * nf, nf // g, 3, 3)), ("upsample.up.body.0.bias", (4 * nf,)),
           ("upsample.up.body.3.weight", (4 * nf, nf // g, 3, 3)), ("upsample.up.body.3.bias", (4 * nf,)),
           ("exit.weight", (3, nf, 3, 3)), ("exit.bias", (3,))]
    return ks


def _original_keys_srresnet(nf, nb=16):
    ks = [("conv_first.weight", (nf, 3, 3, 3)), ("conv_first.bias", (nf,))]
    for i in range(nb):
        for c in ("conv1", "conv2"):
            ks += [(f"recon_trunk.{i}.{c}.weight", (nf, nf, 3, 3)), (f"recon_trunk.{i}.{c}.bias", (nf,))]
    ks += [("upconv1.weight", (4 * nf, nf, 3, 3)), ("upconv1.bias", (4 * nf,)),
           ("upconv2.weight", (4 * nf, nf, 3, 3)), ("upconv2.bias", (4 * nf,)),
           ("HRconv.weight", (nf, nf, 3, 3)), ("HRconv.bias", (nf,)),
           ("conv_last.weight", (3, nf, 3, 3)), ("conv_last.bias", (3,))]
    return ks


def _original_keys_rcan(nf, G=10, B=20):
    r = nf // 16
    ks = [("sub_mean.weight", (3, 3, 1, 1)), ("sub_mean.bias", (3,)),
          ("add_mean.weight", (3, 3, 1, 1)), ("add_mean.bias", (3,)),
          ("head.0.weight", (nf, 3, 3, 3)), ("head.0.bias", (nf,))]
    for g in range(G):
        for b in range(B):
            p = f"body.{g}.body.{b}.body"
            ks += [(f"{p}.0.weight", (nf, nf, 3, 3)), (f"{p}.0.bias", (nf,)),
                   (f"{p}.2.weight", (nf, nf, 3, 3)), (f"{p}.2.bias", (nf,)),
                   (f"{p}.3.conv_du.0.weight", (r, nf, 1, 1)), (f"{p}.3.conv_du.0.bias", (r,)),
                   (f"{p}.3.conv_du.2.weight", (nf, r, 1, 1)), (f"{p}.3.conv_du.2.bias", (nf,))]
        ks += [(f"body.{g}.body.{B}.weight", (nf, nf, 3, 3)), (f"body.{g}.body.{B}.bias", (nf,))]
    ks += [(f"body.{G}.weight", (nf, nf, 3, 3)), (f"body.{G}.bias", (nf,)),
           ("tail.0.0.weight", (4 * nf, nf, 3, 3)), ("tail.0.0.bias", (4 * nf,)),
           ("tail.0.2.weight", (4 * nf, nf, 3, 3)), ("tail.0.2.bias", (4 * nf,)),
           ("tail.1.weight", (3, nf, 3, 3)), ("tail.1.bias", (3,))]
    return ks


ORIGINAL_KEYS = {"fsrcnn": _original_keys_fsrcnn, "carn": _original_keys_carn, "srresnet": _original_keys_srresnet,
             "rcan": _original_keys_rcan}


def _keys_shapes(m):
    return [(k, tuple(v.shape)) for k, v in m.state_dict().items()]


# ----------------------------------------------------------------------------------------------------------------
# The original's parameter counts (docs/original.md#architectures)
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("network", NETWORKS)
def test_branch_param_counts(network):
    got = tuple(_nparams(_meta(network, w)) for w in WIDTHS[network])
    assert got == PARAMS[network]


def test_classifier_param_count():
    assert _nparams(Classifier()) == CLASSIFIER_PARAMS


@pytest.mark.parametrize("network", NETWORKS)
def test_composite_param_counts(network):
    with torch.device("meta"):
        model = build_classsr(network)
    assert _nparams(model) == COMPOSITE_PARAMS[network]
    assert COMPOSITE_PARAMS[network] == CLASSIFIER_PARAMS + sum(PARAMS[network])


def test_widths_constant():
    assert WIDTHS == {"fsrcnn": (16, 36, 56), "carn": (36, 52, 64), "srresnet": (36, 52, 64), "rcan": (36, 50, 64)}


# ----------------------------------------------------------------------------------------------------------------
# The original's state_dict layout (docs/original.md#checkpoints)
# ----------------------------------------------------------------------------------------------------------------
def test_classifier_keys_exact():
    sd = Classifier().state_dict()
    assert len(sd) == 12
    assert _keys_shapes(Classifier()) == _original_keys_classifier()


@pytest.mark.parametrize("network", NETWORKS)
def test_branch_keys_exact(network):
    for w in WIDTHS[network]:
        m = _meta(network, w)
        assert len(m.state_dict()) == KEYS[network]
        assert _keys_shapes(m) == ORIGINAL_KEYS[network](w)


@pytest.mark.parametrize("network", NETWORKS)
def test_composite_keys(network):
    with torch.device("meta"):
        model = build_classsr(network)
    sd = model.state_dict()
    assert len(sd) == COMPOSITE_KEYS[network]
    expected = [(f"classifier.{k}", s) for k, s in _original_keys_classifier()]
    for i, w in enumerate(WIDTHS[network], start=1):
        expected += [(f"net{i}.{k}", s) for k, s in ORIGINAL_KEYS[network](w)]
    assert _keys_shapes(model) == expected


def test_sample_keys_and_dtypes():
    f = FSRCNN(56).state_dict()
    assert f["tail_conv.weight"].shape == (56, 3, 9, 9)
    assert f["body_conv.5.weight"].shape == (1,)
    c = CARN_M(52).state_dict()
    assert c["b2.b1.body.0.weight"].shape == (52, 13, 3, 3)
    assert c["upsample.up.body.3.weight"].shape == (208, 13, 3, 3)
    assert c["c2.1.num_batches_tracked"].dtype == torch.int64
    assert c["c2.1.num_batches_tracked"].shape == ()
    assert "c2.0.bias" not in c
    for k, v in c.items():
        if not k.endswith("num_batches_tracked"):
            assert v.dtype == torch.float32, k
    r = _meta("rcan", 50).state_dict()
    assert r["body.3.body.20.weight"].shape == (50, 50, 3, 3)
    assert r["body.9.body.19.body.3.conv_du.0.weight"].shape == (3, 50, 1, 1)
    assert r["body.10.bias"].shape == (50,)
    s = MSRResNet(36).state_dict()
    assert s["recon_trunk.15.conv2.weight"].shape == (36, 36, 3, 3)


def test_other_scale_layouts():
    assert FSRCNN_DECONV_PADDING == {2: (4, 1), 3: (3, 0), 4: (3, 1)}
    for s, (p, op) in FSRCNN_DECONV_PADDING.items():
        t = FSRCNN(16, scale=s).tail_conv
        assert (t.stride, t.padding, t.output_padding) == ((s, s), (p, p), (op, op))
    c3 = CARN_M(36, scale=3).state_dict()
    assert c3["upsample.up.body.0.weight"].shape == (324, 9, 3, 3)
    assert not any(k.startswith("upsample.up.body.3") for k in c3)
    c2 = CARN_M(36, scale=2).state_dict()
    assert c2["upsample.up.body.0.weight"].shape == (144, 9, 3, 3) and len(c2) == 100
    s2 = MSRResNet(36, scale=2).state_dict()
    assert "upconv2.weight" not in s2 and s2["upconv1.weight"].shape == (144, 36, 3, 3)
    s3 = MSRResNet(36, scale=3).state_dict()
    assert "upconv2.weight" not in s3 and s3["upconv1.weight"].shape == (324, 36, 3, 3)
    r3 = RCAN(36, 1, 1, scale=3).state_dict()
    assert r3["tail.0.0.weight"].shape == (324, 36, 3, 3) and "tail.0.2.weight" not in r3
    r2 = RCAN(36, 1, 1, scale=2).state_dict()
    assert r2["tail.0.0.weight"].shape == (144, 36, 3, 3) and "tail.0.2.weight" not in r2


# ----------------------------------------------------------------------------------------------------------------
# Output shapes
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("scale", [2, 3, 4])
@pytest.mark.parametrize("network", NETWORKS)
def test_output_shapes(network, scale):
    x = torch.rand(1, 3, 32, 32)
    kw = {}
    if network == "rcan":
        x = x * 255
        if scale != 4:
            kw = dict(n_resgroups=2, n_resblocks=2)
    widths = WIDTHS[network] if network != "rcan" else WIDTHS[network][:1]
    for w in widths:
        m = randomize_(build(network, w, scale=scale, **kw), seed=w).eval()
        with torch.no_grad():
            y = m(x)
        assert y.shape == (1, 3, 32 * scale, 32 * scale)
        assert torch.isfinite(y).all()


def test_classifier_output():
    c = Classifier()
    assert c(torch.rand(5, 3, 32, 32)).shape == (5, 3)
    # AvgPool kernel = stride = height only (quirk): a non-square input leaves 2 pooled cells -> Linear fails.
    with pytest.raises(RuntimeError):
        c(torch.rand(1, 3, 32, 64))


# ----------------------------------------------------------------------------------------------------------------
# MACs counted with hooks (docs/original.md#the-papers-convention)
# ----------------------------------------------------------------------------------------------------------------
def _original_macs(net, w, P=1024):  # an independent calculator of the original's MACs
    if net == "fsrcnn":
        return P * (3987 * w + 5184)
    if net == "carn":
        return P * (130.5 * w * w + 459 * w + 153)
    if net == "srresnet":
        return P * (612 * w * w + 459 * w)
    return P * (3879 * w * w + 459 * w + 153) + 400 * w * (w // 16)


@pytest.mark.parametrize("network", NETWORKS)
def test_branch_macs(network):
    for w, expected in zip(WIDTHS[network], MACS[network]):
        got = count_macs_torch(_meta(network, w), (1, 3, 32, 32))
        assert got == expected == _original_macs(network, w)


def test_classifier_macs():
    assert count_macs_torch(Classifier(), (1, 3, 32, 32)) == CLASSIFIER_MACS
    assert count_macs_torch(Classifier(), (3, 32, 32)) == CLASSIFIER_MACS
    assert count_macs_torch(Classifier(), (2, 3, 32, 32)) == 2 * CLASSIFIER_MACS


def test_macs_real_module_matches_meta_and_other_scales():
    # A real (CPU) full-depth forward gives the same count as the meta module.
    assert count_macs_torch(RCAN(36), (1, 3, 32, 32)) == MACS["rcan"][0]
    # FSRCNN deconv counted on the output: (s*H)^2 * 3 * d * 81.
    for s in (2, 3, 4):
        m = FSRCNN(16, scale=s)
        deconv = (32 * s) ** 2 * 3 * 16 * 81
        assert count_macs_torch(m, (1, 3, 32, 32)) - count_macs_torch(m.body_conv, (1, 16, 32, 32)) - \
            1024 * 25 * 3 * 16 == deconv
    # SRResNet x2: P*(4*nf^2*9 ... ) checked from the closed form of each layer.
    nf, P = 36, 1024
    x2 = P * (27 * nf + 32 * 9 * nf * nf + 9 * nf * 4 * nf) + 4 * P * (9 * nf * nf + 9 * nf * 3)
    assert count_macs_torch(MSRResNet(nf, scale=2), (1, 3, 32, 32)) == x2


def test_count_macs_restores_mode_and_does_not_touch_bn_stats():
    m = CARN_M(36)
    m.train()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    count_macs_torch(m, (1, 3, 32, 32))
    assert m.training
    for k, v in m.state_dict().items():
        assert torch.equal(v, before[k]), k


# ----------------------------------------------------------------------------------------------------------------
# MeanShift defaults
# ----------------------------------------------------------------------------------------------------------------
def test_meanshift_defaults_carn():
    sd = CARN_M(36).state_dict()
    mean = torch.tensor(RGB_MEAN)
    assert torch.equal(sd["sub_mean.weight"], torch.eye(3).view(3, 3, 1, 1))
    assert torch.equal(sd["add_mean.weight"], torch.eye(3).view(3, 3, 1, 1))
    assert torch.allclose(sd["sub_mean.bias"], -mean)
    assert torch.allclose(sd["add_mean.bias"], mean)
    assert torch.allclose(sd["sub_mean.bias"], -torch.tensor([0.4488, 0.4371, 0.4040]))


def test_meanshift_defaults_rcan():
    sd = RCAN(36, 1, 1).state_dict()
    expected = torch.tensor([114.444, 111.46049, 103.02])
    assert torch.equal(sd["sub_mean.weight"], torch.eye(3).view(3, 3, 1, 1))
    assert torch.allclose(sd["sub_mean.bias"], -expected, rtol=0, atol=1e-4)
    assert torch.allclose(sd["add_mean.bias"], expected, rtol=0, atol=1e-4)
    sd1 = RCAN(36, 1, 1, rgb_range=1).state_dict()
    assert torch.allclose(sd1["sub_mean.bias"], -torch.tensor(RGB_MEAN))


# ----------------------------------------------------------------------------------------------------------------
# Forward semantics: the oddities of the original architectures (docs/original.md#architectures)
# ----------------------------------------------------------------------------------------------------------------
def test_fsrcnn_prelus_are_scalar_and_single_after_mapping():
    m = FSRCNN(16)
    prelus = [mod for mod in m.modules() if isinstance(mod, torch.nn.PReLU)]
    assert len(prelus) == 4
    assert all(p.weight.shape == (1,) and p.weight.item() == 0.25 for p in prelus)
    assert [type(b).__name__ for b in m.body_conv] == ["Sequential"] + ["Conv2d"] * 4 + ["PReLU", "Sequential"]


def test_fsrcnn_forward_matches_functional():
    m = randomize_(FSRCNN(16), 1)
    x = torch.rand(2, 3, 16, 16)
    sd = m.state_dict()

    def prelu(t, a):
        return torch.where(t >= 0, t, a * t)

    h = prelu(F.conv2d(x, sd["head_conv.0.weight"], sd["head_conv.0.bias"], padding=2), sd["head_conv.1.weight"])
    h = prelu(F.conv2d(h, sd["body_conv.0.0.weight"], sd["body_conv.0.0.bias"]), sd["body_conv.0.1.weight"])
    for i in (1, 2, 3, 4):
        h = F.conv2d(h, sd[f"body_conv.{i}.weight"], sd[f"body_conv.{i}.bias"], padding=1)
    h = prelu(h, sd["body_conv.5.weight"])
    h = prelu(F.conv2d(h, sd["body_conv.6.0.weight"], sd["body_conv.6.0.bias"]), sd["body_conv.6.1.weight"])
    y = F.conv_transpose2d(h, sd["tail_conv.weight"], sd["tail_conv.bias"], stride=4, padding=3, output_padding=1)
    with torch.no_grad():
        torch.testing.assert_close(m(x), y)


def test_carn_shared_erb_called_three_times_per_block():
    m = CARN_M(36).eval()
    calls = []
    for name in ("b1", "b2", "b3"):
        getattr(m, name).b1.register_forward_hook(lambda *a, n=name: calls.append(n))
    with torch.no_grad():
        m(torch.rand(1, 3, 8, 8))
    assert calls == ["b1"] * 3 + ["b2"] * 3 + ["b3"] * 3
    bns = [mod for mod in m.modules() if isinstance(mod, torch.nn.BatchNorm2d)]
    assert len(bns) == 12 and all(b.eps == 1e-5 and b.momentum == 0.1 for b in bns)


def test_srresnet_no_long_skip_and_bilinear_base():
    m = randomize_(MSRResNet(36), 2).eval()
    with torch.no_grad():
        m.conv_last.weight.zero_()
        m.conv_last.bias.zero_()
        x = torch.rand(1, 3, 16, 16)
        base = F.interpolate(x, scale_factor=4, mode="bilinear", align_corners=False)
        torch.testing.assert_close(m(x), base)


def test_rcan_long_skip_and_group_residual():
    # With every residual-branch output conv zeroed, each RCAB/group is the identity: out = tail(2*head(x')).
    m = randomize_(RCAN(16, n_resgroups=2, n_resblocks=2), 3).eval()
    with torch.no_grad():
        for g in range(2):
            m.body[g].body[-1].weight.zero_()
            m.body[g].body[-1].bias.zero_()
        m.body[2].weight.zero_()
        m.body[2].bias.zero_()
        x = torch.rand(1, 3, 8, 8) * 255
        h = m.head(m.sub_mean(x))
        torch.testing.assert_close(m(x), m.add_mean(m.tail(h)))


# ----------------------------------------------------------------------------------------------------------------
# randomize_
# ----------------------------------------------------------------------------------------------------------------
def test_randomize_is_deterministic_and_changes_everything():
    default = CARN_M(36).state_dict()
    a = randomize_(CARN_M(36), 7).state_dict()
    b = randomize_(CARN_M(36), 7).state_dict()
    c = randomize_(CARN_M(36), 8).state_dict()
    for k in default:
        assert torch.equal(a[k], b[k]), k
        assert not torch.equal(a[k], default[k]), k
        assert not torch.equal(a[k], c[k]), k
    for k, v in a.items():
        if k.endswith("running_var"):
            assert (v >= 0.5).all() and (v <= 2.0).all()
    prelus = [v for k, v in randomize_(FSRCNN(16), 0).state_dict().items() if v.shape == (1,)]
    assert all(0.05 < float(p) < 0.5 for p in prelus)
    r = randomize_(RCAN(16, 1, 1), 0).state_dict()
    assert (r["sub_mean.bias"] + torch.tensor([114.444, 111.46049, 103.02])).abs().max() > 0.01
    assert (r["sub_mean.bias"] + torch.tensor([114.444, 111.46049, 103.02])).abs().max() < 60
    assert (r["sub_mean.weight"].view(3, 3) - torch.eye(3)).abs().max() < 0.2


def test_randomized_full_rcan_stays_bounded():
    m = randomize_(RCAN(36), 0).eval()
    x = torch.rand(1, 3, 32, 32) * 255
    with torch.no_grad():
        y = m(x)
    assert torch.isfinite(y).all()
    assert 10 < y.std() < 1000  # O(rgb_range): neither exploded nor collapsed


# ----------------------------------------------------------------------------------------------------------------
# ClassSR container
# ----------------------------------------------------------------------------------------------------------------
def _small_classsr(network):
    kw = dict(n_resgroups=1, n_resblocks=2) if network == "rcan" else {}
    model = randomize_(build_classsr(network, **kw), 11).eval()
    return model


@pytest.mark.parametrize("network", ["fsrcnn", "carn", "rcan"])
def test_classsr_forward_test_routes_by_argmax(network):
    model = _small_classsr(network)
    g = torch.Generator().manual_seed(0)
    lvl = torch.linspace(0, 1, 8).view(8, 1, 1, 1)
    x = torch.rand(8, 3, 32, 32, generator=g) * lvl * 0.5 + (1 - lvl) * 0.5
    if network == "rcan":
        x = x * 255
    calibrate_classifier_(model.classifier, x / 255 if network == "rcan" else x)
    with torch.no_grad():
        sr, p, cls = model.forward_test(x)
        logits = model.classifier(x / 255 if network == "rcan" else x)
        assert torch.equal(cls, logits.argmax(1))
        assert len(set(cls.tolist())) >= 2  # calibration makes routing vary across tiles
        torch.testing.assert_close(p, F.softmax(logits, 1))
        for i, k in enumerate(cls.tolist()):
            torch.testing.assert_close(sr[i : i + 1], model.branches()[k](x[i : i + 1]))
        out, p2 = model.forward_train(x)
        mix = sum(p2[:, k, None, None, None] * net(x) for k, net in enumerate(model.branches()))
        torch.testing.assert_close(out, mix)
        torch.testing.assert_close(p2, p)
        out_ps, _ = model.forward_train(x, per_sample=True)
        torch.testing.assert_close(out_ps, out, rtol=1e-5,
                                   atol=2e-3 if network == "rcan" else 1e-5)  # rcan: [0,255] scale


def test_classsr_registration_order():
    model = ClassSR(Classifier(), FSRCNN(16), FSRCNN(36), FSRCNN(56))
    assert [n for n, _ in model.named_children()] == ["classifier", "net1", "net2", "net3"]
    assert build_classsr("rcan", n_resgroups=1, n_resblocks=1).rcan is True
    assert build_classsr("carn").rcan is False
