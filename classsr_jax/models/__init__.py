"""Flax modules: the four backbones, the Class-Module and the ClassSR container."""

from classsr_jax.models.backbones import NETWORKS, SCALES, build_network
from classsr_jax.models.carn import CARNM
from classsr_jax.models.classifier import Classifier
from classsr_jax.models.classsr import ClassSR
from classsr_jax.models.fsrcnn import FSRCNN
from classsr_jax.models.rcan import RCAN
from classsr_jax.models.spec import PAPER_WIDTHS, ModelSpec
from classsr_jax.models.srresnet import MSRResNet

__all__ = [
    "CARNM",
    "Classifier",
    "ClassSR",
    "FSRCNN",
    "MSRResNet",
    "ModelSpec",
    "NETWORKS",
    "PAPER_WIDTHS",
    "RCAN",
    "SCALES",
    "build_network",
]
