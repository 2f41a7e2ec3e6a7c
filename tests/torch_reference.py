"""Independent PyTorch reference of the original ClassSR networks (NCHW).

Written from a reading of the original code (its architectures, quirks and state_dict keys, summarised in
docs/original.md), not copied from the original repository. It is the ground truth for the Flax parity tests:

* every module's ``state_dict()`` has exactly the keys, shapes and order of the original's (scale 4);
* every forward pass follows the original's, quirks included (scalar PReLUs and a single PReLU after FSRCNN's mapping
  convs; BN + bias-free 1x1 fusions and one shared EResidualBlock per CARN Block; no long skip in MSRResNet;
  ``res_scale`` ignored in RCAN; classifier AvgPool kernel taken from the feature-map height);
* scales 2 and 3 are supported too (FSRCNN deconv padding from ``FSRCNN_DECONV_PADDING``; one upsampling stage
  for CARN / MSRResNet / RCAN at scale 2 and a single x3 pixel-shuffle stage at scale 3).

Public API
----------
``Classifier()``, ``FSRCNN(d, s=12, m=4, scale=4)``, ``CARN_M(nf, group=4, scale=4, rgb_range=1)``,
``MSRResNet(nf, nb=16, scale=4)``, ``RCAN(n_feats, n_resgroups=10, n_resblocks=20, reduction=16, scale=4,
rgb_range=255)``, ``ClassSR(classifier, net1, net2, net3, rcan=False)``, ``MeanShift``, ``WIDTHS``,
``FSRCNN_DECONV_PADDING``, ``build(network, width, scale=4, **kw)``, ``build_classsr(network, scale=4, **kw)``,
``randomize_(module, seed)``, ``calibrate_classifier_(classifier, x)`` and ``count_macs_torch(module, input_shape)``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "WIDTHS",
    "FSRCNN_DECONV_PADDING",
    "RGB_MEAN",
    "MeanShift",
    "Classifier",
    "FSRCNN",
    "EResidualBlock",
    "BasicBlock",
    "CARNBlock",
    "CARN_M",
    "ResidualBlock_noBN",
    "MSRResNet",
    "CALayer",
    "RCAB",
    "ResidualGroup",
    "RCAN",
    "ClassSR",
    "build",
    "build_classsr",
    "randomize_",
    "calibrate_classifier_",
    "count_macs_torch",
]

# Branch widths (branch 1 / 2 / 3; docs/original.md#the-classsr-container). Branch 3 is the original ("-O") network.
WIDTHS = {"fsrcnn": (16, 36, 56), "carn": (36, 52, 64), "srresnet": (36, 52, 64), "rcan": (36, 50, 64)}

# FSRCNN tail ConvTranspose2d(k=9, stride=scale): scale -> (padding, output_padding), so that the output is
# exactly scale*H: (H-1)*s - 2p + 9 + op = s*H. Scale 4 is the original (3, 1).
FSRCNN_DECONV_PADDING = {2: (4, 1), 3: (3, 0), 4: (3, 1)}

# DIV2K RGB mean used by the CARN and RCAN MeanShifts.
RGB_MEAN = (0.4488, 0.4371, 0.4040)


def _check_scale(scale: int) -> None:
    if scale not in (2, 3, 4):
        raise ValueError(f"scale must be 2, 3 or 4, got {scale}")


# ---------------------------------------------------------------------------------------------------------------
# Shared pieces
# ---------------------------------------------------------------------------------------------------------------
class MeanShift(nn.Conv2d):
    """1x1 conv 3->3 with weight I/std and bias sign*rgb_range*mean/std (keys ``weight``, ``bias``).

    Trainable in the original, so checkpoints may hold drifted values (docs/original.md#meanshift).
    """

    def __init__(self, rgb_range: float = 1.0, rgb_mean=RGB_MEAN, rgb_std=(1.0, 1.0, 1.0), sign: int = -1):
        super().__init__(3, 3, kernel_size=1)
        self.rgb_range = rgb_range
        self.sign = sign
        std = torch.tensor(rgb_std, dtype=torch.float32)
        with torch.no_grad():
            self.weight.copy_(torch.eye(3).view(3, 3, 1, 1) / std.view(3, 1, 1, 1))
            self.bias.copy_(sign * rgb_range * torch.tensor(rgb_mean, dtype=torch.float32) / std)


# ---------------------------------------------------------------------------------------------------------------
# 1.1 Class-Module
# ---------------------------------------------------------------------------------------------------------------
class Classifier(nn.Module):
    """Keys (in order): lastOut.{weight,bias}, CondNet.{0,2,4,6,8}.{weight,bias}. Returns logits (N, 3)."""

    def __init__(self):
        super().__init__()
        # Registration order as in the original: lastOut first.
        self.lastOut = nn.Linear(32, 3)
        self.CondNet = nn.Sequential(
            nn.Conv2d(3, 128, 4, 4),
            nn.LeakyReLU(0.1),
            nn.Conv2d(128, 128, 1),
            nn.LeakyReLU(0.1),
            nn.Conv2d(128, 128, 1),
            nn.LeakyReLU(0.1),
            nn.Conv2d(128, 128, 1),
            nn.LeakyReLU(0.1),
            nn.Conv2d(128, 32, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.CondNet(x)
        h = out.size(2)
        out = F.avg_pool2d(out, kernel_size=h, stride=h)  # quirk: kernel from the height only
        out = out.view(out.size(0), -1)
        return self.lastOut(out)


# ---------------------------------------------------------------------------------------------------------------
# 1.2 FSRCNN
# ---------------------------------------------------------------------------------------------------------------
class FSRCNN(nn.Module):
    def __init__(self, d: int, s: int = 12, m: int = 4, scale: int = 4):
        super().__init__()
        _check_scale(scale)
        self.scale = scale
        self.head_conv = nn.Sequential(nn.Conv2d(3, d, 5, 1, 2), nn.PReLU())
        body = [nn.Sequential(nn.Conv2d(d, s, 1, 1, 0), nn.PReLU())]
        body += [nn.Conv2d(s, s, 3, 1, 1) for _ in range(m)]  # no activation between mapping convs
        body += [nn.PReLU()]  # single PReLU after the m mapping convs (quirk)
        body += [nn.Sequential(nn.Conv2d(s, d, 1, 1, 0), nn.PReLU())]
        self.body_conv = nn.Sequential(*body)
        pad, out_pad = FSRCNN_DECONV_PADDING[scale]
        self.tail_conv = nn.ConvTranspose2d(d, 3, 9, stride=scale, padding=pad, output_padding=out_pad)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.tail_conv(self.body_conv(self.head_conv(x)))


# ---------------------------------------------------------------------------------------------------------------
# 1.3 CARN-M (as implemented in ClassSR)
# ---------------------------------------------------------------------------------------------------------------
class EResidualBlock(nn.Module):
    def __init__(self, nf: int, group: int = 4):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(nf, nf, 3, 1, 1, groups=group),
            nn.ReLU(),
            nn.Conv2d(nf, nf, 3, 1, 1, groups=group),
            nn.ReLU(),
            nn.Conv2d(nf, nf, 1, 1, 0),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.body(x) + x)


class BasicBlock(nn.Sequential):
    """EDSR-style BasicBlock as called by CARN: Conv1x1 (no bias) + BatchNorm2d + ReLU (keys .0, .1)."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__(
            nn.Conv2d(in_ch, out_ch, 1, 1, 0, bias=False),
            nn.BatchNorm2d(out_ch, eps=1e-5, momentum=0.1),
            nn.ReLU(),
        )


