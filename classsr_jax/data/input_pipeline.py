"""Training batches of aligned LR/HR tiles (docs/original.md#the-training-recipe), fast on a small CPU and
deterministic for a seed.

How it works:
  1. This process takes its share of the images: image i belongs to process i % process_count (`shard_indices`),
     so the shares are disjoint and together cover the dataset. A tf.data input is sharded before decoding when
     its images are still encoded bytes, and read with tf.data's parallel decoding.
  2. The share is decoded once and kept in memory as uint8 while it fits in `cache_bytes`. A larger share is
     streamed, in dataset order and over and over, through a pool of that size: every
     `crops_per_decode / batch_size` batches one pooled image, chosen at random, is replaced by the next one
     read, so each decode still yields many crops.
  3. Each batch draws `batch_size` tiles at once from one numpy Generator: an image (weighted by how many tiles it
     offers, so every position is equally likely, as with the original's pre-cut sub-images), an aligned
     position (LR (y, x), HR (y·s, x·s)), and three coin flips applied identically to LR and HR in the
     original's order: flip W, flip H, transpose H↔W.
     With `division` and `class_filter=k`, positions are only the grid tiles of class k (for branch training);
     with `division` alone, any grid tile (the original's joint-training data).
  4. Optionally (`colour.ColourAugment`, off by default) every tile pair is recoloured by one 3×3 matrix applied to LR
     and HR alike: a random channel permutation, a hue rotation about the grey axis and a saturation change.
     All three are linear and keep each pixel's channel mean, so the LR of the recoloured pair is still the
     bicubic of its recoloured HR (up to the LR's original rounding); where the matrix would push a pixel of the
     pair outside [0, 1], the pair's saturation is lowered just enough instead of clipping (clipping LR and HR
     separately would make them disagree).
  5. The training loop takes the tiles raw (uint8 and the colour matrices) and its jitted step finishes them
     (`finish_batch`): on a device the host then only crops, and a quarter of the bytes cross over.
  6. A background thread keeps `prefetch` batches ready. One thread draws all random numbers in a fixed order
     (the colours from a second stream of the same seed, so turning them on changes no crop or flip), so the
     same seed gives the same batches whatever the prefetch depth.
"""

from __future__ import annotations

import itertools
import logging
import math
import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import tensorflow as tf

from classsr_jax.data.colour_augment import ColourAugment, recolour_pair
from classsr_jax.data.division import Division, check_pair, example_arrays
from classsr_jax.errors import DataError

logger = logging.getLogger(__name__)

LR_PATCH = 32  # The paper's LR training tile (GT_size 128 at ×4).


def shard_indices(num_images: int, process_index: int, process_count: int) -> np.ndarray:
    """Indices of the images process `process_index` trains on: i with i % process_count == process_index."""
    if process_count < 1 or not 0 <= process_index < process_count:
        raise ValueError(f"process_index must be in [0, {process_count}), got {process_index}")
    return np.arange(process_index, num_images, process_count, dtype=np.int64)


@dataclass
class _Image:
    index: int  # Position in the whole dataset (the division's image index).
    hr: np.ndarray  # uint8 (H·s, W·s, 3)
    lr: np.ndarray  # uint8 (H, W, 3)
    positions: np.ndarray | None  # (n, 2) LR corners allowed, or None for any position.

    @property
    def nbytes(self) -> int:
        return self.hr.nbytes + self.lr.nbytes


def _tf_shard(
    dataset: tf.data.Dataset, wanted: np.ndarray | None, process_index: int, process_count: int
) -> tf.data.Dataset:
    """(index, example) pairs of this process's share, decoding images only after the share is taken."""
    indexed = dataset.enumerate()
    if wanted is not None:
        table = tf.constant(np.sort(wanted), dtype=tf.int64)
        indexed = indexed.filter(lambda i, ex: tf.reduce_any(tf.equal(table, i)))
    else:
        indexed = indexed.filter(lambda i, ex: tf.equal(i % process_count, process_index))

    def decode(i: tf.Tensor, ex: Any) -> tuple[tf.Tensor, Any]:
        if isinstance(ex, dict):
            ex = dict(ex)
            for key in ("hr", "lr"):
                if ex[key].dtype == tf.string:  # Encoded PNG bytes (e.g. TFDS with SkipDecoding).
                    ex[key] = tf.io.decode_image(ex[key], channels=3, expand_animations=False)
        return i, ex

    return indexed.map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).prefetch(2)


