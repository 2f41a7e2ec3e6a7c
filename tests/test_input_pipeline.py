"""Training input pipeline: alignment, dihedral augmentation, determinism, sharding, class filtering, streaming."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf

from classsr_jax.data.bicubic import bicubic_degrade, imresize
from classsr_jax.data.colour_augment import CHANNEL_PERMUTATIONS, ColourAugment, colour_matrices, recolour_pair
from classsr_jax.data.division import Division, tile_grid
from classsr_jax.data.input_pipeline import augment_pair, create_train_iterator, finish_batch, shard_indices
from classsr_jax.errors import ConfigError, DataError
from classsr_jax.training.configuration import validate_config
from configs import fsrcnn, quickstart

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
        ({"class_filter": 1}, ValueError,
         "class_filter needs the division it refers to (division=load_division(path))"),
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


# ------------------------------------------------------------------------------------------ colour augmentation

COLOURS = ColourAugment(permute_channels=True, hue_degrees=180.0, saturation=0.5)


def smooth_colour_photo(seed: int, size: int = 128) -> np.ndarray:
    """A saturated but smooth uint8 photo with values in [30, 220], so its bicubic LR is never clipped."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(30, 220, size=(size // 16, size // 16, 3))
    return np.clip(np.rint(imresize(coarse, scale=16)), 30, 220).astype(np.uint8)


def colour_dataset():
    return [(hr, bicubic_degrade(hr, 4)) for hr in (smooth_colour_photo(seed) for seed in range(3))]


def rotation_reference(rgb: np.ndarray, degrees: float) -> np.ndarray:
    """Turns the colour part of rgb (its offset from the channel mean) in the plane orthogonal to grey, written
    in the orthonormal basis u = (1, −1, 0)/√2, v = (1, 1, −2)/√6 of that plane (u × v points along grey)."""
    u = np.array([1.0, -1.0, 0.0]) / np.sqrt(2)
    v = np.array([1.0, 1.0, -2.0]) / np.sqrt(6)
    mean = rgb.mean(axis=-1, keepdims=True)
    a, b = (rgb - mean) @ u, (rgb - mean) @ v
    c, s = np.cos(np.deg2rad(degrees)), np.sin(np.deg2rad(degrees))
    return mean + np.outer(a * c - b * s, u) + np.outer(a * s + b * c, v)


def test_colour_matrices_match_numpy_references():
    rgb = np.random.default_rng(0).uniform(0, 1, size=(50, 3))
    # Channel orders: output channel c is input channel CHANNEL_PERMUTATIONS[k][c].
    for k in range(6):
        m = colour_matrices(np.array([k]), np.zeros(1), np.ones(1))[0]
        np.testing.assert_array_equal(rgb @ m.T, rgb[:, CHANNEL_PERMUTATIONS[k]])
    assert CHANNEL_PERMUTATIONS[0].tolist() == [0, 1, 2]
    assert sorted(map(tuple, CHANNEL_PERMUTATIONS.tolist())) == sorted(itertools.permutations(range(3)))
    for degrees in (-150.0, -20.0, 37.5, 90.0, 179.0):
        m = colour_matrices(np.zeros(1, int), np.array([degrees]), np.ones(1))[0]
        np.testing.assert_allclose(rgb @ m.T, rotation_reference(rgb, degrees), atol=1e-12)
    # A turn by 120° is the cycle red → green → blue; grey stays grey.
    m = colour_matrices(np.zeros(1, int), np.array([120.0]), np.ones(1))[0]
    np.testing.assert_allclose(m, [[0, 0, 1], [1, 0, 0], [0, 1, 0]], atol=1e-12)
    # Saturation scales the offset from the channel mean; the three compose as S · R · P.
    mean = rgb.mean(axis=1, keepdims=True)
    m = colour_matrices(np.array([3]), np.array([37.5]), np.array([0.6]))[0]
    rotated = rotation_reference(rgb[:, CHANNEL_PERMUTATIONS[3]], 37.5)
    np.testing.assert_allclose(rgb @ m.T, mean + 0.6 * (rotated - mean), atol=1e-12)