class CARNBlock(nn.Module):
    """CARN-M Block: one EResidualBlock ``b1`` applied three times (shared weights) + fusions c1/c2/c3."""

    def __init__(self, nf: int, group: int = 4):
        super().__init__()
        self.b1 = EResidualBlock(nf, group)
        self.c1 = BasicBlock(2 * nf, nf)
        self.c2 = BasicBlock(3 * nf, nf)
        self.c3 = BasicBlock(4 * nf, nf)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c0 = o0 = x
        b1 = self.b1(o0)
        c1 = torch.cat([c0, b1], dim=1)
        o1 = self.c1(c1)
        b2 = self.b1(o1)
        c2 = torch.cat([c1, b2], dim=1)
        o2 = self.c2(c2)
        b3 = self.b1(o2)
        c3 = torch.cat([c2, b3], dim=1)
        return self.c3(c3)


class _UpsampleBody(nn.Module):
    def __init__(self, nf: int, scale: int, group: int):
        super().__init__()
        mods = []
        if scale == 3:
            mods += [nn.Conv2d(nf, 9 * nf, 3, 1, 1, groups=group), nn.ReLU(), nn.PixelShuffle(3)]
        else:
            for _ in range(int(round(math.log2(scale)))):
                mods += [nn.Conv2d(nf, 4 * nf, 3, 1, 1, groups=group), nn.ReLU(), nn.PixelShuffle(2)]
        self.body = nn.Sequential(*mods)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class _UpsampleBlock(nn.Module):
    def __init__(self, nf: int, scale: int, group: int):
        super().__init__()
        self.up = _UpsampleBody(nf, scale, group)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(x)


