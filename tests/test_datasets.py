"""TFDS builders, image reading, the bundled photos and `load_dataset` on small synthetic folders."""

import logging
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from PIL import Image

from classsr_jax.data import builders, bundled, loading
from classsr_jax.data.bicubic import bicubic_degrade, imresize, modcrop
from classsr_jax.data.files import read_rgb_uint8
from classsr_jax.data.loading import crop_hr_to_lr
from classsr_jax.errors import DataError
from classsr_jax.io.pixels import to_uint8


def save(path: Path, array: np.ndarray, mode: str | None = None) -> np.ndarray:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode).save(path) if mode else Image.fromarray(array).save(path)
    return array


def noise(rng, shape):
    return rng.integers(0, 256, size=shape, dtype=np.uint8)


def manual_config(manual_dir):
    return {"download_config": tfds.download.DownloadConfig(manual_dir=str(manual_dir))}


def as_examples(ds):
    return [{k: (v.decode() if isinstance(v, bytes) else v) for k, v in ex.items()} for ex in ds.as_numpy_iterator()]


@pytest.fixture(scope="module")
def div2k_folder(tmp_path_factory):
    """A DIV2K-like manual dir with every kind of awkward file."""
    root = tmp_path_factory.mktemp("div2k_manual")
    rng = np.random.default_rng(0)
    photos = {
        "0001": save(root / "DIV2K_train_HR/0001.png", noise(rng, (70, 67, 3))),
        "0002": save(root / "DIV2K_train_HR/0002.png", noise(rng, (66, 80)), "L"),  # grayscale
        "0003": save(root / "DIV2K_train_HR/0003.png", noise(rng, (64, 64, 4)), "RGBA"),
        "0801": save(root / "DIV2K_valid_HR/0801.png", noise(rng, (68, 72, 3))),
    }
    save(root / "DIV2K_train_HR/0005.png", noise(rng, (60, 90, 3)))  # smaller than one x2 HR tile (64)
    good = (root / "DIV2K_train_HR/0001.png").read_bytes()
    (root / "DIV2K_train_HR/0004.png").write_bytes(good[: len(good) // 2])  # truncated
    (root / "DIV2K_valid_HR/0802.png").write_bytes(b"not a png at all")
    save(root / "DIV2K_valid_HR/readme.png", noise(rng, (70, 70, 3)))  # not named by an index
    save(root / "extra/0950.png", noise(rng, (70, 70, 3)))  # DIV2K test index: in no split
    (root / "notes.txt").write_text("ignored: not an image extension")
    return root, photos


def test_builders_are_registered_with_scale_configs():
    for name in ("classsr_div2k", "classsr_div8k", "classsr_flickr2k", "classsr_folder", "classsr_bundled"):
        assert name in tfds.list_builders()
    configs = [c.name for c in builders.ClassSRDiv2k.BUILDER_CONFIGS]
    assert configs == ["x2", "x2_aug", "x3", "x3_aug", "x4", "x4_aug"]
    assert [c.scale for c in builders.ClassSRDiv2k.BUILDER_CONFIGS] == [2, 2, 3, 3, 4, 4]


def test_div2k_x2_builds_pairs_skips_bad_files_and_splits_by_index(div2k_folder, tmp_path, caplog):
    root, photos = div2k_folder
    with caplog.at_level(logging.WARNING):
        train, info = tfds.load(
            "classsr_div2k/x2", split="train", data_dir=str(tmp_path), with_info=True,
            download_and_prepare_kwargs=manual_config(root),
        )
    examples = as_examples(train)
    assert [ex["name"] for ex in examples] == ["0001", "0002", "0003"]
    expected_rgb = {
        "0001": photos["0001"],
        "0002": np.repeat(photos["0002"][:, :, None], 3, axis=2),  # gray replicated
        "0003": photos["0003"][:, :, :3],  # alpha dropped, not composited
    }
    for ex in examples:
        hr_expected = modcrop(expected_rgb[ex["name"]], 2)
        np.testing.assert_array_equal(ex["hr"], hr_expected)
        np.testing.assert_array_equal(ex["lr"], bicubic_degrade(hr_expected, 2))
        assert ex["hr"].shape[:2] == (2 * ex["lr"].shape[0], 2 * ex["lr"].shape[1])
    assert examples[0]["hr"].shape == (70, 66, 3) and examples[0]["lr"].shape == (35, 33, 3)

    validation = as_examples(tfds.load("classsr_div2k/x2", split="validation", data_dir=str(tmp_path)))
    assert [ex["name"] for ex in validation] == ["0801"]
    assert info.splits["train"].num_examples == 3 and info.splits["validation"].num_examples == 1

    skipped = info.metadata["skipped"]
    assert skipped["files"] == [
        ["DIV2K_valid_HR/readme.png", "not named by an index like 0801.png"],
        ["extra/0950.png", "index 950 is in no split"],
    ]
    assert skipped["train"] == [
        ["0004", "image file is truncated"],
        ["0005", "60x90 px is smaller than one HR tile (64 px)"],
    ]
    assert skipped["validation"] == [["0802", "not an image Pillow can identify"]]
    # The same summary reached the log, naming every file.
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "validation: 1 files skipped: 0802 (not an image Pillow can identify)" in logged
    assert "0005 (60x90 px is smaller than one HR tile (64 px))" in logged


def test_aug_config_adds_scaled_copies_to_train_only(tmp_path):
    rng = np.random.default_rng(1)
    photo = save(tmp_path / "manual/0007.png", noise(rng, (110, 100, 3)))
    save(tmp_path / "manual/0850.png", noise(rng, (70, 70, 3)))
    train, info = tfds.load(
        "classsr_div2k/x2_aug", split="train", data_dir=str(tmp_path / "data"), with_info=True,
        download_and_prepare_kwargs=manual_config(tmp_path / "manual"),
    )
    examples = as_examples(train)
    # 0.6 x 100 = 60 px < 64: that copy is skipped and reported, the others are kept.
    assert [ex["name"] for ex in examples] == ["1_0007", "0.9_0007", "0.8_0007", "0.7_0007"]
    assert [ex["hr"].shape[:2] for ex in examples] == [(110, 100), (98, 90), (88, 80), (76, 70)]
    copy_09 = modcrop(to_uint8(imresize(photo, 0.9), 255.0), 2)  # 99x90 -> modcrop -> 98x90
    np.testing.assert_array_equal(examples[1]["hr"], copy_09)
    np.testing.assert_array_equal(examples[1]["lr"], bicubic_degrade(copy_09, 2))
    np.testing.assert_array_equal(examples[0]["hr"], photo)
    assert info.metadata["skipped"]["train"] == [["0.6_0007", "66x60 px is smaller than one HR tile (64 px)"]]
    validation = as_examples(tfds.load("classsr_div2k/x2_aug", split="validation", data_dir=str(tmp_path / "data")))
    assert [ex["name"] for ex in validation] == ["0850"]


def test_missing_manual_dir_is_a_one_line_instruction(tmp_path):
    with pytest.raises(DataError) as info:
        tfds.load(
            "classsr_div2k/x4", split="train", data_dir=str(tmp_path / "data"),
            download_and_prepare_kwargs=manual_config(tmp_path / "nowhere"),
        )
    assert str(info.value) == (
        f"classsr_div2k: manual dir {tmp_path / 'nowhere'} is missing or empty; put the DIV2K HR PNGs "
        "0001.png … 0900.png (e.g. the folders DIV2K_train_HR/ and DIV2K_valid_HR/) in it and pass "
        "download_and_prepare_kwargs={'download_config': tfds.download.DownloadConfig(manual_dir=DIR)}"
    )


def test_manual_dir_without_usable_images_names_the_folder(tmp_path):
    save(tmp_path / "manual/holiday.png", noise(np.random.default_rng(2), (80, 80, 3)))
    with pytest.raises(DataError) as info:
        tfds.load(
            "classsr_div8k/x2", split="train", data_dir=str(tmp_path / "data"),
            download_and_prepare_kwargs=manual_config(tmp_path / "manual"),
        )
    assert str(info.value) == (
        f"classsr_div8k: no usable images under {tmp_path / 'manual'}; expected the DIV8K HR PNGs 0001.png … 1500.png"
    )


def test_folder_builder_uses_a_validation_subfolder(tmp_path):
    rng = np.random.default_rng(3)
    save(tmp_path / "manual/b.jpg", noise(rng, (64, 64, 3)))
    save(tmp_path / "manual/a.png", noise(rng, (64, 70, 3)))
    save(tmp_path / "manual/trip/a.png", noise(rng, (66, 64, 3)))
    save(tmp_path / "manual/validation/c.png", noise(rng, (64, 64, 3)))
    kwargs = {"data_dir": str(tmp_path / "data"), "download_and_prepare_kwargs": manual_config(tmp_path / "manual")}
    train = as_examples(tfds.load("classsr_folder/x2", split="train", **kwargs))
    validation = as_examples(tfds.load("classsr_folder/x2", split="validation", **kwargs))
    assert [ex["name"] for ex in train] == ["a", "b", "trip/a"]
    assert [ex["name"] for ex in validation] == ["validation/c"]


def test_folder_builder_without_validation_subfolder_has_only_train(tmp_path):
    save(tmp_path / "manual/000001.png", noise(np.random.default_rng(4), (64, 64, 3)))
    builder = tfds.builder("classsr_flickr2k/x2", data_dir=str(tmp_path / "data"))
    builder.download_and_prepare(**manual_config(tmp_path / "manual"))
    assert list(builder.info.splits.keys()) == ["train"]
    assert builder.info.splits["train"].num_examples == 1


def test_read_rgb_uint8_converts_modes(tmp_path):
    deep = np.array([[0, 257, 65535], [514, 1000, 30000]], dtype=np.uint16)
    Image.fromarray(deep).save(tmp_path / "deep.png")
    np.testing.assert_array_equal(read_rgb_uint8(tmp_path / "deep.png")[:, :, 1], [[0, 1, 255], [2, 4, 117]])
    palette = Image.fromarray(np.array([[0, 1], [1, 0]], np.uint8), "P")
    palette.putpalette([10, 20, 30, 200, 100, 50] + [0] * 762)
    palette.save(tmp_path / "palette.png")
    np.testing.assert_array_equal(read_rgb_uint8(tmp_path / "palette.png")[0], [[10, 20, 30], [200, 100, 50]])
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n")
    with pytest.raises(DataError) as info:
        read_rgb_uint8(tmp_path / "bad.png")
    assert str(info.value) == f"cannot read image {tmp_path / 'bad.png'}: not an image Pillow can identify"


def test_bundled_photos_are_colour_photos_in_fixed_disjoint_splits():
    train = bundled.bundled_photos("train")
    validation = bundled.bundled_photos("validation")
    assert [n for n, _ in train] == [
        "astronaut", "hubble_deep_field", "ihc", "motorcycle_left", "motorcycle_right", "retina", "rocket"
    ]
    assert [n for n, _ in validation] == ["chelsea", "coffee"]
    shapes = {name: photo.shape for name, photo in train + validation}
    assert shapes["chelsea"] == (300, 451, 3) and shapes["coffee"] == (400, 600, 3)
    assert shapes["retina"] == (1411, 1411, 3) and shapes["astronaut"] == (512, 512, 3)
    for _, photo in train + validation:
        assert photo.dtype == np.uint8
        # A real colour photo: the channels are not copies of each other.
        assert np.mean(photo[:, :, 0] != photo[:, :, 1]) > 0.3
    with pytest.raises(ValueError) as info:
        bundled.bundled_photos("test")
    assert str(info.value) == (
        "unknown bundled split 'test'; expected one of "
        "['colorwheel', 'grey', 'train', 'validation', 'validation_hue', 'validation_permuted']"
    )


def test_bundled_grey_split_holds_the_grey_photos_as_rgb():
    grey = bundled.bundled_photos("grey")
    assert [n for n, _ in grey] == ["camera", "brick", "coins", "grass", "gravel", "moon", "page", "text"]
    shapes = {name: photo.shape for name, photo in grey}
    assert shapes["camera"] == (512, 512, 3) and shapes["coins"] == (303, 384, 3) and shapes["text"] == (172, 448, 3)
    for name, photo in grey:
        assert photo.dtype == np.uint8 and photo.std() > 10, name  # a photo, not a flat field
        np.testing.assert_array_equal(photo[:, :, 0], photo[:, :, 1])
        np.testing.assert_array_equal(photo[:, :, 0], photo[:, :, 2])
    names = {n for split in ("train", "grey", "colorwheel", "validation") for n, _ in bundled.bundled_photos(split)}
    assert len(names) == 7 + 8 + 1 + 2  # disjoint


def test_bundled_colorwheel_holds_saturated_colours():
    ((name, wheel),) = bundled.bundled_photos("colorwheel")
    assert name == "colorwheel" and wheel.shape == (370, 371, 3) and wheel.dtype == np.uint8
    chroma = wheel.max(axis=-1).astype(int) - wheel.min(axis=-1)
    assert np.mean(chroma > 200) > 0.1  # a tenth of it near full saturation, which few photos hold


def test_recoloured_validation_splits_match_an_hsv_reference():
    skimage_color = pytest.importorskip("skimage.color")
    plain = dict(bundled.bundled_photos("validation"))
    permuted = dict(bundled.bundled_photos("validation_permuted"))
    hue = dict(bundled.bundled_photos("validation_hue"))
    assert list(permuted) == ["chelsea_bgr", "chelsea_grb", "coffee_bgr", "coffee_grb"]
    assert list(hue) == ["chelsea_hue90", "chelsea_hue270", "coffee_hue90", "coffee_hue270"]
    for name, photo in plain.items():
        np.testing.assert_array_equal(permuted[f"{name}_bgr"], photo[:, :, ::-1])
        np.testing.assert_array_equal(permuted[f"{name}_grb"], photo[:, :, [1, 0, 2]])
        for degrees in (90, 270):
            hsv = skimage_color.rgb2hsv(photo)
            hsv[:, :, 0] = (hsv[:, :, 0] + degrees / 360) % 1.0
            reference = skimage_color.hsv2rgb(hsv) * 255
            ours = hue[f"{name}_hue{degrees}"]
            # Equal up to rounding: the float values agree to 1e-9, so only exact .5 ties may round apart.
            assert ours.dtype == np.uint8 and np.abs(ours - reference).max() <= 0.5 + 1e-9
            assert np.abs(ours.astype(int) - photo).mean() > 20  # really another colour
    # HSV's turn by 120° is the channel cycle (r, g, b) -> (b, r, g).
    chelsea = plain["chelsea"]
    np.testing.assert_array_equal(bundled.rotate_hue(chelsea, 120.0), bundled.permute_channels(chelsea, "brg"))
    np.testing.assert_array_equal(bundled.rotate_hue(chelsea, 360.0), chelsea)
    with pytest.raises(ValueError) as info:
        bundled.permute_channels(chelsea, "rrg")
    assert str(info.value) == "channel order must be a permutation of 'rgb', got 'rrg'"
    with pytest.raises(ValueError) as info:
        bundled.bundled_paths("validation_hue")
    assert str(info.value) == ("bundled split 'validation_hue' is made from the validation photos; "
                               "read it with bundled_photos")


def test_bundled_builder_through_load_dataset(tmp_path):
    ds = loading.load_dataset("classsr_bundled/x4", "validation", data_dir=tmp_path)
    examples = as_examples(ds)
    assert [ex["name"] for ex in examples] == ["chelsea", "coffee"]
    chelsea = bundled.bundled_photos("validation")[0][1]
    np.testing.assert_array_equal(examples[0]["hr"], modcrop(chelsea, 4))
    np.testing.assert_array_equal(examples[0]["lr"], bicubic_degrade(modcrop(chelsea, 4), 4))
    assert examples[0]["lr"].shape == (75, 112, 3)
    permuted = as_examples(loading.load_dataset("classsr_bundled/x4", "validation_permuted", data_dir=tmp_path))
    assert [ex["name"] for ex in permuted] == ["chelsea_bgr", "chelsea_grb", "coffee_bgr", "coffee_grb"]
    chelsea_bgr = modcrop(chelsea[:, :, ::-1], 4)
    np.testing.assert_array_equal(permuted[0]["hr"], chelsea_bgr)
    np.testing.assert_array_equal(permuted[0]["lr"], bicubic_degrade(chelsea_bgr, 4))
    hue = as_examples(loading.load_dataset("classsr_bundled/x4", "validation_hue", data_dir=tmp_path))
    coffee_hue270 = modcrop(bundled.rotate_hue(bundled.bundled_photos("validation")[1][1], 270.0), 4)
    np.testing.assert_array_equal(hue[3]["hr"], coffee_hue270)
    np.testing.assert_array_equal(hue[3]["lr"], bicubic_degrade(coffee_hue270, 4))


def test_bundled_aug_config_scales_train_grey_and_colorwheel_only(tmp_path, monkeypatch):
    # One small photo per split (the real ones take a minute to scale): 200 px, so the 0.6 copy (120 px) is
    # under one x4 HR tile (128 px) and skipped.
    rng = np.random.default_rng(4)
    photos = {split: [(f"{split}_photo", noise(rng, (200, 200, 3)))] for split in bundled.SPLITS}
    monkeypatch.setattr("classsr_jax.data.builders.bundled_photos", lambda split: photos[split])
    builder = builders.ClassSRBundled(config="x4_aug", data_dir=str(tmp_path))
    builder.download_and_prepare()
    for split in ("train", "grey", "colorwheel"):
        names = [ex["name"] for ex in as_examples(builder.as_dataset(split=split))]
        assert names == [f"{f}_{split}_photo" for f in ("1", "0.9", "0.8", "0.7")]
        skipped = builder.info.metadata["skipped"][split]
        assert skipped == [[f"0.6_{split}_photo", "120x120 px is smaller than one HR tile (128 px)"]]
    for split in ("validation", "validation_permuted", "validation_hue"):
        (example,) = as_examples(builder.as_dataset(split=split))
        assert example["name"] == f"{split}_photo"
        np.testing.assert_array_equal(example["hr"], photos[split][0][1])
    assert str(builder.version) == "1.2.0"


def test_load_dataset_rejects_unknown_names(tmp_path):
    with pytest.raises(ValueError) as info:
        loading.load_dataset("div2k/unknown_x4", "train", data_dir=tmp_path)
    assert str(info.value).startswith("unknown dataset 'div2k/unknown_x4'; accepted: classsr_div2k/x4[_aug], ")
    assert str(info.value).endswith("div2k/bicubic_x2, div2k/bicubic_x3, div2k/bicubic_x4")


def test_load_dataset_passes_the_manual_dir(monkeypatch, tmp_path):
    calls = []

    def fake_load(name, **kwargs):
        calls.append((name, kwargs))
        return tf.data.Dataset.from_tensors(
            {"name": "0001", "hr": tf.zeros((8, 8, 3), tf.uint8), "lr": tf.zeros((4, 4, 3), tf.uint8)}
        )

    monkeypatch.setattr(tfds, "load", fake_load)
    loading.load_dataset("classsr_div2k/x2_aug", "train", data_dir=tmp_path, manual_dir=tmp_path / "hr")
    name, kwargs = calls[0]
    assert name == "classsr_div2k/x2_aug" and kwargs["split"] == "train" and kwargs["data_dir"] == str(tmp_path)
    assert str(kwargs["download_and_prepare_kwargs"]["download_config"].manual_dir) == str(tmp_path / "hr")


def test_catalogue_div2k_is_accepted_and_cropped_to_scale_times_lr(monkeypatch, tmp_path):
    calls = []
    hr = np.arange(10 * 13 * 3, dtype=np.uint8).reshape(10, 13, 3)  # not a multiple of 3 wide
    lr = np.full((3, 4, 3), 9, np.uint8)

    def fake_load(name, **kwargs):
        calls.append((name, kwargs))
        return tf.data.Dataset.from_tensors({"hr": hr, "lr": lr, "tfds_id": "div2k-train.tfrecord-00000-of-00001__0"})

    monkeypatch.setattr(tfds, "load", fake_load)
    examples = as_examples(loading.load_dataset("div2k/bicubic_x3", "validation", data_dir=tmp_path))
    assert calls[0][0] == "div2k/bicubic_x3" and calls[0][1]["split"] == "validation"
    assert calls[0][1]["read_config"].add_tfds_id is True
    np.testing.assert_array_equal(examples[0]["hr"], hr[:9, :12])
    assert examples[0]["name"] == "div2k-train.tfrecord-00000-of-00001__0"
    cropped = crop_hr_to_lr({"name": tf.constant("x"), "hr": tf.constant(hr), "lr": tf.constant(lr)}, 2)
    assert tuple(cropped["hr"].shape) == (6, 8, 3)


def test_catalogue_without_importlib_resources_is_a_one_line_error(monkeypatch, tmp_path):
    # tensorflow-datasets 4.9.10 imports importlib_resources before downloading but does not depend on it.
    def fake_load(name, **kwargs):
        raise ModuleNotFoundError("No module named 'importlib_resources'", name="importlib_resources")

    monkeypatch.setattr(tfds, "load", fake_load)
    with pytest.raises(DataError) as info:
        loading.load_dataset("div2k/bicubic_x4", "train", data_dir=tmp_path)
    assert str(info.value) == (
        "div2k/bicubic_x4: preparing a TFDS catalogue dataset needs the importlib_resources package, which "
        "tensorflow-datasets does not install; run: pip install importlib_resources"
    )
