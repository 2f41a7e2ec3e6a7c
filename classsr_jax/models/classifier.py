"""The Class-Module (docs/original.md#the-class-module): 32x32 RGB tile in [0, 1] → logits over the branches."""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from classsr_jax.models.common import Dtype, kaiming_normal, torch_default_bias, torch_default_kernel


class Classifier(nn.Module):
    num_classes: int = 3
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        init = dict(kernel_init=kaiming_normal(0.1), bias_init=nn.initializers.zeros, dtype=self.dtype)
        lrelu = lambda y: nn.leaky_relu(y, 0.1)
        x = x.astype(self.dtype)
        x = lrelu(nn.Conv(128, (4, 4), strides=(4, 4), padding="VALID", name="conv0", **init)(x))
        for i in range(1, 4):
            x = lrelu(nn.Conv(128, (1, 1), name=f"conv{i}", **init)(x))
        x = nn.Conv(32, (1, 1), name="conv4", **init)(x)
        # The original pools with kernel = feature-map height: the same on square tiles
        # (docs/original.md#the-classifiers-pool).
        x = jnp.mean(x, axis=(1, 2))
        logits = nn.Dense(
            self.num_classes, kernel_init=torch_default_kernel(), bias_init=torch_default_bias(32), name="fc"
        )(x.astype(jnp.float32))
        return logits