class _Source:
    """This process's images in dataset order, one pass (`first_pass`) or forever (`stream`)."""

    def __init__(self, dataset: Any, wanted: np.ndarray | None, process_index: int, process_count: int):
        self._is_tf = isinstance(dataset, tf.data.Dataset)
        if self._is_tf:
            self._tf_ds = _tf_shard(dataset, wanted, process_index, process_count)
        else:
            self._items = dataset if isinstance(dataset, (list, tuple)) else list(dataset)
            keep = shard_indices(len(self._items), process_index, process_count)
            self._indices = keep if wanted is None else keep[np.isin(keep, wanted)]

    def first_pass(self) -> Iterator[tuple[int, Any]]:
        if self._is_tf:
            for i, ex in self._tf_ds.as_numpy_iterator():
                yield int(i), ex
        else:
            for i in self._indices:
                yield int(i), self._items[int(i)]

    def stream(self) -> Iterator[tuple[int, Any]]:
        return itertools.chain.from_iterable(self.first_pass() for _ in itertools.count())


class _Sampler:
    """Draws batches of aligned, augmented tile pairs from a pool of decoded images."""

    def __init__(
        self,
        source: _Source,
        *,
        batch_size: int,
        scale: int,
        lr_patch: int,
        rng: np.random.Generator,
        positions: dict[int, np.ndarray] | None,
        division_names: tuple[str, ...] | None,
        cache_bytes: int,
        crops_per_decode: int,
        describe: str,
        colour: ColourAugment,
        colour_rng: np.random.Generator,
    ):
        self.batch_size, self.scale, self.lr_patch = batch_size, scale, lr_patch
        self.colour, self.colour_rng = colour, colour_rng
        self.rng = rng
        self._positions = positions
        self._division_names = division_names
        self.pool: list[_Image] = []
        self.skipped: list[tuple[str, str]] = []
        loaded = 0
        first = source.first_pass()
        exhausted = True
        for index, example in first:
            image = self._prepare(index, example)
            if image is None:
                continue
            self.pool.append(image)
            loaded += image.nbytes
            if loaded > cache_bytes:
                exhausted = False
                break
        if not self.pool:
            raise DataError(f"{describe} has no usable image ({len(self.skipped)} skipped)")
        # Streaming only when the share did not fit: the pool then turns over one image at a time.
        self._stream = None if exhausted else itertools.chain(first, source.stream())
        self._refresh_every = max(1, math.ceil(crops_per_decode / batch_size))
        self._batches = 0
        self._update_weights()
        if self.skipped:
            logger.warning("%s: %d images skipped: %s", describe, len(self.skipped), self.skipped[:10])

    @property
    def cached(self) -> bool:
        """True when the whole share is in memory (no image is decoded again)."""
        return self._stream is None

    def _prepare(self, index: int, example: Any) -> _Image | None:
        actual, hr, lr = example_arrays(example)
        name = actual if actual is not None else str(index)
        check_pair(name, hr, lr, self.scale)
        if self._division_names is not None:
            expected = self._division_names[index] if index < len(self._division_names) else None
            if actual is not None and actual != expected:
                raise DataError(
                    f"example {index} is {actual!r} but the division has {expected!r} there; "
                    "divide the same dataset (same config and split) that you train on"
                )
        positions = None
        if self._positions is not None:
            positions = self._positions.get(index)
            if positions is None or positions.shape[0] == 0:
                return None
            bad = (positions[:, 0] + self.lr_patch > lr.shape[0]) | (positions[:, 1] + self.lr_patch > lr.shape[1])
            if bad.any():
                raise DataError(f"example {name}: division tiles fall outside its LR image {lr.shape[:2]}")
        elif lr.shape[0] < self.lr_patch or lr.shape[1] < self.lr_patch:
            self.skipped.append((name, f"LR {lr.shape[0]}x{lr.shape[1]} is smaller than {self.lr_patch} px"))
            return None
        return _Image(index, np.ascontiguousarray(hr), np.ascontiguousarray(lr), positions)

    def _update_weights(self) -> None:
        p = self.lr_patch
        counts = []
        for image in self.pool:
            if image.positions is not None:
                counts.append(image.positions.shape[0])
            else:
                counts.append((image.lr.shape[0] - p + 1) * (image.lr.shape[1] - p + 1))
        self._counts = np.asarray(counts, np.int64)
        self._cumulative = np.cumsum(self._counts)

    def _refresh(self) -> None:
        """Streams one new image into the pool in place of a random one."""
        assert self._stream is not None
        for index, example in self._stream:
            image = self._prepare(index, example)
            if image is not None:
                self.pool[int(self.rng.integers(len(self.pool)))] = image
                self._update_weights()
                return

    def next_batch(self) -> dict[str, np.ndarray]:
        if self._stream is not None and self._batches and self._batches % self._refresh_every == 0:
            self._refresh()
        self._batches += 1
        b, p, s = self.batch_size, self.lr_patch, self.scale
        # Tile k of the pool-wide enumeration → (image, position within that image): uniform over all tiles.
        tile = self.rng.integers(0, self._cumulative[-1], size=b)
        slots = np.searchsorted(self._cumulative, tile, side="right")
        within = tile - (self._cumulative[slots] - self._counts[slots])
        flips = self.rng.random((b, 3)) < 0.5
        lr_batch = np.empty((b, p, p, 3), np.uint8)
        hr_batch = np.empty((b, p * s, p * s, 3), np.uint8)
        for k in range(b):
            image = self.pool[int(slots[k])]
            if image.positions is not None:
                y, x = (int(v) for v in image.positions[within[k]])
            else:
                y, x = divmod(int(within[k]), image.lr.shape[1] - p + 1)
            lr_batch[k] = image.lr[y : y + p, x : x + p]
            hr_batch[k] = image.hr[y * s : (y + p) * s, x * s : (x + p) * s]
        lr_batch, hr_batch = augment_pair(lr_batch, hr_batch, flips)
        batch = {"lr": lr_batch, "hr": hr_batch}
        if self.colour.enabled:
            batch["colour"] = self.colour.draw(self.colour_rng, b).astype(np.float32)
        return batch