class CARN_M(nn.Module):
    def __init__(self, nf: int, group: int = 4, scale: int = 4, rgb_range: float = 1):
        super().__init__()
        _check_scale(scale)
        if nf % group:
            raise ValueError(f"nf={nf} must be divisible by group={group}")
        self.scale = scale
        self.sub_mean = MeanShift(rgb_range, sign=-1)
        self.add_mean = MeanShift(rgb_range, sign=+1)
        self.entry = nn.Conv2d(3, nf, 3, 1, 1)
        self.b1 = CARNBlock(nf, group)
        self.b2 = CARNBlock(nf, group)
        self.b3 = CARNBlock(nf, group)
        self.c1 = BasicBlock(2 * nf, nf)
        self.c2 = BasicBlock(3 * nf, nf)
        self.c3 = BasicBlock(4 * nf, nf)
        self.upsample = _UpsampleBlock(nf, scale, group)
        self.exit = nn.Conv2d(nf, 3, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.sub_mean(x)
        x = self.entry(x)
        c0 = o0 = x
        b1 = self.b1(o0)
        c1 = torch.cat([c0, b1], dim=1)
        o1 = self.c1(c1)
        b2 = self.b2(o1)
        c2 = torch.cat([c1, b2], dim=1)
        o2 = self.c2(c2)
        b3 = self.b3(o2)
        c3 = torch.cat([c2, b3], dim=1)
        o3 = self.c3(c3)
        out = self.upsample(o3)
        out = self.exit(out)
        return self.add_mean(out)


# ---------------------------------------------------------------------------------------------------------------
# 1.4 MSRResNet
# ---------------------------------------------------------------------------------------------------------------
class ResidualBlock_noBN(nn.Module):
    def __init__(self, nf: int):
        super().__init__()
        self.conv1 = nn.Conv2d(nf, nf, 3, 1, 1)
        self.conv2 = nn.Conv2d(nf, nf, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.relu(self.conv1(x)))


class MSRResNet(nn.Module):
    def __init__(self, nf: int, nb: int = 16, scale: int = 4):
        super().__init__()
        _check_scale(scale)
        self.scale = scale
        self.conv_first = nn.Conv2d(3, nf, 3, 1, 1)
        self.recon_trunk = nn.Sequential(*[ResidualBlock_noBN(nf) for _ in range(nb)])
        r = 3 if scale == 3 else 2
        self.upconv1 = nn.Conv2d(nf, nf * r * r, 3, 1, 1)
        if scale == 4:
            self.upconv2 = nn.Conv2d(nf, nf * 4, 3, 1, 1)
        self.pixel_shuffle = nn.PixelShuffle(r)
        self.HRconv = nn.Conv2d(nf, nf, 3, 1, 1)
        self.conv_last = nn.Conv2d(nf, 3, 3, 1, 1)
        self.lrelu = nn.LeakyReLU(0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fea = self.lrelu(self.conv_first(x))
        out = self.recon_trunk(fea)  # no long skip (quirk)
        out = self.lrelu(self.pixel_shuffle(self.upconv1(out)))
        if self.scale == 4:
            out = self.lrelu(self.pixel_shuffle(self.upconv2(out)))
        out = self.conv_last(self.lrelu(self.HRconv(out)))
        base = F.interpolate(x, scale_factor=self.scale, mode="bilinear", align_corners=False)
        return out + base


# ---------------------------------------------------------------------------------------------------------------
# 1.5 RCAN
# ---------------------------------------------------------------------------------------------------------------
def _conv3(cin: int, cout: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, 1, 1)


class CALayer(nn.Module):
    def __init__(self, nf: int, reduction: int = 16):
        super().__init__()
        self.conv_du = nn.Sequential(
            nn.Conv2d(nf, nf // reduction, 1, 1, 0),
            nn.ReLU(),
            nn.Conv2d(nf // reduction, nf, 1, 1, 0),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.adaptive_avg_pool2d(x, 1)
        return x * self.conv_du(y)


class RCAB(nn.Module):
    def __init__(self, nf: int, reduction: int = 16):
        super().__init__()
        self.body = nn.Sequential(_conv3(nf, nf), nn.ReLU(), _conv3(nf, nf), CALayer(nf, reduction))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)  # res_scale is ignored in the original


class ResidualGroup(nn.Module):
    def __init__(self, nf: int, n_resblocks: int, reduction: int = 16):
        super().__init__()
        self.body = nn.Sequential(*[RCAB(nf, reduction) for _ in range(n_resblocks)], _conv3(nf, nf))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class RCAN(nn.Module):
    """Input and output on the [0, rgb_range] scale (the original feeds [0, 255])."""

    def __init__(
        self,
        n_feats: int,
        n_resgroups: int = 10,
        n_resblocks: int = 20,
        reduction: int = 16,
        scale: int = 4,
        rgb_range: float = 255,
    ):
        super().__init__()
        _check_scale(scale)
        self.scale = scale
        nf = n_feats
        # Registration order as in the original: sub_mean, add_mean, head, body, tail.
        self.sub_mean = MeanShift(rgb_range, sign=-1)
        self.add_mean = MeanShift(rgb_range, sign=+1)
        self.head = nn.Sequential(_conv3(3, nf))
        self.body = nn.Sequential(
            *[ResidualGroup(nf, n_resblocks, reduction) for _ in range(n_resgroups)], _conv3(nf, nf)
        )
        if scale == 3:
            up = [_conv3(nf, 9 * nf), nn.PixelShuffle(3)]
        else:
            up = []
            for _ in range(int(round(math.log2(scale)))):
                up += [_conv3(nf, 4 * nf), nn.PixelShuffle(2)]
        self.tail = nn.Sequential(nn.Sequential(*up), _conv3(nf, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.sub_mean(x)
        x = self.head(x)
        res = self.body(x) + x
        x = self.tail(res)
        return self.add_mean(x)


# ---------------------------------------------------------------------------------------------------------------
# 1.6 ClassSR container
# ---------------------------------------------------------------------------------------------------------------
class ClassSR(nn.Module):
    """Classifier + three SR branches, registered as classifier, net1, net2, net3.

    ``rcan=True``: the classifier sees ``x / 255`` (the RCAN container is fed [0, 255]).
    """

    def __init__(self, classifier: nn.Module, net1: nn.Module, net2: nn.Module, net3: nn.Module, rcan=False):
        super().__init__()
        self.classifier = classifier
        self.net1 = net1
        self.net2 = net2
        self.net3 = net3
        self.rcan = rcan

    def _cls_input(self, x: torch.Tensor) -> torch.Tensor:
        return x / 255.0 if self.rcan else x

    def branches(self):
        return (self.net1, self.net2, self.net3)

    def forward_test(self, x: torch.Tensor):
        """The original's test mode: per sample (batch 1), argmax of the logits, run only that branch.

        Returns ``(sr, probs, classes)``: the SR batch, softmax probabilities (N, 3) and chosen branch (N,).
        """
        outs, probs, classes = [], [], []
        for i in range(x.size(0)):
            xi = x[i : i + 1]
            logits = self.classifier(self._cls_input(xi))
            k = int(torch.argmax(logits, dim=1).item())
            outs.append(self.branches()[k](xi))
            probs.append(F.softmax(logits, dim=1))
            classes.append(k)
        return torch.cat(outs, 0), torch.cat(probs, 0), torch.tensor(classes, dtype=torch.int64)

    def forward_train(self, x: torch.Tensor, per_sample: bool = False):
        """Soft mixture: p = softmax(classifier(x)); sr = sum_k p_k * net_k(x). Returns ``(sr, probs)``.

        Batched by default (the RCAN container's behaviour). ``per_sample=True`` loops with batch size 1 like the
        FSRCNN/CARN/SRResNet containers; that only matters for CARN BatchNorm in train mode
        (docs/original.md#branches-in-inference-mode-during-joint-training). Module train/eval mode is left to
        the caller.
        """
        if per_sample:
            pairs = [self.forward_train(x[i : i + 1]) for i in range(x.size(0))]
            return torch.cat([o for o, _ in pairs], 0), torch.cat([p for _, p in pairs], 0)
        p = F.softmax(self.classifier(self._cls_input(x)), dim=1)
        out = sum(p[:, k, None, None, None] * net(x) for k, net in enumerate(self.branches()))
        return out, p

    def forward(self, x: torch.Tensor):
        return self.forward_test(x)


# ---------------------------------------------------------------------------------------------------------------
# Factories
# ---------------------------------------------------------------------------------------------------------------
def build(network: str, width: int | None = None, scale: int = 4, **kw) -> nn.Module:
    """Build one backbone: network in {fsrcnn, carn, srresnet, rcan} (or 'classifier', width ignored)."""
    network = network.lower()
    if network == "classifier":
        return Classifier()
    if network == "fsrcnn":
        return FSRCNN(width, scale=scale, **kw)
    if network == "carn":
        return CARN_M(width, scale=scale, **kw)
    if network == "srresnet":
        return MSRResNet(width, scale=scale, **kw)
    if network == "rcan":
        return RCAN(width, scale=scale, **kw)
    raise ValueError(f"unknown network {network!r}")


def build_classsr(network: str, scale: int = 4, **kw) -> ClassSR:
    """ClassSR container with the three branch widths of ``WIDTHS[network]``; ``kw`` goes to every branch."""
    network = network.lower()
    nets = [build(network, w, scale=scale, **kw) for w in WIDTHS[network]]
    return ClassSR(Classifier(), *nets, rcan=(network == "rcan"))


# ---------------------------------------------------------------------------------------------------------------
# randomize_
# ---------------------------------------------------------------------------------------------------------------
def _residual_tail_convs(module: nn.Module) -> dict[int, float]:
    """id(conv) -> gain for convs that close a residual branch (kept small so deep nets stay O(1))."""
    gains: dict[int, float] = {}
    for m in module.modules():
        if isinstance(m, ResidualBlock_noBN):
            gains[id(m.conv2)] = 0.2
        elif isinstance(m, RCAB):
            gains[id(m.body[2])] = 0.1
        elif isinstance(m, ResidualGroup):
            gains[id(m.body[-1])] = 0.2
        elif isinstance(m, EResidualBlock):
            gains[id(m.body[4])] = 0.5
    return gains


@torch.no_grad()
def randomize_(module: nn.Module, seed: int = 0) -> nn.Module:
    """Fill every parameter and buffer of ``module`` with non-trivial random values, in place; deterministic.

    * Conv2d / Linear weights ~ N(0, gain^2 / fan_in) with fan_in = in/groups * k^2 (gain 1, or 0.1-0.5 for the
      last conv of a residual branch so that RCAN's 200 RCABs do not blow up); biases ~ N(0, 0.05^2).
    * ConvTranspose2d weights ~ N(0, 1 / (in * k^2 / stride^2)) (effective fan-in per output pixel).
    * MeanShift: weight = I/std + N(0, 0.02^2) on every entry; bias = default (sign*rgb_range*mean) +
      N(0, (0.05*rgb_range)^2).
    * PReLU slopes ~ U(0.05, 0.5).
    * BatchNorm2d: weight ~ U(0.5, 1.5), bias ~ N(0, 0.1^2), running_mean ~ N(0, 0.2^2),
      running_var ~ U(0.5, 2), num_batches_tracked = random int in [1, 1000).
    Raises if any parameter/buffer of an unknown module type would be left untouched.
    """
    g = torch.Generator().manual_seed(int(seed))

    def normal(t, std, mean=0.0):
        t.copy_(torch.randn(t.shape, generator=g, dtype=torch.float32) * std + mean)

    def uniform(t, lo, hi):
        t.copy_(torch.rand(t.shape, generator=g, dtype=torch.float32) * (hi - lo) + lo)

    gains = _residual_tail_convs(module)
    touched: set[int] = set()
    for m in module.modules():
        if isinstance(m, MeanShift):
            eye = torch.eye(3).view(3, 3, 1, 1)
            normal(m.weight, 0.02)
            m.weight.add_(eye)
            base = m.sign * m.rgb_range * torch.tensor(RGB_MEAN)
            normal(m.bias, 0.05 * m.rgb_range)
            m.bias.add_(base)
        elif isinstance(m, nn.Conv2d):
            fan_in = m.weight.shape[1] * m.weight.shape[2] * m.weight.shape[3]
            normal(m.weight, gains.get(id(m), 1.0) / math.sqrt(fan_in))
            if m.bias is not None:
                normal(m.bias, 0.05)
        elif isinstance(m, nn.ConvTranspose2d):
            k2 = m.weight.shape[2] * m.weight.shape[3]
            stride2 = m.stride[0] * m.stride[1]
            normal(m.weight, 1.0 / math.sqrt(m.weight.shape[0] * k2 / stride2))
            if m.bias is not None:
                normal(m.bias, 0.05)
        elif isinstance(m, nn.Linear):
            normal(m.weight, 1.0 / math.sqrt(m.weight.shape[1]))
            if m.bias is not None:
                normal(m.bias, 0.05)
        elif isinstance(m, nn.PReLU):
            uniform(m.weight, 0.05, 0.5)
        elif isinstance(m, nn.BatchNorm2d):
            uniform(m.weight, 0.5, 1.5)
            normal(m.bias, 0.1)
            normal(m.running_mean, 0.2)
            uniform(m.running_var, 0.5, 2.0)
            m.num_batches_tracked.fill_(int(torch.randint(1, 1000, (1,), generator=g).item()))
        else:
            continue
        touched.update(id(t) for t in m.parameters(recurse=False))
        touched.update(id(t) for t in m.buffers(recurse=False))
    missed = [n for n, t in list(module.named_parameters()) + list(module.named_buffers()) if id(t) not in touched]
    if missed:
        raise TypeError(f"randomize_ does not know how to fill: {missed[:5]}")
    return module


@torch.no_grad()
def calibrate_classifier_(classifier: Classifier, x: torch.Tensor) -> Classifier:
    """Rescale ``lastOut`` (in place) so that the logits over the batch ``x`` are centred with unit spread per class.

    Random weights give almost input-independent logits (global average pooling of a random tile), so every tile
    would be routed to the same branch. After this, argmax routing varies across the tiles of ``x`` (pass the
    classifier's own input, i.e. x/255 for RCAN). Deterministic; only ``lastOut.weight``/``lastOut.bias`` change.
    """
    feats = classifier.CondNet(x)
    h = feats.size(2)
    feats = F.avg_pool2d(feats, kernel_size=h, stride=h).view(feats.size(0), -1)
    z = feats @ classifier.lastOut.weight.t()
    std = z.std(0).clamp_min(1e-6) if z.size(0) > 1 else torch.ones(z.size(1))
    classifier.lastOut.weight.div_(std[:, None])
    classifier.lastOut.bias.copy_(-(z / std).mean(0))
    return classifier


# ---------------------------------------------------------------------------------------------------------------
# MAC counter
# ---------------------------------------------------------------------------------------------------------------
def count_macs_torch(module: nn.Module, input_shape) -> int:
    """Multiply-accumulates of Conv2d / ConvTranspose2d / Linear layers in one forward pass (the paper's convention).

    * Conv2d (incl. MeanShift, grouped): out_pixels * k_h*k_w * in/groups * out.
    * ConvTranspose2d, counted on its OUTPUT as in the paper: out_pixels * in * out/groups * k_h*k_w.
    * Linear: rows * in * out.
    Bias adds, activations, pooling, shuffles, interpolation and elementwise ops are not counted. ``input_shape``
    is (N, C, H, W) or (C, H, W) (batch 1 implied); the total is over the whole batch. The forward runs in eval
    mode (restored afterwards) on the device of the module's parameters (a ``meta`` module works too).
    """
    shape = tuple(input_shape)
    if len(shape) == 3:
        shape = (1,) + shape
    total = [0]

    def conv_hook(m, inp, out):
        kh, kw = m.kernel_size
        n, c_out, ho, wo = out.shape
        total[0] += n * ho * wo * kh * kw * (m.in_channels // m.groups) * c_out

    def deconv_hook(m, inp, out):
        kh, kw = m.kernel_size
        n, c_out, ho, wo = out.shape
        total[0] += n * ho * wo * m.in_channels * (c_out // m.groups) * kh * kw

    def linear_hook(m, inp, out):
        rows = out.numel() // m.out_features
        total[0] += rows * m.in_features * m.out_features

    handles = []
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            handles.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.ConvTranspose2d):
            handles.append(m.register_forward_hook(deconv_hook))
        elif isinstance(m, nn.Linear):
            handles.append(m.register_forward_hook(linear_hook))
    was_training = module.training
    p = next(module.parameters(), None)
    device = p.device if p is not None else torch.device("cpu")
    try:
        module.eval()
        with torch.no_grad():
            module(torch.zeros(shape, device=device))
    finally:
        for h in handles:
            h.remove()
        module.train(was_training)
    return int(total[0])
