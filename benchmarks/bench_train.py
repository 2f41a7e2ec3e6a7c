"""Joint-stage training speed: steps per second of `train.train_step` (classifier trained, branches frozen)
for each paper config, data parallel over all devices exactly as training runs it.

  python -m benchmarks.bench_train [--configs fsrcnn,carn,srresnet,rcan] [--batch 8] [--steps 20]
  python -m benchmarks.bench_train --batch paper            # the configs' joint batch (96; RCAN 60)

Batches are random tiles already on the device, so this measures the step, not the input pipeline. The
first call (compilation) is timed separately; steps/s is the median over `--blocks` timed blocks of `--steps`
steps each.
"""

import argparse
import functools
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import harness
from classsr_jax import parallel
from classsr_jax.training import train
from classsr_jax.training.configuration import load_config, model_spec
from classsr_jax.training.losses import Objective


def bench(name: str, batch: str, steps: int, blocks: int, half_precision: bool):
    config = load_config(os.path.join(harness.REPO, "configs", f"{name}.py"))
    spec = model_spec(config)
    mesh = parallel.create_mesh()
    devices = mesh.devices.size
    global_batch = config.joint.batch_size if batch == "paper" else int(batch)
    global_batch = -(-global_batch // devices) * devices
    model = spec.build(dtype=jnp.bfloat16 if half_precision else jnp.float32)
    tx = train.make_optimizer(config.joint, config.optimizer)
    objective = Objective(
        "classsr",
        l1_weight=config.joint.l1_weight,
        class_loss_weight=config.joint.class_loss_weight,
        average_loss_weight=config.joint.average_loss_weight,
        pixel_range=config.loss.pixel_range,
    )
    variables = spec.init()
    state = parallel.replicate(train.create_train_state(variables, tx, ("classifier",)), mesh)
    step = parallel.data_parallel(functools.partial(train.train_step, model=model, tx=tx, objective=objective), mesh)
    rng = np.random.default_rng(0)
    s = spec.scale
    local = parallel.process_batch_size(global_batch, mesh)
    batch_data = parallel.global_batch(
        {
            "lr": rng.random((local, 32, 32, 3), np.float32),
            "hr": rng.random((local, 32 * s, 32 * s, 3), np.float32),
        },
        mesh,
    )
    t0 = time.perf_counter()
    state, metrics = step(state, batch_data)
    jax.block_until_ready(metrics)
    compile_s = time.perf_counter() - t0
    rates = []
    for _ in range(blocks):
        t0 = time.perf_counter()
        for _ in range(steps):
            state, metrics = step(state, batch_data)
        jax.block_until_ready(metrics)
        rates.append(steps / (time.perf_counter() - t0))
    rate = statistics.median(rates)
    return global_batch, compile_s, rate


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default="fsrcnn,carn,srresnet,rcan")
    parser.add_argument("--batch", default="8", help="global batch, or 'paper' for the config's joint batch")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--blocks", type=int, default=5)
    parser.add_argument("--half_precision", action="store_true")
    args = parser.parse_args(argv)
    print(harness.machine_line(), flush=True)
    rows = []
    for name in args.configs.split(","):
        global_batch, compile_s, rate = bench(name, args.batch, args.steps, args.blocks, args.half_precision)
        rows.append([name, global_batch, f"{compile_s:.1f}", f"{rate:.2f}", f"{rate * global_batch:.0f}"])
        print(f"{name}: batch {global_batch}, compile {compile_s:.1f} s, {rate:.2f} steps/s", flush=True)
    print()
    print(harness.table(["config", "global batch", "compile s", "steps/s", "tiles/s"], rows))


if __name__ == "__main__":
    main()
