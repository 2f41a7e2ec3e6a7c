"""FSRCNN's transposed conv: the sub-pixel form against the zero-insertion (lhs_dilation) form.

  python -m benchmarks.investigations.fsrcnn_deconv [--tiles 128] [--reps 9]

The paper counts FSRCNN's 9×9 stride-4 transposed conv on its HR output, 16× its real cost. The library runs
it as one LR-grid conv (3×3 taps, 3·16 output channels) plus a pixel shuffle (`SubPixelConvTranspose`). This
benchmark times, for each branch width d ∈ {16, 36, 56} on a batch of 32×32 LR tiles:

- sub-pixel: exactly what `SubPixelConvTranspose` computes (its `deconv_as_subpixel_kernel` + conv + shuffle);
- zero-insertion: `lax.conv_general_dilated` with lhs_dilation=4 on the flipped kernel, PyTorch's definition;
- lax.conv_transpose: JAX's own transposed conv (also lhs_dilation inside);

asserts that the three agree, and reports XLA's own FLOPs count of each compiled program
(`jax.jit(f).lower(...).compile().cost_analysis()['flops']`) next to `classsr_jax.models.flops`'s true and paper
counts. It then times the whole FSRCNN branch both ways (the zero-insertion twin is the same module with its
tail patched, same parameters).
"""

from __future__ import annotations

import argparse
import contextlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import harness
from classsr_jax.models import ModelSpec, build_network
from classsr_jax.models import flops as flops_lib
from classsr_jax.models import fsrcnn as fsrcnn_module
from classsr_jax.models.common import SubPixelConvTranspose, deconv_as_subpixel_kernel, pixel_shuffle
from classsr_jax.models.fsrcnn import DECONV_PADDING

SCALE = 4
K = 9
DN = ("NHWC", "HWIO", "NHWC")


def subpixel(x, kernel, bias, stride=SCALE, padding=DECONV_PADDING[SCALE][0]):
    sub, pad = deconv_as_subpixel_kernel(kernel, stride, padding)
    y = jax.lax.conv_general_dilated(x, sub, (1, 1), pad, dimension_numbers=DN)
    return pixel_shuffle(y + jnp.repeat(bias, stride * stride), stride)


def zero_insertion(x, kernel, bias, stride=SCALE, padding=DECONV_PADDING[SCALE][0],
                   output_padding=DECONV_PADDING[SCALE][1]):
    """PyTorch ConvTranspose2d: insert stride−1 zeros between input pixels, then correlate with the flipped kernel."""
    lo = K - 1 - padding
    y = jax.lax.conv_general_dilated(
        x, kernel[::-1, ::-1], (1, 1), ((lo, lo + output_padding), (lo, lo + output_padding)),
        lhs_dilation=(stride, stride), dimension_numbers=DN,
    )
    return y + bias


def lax_conv_transpose(x, kernel, bias, stride=SCALE, padding=DECONV_PADDING[SCALE][0],
                       output_padding=DECONV_PADDING[SCALE][1]):
    lo = K - 1 - padding
    y = jax.lax.conv_transpose(x, kernel[::-1, ::-1], (stride, stride), ((lo, lo + output_padding),) * 2,
                               dimension_numbers=DN)
    return y + bias


class ZeroInsertionConvTranspose(SubPixelConvTranspose):
    """The same parameters as `SubPixelConvTranspose`, computed in the zero-insertion form."""

    @nn.compact
    def __call__(self, x):
        k = self.kernel_size
        bound = 1.0 / np.sqrt(self.features * k * k)
        uniform = lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)
        kernel = self.param("kernel", uniform, (k, k, x.shape[-1], self.features))
        bias = self.param("bias", uniform, (self.features,))
        return zero_insertion(x, kernel, bias, self.stride, self.padding, self.output_padding)


@contextlib.contextmanager
def zero_insertion_fsrcnn():
    saved = fsrcnn_module.SubPixelConvTranspose
    fsrcnn_module.SubPixelConvTranspose = ZeroInsertionConvTranspose
    try:
        yield
    finally:
        fsrcnn_module.SubPixelConvTranspose = saved


