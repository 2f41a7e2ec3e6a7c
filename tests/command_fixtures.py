"""What the command tests share: a tiny random ClassSR-FSRCNN checkpoint and small photo-like images."""

import numpy as np
import pytest

from classsr_jax.checkpointing import save_model
from classsr_jax.models import ModelSpec

SPEC = ModelSpec("classsr", "fsrcnn", (16, 36, 56))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A ClassSR-FSRCNN checkpoint with random weights (seed 3), saved once per test module."""
    path = str(tmp_path_factory.mktemp("ckpt") / "classsr_fsrcnn")
    save_model(path, SPEC, SPEC.init(seed=3))
    return path


def photo(h, w, seed=0):
    """A float32 (h, w, 3) image in [0, 1]: a horizontal ramp with noise, so tiles differ."""
    rng = np.random.default_rng(seed)
    return (np.linspace(0, 1, w)[None, :, None] * 0.7 + 0.3 * rng.random((h, w, 3))).astype(np.float32)
