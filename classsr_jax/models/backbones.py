"""The four SR backbones by name: one network (a branch) from its name, width and scale."""

from __future__ import annotations

import jax.numpy as jnp

from classsr_jax.models.carn import CARNM
from classsr_jax.models.fsrcnn import FSRCNN
from classsr_jax.models.rcan import RCAN
from classsr_jax.models.srresnet import MSRResNet

NETWORKS = ("fsrcnn", "carn", "srresnet", "rcan")
SCALES = (2, 3, 4)

# Default values of each network's extra fields (beyond width and scale).
NETWORK_DEFAULTS = {
    "fsrcnn": {"s": 12, "m": 4},
    "carn": {"group": 4, "rgb_range": 1.0},
    "srresnet": {"nb": 16},
    "rcan": {"n_resgroups": 10, "n_resblocks": 20, "reduction": 16, "rgb_range": 255.0},
}

_CLASSES = {"fsrcnn": (FSRCNN, "d"), "carn": (CARNM, "nf"), "srresnet": (MSRResNet, "nf"), "rcan": (RCAN, "n_feats")}


def check_network(network: str) -> None:
    if network not in NETWORKS:
        raise ValueError(f"unknown network {network!r}: use one of {', '.join(NETWORKS)}")


def build_network(network: str, width: int, scale: int = 4, *, scan: bool = True, dtype=jnp.float32, **extra):
    """One SR network (a branch), e.g. build_network('rcan', 64) is RCAN-O."""
    check_network(network)
    if scale not in SCALES:
        raise ValueError(f"unsupported scale {scale}: use one of {', '.join(map(str, SCALES))}")
    cls, width_field = _CLASSES[network]
    unknown = set(extra) - set(NETWORK_DEFAULTS[network])
    if unknown:
        raise ValueError(f"unknown field(s) for {network}: {', '.join(sorted(unknown))}")
    fields = {**NETWORK_DEFAULTS[network], **extra}
    return cls(**{width_field: int(width)}, scale=int(scale), scan=scan, dtype=dtype, **fields)
