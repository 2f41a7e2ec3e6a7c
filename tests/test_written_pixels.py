"""What the commands write, by value: the pixels of `upscale` against the library, and a PSNR of `evaluate` that can
be checked by hand. Files are made and read back with Pillow and tifffile, not with the package's own image I/O."""

import functools
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tifffile
from PIL import Image

from classsr_jax.checkpointing import load_model, save_model
from classsr_jax.cli import evaluate, upscale
from classsr_jax.inference.upscaler import Upscaler
from classsr_jax.models import ModelSpec
from classsr_jax.models.interpolation_init import interpolating_params

SPEC = ModelSpec("classsr", "fsrcnn", (16, 36, 56))


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """(checkpoint folder, the Upscaler the command builds from it by default)."""
    path = str(tmp_path_factory.mktemp("ckpt") / "classsr_fsrcnn")
    variables = SPEC.init(seed=3)
    # Branches that start as cubic interpolation: the SR keeps the input's colours (a random FSRCNN gives ~0).
    params = {name: interpolating_params("fsrcnn", branch, 4) if name.startswith("net") else branch
              for name, branch in variables["params"].items()}
    for name in ("net1", "net2", "net3"):  # channels that differ for a gray input, so their rounded mean matters
        params[name]["tail_deconv"]["bias"] = params[name]["tail_deconv"]["bias"] + np.float32([0.01, 0.0, -0.013])
    save_model(path, SPEC, {**variables, "params": params})
    loaded = load_model(path)
    return path, Upscaler(loaded.spec, loaded.variables)


