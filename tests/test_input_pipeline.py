"""Training input pipeline: alignment, dihedral augmentation, determinism, sharding, class filtering, streaming."""

import itertools

import numpy as np
import pytest
import tensorflow as tf

from classsr_jax.datasets.division import Division, tile_grid
from classsr_jax.datasets.files import DataError
from classsr_jax.input_pipeline import augment_pair, create_train_iterator, shard_indices

SCALE = 2
P = 32


def coded_image(image_id: int, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """LR whose pixel (y, x) is (y, x, id), and HR = LR repeated SCALE times (nearest upscaling).

    Any aligned crop of HR then equals the repeated LR crop, under any flip or transpose applied to both."""
    yy, xx = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    lr = np.stack([yy, xx, np.full_like(yy, image_id)], axis=-1).astype(np.uint8)
    hr = np.repeat(np.repeat(lr, SCALE, axis=0), SCALE, axis=1)
    return hr, lr


SIZES = [(40, 50), (33, 64), (48, 48), (32, 40), (60, 35), (36, 36), (45, 70)]


def coded_dataset(sizes=SIZES):
    return [{"name": f"img{i}", **dict(zip(("hr", "lr"), coded_image(i, h, w)))} for i, (h, w) in enumerate(sizes)]


def take(iterator, n):
    batches = list(itertools.islice(iterator, n))
    iterator.close()
    return batches


def to_uint8(batch):
    return np.rint(batch["lr"] * 255).astype(np.uint8), np.rint(batch["hr"] * 255).astype(np.uint8)


def undo(tile, flags):
    """Inverse of the original's augment (flip W, flip H, transpose, in that order)."""
    w_flip, h_flip, transpose = flags
    if transpose:
        tile = tile.transpose(1, 0, 2)
    if h_flip:
        tile = tile[::-1]
    if w_flip:
        tile = tile[:, ::-1]
    return tile


def identify(lr_tile, images):
    """(image id, y, x, flags) of the one dihedral transform that maps a source crop onto this tile."""
    matches = []
    for flags in itertools.product((False, True), repeat=3):
        source = undo(lr_tile, flags)
        image_id, y, x = int(source[0, 0, 2]), int(source[0, 0, 0]), int(source[0, 0, 1])
        lr = images[image_id]["lr"]
        if y + P <= lr.shape[0] and x + P <= lr.shape[1] and np.array_equal(source, lr[y : y + P, x : x + P]):
            matches.append((image_id, y, x, flags))
    assert len(matches) == 1, f"tile is not one dihedral transform of one crop: {matches}"
    return matches[0]


def test_batches_have_exact_shapes_dtypes_and_values():
    batch = take(create_train_iterator(coded_dataset(), batch_size=5, scale=SCALE, seed=0), 1)[0]
    assert set(batch) == {"lr", "hr"}
    assert batch["lr"].shape == (5, 32, 32, 3) and batch["hr"].shape == (5, 64, 64, 3)
    assert batch["lr"].dtype == np.float32 and batch["hr"].dtype == np.float32
    lr_u8, _ = to_uint8(batch)
    np.testing.assert_array_equal(batch["lr"], lr_u8.astype(np.float32) / np.float32(255))  # exact /255
    assert 0.0 <= batch["lr"].min() and batch["hr"].max() <= 1.0


def test_crops_are_aligned_and_augmented_identically():
    images = coded_dataset()
    counts = dict.fromkeys(itertools.product((False, True), repeat=3), 0)
    for batch in take(create_train_iterator(images, batch_size=64, scale=SCALE, seed=3), 40):
        lr, hr = to_uint8(batch)
        np.testing.assert_array_equal(hr, np.repeat(np.repeat(lr, SCALE, axis=1), SCALE, axis=2))
        for tile in lr:
            counts[identify(tile, images)[3]] += 1
    # 2560 draws, each of the 8 transforms with p = 1/8 (expected 320, sd ≈ 17).
    assert sum(counts.values()) == 2560
    assert all(250 < c < 390 for c in counts.values()), counts


def test_augment_pair_order_matches_the_original():
    tile = np.arange(2 * 2 * 1, dtype=np.uint8).reshape(1, 2, 2, 1)  # [[0, 1], [2, 3]]
    cases = {
        (True, False, False): [[1, 0], [3, 2]],  # flip W
        (False, True, False): [[2, 3], [0, 1]],  # flip H
        (False, False, True): [[0, 2], [1, 3]],  # transpose
        (True, False, True): [[1, 3], [0, 2]],  # flip W then transpose
        (True, True, True): [[3, 1], [2, 0]],
    }
    for flags, expected in cases.items():
        lr, hr = augment_pair(tile, tile * 10, np.array([flags]))
        assert lr[0, :, :, 0].tolist() == expected
        assert (hr[0, :, :, 0] // 10).tolist() == expected


def test_positions_are_uniform_over_all_tiles_of_all_images():
    # Image 0 offers 2x2 = 4 positions, image 1 offers 49x49 = 2401: draws follow that 4 : 2401 ratio.
    images = coded_dataset([(33, 33), (80, 80)])
    seen = []
    for batch in take(create_train_iterator(images, batch_size=100, scale=SCALE, seed=1), 30):
        seen += [identify(tile, images)[:3] for tile in to_uint8(batch)[0]]
    from_small = sum(1 for image_id, _, _ in seen if image_id == 0)
    assert 0 < from_small < 15  # expected 3000 * 4 / 2405 ≈ 5
    ys = [y for image_id, y, _ in seen if image_id == 1]
    assert min(ys) == 0 and max(ys) == 48  # the full range of valid corners is reached


def test_same_seed_same_batches_whatever_the_prefetch():
    first = take(create_train_iterator(coded_dataset(), batch_size=8, scale=SCALE, seed=42, prefetch=0), 6)
    second = take(create_train_iterator(coded_dataset(), batch_size=8, scale=SCALE, seed=42, prefetch=3), 6)
    other = take(create_train_iterator(coded_dataset(), batch_size=8, scale=SCALE, seed=43), 6)
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a["lr"], b["lr"])
        np.testing.assert_array_equal(a["hr"], b["hr"])
    assert not all(np.array_equal(a["lr"], c["lr"]) for a, c in zip(first, other))


@pytest.mark.parametrize("count", [1, 2, 3, 5])
def test_shard_indices_are_disjoint_and_complete(count):
    for n in range(0, 23):
        shards = [shard_indices(n, p, count) for p in range(count)]
        joined = np.sort(np.concatenate(shards))
        np.testing.assert_array_equal(joined, np.arange(n))  # complete, and no index twice
        sizes = [len(s) for s in shards]
        assert max(sizes) - min(sizes) <= 1


def test_shard_indices_rejects_bad_process_index():
    with pytest.raises(ValueError) as info:
        shard_indices(10, 3, 3)
    assert str(info.value) == "process_index must be in [0, 3), got 3"


def test_each_process_draws_exactly_its_own_images():
    images = coded_dataset()
    seen_by_process = []
    for process in range(3):
        iterator = create_train_iterator(
            images, batch_size=16, scale=SCALE, seed=0, process_index=process, process_count=3
        )
        seen = set()
        for batch in take(iterator, 25):
            seen |= {identify(tile, images)[0] for tile in to_uint8(batch)[0]}
        seen_by_process.append(seen)
    assert seen_by_process == [{0, 3, 6}, {1, 4}, {2, 5}]


def make_division(images, labels_fn):
    rows = []
    for index, image in enumerate(images):
        for y, x in tile_grid(*image["lr"].shape[:2]):
            rows.append((index, y, x, labels_fn(index, y, x)))
    rows = np.array(rows)
    return Division(
        names=tuple(image["name"] for image in images),
        image_index=rows[:, 0].astype(np.int32),
        y=rows[:, 1].astype(np.int32),
        x=rows[:, 2].astype(np.int32),
        psnr=np.zeros(len(rows), np.float32),
        label=rows[:, 3].astype(np.int8),
        thresholds=(1.0, 2.0),
        scale=SCALE,
    )


def test_class_filter_draws_only_that_class_at_its_grid_positions():
    images = coded_dataset()
    # Class by position: (y // 16 + x // 16) % 3, so every image holds tiles of several classes.
    division = make_division(images, lambda i, y, x: (y // 16 + x // 16) % 3)
    wanted = {
        (int(i), int(y), int(x))
        for i, y, x, k in zip(division.image_index, division.y, division.x, division.label)
        if k == 1
    }
    iterator = create_train_iterator(images, batch_size=32, scale=SCALE, seed=5, class_filter=1, division=division)
    drawn = set()
    flips = set()
    for batch in take(iterator, 30):
        lr, hr = to_uint8(batch)
        np.testing.assert_array_equal(hr, np.repeat(np.repeat(lr, SCALE, axis=1), SCALE, axis=2))
        for tile in lr:
            image_id, y, x, flags = identify(tile, images)
            drawn.add((image_id, y, x))
            flips.add(flags)
    assert drawn == wanted  # only class-1 tiles, and (with 960 draws over 10 tiles) all of them
    assert len(flips) == 8  # still augmented


def test_division_alone_restricts_draws_to_grid_tiles():
    images = coded_dataset([(45, 40)])  # grid: y in {0, 13}, x in {0}
    division = make_division(images, lambda i, y, x: 0)
    drawn = set()
    for batch in take(create_train_iterator(images, batch_size=16, scale=SCALE, seed=0, division=division), 5):
        drawn |= {identify(tile, images)[:3] for tile in to_uint8(batch)[0]}
    assert drawn == {(0, 0, 0), (0, 13, 0)}


def test_division_for_another_dataset_is_refused():
    images = coded_dataset()
    division = make_division(list(reversed(images)), lambda i, y, x: 0)
    with pytest.raises(DataError) as info:
        create_train_iterator(images, batch_size=4, scale=SCALE, seed=0, class_filter=0, division=division)
    assert str(info.value) == (
        "example 0 is 'img0' but the division has 'img6' there; "
        "divide the same dataset (same config and split) that you train on"
    )


def tf_dataset(images, encode=False):
    def generate():
        for image in images:
            yield {"name": image["name"], "hr": image["hr"], "lr": image["lr"]}

    spec = tf.TensorSpec((None, None, 3), tf.uint8)
    ds = tf.data.Dataset.from_generator(
        generate, output_signature={"name": tf.TensorSpec((), tf.string), "hr": spec, "lr": spec}
    )
    if encode:
        ds = ds.map(lambda ex: {"name": ex["name"], "hr": tf.io.encode_png(ex["hr"]), "lr": tf.io.encode_png(ex["lr"])})
    return ds


@pytest.mark.parametrize("encode", [False, True])
def test_tf_data_input_gives_the_same_batches_as_a_list(encode):
    images = coded_dataset()
    kwargs = {"batch_size": 8, "scale": SCALE, "seed": 9, "process_index": 1, "process_count": 2}
    from_list = take(create_train_iterator(images, **kwargs), 4)
    from_tf = take(create_train_iterator(tf_dataset(images, encode), **kwargs), 4)
    for a, b in zip(from_list, from_tf):
        np.testing.assert_array_equal(a["lr"], b["lr"])
        np.testing.assert_array_equal(a["hr"], b["hr"])


def test_streaming_pool_turns_over_every_image_deterministically():
    images = coded_dataset()

    def run():
        iterator = create_train_iterator(
            tf_dataset(images), batch_size=16, scale=SCALE, seed=2, cache_bytes=1, crops_per_decode=16
        )
        assert not iterator.sampler.cached and len(iterator.sampler.pool) == 1
        return take(iterator, 30)

    first, second = run(), run()
    seen = set()
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a["lr"], b["lr"])
        seen |= {identify(tile, images)[0] for tile in to_uint8(a)[0]}
    assert seen == set(range(len(images)))


def test_whole_share_is_cached_when_it_fits():
    iterator = create_train_iterator(coded_dataset(), batch_size=4, scale=SCALE, seed=0)
    assert iterator.sampler.cached and len(iterator.sampler.pool) == len(SIZES)
    iterator.close()


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"batch_size": 0}, ValueError, "batch_size must be positive, got 0"),
        ({"class_filter": 1}, ValueError, "class_filter needs the division it refers to (division=load_division(path))"),
        ({"process_index": 2, "process_count": 2}, ValueError, "process_index must be in [0, 2), got 2"),
    ],
)
def test_bad_arguments_are_one_line_errors(kwargs, error, message):
    with pytest.raises(error) as info:
        create_train_iterator(coded_dataset(), **{"batch_size": 4, "scale": SCALE, "seed": 0, **kwargs})
    assert str(info.value) == message


def test_bad_data_is_a_one_line_error():
    bad = [(np.zeros((64, 60, 3), np.uint8), np.zeros((32, 32, 3), np.uint8))]
    with pytest.raises(DataError) as info:
        create_train_iterator(bad, batch_size=4, scale=SCALE, seed=0)
    assert str(info.value) == "example 0: hr (64, 60) is not 2 x lr (32, 32)"
    small = [coded_image(0, 20, 40)]
    with pytest.raises(DataError) as info:
        create_train_iterator(small, batch_size=4, scale=SCALE, seed=0)
    assert str(info.value) == "process 0 of 1 has no usable image (1 skipped)"
