"""Init and jit-compile time of each ×4 ClassSR model on this machine.

  python -m benchmarks.bench_compile [--networks fsrcnn,carn,srresnet,rcan] [--batch 16]

Init = jit(model.init) compiled and run once. Compile = lowering plus XLA compilation of the joint-training
forward (the soft mixture over all branches on a batch of 32x32 tiles), the largest program the container has.
"""

import argparse
import time

import jax
import jax.numpy as jnp

from benchmarks import harness
from classsr_jax.models import PAPER_WIDTHS, ModelSpec


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--networks", default="fsrcnn,carn,srresnet,rcan")
    parser.add_argument("--batch", type=int, default=16)
    args = parser.parse_args(argv)
    print(harness.machine_line(), flush=True)
    rows = []
    for network in args.networks.split(","):
        spec = ModelSpec("classsr", network, PAPER_WIDTHS[network], 4)
        model = spec.build()
        x = jnp.zeros((args.batch, 32, 32, 3), jnp.float32)
        t0 = time.perf_counter()
        variables = jax.jit(model.init)(jax.random.PRNGKey(0), x)
        jax.block_until_ready(variables)
        t1 = time.perf_counter()
        jax.jit(model.apply).lower(variables, x).compile()
        t2 = time.perf_counter()
        rows.append([f"ClassSR-{network} x4", f"{t1 - t0:.1f}", f"{t2 - t1:.1f}"])
        print(f"{network}: init {t1 - t0:.1f} s, compile {t2 - t1:.1f} s", flush=True)
    print()
    print(harness.table(["model", "init s", "compile s"], rows))


if __name__ == "__main__":
    main()