def test_recolour_pair_pulls_a_pair_back_into_range_by_one_factor():
    # Saturated red, turned by 60°, leaves [0, 1] (blue would become negative): the pair's colour is scaled
    # toward grey by the largest t that keeps both tiles in range, the same t for LR and HR.
    hr = np.zeros((1, 8, 8, 3), np.float32)
    hr[..., 0] = 0.9
    hr[..., 1:] = 0.1
    lr = hr[:, ::4, ::4].copy()
    lr[0, 0, 0] = [0.5, 0.5, 0.5]  # a grey pixel stays grey
    m = colour_matrices(np.zeros(1, int), np.array([60.0]), np.ones(1))
    out_lr, out_hr = recolour_pair(lr, hr, m)
    turned = rotation_reference(np.array([[0.9, 0.1, 0.1]]), 60.0)[0]
    mean = np.float64(1.1 / 3)
    t = min((mean - 0) / (mean - turned.min()), (1 - mean) / (turned.max() - mean), 1.0)
    assert t < 1
    np.testing.assert_allclose(out_hr[0, 3, 5], mean + t * (turned - mean), atol=1e-6)
    np.testing.assert_allclose(out_lr[0, 1, 1], mean + t * (turned - mean), atol=1e-6)
    np.testing.assert_allclose(out_lr[0, 0, 0], [0.5, 0.5, 0.5], atol=1e-6)
    assert out_hr.min() < 1e-6  # the bound is reached: blue is at 0
    # A turn that stays in range is applied as it is.
    m = colour_matrices(np.array([5]), np.zeros(1), np.ones(1))
    out_lr, out_hr = recolour_pair(lr, hr, m)
    np.testing.assert_array_equal(out_hr, hr[..., CHANNEL_PERMUTATIONS[5]])
    np.testing.assert_array_equal(out_lr, lr[..., CHANNEL_PERMUTATIONS[5]])


def test_recoloured_lr_is_the_bicubic_of_the_recoloured_hr():
    # Every tile is a whole 128x128 photo (lr_patch 32 at x4), so the MATLAB bicubic of the pipeline's HR tile
    # must give its LR tile, up to the LR's original rounding to uint8 (0.5 level, times the matrix's gain).
    data = colour_dataset()
    plain = take(create_train_iterator(data, batch_size=16, scale=4, seed=5), 4)
    coloured = take(create_train_iterator(data, batch_size=16, scale=4, seed=5, colour=COLOURS), 4)
    pulled = changed = 0
    for off, on in zip(plain, coloured):
        for k in range(16):
            lr, hr = on["lr"][k].astype(np.float64) * 255, on["hr"][k].astype(np.float64) * 255
            assert np.abs(imresize(hr, scale=1 / 4) - lr).max() <= 1.0
            # The same crop and flips as without colours: the channel mean of every pixel is kept.
            np.testing.assert_allclose(on["hr"][k].mean(axis=-1), off["hr"][k].mean(axis=-1), atol=2e-6)
            np.testing.assert_allclose(on["lr"][k].mean(axis=-1), off["lr"][k].mean(axis=-1), atol=2e-6)
            changed += np.abs(on["hr"][k] - off["hr"][k]).max() > 20 / 255
            # Sources stay in [30, 220]: only a pulled pair lands on 0 or 255 (up to float rounding).
            pulled += hr.min() < 1e-3 or hr.max() > 255 - 1e-3
    assert changed > 48 and pulled > 0


def test_colour_augmentation_is_deterministic_per_seed():
    data = colour_dataset()
    first = take(create_train_iterator(data, batch_size=8, scale=4, seed=11, colour=COLOURS, prefetch=0), 3)
    second = take(create_train_iterator(data, batch_size=8, scale=4, seed=11, colour=COLOURS, prefetch=2), 3)
    other = take(create_train_iterator(data, batch_size=8, scale=4, seed=12, colour=COLOURS), 3)
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a["lr"], b["lr"])
        np.testing.assert_array_equal(a["hr"], b["hr"])
    assert not any(np.array_equal(a["hr"], c["hr"]) for a, c in zip(first, other))