def finish_batch(batch: dict[str, Any], xp: Any = np) -> dict[str, Any]:
    """Raw tiles (uint8, with each pair's colour matrix under 'colour' when recoloured) → float {'lr', 'hr'} on
    [0, 1]; float tiles without 'colour' pass through. With xp=jax.numpy it runs inside the jitted train step,
    so the host only crops and flips, and a quarter of the bytes reach the device (`raw=True` iterators)."""
    lr, hr = batch["lr"], batch["hr"]
    if lr.dtype == np.uint8:
        # Same arithmetic as the original (float32, then / 255).
        lr, hr = (x.astype(np.float32) / np.float32(255.0) for x in (lr, hr))
    if "colour" in batch:
        lr, hr = recolour_pair(lr, hr, batch["colour"], xp)
    return {"lr": lr, "hr": hr}


def augment_pair(lr: np.ndarray, hr: np.ndarray, flips: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-sample dihedral augmentation of square (B, h, w, C) batches, identical for LR and HR.

    flips[:, 0]: flip W (`img[:, ::-1]`), flips[:, 1]: flip H (`img[::-1]`), flips[:, 2]: transpose H↔W, applied
    in that order as the original's `augment`; the 8 combinations are the 8 dihedral transforms.
    """
    out = []
    for batch in (lr, hr):
        batch = batch.copy()
        w_flip, h_flip, transpose = flips[:, 0], flips[:, 1], flips[:, 2]
        batch[w_flip] = batch[w_flip, :, ::-1]
        batch[h_flip] = batch[h_flip, ::-1]
        batch[transpose] = batch[transpose].transpose(0, 2, 1, 3)
        out.append(batch)
    return out[0], out[1]


def _produce(next_batch: Callable[[], dict[str, np.ndarray]], out: queue.Queue, stop: threading.Event) -> None:
    """Prefetch thread body; holds no reference to the iterator, so dropping the iterator stops it."""

    def put(item: Any) -> None:
        while not stop.is_set():
            try:
                out.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    try:
        while not stop.is_set():
            put(next_batch())
    except BaseException as err:  # Hand the failure to the consumer instead of dying silently.
        put(err)


class TrainIterator:
    """Iterator of numpy batches {'lr', 'hr'} (raw: see `finish_batch`); a background thread keeps `prefetch`
    batches ready."""

    def __init__(self, sampler: _Sampler, prefetch: int, raw: bool = False):
        self.sampler = sampler
        self._next_batch = sampler.next_batch if raw else lambda: finish_batch(sampler.next_batch())
        self._queue: queue.Queue | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if prefetch > 0:
            self._queue = queue.Queue(maxsize=prefetch)
            self._thread = threading.Thread(
                target=_produce, args=(self._next_batch, self._queue, self._stop), name="classsr-input", daemon=True
            )
            self._thread.start()

    def __iter__(self) -> TrainIterator:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        if self._queue is None:
            return self._next_batch()
        if self._stop.is_set():
            raise StopIteration
        item = self._queue.get()
        if isinstance(item, BaseException):
            self.close()
            raise item
        return item

    def close(self) -> None:
        """Stops the prefetch thread (also done when the iterator is garbage-collected)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __del__(self) -> None:
        self._stop.set()


def _check_pipeline_arguments(batch_size: int, scale: int, lr_patch: int, prefetch: int) -> None:
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if scale < 1 or int(scale) != scale:
        raise ValueError(f"scale must be a positive integer, got {scale!r}")
    if lr_patch < 1:
        raise ValueError(f"lr_patch must be positive, got {lr_patch}")
    if prefetch < 0:
        raise ValueError(f"prefetch must be >= 0, got {prefetch}")


def _division_draws(division: Division | None, class_filter: int | None, scale: int, lr_patch: int,
                    process_index: int, process_count: int, describe: str
                    ) -> tuple[dict[int, np.ndarray] | None, np.ndarray | None]:
    """(LR tile corners per image, this process's images that have some) for draws restricted to a division's
    grid tiles (of one class with `class_filter`); (None, None) to draw anywhere."""
    if class_filter is not None and division is None:
        raise ValueError("class_filter needs the division it refers to (division=load_division(path))")
    if division is None:
        return None, None
    if division.scale != scale or division.lr_tile != lr_patch:
        raise ValueError(
            f"division was made for scale {division.scale}, tile {division.lr_tile}; "
            f"this pipeline uses scale {scale}, tile {lr_patch}"
        )
    if class_filter is not None:
        positions = division.positions_of_class(class_filter)
    else:
        positions = {}
        for image in np.unique(division.image_index):
            rows = division.image_index == image
            positions[int(image)] = np.stack([division.y[rows], division.x[rows]], axis=1).astype(np.int32)
    mine = shard_indices(len(division.names), process_index, process_count)
    wanted = mine[np.isin(mine, np.fromiter(positions.keys(), np.int64, len(positions)))]
    if wanted.size == 0:
        raise DataError(f"{describe} has no image with tiles to draw (shard of {mine.size} images)")
    return positions, wanted


def create_train_iterator(
    dataset: tf.data.Dataset | Iterable[Any],
    *,
    batch_size: int,
    scale: int,
    lr_patch: int = LR_PATCH,
    seed: int,
    process_index: int = 0,
    process_count: int = 1,
    class_filter: int | None = None,
    division: Division | None = None,
    prefetch: int = 2,
    cache_bytes: int = 4 << 30,
    crops_per_decode: int = 256,
    colour: ColourAugment | None = None,
    raw: bool = False,
) -> TrainIterator:
    """Endless iterator of training batches {'lr': float32 (B, p, p, 3), 'hr': float32 (B, p·s, p·s, 3)} in [0, 1].

    Args:
      dataset: tf.data dataset of {'hr', 'lr'[, 'name']} (uint8 images or encoded PNG bytes) or of (lr, hr)
        tuples, or a list of (hr, lr) uint8 pairs or such dicts (tuples may be in either order: HR is the larger);
        hr must be exactly scale × lr.
      batch_size: this process's share of the global batch.
      scale: SR factor.
      lr_patch: LR tile side (32 in the paper); HR tiles are lr_patch · scale.
      seed: the same seed (and process_index) gives the same batches.
      process_index, process_count: multi-host sharding; image i goes to process i % process_count.
      class_filter: with `division`, draw only the grid tiles of this class (0 simple, 1 medium, 2 hard).
      division: from `datasets.division.divide` on this same dataset; alone it restricts draws to grid tiles.
      prefetch: batches prepared ahead by a background thread (0: on demand, in the caller's thread).
      cache_bytes: decoded images kept in memory; a larger share streams through a pool of this size.
      crops_per_decode: when streaming, about how many tiles each decoded image yields before it is replaced.
      colour: colour augmentation of every tile pair (default: none).
      raw: yield the tiles as uint8 and each pair's colour matrix, for `finish_batch` to finish on the device
        (the training loop's batches); by default they are finished here.
    """
    _check_pipeline_arguments(batch_size, scale, lr_patch, prefetch)
    describe = (f"process {process_index} of {process_count}"
                + (f", class {class_filter}" if class_filter is not None else ""))
    positions, wanted = _division_draws(division, class_filter, scale, lr_patch, process_index, process_count, describe)
    seeds = np.random.SeedSequence([int(seed), int(process_index)])
    rng = np.random.default_rng(seeds)
    # The colours come from their own stream, so turning them on leaves every crop and flip as it was.
    colour_rng = np.random.default_rng(seeds.spawn(1)[0])
    source = _Source(dataset, wanted, process_index, process_count)
    sampler = _Sampler(
        source, batch_size=batch_size, scale=int(scale), lr_patch=lr_patch, rng=rng, positions=positions,
        division_names=division.names if division is not None else None, cache_bytes=cache_bytes,
        crops_per_decode=crops_per_decode, describe=describe,
        colour=colour if colour is not None else ColourAugment(), colour_rng=colour_rng,
    )
    return TrainIterator(sampler, prefetch, raw)
