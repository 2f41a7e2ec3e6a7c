"""What a checkpoint holds, as a plain description (`ModelSpec.to_dict`) stored with every checkpoint, so a
checkpoint rebuilds its own module. `ModelSpec` builds, describes, initialises, shapes and checks a model."""

from __future__ import annotations

import dataclasses
import functools
import json
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax.traverse_util import flatten_dict, unflatten_dict

from classsr_jax import disk_cache
from classsr_jax.errors import CheckpointError
from classsr_jax.models.backbones import build_network, check_network
from classsr_jax.models.classsr import ClassSR

# Branch widths of the paper (simple, medium, hard); the last is the original ("-O") network.
PAPER_WIDTHS = {
    "fsrcnn": (16, 36, 56),
    "carn": (36, 52, 64),
    "srresnet": (36, 52, 64),
    "rcan": (36, 50, 64),
}


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

    def describe(self) -> str:
        """'ClassSR-rcan x4 (widths 36/50/64)', for messages."""
        name = f"ClassSR-{self.network}" if self.kind == "classsr" else self.network
        return f"{name} x{self.scale} (widths {'/'.join(map(str, self.widths))})"

    def abstract(self, tile: int = 32, scan: bool = True) -> dict[str, Any]:
        """Shapes and dtypes of the model's variables, without allocating or compiling anything (kept on disk:
        `_variable_rows`)."""
        rows = _variable_rows(json.dumps(self.to_dict(), sort_keys=True), tile, scan)
        return unflatten_dict({
            tuple(path.split("/")): jax.ShapeDtypeStruct(tuple(shape), np.dtype(dtype)) for path, shape, dtype in rows
        })

    def init(self, seed: int = 0, tile: int = 32) -> dict[str, Any]:
        """Freshly initialised variables (numpy), as the original initialises each layer."""
        model = self.build()
        variables = jax.jit(model.init)(jax.random.PRNGKey(seed), jnp.zeros((1, tile, tile, 3), jnp.float32))
        return jax.tree_util.tree_map(np.asarray, dict(variables))

    def check(self, variables: dict[str, Any], where: str) -> None:
        """CheckpointError unless `variables` has exactly the structure and shapes this model needs."""
        expected = {k: v.shape for k, v in flatten_dict(dict(self.abstract())).items()}
        got = {k: tuple(np.shape(v)) for k, v in flatten_dict(dict(variables)).items()}
        missing = sorted("/".join(k) for k in expected.keys() - got.keys())
        unexpected = sorted("/".join(k) for k in got.keys() - expected.keys())
        shapes = sorted(
            f"{'/'.join(k)} {got[k]} != {expected[k]}" for k in expected.keys() & got.keys() if got[k] != expected[k]
        )
        problems = []
        for label, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", shapes)):
            if items:
                problems.append(f"{label}: {', '.join(items[:5])}{' …' if len(items) > 5 else ''}")
        if problems:
            raise CheckpointError(f"{where} does not fit model {self.describe()}: {'; '.join(problems)}")

    def branch(self, index: int) -> "ModelSpec":
        """The spec of one branch as a single network (e.g. the last branch is the -O network)."""
        return ModelSpec("network", self.network, (self.widths[index],), self.scale, dict(self.extra))

    def branch_variables(self, variables: dict[str, Any], index: int) -> dict[str, Any]:
        """Branch `index`'s variables inside this ClassSR model's, as `branch(index)` takes them."""
        out = {"params": variables["params"][f"net{index + 1}"]}
        stats = variables.get("batch_stats", {}) or {}
        if f"net{index + 1}" in stats:
            out["batch_stats"] = stats[f"net{index + 1}"]
        return out

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
        return cls(d["kind"], d["network"], tuple(int(w) for w in d["widths"]), int(d["scale"]),
                   dict(d.get("extra", {})))


@functools.lru_cache(maxsize=None)
@disk_cache.json_memo("classsr_shapes", ("models",))
def _variable_rows(spec_json: str, tile: int, scan: bool) -> list:
    """[path, shape, dtype] of every variable of a model, traced from a Flax init: seconds for deep networks (a
    ClassSR-CARN-M: about 2 s), which every command would pay when it opens a model, hence kept on disk."""
    model = ModelSpec.from_dict(json.loads(spec_json)).build(scan=scan)
    x = jax.ShapeDtypeStruct((1, tile, tile, 3), jnp.float32)
    shapes = jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x), x)
    return [["/".join(k), list(v.shape), np.dtype(v.dtype).name] for k, v in flatten_dict(dict(shapes)).items()]
