"""Where FSRCNN-O's training step spends its time on XLA:CPU, and what an im2col form of its convs would save.

  python -m benchmarks.investigations.train_step_profile [--batch 8] [--reps 15] [--step-only]

- step: `train.train_step` of the -O network (the quickstart's first stage: FSRCNN 56 wide, ×4, L1, Adam)
  through `parallel.data_parallel`, on random tiles already on the device, so without the input pipeline;
  steps/s from the median of interleaved timings, with the tail's sub-pixel conv as XLA's conv (the
  library's) and as im2col. `--step-only` prints the library's step rate alone (to compare XLA_FLAGS, which
  only take effect in a fresh process).
- layers: forward and backward (gradients of input and kernel) of each of its convs on a batch of 32×32
  tiles, as XLA computes the conv and as im2col (`conv_forms.conv_as_im2col_matmul`); outputs asserted
  equal. The tail is the transposed conv's sub-pixel form, a 3×3 conv to 3·16 channels.
"""

from __future__ import annotations

import argparse
import functools

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import harness
from benchmarks.investigations import conv_forms
from classsr_jax import parallel
from classsr_jax.models import common, fsrcnn
from classsr_jax.models.spec import ModelSpec
from classsr_jax.training import train
from classsr_jax.training.configuration import load_config
from classsr_jax.training.losses import Objective

DN = ("NHWC", "HWIO", "NHWC")
# (name, kernel size, input channels, output channels) of FSRCNN-O's convs on the LR grid (d=56, s=12).
LAYERS = (("head 5×5", 5, 3, 56), ("shrink 1×1", 1, 56, 12), ("map 3×3 (one of 4)", 3, 12, 12),
          ("expand 1×1", 1, 12, 56), ("tail 3×3 (sub-pixel)", 3, 56, 48))


class Im2colTail(common.SubPixelConvTranspose):
    """FSRCNN's tail with the same parameters and numbers (up to summation order), its LR-grid conv as im2col."""

    def lr_grid_conv(self, x, sub_kernel, padding):
        assert padding == ((sub_kernel.shape[0] // 2,) * 2,) * 2  # 'same', as im2col computes it
        return conv_forms.conv_as_im2col_matmul(x, sub_kernel)


def step_runner(batch: int, tail: type = common.SubPixelConvTranspose, width: int = 56):
    """A function running one train step of -O (or of the FSRCNN `width` wide; its tail computed by `tail`) on
    every device, and the tiles' SR output."""
    config = load_config("quickstart")
    spec = ModelSpec("network", "fsrcnn", (width,), 4, {})
    mesh = parallel.create_mesh()
    tx = train.make_optimizer(config.original, config.optimizer)
    state = parallel.replicate(train.create_train_state(spec.init(), tx, None), mesh)
    rng = np.random.default_rng(0)
    tiles = parallel.global_batch({"lr": rng.random((batch, 32, 32, 3), np.float32),
                                   "hr": rng.random((batch, 128, 128, 3), np.float32)}, mesh)
    saved, fsrcnn.SubPixelConvTranspose = fsrcnn.SubPixelConvTranspose, tail
    try:
        model = spec.build()
        step = parallel.data_parallel(
            functools.partial(train.train_step, model=model, tx=tx, objective=Objective("l1")), mesh)
        holder = {"state": state}

        def run():
            holder["state"], metrics = step(holder["state"], tiles)
            return metrics

        jax.block_until_ready(run())  # traced here, with this tail
        return run, model.apply(spec.init(), tiles["lr"])
    finally:
        fsrcnn.SubPixelConvTranspose = saved


def step_rates(batch: int, reps: int, forms: dict[str, type]) -> dict[str, float]:
    runners = {name: step_runner(batch, tail) for name, tail in forms.items()}
    reference = next(iter(runners.values()))[1]
    for run, out in runners.values():
        np.testing.assert_allclose(out, reference, rtol=1e-4, atol=1e-5)
    times = harness.time_interleaved({name: run for name, (run, _) in runners.items()}, reps, warmup=2)
    return {name: 1.0 / harness.median(t) for name, t in times.items()}


def layer_rows(batch: int, reps: int) -> list[list[str]]:
    rng = np.random.default_rng(1)
    rows = []
    for name, k, cin, cout in LAYERS:
        x = jnp.asarray(rng.normal(size=(batch, 32, 32, cin)), jnp.float32)
        w = jnp.asarray(rng.normal(size=(k, k, cin, cout)) * 0.05, jnp.float32)
        xla = lambda x, w, k=k: jax.lax.conv_general_dilated(x, w, (1, 1), [(k // 2, k // 2)] * 2, dimension_numbers=DN)
        forms = {"XLA conv": xla, "im2col": conv_forms.conv_as_im2col_matmul}
        np.testing.assert_allclose(forms["im2col"](x, w), xla(x, w), rtol=1e-4, atol=1e-4)
        grads = {f: jax.jit(jax.grad(lambda x, w, g=g: jnp.sum(g(x, w) ** 2), argnums=(0, 1)))
                 for f, g in forms.items()}
        times = harness.time_interleaved({f: functools.partial(g, x, w) for f, g in grads.items()}, reps)
        a, b = harness.median(times["XLA conv"]), harness.median(times["im2col"])
        rows.append([name, harness.seconds(a), harness.seconds(b), f"{a / b:.2f}×"])
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--step-only", action="store_true", help="only the library's step rate")
    args = parser.parse_args(argv)
    print(harness.machine_line(), flush=True)
    forms = {"XLA conv (the library's)": common.SubPixelConvTranspose}
    if not args.step_only:
        forms["im2col"] = Im2colTail
    for name, rate in step_rates(args.batch, args.reps, forms).items():
        print(f"FSRCNN-O train step, batch {args.batch}, no input pipeline, tail as {name}: "
              f"{rate:.1f} steps/s ({1e3 / rate:.1f} ms)")
    if args.step_only:
        return
    print()
    print(harness.table(["conv (forward + backward)", "XLA conv", "im2col", "XLA / im2col"],
                        layer_rows(args.batch, args.reps)))


if __name__ == "__main__":
    main()