def textured(h, w, peak, seed):
    """Integer samples whose three channels differ everywhere (a channel swap changes the SR)."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0.0, 1.0, w)[None, :, None] * np.array([0.9, 0.4, 0.1])
    values = 0.6 * ramp + 0.4 * rng.random((h, w, 3)) * np.array([0.2, 1.0, 0.6])
    return np.round(values * peak).astype(np.uint16 if peak > 255 else np.uint8)


def run_upscale(checkpoint, src, out):
    assert upscale.main(["--checkpoint", checkpoint, "--input", str(src), "--output", str(out)]) == 0


def rounded_mean(rgb):
    """The gray a gray input gets back: the mean of the three SR channels, to the nearest integer."""
    return np.rint(rgb.astype(np.float64).mean(axis=2)).astype(rgb.dtype)


@functools.partial(jax.jit, static_argnames=("out_hw",))
def bicubic_alpha(alpha, out_hw):
    big = jax.image.resize(alpha.astype(jnp.float32) / 255.0, out_hw, "bicubic")
    return jnp.round(jnp.clip(big, 0.0, 1.0) * 255.0).astype(jnp.uint8)


def test_an_8_bit_rgb_png_is_written_as_the_library_computes_it(model, tmp_path):
    checkpoint, upscaler = model
    pixels = textured(40, 50, 255, seed=1)
    Image.fromarray(pixels, "RGB").save(tmp_path / "in.png")
    run_upscale(checkpoint, tmp_path / "in.png", tmp_path / "out.png")
    expected = upscaler.upscale(pixels).sr
    with Image.open(tmp_path / "out.png") as written:
        assert written.mode == "RGB"
        np.testing.assert_array_equal(np.asarray(written), expected)
    assert np.abs(expected[..., 0].astype(int) - expected[..., 2]).mean() > 20  # the channels tell apart


def test_a_16_bit_rgb_tiff_is_written_at_16_bits_as_the_library_computes_it(model, tmp_path):
    checkpoint, upscaler = model
    pixels = textured(36, 44, 65535, seed=2)
    tifffile.imwrite(tmp_path / "in.tif", pixels, photometric="rgb")
    run_upscale(checkpoint, tmp_path / "in.tif", tmp_path / "out.tif")
    expected = upscaler.upscale(pixels, bit_depth=16).sr
    assert expected.dtype == np.uint16
    written = tifffile.imread(tmp_path / "out.tif")
    assert written.dtype == np.uint16
    np.testing.assert_array_equal(written, expected)
    assert np.any(expected % 257 != 0)  # really 16-bit content, not 8-bit samples × 257


@pytest.mark.parametrize("bits", [8, 16])
def test_a_gray_png_is_written_gray_as_the_mean_of_the_library_channels(model, tmp_path, bits):
    checkpoint, upscaler = model
    peak = 255 if bits == 8 else 65535
    gray = textured(30, 34, peak, seed=3)[..., 1]
    Image.fromarray(gray).save(tmp_path / "in.png")  # mode L, or I;16 for uint16
    run_upscale(checkpoint, tmp_path / "in.png", tmp_path / "out.png")
    sr = upscaler.upscale(np.repeat(gray[..., None], 3, axis=2), bit_depth=bits).sr
    with Image.open(tmp_path / "out.png") as written:
        assert written.mode == ("L" if bits == 8 else "I;16")
        np.testing.assert_array_equal(np.asarray(written).astype(sr.dtype), rounded_mean(sr))
    assert np.any(sr.astype(np.int64).sum(axis=2) % 3 == 2)  # pixels whose mean rounds up


def test_an_rgba_png_keeps_the_library_rgb_and_a_bicubic_alpha(model, tmp_path):
    checkpoint, upscaler = model
    rgb = textured(20, 26, 255, seed=4)
    alpha = np.round(np.linspace(0, 255, 26)[None, :] * np.linspace(1.0, 0.5, 20)[:, None]).astype(np.uint8)
    Image.fromarray(np.dstack([rgb, alpha]), "RGBA").save(tmp_path / "in.png")
    run_upscale(checkpoint, tmp_path / "in.png", tmp_path / "out.png")
    with Image.open(tmp_path / "out.png") as written:
        assert written.mode == "RGBA"
        samples = np.asarray(written)
    np.testing.assert_array_equal(samples[..., :3], upscaler.upscale(rgb).sr)
    np.testing.assert_array_equal(samples[..., 3], np.asarray(bicubic_alpha(alpha, (80, 104))))


# ------------------------------------------------------------------------------------- evaluate, by hand

HR_LEVELS = np.array([100, 52, 198])
SR_LEVELS = np.array([102, 50, 200])  # every channel 2 levels off: MSE 4


def constant_network(path, levels):
    """A single FSRCNN whose weights are all 0 except the output bias: every SR pixel is `levels`."""
    spec = ModelSpec("network", "fsrcnn", (16,))
    variables = jax.tree_util.tree_map(lambda a: np.zeros(a.shape, a.dtype), spec.abstract())
    variables["params"]["tail_deconv"]["bias"] = (levels / 255.0).astype(np.float32)
    save_model(path, spec, variables)


@pytest.mark.parametrize("protocol", ["paper", "full"])
def test_evaluate_reports_the_psnr_of_a_two_level_offset(tmp_path, protocol):
    constant_network(str(tmp_path / "net"), SR_LEVELS)
    (tmp_path / "LR").mkdir(), (tmp_path / "HR").mkdir()
    Image.fromarray(textured(40, 36, 255, seed=5)).save(tmp_path / "LR" / "a.png")
    Image.fromarray(np.broadcast_to(HR_LEVELS.astype(np.uint8), (160, 144, 3)).copy()).save(tmp_path / "HR" / "a.png")
    report = tmp_path / "r.json"
    assert evaluate.main(["--checkpoint", str(tmp_path / "net"), "--lr-dir", str(tmp_path / "LR"),
                          "--hr-dir", str(tmp_path / "HR"), "--protocol", protocol, "--report", str(report)]) == 0
    image = json.loads(report.read_text())["images"][0]
    assert image["psnr"] == pytest.approx(20 * math.log10(255 / 2), abs=1e-9)  # 42.1102 dB
    # Y = 16 + (65.481 R + 128.553 G + 24.966 B) / 255: the offsets (+2, -2, +2) move Y by 2·(-38.106)/255.
    assert image["psnr_y"] == pytest.approx(20 * math.log10(255 / (2 * 38.106 / 255)), abs=1e-6)  # 58.6 dB
