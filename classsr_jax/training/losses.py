"""The losses of ClassSR training, with the original's normalisers.

- `l1_loss`: mean absolute error over every element (`nn.L1Loss()`), optionally on a [0, pixel_range] scale
  (RCAN's L1 is taken on [0, 255]).
- `class_loss`: (1/n) Σ_i [(M−1) − Σ_{j<k} |p_ij − p_ik|]; 0 for one-hot p, M−1 for uniform p.
- `average_loss`: Σ_k |Σ_i p_ik − n/M| / (2(M−1)·n/M); 0 for balanced mass, 1 for all mass on one class. For
  M = 3 the normaliser is the original's 4n/M (128 for n = 96).

Every |x| here is `torch_abs`: its derivative at exactly 0 is 0, as in PyTorch (JAX's `jnp.abs` gives 1 there),
so ties (e.g. two equal probabilities) get the original's gradient bit for bit.

Data parallel: the batch is split over devices and each device sees n/D samples. L1 and Class-Loss are means
of per-sample terms, so the device means, averaged (`pmean`), are the global means, and so are their
gradients. Average-Loss is not: it needs the class mass of the whole batch. With `axis_name`, the value is
computed from the `psum` of the device masses, and the gradient flows through a per-device surrogate whose
gradients, averaged over the devices, are exactly the global loss's gradient.

`Objective` says which of these a training stage minimises, with which weights.
"""

from __future__ import annotations

import dataclasses
import itertools

import jax
import jax.numpy as jnp

OBJECTIVE_LOSSES = ("l1", "classsr")


@dataclasses.dataclass(frozen=True)
class Objective:
    """What a train step minimises.

    loss 'l1': l1_weight·L1 of one SR network (the -O network, a branch); BatchNorm in train mode when the
      network has it.
    loss 'classsr': l1_weight·L1(Σ_k p_k·SR_k) + class_loss_weight·Class-Loss + average_loss_weight·Average-Loss
      of a ClassSR model.
    pixel_range: the scale the L1 is taken on (255 for RCAN, whose original data is on [0, 255]).
    """

    loss: str = "l1"
    l1_weight: float = 1.0
    class_loss_weight: float = 0.0
    average_loss_weight: float = 0.0
    pixel_range: float = 1.0

    def __post_init__(self):
        if self.loss not in OBJECTIVE_LOSSES:
            raise ValueError(f"unknown objective loss {self.loss!r}: use one of {', '.join(OBJECTIVE_LOSSES)}")

    @property
    def is_classsr(self) -> bool:
        return self.loss == "classsr"

    def total(self, l1, class_loss=0.0, average_loss=0.0):
        """The weighted sum of the terms (for 'l1' the class terms are absent and weigh nothing)."""
        if not self.is_classsr:
            return self.l1_weight * l1
        return self.l1_weight * l1 + self.class_loss_weight * class_loss + self.average_loss_weight * average_loss


@jax.custom_jvp
def torch_abs(x):
    """|x| whose derivative at 0 is 0 (PyTorch's), not 1 (JAX's)."""
    return jnp.abs(x)


@torch_abs.defjvp
def _torch_abs_jvp(primals, tangents):
    (x,), (t,) = primals, tangents
    return jnp.abs(x), jnp.sign(x) * t


def l1_loss(sr: jax.Array, hr: jax.Array, pixel_range: float = 1.0) -> jax.Array:
    """Mean |sr − hr| over all elements, on a [0, pixel_range] scale (inputs are on [0, 1])."""
    diff = (sr.astype(jnp.float32) - hr.astype(jnp.float32)) * pixel_range
    return jnp.mean(torch_abs(diff))


def class_loss(probs: jax.Array) -> jax.Array:
    """Class-Loss: pushes every probability vector towards one-hot. probs: (n, M) softmax outputs."""
    probs = probs.astype(jnp.float32)
    num_classes = probs.shape[-1]
    pairwise = sum(torch_abs(probs[:, j] - probs[:, k]) for j, k in itertools.combinations(range(num_classes), 2))
    return jnp.mean((num_classes - 1) - pairwise)


def average_loss(probs: jax.Array, axis_name: str | None = None) -> jax.Array:
    """Average-Loss: pushes the batch's probability mass towards n/M per class. probs: (n, M) softmax outputs.

    With `axis_name` (inside shard_map / a mapped axis), probs is this device's share of the batch; the value
    returned is the global loss, and its gradient is D × this device's part of the global gradient, so the
    `pmean` of the gradients over the D devices is the gradient of the global loss.
    """
    probs = probs.astype(jnp.float32)
    num_classes = probs.shape[-1]
    mass = jnp.sum(probs, axis=0)
    if axis_name is None:
        n = probs.shape[0]
        return jnp.sum(torch_abs(mass - n / num_classes)) / (2 * (num_classes - 1) * n / num_classes)
    devices = jax.lax.axis_size(axis_name)
    n = probs.shape[0] * devices
    normaliser = 2 * (num_classes - 1) * n / num_classes
    total_mass = jax.lax.psum(jax.lax.stop_gradient(mass), axis_name)
    value = jnp.sum(torch_abs(total_mass - n / num_classes)) / normaliser
    # ∂value/∂mass_d = sign(total − n/M) / normaliser for every device d; the factor D undoes the pmean.
    surrogate = devices * jnp.sum(jnp.sign(total_mass - n / num_classes) * mass) / normaliser
    return value + surrogate - jax.lax.stop_gradient(surrogate)


def classsr_loss(
    mixed_sr: jax.Array,
    hr: jax.Array,
    probs: jax.Array,
    *,
    l1_weight: float,
    class_loss_weight: float,
    average_loss_weight: float,
    pixel_range: float = 1.0,
    axis_name: str | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The joint-training loss l1w·L1 + class_w·L_class + average_w·L_avg and its three terms."""
    terms = {
        "l1": l1_loss(mixed_sr, hr, pixel_range),
        "class_loss": class_loss(probs),
        "average_loss": average_loss(probs, axis_name),
    }
    total = (
        l1_weight * terms["l1"]
        + class_loss_weight * terms["class_loss"]
        + average_loss_weight * terms["average_loss"]
    )
    return total, terms
