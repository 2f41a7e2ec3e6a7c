"""Colour augmentation of training pairs: one linear recolouring per LR/HR tile pair.

Every recolouring is a 3×3 matrix that keeps each pixel's channel mean: a channel permutation, a hue turn about
the grey axis and a saturation change. Being linear, it commutes with the bicubic degradation, so the LR of a
recoloured pair is still the bicubic of its recoloured HR (up to the LR's original rounding).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

# The 6 orders of the channels (the first is the identity).
CHANNEL_PERMUTATIONS = np.array(list(itertools.permutations(range(3))), np.int64)


@dataclass(frozen=True)
class ColourAugment:
    """Colour augmentation of training pairs (off when all three are off).

    permute_channels: each tile pair takes one of the 6 channel orders, uniformly.
    hue_degrees: the hue turns about the grey axis by an angle uniform in [−hue_degrees, hue_degrees]
      (180: any hue). At 120° this turn is exactly the channel cycle RGB → BRG.
    saturation: the colour's distance from grey (its channel mean) scales by a factor uniform in
      [1 − saturation, 1 + saturation].
    probability: the share of tile pairs recoloured; the others keep their colours.
    """

    permute_channels: bool = False
    hue_degrees: float = 0.0
    saturation: float = 0.0
    probability: float = 1.0

    def __post_init__(self):
        if not 0.0 <= self.hue_degrees <= 180.0:
            raise ValueError(f"hue jitter must be in [0, 180] degrees, got {self.hue_degrees}")
        if not 0.0 <= self.saturation <= 1.0:
            raise ValueError(f"saturation jitter must be in [0, 1], got {self.saturation}")
        if not 0.0 <= self.probability <= 1.0:
            raise ValueError(f"colour augmentation probability must be in [0, 1], got {self.probability}")

    @property
    def enabled(self) -> bool:
        return bool(self.permute_channels or self.hue_degrees > 0 or self.saturation > 0) and self.probability > 0

    def draw(self, rng: np.random.Generator, count: int) -> np.ndarray:
        """(count, 3, 3) float64 colour matrices (out = M @ rgb), drawn from `rng` in a fixed order."""
        order = rng.integers(0, 6, size=count) if self.permute_channels else np.zeros(count, np.int64)
        hue = rng.uniform(-self.hue_degrees, self.hue_degrees, size=count) if self.hue_degrees > 0 else np.zeros(count)
        sat = (rng.uniform(1 - self.saturation, 1 + self.saturation, size=count) if self.saturation > 0
               else np.ones(count))
        if self.probability < 1:
            kept = rng.random(count) >= self.probability
            order[kept], hue[kept], sat[kept] = 0, 0.0, 1.0
        return colour_matrices(order, hue, sat)


def colour_matrices(order: np.ndarray, hue_degrees: np.ndarray, saturation: np.ndarray) -> np.ndarray:
    """(n, 3, 3) matrices S(saturation) · R(hue) · P(order): P takes output channel c from input channel
    CHANNEL_PERMUTATIONS[order][c], R turns about the grey axis (1, 1, 1) (Rodrigues' formula), S scales the
    distance from the channel mean. Each keeps the channel mean of every pixel."""
    order, hue, sat = (np.asarray(v).reshape(-1) for v in (order, hue_degrees, saturation))
    eye = np.eye(3)
    perm = eye[CHANNEL_PERMUTATIONS[order]]  # (n, 3, 3): row c is the unit vector of the source channel
    theta = np.deg2rad(hue)[:, None, None]
    axis = np.full(3, 1 / np.sqrt(3))
    cross = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    outer = np.outer(axis, axis)
    rotation = np.cos(theta) * eye + np.sin(theta) * cross + (1 - np.cos(theta)) * outer
    mean = np.full((3, 3), 1 / 3)
    scaling = mean + sat[:, None, None] * (eye - mean)
    return scaling @ rotation @ perm


def recolour_pair(lr, hr, matrices, xp=np):
    """Applies matrices[k] to pair k of float (B, h, w, 3) batches on [0, 1], the same to LR and HR.

    A pixel leaving [0, 1] would have to be clipped, and LR and HR clipped apart no longer match; so the colours
    of such a pair are instead pulled towards their channel mean (which every matrix keeps) by the one factor
    t < 1 that brings the whole pair back in range, the same as lowering its saturation. Pulling is linear too:
    it is the matrix J/3 + t·(M − J/3), J the all-ones matrix.

    xp: numpy, or jax.numpy to do it inside a jitted program (the training step does, on uint8 tiles).
    """
    b = lr.shape[0]
    flats = [x.reshape(b, -1, 3) for x in (lr, hr)]
    matrices = xp.asarray(matrices, xp.float32)

    def apply(m, flat):
        return xp.matmul(flat, xp.swapaxes(m, 1, 2))

    # Each pixel outside [0, 1] bounds t: its largest channel must come down to 1 and its smallest up to 0. A
    # value inside stays inside on its way to the mean, so only values outside bound t; t < 1 means pulled.
    limit = xp.ones(b, xp.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        for flat, out in zip(flats, (apply(matrices, flat) for flat in flats)):
            grey = (flat[..., 0] + flat[..., 1] + flat[..., 2]) / np.float32(3)
            high, low = out.max(axis=-1), out.min(axis=-1)
            above = xp.where(high > 1, (1 - grey) / (high - grey), np.inf).min(axis=1)
            below = xp.where(low < 0, grey / (grey - low), np.inf).min(axis=1)
            limit = xp.minimum(limit, xp.minimum(above, below))
    mean = np.full((3, 3), 1 / 3, np.float32)
    pulled = mean + xp.clip(limit, 0.0, 1.0)[:, None, None] * (matrices - mean)
    final = xp.where((limit < 1)[:, None, None], pulled, matrices)
    # The clip only removes float rounding (values a few ulp outside [0, 1]).
    return tuple(xp.clip(apply(final, flat), 0.0, 1.0).reshape(x.shape) for flat, x in zip(flats, (lr, hr)))