def xla_flops(f, *args) -> float:
    cost = jax.jit(f).lower(*args).compile().cost_analysis()
    if isinstance(cost, (list, tuple)):
        cost = cost[0]
    return float(cost.get("flops", float("nan")))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiles", type=int, default=128, help="32×32 LR tiles per call")
    parser.add_argument("--reps", type=int, default=9)
    args = parser.parse_args(argv)
    print(harness.machine_line(), flush=True)
    rng = np.random.default_rng(0)
    n = args.tiles
    forms = {"sub-pixel": subpixel, "zero-insertion": zero_insertion, "lax.conv_transpose": lax_conv_transpose}
    fns, meta = {}, {}
    for d in (16, 36, 56):
        x = jnp.asarray(rng.normal(size=(n, 32, 32, d)).astype(np.float32))
        kernel = jnp.asarray(rng.uniform(-0.02, 0.02, size=(K, K, d, 3)).astype(np.float32))
        bias = jnp.asarray(rng.uniform(-0.02, 0.02, size=(3,)).astype(np.float32))
        ref = np.asarray(jax.jit(subpixel)(x, kernel, bias))
        assert ref.shape == (n, 128, 128, 3), ref.shape
        for name, f in forms.items():
            out = np.asarray(jax.jit(f)(x, kernel, bias))
            err = float(np.abs(out - ref).max())
            assert err < 1e-5 * max(1.0, float(np.abs(ref).max())), f"{name} differs from sub-pixel by {err} (d={d})"
            jf = jax.jit(f)
            fns[d, name] = lambda jf=jf, x=x, kernel=kernel, bias=bias: jf(x, kernel, bias)
            meta[d, name] = dict(err=err, xla=xla_flops(f, x, kernel, bias))
        # The module's own count, for the deconv layer alone: 2 × MACs on the LR input (true) or HR output (paper).
        meta[d, "count"] = (2 * 32 * 32 * K * K * d * 3 * n, 2 * 128 * 128 * K * K * d * 3 * n)
    times = harness.time_interleaved(fns, args.reps)

    rows = []
    for d in (16, 36, 56):
        true, paper = meta[d, "count"]
        for name in forms:
            m = meta[d, name]
            rows.append([d, name, harness.spread(times[d, name]), f"{m['xla'] / 1e9:.2f} G",
                         f"{m['xla'] / n / 1e6:.1f} M", f"{m['xla'] / true:.1f}", f"{m['err']:.1e}"])
        rows.append([d, "*flops.py count (deconv only)*", "", f"true {true / 1e9:.2f} G, paper {paper / 1e9:.2f} G",
                     f"true {true / n / 1e6:.1f} M, paper {paper / n / 1e6:.1f} M", f"1.0 / {paper / true:.0f}", ""])
    print(f"\n### FSRCNN ×4 transposed conv (9×9, stride 4, d→3) on {n} tiles of 32×32, median of {args.reps} "
          f"interleaved runs (min–max)\n")
    print(harness.table(["d", "form", "time", "XLA cost-analysis FLOPs", "per tile", "× true count",
                         "max |diff| vs sub-pixel"], rows))
    print()
    for d in (16, 36, 56):
        s = harness.median(times[d, "sub-pixel"])
        print(f"d={d}: zero-insertion / sub-pixel time = {harness.median(times[d, 'zero-insertion']) / s:.1f}×, "
              f"lax.conv_transpose / sub-pixel = {harness.median(times[d, 'lax.conv_transpose']) / s:.1f}×")

    # Whole branches: the library's FSRCNN against the same module with a zero-insertion tail.
    x = jnp.asarray(rng.random((n, 32, 32, 3), dtype=np.float32))
    net_fns, net_flops = {}, {}
    for d in (16, 36, 56):
        model = build_network("fsrcnn", d, SCALE)
        variables = jax.jit(model.init)(jax.random.PRNGKey(d), x[:1])
        # Fresh lambdas, not `model.apply` twice: jit's trace cache would treat two bound methods of the same
        # module as one function and reuse the first trace for the second.
        apply_sub = lambda v, x, model=model: model.apply(v, x)
        apply_zero = lambda v, x, model=model: model.apply(v, x)
        f_sub, f_zero = jax.jit(apply_sub), jax.jit(apply_zero)
        with zero_insertion_fsrcnn():
            out_zero = np.asarray(f_zero(variables, x))
            net_flops[d, "zero-insertion"] = xla_flops(apply_zero, variables, x)
            hlo_zero = f_zero.lower(variables, x).as_text()
        out_sub = np.asarray(f_sub(variables, x))
        hlo_sub = f_sub.lower(variables, x).as_text()
        dilated = f"lhs_dilate = [{SCALE}, {SCALE}]"
        assert dilated in hlo_zero and dilated not in hlo_sub, "the two FSRCNN programs are not the two forms"
        err = float(np.abs(out_sub - out_zero).max())
        assert err < 1e-5, f"FSRCNN d={d}: the two tails differ by {err}"
        net_flops[d, "sub-pixel"] = xla_flops(apply_sub, variables, x)
        net_fns[d, "sub-pixel"] = lambda f=f_sub, v=variables: f(v, x)
        net_fns[d, "zero-insertion"] = lambda f=f_zero, v=variables: f(v, x)
    net_times = harness.time_interleaved(net_fns, args.reps)
    rows = []
    for d in (16, 36, 56):
        spec = ModelSpec("network", "fsrcnn", (d,), SCALE)
        true = flops_lib.model_flops(spec, convention="true").branches[0]
        paper = flops_lib.model_flops(spec).branches[0]
        s, z = harness.median(net_times[d, "sub-pixel"]), harness.median(net_times[d, "zero-insertion"])
        rows.append([d, harness.spread(net_times[d, "sub-pixel"]), harness.spread(net_times[d, "zero-insertion"]),
                     f"{z / s:.1f}×", f"{net_flops[d, 'sub-pixel'] / n / 1e6:.1f} M",
                     f"{net_flops[d, 'zero-insertion'] / n / 1e6:.1f} M", f"{true / 1e6:.1f} M",
                     f"{paper / 1e6:.1f} M"])
    print(f"\n### Whole FSRCNN ×4 branch on {n} tiles (sub-pixel = the library; zero-insertion = its tail patched)\n")
    print(harness.table(["d", "sub-pixel", "zero-insertion", "ratio", "XLA FLOPs/tile sub-pixel", "zero-insertion",
                         "flops.py true", "paper"], rows))

if __name__ == "__main__":
    main()
