"""Throughput of the training input pipeline, in LR/HR tile pairs per second (target: >= 2,000 on 2 cores).

    python -m benchmarks.bench_input_pipeline [--seconds 5] [--scale 4]

Data: the bundled photos (7 train photos from scikit-image, 0.2–2 MP each), as
  * list:      a Python list of (HR, LR) uint8 pairs (decoded once, cached in memory),
  * tfds:      the `classsr_bundled/x<s>` TFDS dataset (PNG decode by tf.data, then cached in memory),
  * streaming: the same TFDS dataset with a 4 MiB cache, so the pool keeps decoding new images
               (one image replaced every crops_per_decode = 256 tiles);
  * list, colours: the list with the quickstart's colour augmentation, finished on the host (float32), and
    raw as the training loop takes it (uint8 tiles and colour matrices; its jitted step recolours them).
Each case times whole batches after 5 warm-up batches; the consumer only receives the numpy arrays.
"""

from __future__ import annotations

import argparse
import tempfile
import time

from benchmarks import harness
from classsr_jax.data.bicubic import bicubic_degrade, modcrop
from classsr_jax.data.bundled import bundled_photos
from classsr_jax.data.colour_augment import ColourAugment
from classsr_jax.data.input_pipeline import create_train_iterator
from classsr_jax.data.loading import load_dataset
from classsr_jax.training.configuration import load_config


def measure(dataset, batch_size: int, scale: int, seconds: float, **kwargs) -> float:
    iterator = create_train_iterator(dataset, batch_size=batch_size, scale=scale, seed=0, **kwargs)
    for _ in range(5):
        next(iterator)
    pairs = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        batch = next(iterator)
        pairs += batch["lr"].shape[0]
    elapsed = time.perf_counter() - start
    iterator.close()
    return pairs / elapsed


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="timed seconds per case")
    parser.add_argument("--scale", type=int, default=4, choices=(2, 3, 4))
    args = parser.parse_args(argv)

    pairs = []
    for _, photo in bundled_photos("train"):
        hr = modcrop(photo, args.scale)
        pairs.append((hr, bicubic_degrade(hr, args.scale)))
    colours = ColourAugment(**load_config("quickstart").data.colour_augment)
    with tempfile.TemporaryDirectory() as data_dir:
        tfds_ds = load_dataset(f"classsr_bundled/x{args.scale}", "train", data_dir=data_dir)
        cases = [
            ("list", pairs, 16, {}),
            ("list", pairs, 96, {}),
            ("tfds", tfds_ds, 16, {}),
            ("tfds", tfds_ds, 96, {}),
            ("streaming", tfds_ds, 16, {"cache_bytes": 4 << 20}),
            ("list, colours", pairs, 16, {"colour": colours}),
            ("list, colours, raw", pairs, 16, {"colour": colours, "raw": True}),
        ]
        print(f"{harness.machine_line()}; scale x{args.scale}, lr_patch 32, prefetch 2", flush=True)
        rows = []
        for name, dataset, batch_size, kwargs in cases:
            rate = measure(dataset, batch_size, args.scale, args.seconds, **kwargs)
            rows.append([name, batch_size, f"{rate:,.0f}"])
            print(f"{name}, batch {batch_size}: {rate:,.0f} pairs/s", flush=True)
    print()
    print(harness.table(["input", "batch", "pairs/s"], rows))


if __name__ == "__main__":
    main()