def test_raw_batches_are_the_uint8_tiles_and_colours_that_finish_into_the_float_batches():
    """The training loop's raw batches carry a quarter of the bytes; finished on the host (numpy) they are the
    default batches exactly, and inside a jitted program (jax.numpy) equal up to float32 rounding."""
    data = colour_dataset()
    finished = take(create_train_iterator(data, batch_size=8, scale=4, seed=11, colour=COLOURS, prefetch=0), 3)
    raw = take(create_train_iterator(data, batch_size=8, scale=4, seed=11, colour=COLOURS, prefetch=2, raw=True), 3)
    on_device = jax.jit(lambda batch: finish_batch(batch, jnp))
    for f, r in zip(finished, raw):
        assert (r["lr"].dtype, r["hr"].dtype, r["colour"].dtype) == (np.uint8, np.uint8, np.float32)
        assert (r["lr"].shape, r["hr"].shape, r["colour"].shape) == ((8, 32, 32, 3), (8, 128, 128, 3), (8, 3, 3))
        host = finish_batch(r)
        np.testing.assert_array_equal(host["lr"], f["lr"])
        np.testing.assert_array_equal(host["hr"], f["hr"])
        device = on_device(r)
        np.testing.assert_allclose(device["lr"], f["lr"], atol=2e-6)
        np.testing.assert_allclose(device["hr"], f["hr"], atol=2e-6)
    plain = next(create_train_iterator(data, batch_size=8, scale=4, seed=11, prefetch=0, raw=True))
    assert sorted(plain) == ["hr", "lr"]  # no colour matrices when colour augmentation is off
    passed = finish_batch(finished[0])  # float tiles without colours pass through untouched
    assert passed["lr"] is finished[0]["lr"] and passed["hr"] is finished[0]["hr"]


def test_colour_probability_recolours_that_share_of_the_pairs():
    data = colour_dataset()
    half = ColourAugment(permute_channels=True, hue_degrees=180.0, probability=0.5)
    plain = take(create_train_iterator(data, batch_size=100, scale=4, seed=8), 2)
    coloured = take(create_train_iterator(data, batch_size=100, scale=4, seed=8, colour=half), 2)
    kept = [np.array_equal(a["hr"][k], b["hr"][k]) for a, b in zip(plain, coloured) for k in range(100)]
    assert 70 < sum(kept) < 130  # 200 pairs, each kept with p = 1/2 (sd ≈ 7); a recoloured one never matches
    assert not ColourAugment(permute_channels=True, probability=0.0).enabled


def test_colour_augmentation_is_off_by_default_and_in_the_paper_configs():
    assert not ColourAugment().enabled
    assert not ColourAugment(**fsrcnn.get_config().data.colour_augment).enabled
    assert ColourAugment(**quickstart.get_config().data.colour_augment).enabled
    data = colour_dataset()
    default = take(create_train_iterator(data, batch_size=8, scale=4, seed=3), 2)
    off = take(create_train_iterator(data, batch_size=8, scale=4, seed=3, colour=ColourAugment()), 2)
    for a, b in zip(default, off):
        np.testing.assert_array_equal(a["hr"], b["hr"])
        # Not recoloured: exactly the photo's uint8 values / 255.
        np.testing.assert_array_equal(a["hr"], np.rint(a["hr"] * 255).astype(np.float32) / np.float32(255))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"hue_degrees": 200.0}, "hue jitter must be in [0, 180] degrees, got 200.0"),
        ({"saturation": -0.1}, "saturation jitter must be in [0, 1], got -0.1"),
        ({"probability": 1.5}, "colour augmentation probability must be in [0, 1], got 1.5"),
    ],
)
def test_bad_colour_settings_are_one_line_errors(kwargs, message):
    with pytest.raises(ValueError) as info:
        ColourAugment(**kwargs)
    assert str(info.value) == message


def test_a_bad_colour_setting_in_the_config_is_a_config_error():
    config = quickstart.get_config()
    config.data.colour_augment.hue_degrees = 270.0
    with pytest.raises(ConfigError) as info:
        validate_config(config)
    assert str(info.value) == "config field data.colour_augment: hue jitter must be in [0, 180] degrees, got 270.0"
