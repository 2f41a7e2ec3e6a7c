"""The ClassSR container (docs/original.md#the-classsr-container): a Class-Module plus any number of branches.

Methods:
- `__call__`: the soft mixture of joint training, Σ_k p_k · SR_k, and the probabilities p.
- `classify`: logits of the Class-Module.
- `branch`: the SR output of one branch, for routed inference.

Unlike the original, branches run in inference mode by default during joint training, so CARN's BatchNorm
uses its stored statistics; `branch_train=True` gives train-mode BatchNorm
(docs/original.md#branches-in-inference-mode-during-joint-training).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from classsr_jax.models.backbones import build_network
from classsr_jax.models.classifier import Classifier
from classsr_jax.models.common import Dtype


class ClassSR(nn.Module):
    network: str
    widths: tuple[int, ...]
    scale: int = 4
    extra: tuple[tuple[str, Any], ...] = ()
    scan: bool = True
    dtype: Dtype = jnp.float32

    def setup(self):
        self.classifier = Classifier(num_classes=len(self.widths), dtype=self.dtype)
        # Branches are named net1, net2, … like the original's state_dict prefixes.
        for i, width in enumerate(self.widths):
            module = build_network(self.network, width, self.scale, scan=self.scan, dtype=self.dtype,
                                   **dict(self.extra))
            setattr(self, f"net{i + 1}", module)

    @property
    def num_branches(self) -> int:
        return len(self.widths)

    def branch(self, x, index: int, train: bool = False):
        return getattr(self, f"net{index + 1}")(x, train)

    def classify(self, x):
        return self.classifier(x)

    def __call__(self, x, branch_train: bool = False):
        probs = jax.nn.softmax(self.classify(x), axis=-1)
        outputs = [self.branch(x, k, branch_train) for k in range(self.num_branches)]
        mixed = sum(probs[:, k, None, None, None] * out for k, out in enumerate(outputs))
        return mixed, probs
