"""From config names to modules. A model is described by a plain dict (`ModelSpec.to_dict`) that is
stored with every checkpoint, so a checkpoint rebuilds its own module."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp

from classsr_jax.models.carn import CARNM
from classsr_jax.models.fsrcnn import FSRCNN
from classsr_jax.models.rcan import RCAN
from classsr_jax.models.srresnet import MSRResNet

NETWORKS = ("fsrcnn", "carn", "srresnet", "rcan")
SCALES = (2, 3, 4)

# Branch widths of the paper (simple, medium, hard); the last is the original ("-O") network.
PAPER_WIDTHS = {
    "fsrcnn": (16, 36, 56),
    "carn": (36, 52, 64),
    "srresnet": (36, 52, 64),
    "rcan": (36, 50, 64),
}

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


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """What a checkpoint holds: a ClassSR model (classifier + branches) or a single network."""

    kind: str  # "classsr" or "network"
    network: str
    widths: tuple[int, ...]  # one width for kind "network"
    scale: int = 4
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        if self.kind not in ("classsr", "network"):
            raise ValueError(f"unknown model kind {self.kind!r}: use 'classsr' or 'network'")
        check_network(self.network)
        if self.kind == "network" and len(self.widths) != 1:
            raise ValueError(f"a single network has one width, got {list(self.widths)}")
        if self.kind == "classsr" and len(self.widths) < 1:
            raise ValueError("a ClassSR model needs at least one branch")

    @property
    def num_branches(self) -> int:
        return len(self.widths) if self.kind == "classsr" else 1

    def build(self, *, scan: bool = True, dtype=jnp.float32):
        from classsr_jax.models.classsr import ClassSR  # avoid an import cycle

        if self.kind == "network":
            return build_network(self.network, self.widths[0], self.scale, scan=scan, dtype=dtype, **self.extra)
        return ClassSR(
            network=self.network,
            widths=tuple(self.widths),
            scale=self.scale,
            extra=tuple(sorted(self.extra.items())),
            scan=scan,
            dtype=dtype,
        )

    def branch(self, index: int) -> "ModelSpec":
        """The spec of one branch as a single network (e.g. the last branch is the -O network)."""
        return ModelSpec("network", self.network, (self.widths[index],), self.scale, dict(self.extra))

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "network": self.network,
            "widths": list(self.widths),
            "scale": self.scale,
            "extra": dict(self.extra),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelSpec":
        missing = {"kind", "network", "widths", "scale"} - set(d)
        if missing:
            raise ValueError(f"model description lacks {', '.join(sorted(missing))}")
        return cls(d["kind"], d["network"], tuple(int(w) for w in d["widths"]), int(d["scale"]), dict(d.get("extra", {})))
