"""One process of a multi-process training run on localhost (gloo CPU collectives), for tests/test_train.py.

  python tests/multiprocess_worker.py PROCESS_ID NUM_PROCESSES PORT WORKDIR PHOTOS TFDS_DIR OUT_NPZ

Starts jax.distributed exactly as `classsr_jax.main` does, trains stage `original` of configs/smoke.py for
2 steps and writes this process's final parameters (its own replica) to OUT_NPZ.
"""

import os
import sys

import jax
import numpy as np
from flax.traverse_util import flatten_dict

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # the repository root: classsr_jax and configs


def main(process_id, num_processes, port, workdir, photos, tfds_dir, out):
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(f"localhost:{port}", int(num_processes), int(process_id))
    from classsr_jax.training import train
    from classsr_jax.training.configuration import load_config

    overrides = {"stages": "original", "original.num_steps": 2, "original.eval_every_steps": 2}
    config = load_config(os.path.join(os.path.dirname(HERE), "configs", "smoke.py"), overrides)
    config.data.manual_dir = photos
    config.data.data_dir = tfds_dir
    result = train.train_and_evaluate(config, workdir)
    params = flatten_dict(result["variables"]["original"]["params"], sep="/")
    np.savez(out, devices=np.int64(jax.device_count()), **params)


if __name__ == "__main__":
    main(*sys.argv[1:])
