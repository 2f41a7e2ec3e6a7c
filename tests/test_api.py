"""The Python API (classsr_jax.load → Model): inputs of every kind come back as the same kind, with the pixels the
Upscaler itself computes; bad inputs are one clear ValueError; upscale_file is the command's handling; the
README's snippet runs as written; and inference never imports the training stack."""

import os
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import classsr_jax
from classsr_jax.errors import WriteError
from classsr_jax.inference.upscaler import Upscaler
from classsr_jax.io.images import LoadedImage, read_image, write_image
from classsr_jax.models.flops import model_flops

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
H, W = 20, 36  # one image size throughout, so the compiled programs are shared


@pytest.fixture(scope="module")
def model():
    return classsr_jax.load("quickstart")


@pytest.fixture(scope="module")
def rgb():
    rng = np.random.default_rng(0)
    smooth = np.cumsum(rng.integers(-9, 10, (H, W, 3)), axis=1)
    return np.clip(128 + smooth, 0, 255).astype(np.uint8)


def reference(model, pixels, bit_depth=8):
    """The Upscaler's own RGB result for (H, W, 3) samples."""
    return Upscaler(model.loaded.spec, model.loaded.variables).upscale(pixels, bit_depth=bit_depth).sr


def test_load_takes_a_bundled_name_and_reports_what_the_model_is(model):
    info = model.info
    assert (info.kind, info.network, info.scale, info.widths) == ("classsr", "fsrcnn", 4, (16, 36, 56))
    flops = model_flops(model.loaded.spec)
    assert info.branch_flops == flops.branches and info.classifier_flops == flops.classifier
    assert info.branch_flops[0] < info.branch_flops[1] < info.branch_flops[2]
    assert info.parameters == 112_940
    assert str(info).startswith("ClassSR-fsrcnn x4, widths 16/36/56, 112,940 parameters, FLOPs per 32x32 tile ")


def test_rgb_uint8_is_the_upscalers_result(model, rgb):
    out = model.upscale(rgb)
    assert out.dtype == np.uint8 and out.shape == (4 * H, 4 * W, 3)
    np.testing.assert_array_equal(out, reference(model, rgb))


def test_gray_comes_back_gray_as_the_rounded_mean_of_the_three_sr_channels(model, rgb):
    gray = rgb[..., 0]
    expected_rgb = reference(model, np.repeat(gray[..., None], 3, axis=2)).astype(np.int64)
    expected = (expected_rgb.sum(axis=2) + 1) // 3  # 3·mean rounded half up; never half-way
    out2d, out3d = model.upscale(gray), model.upscale(gray[..., None])
    assert out2d.shape == (4 * H, 4 * W) and out3d.shape == (4 * H, 4 * W, 1) and out2d.dtype == np.uint8
    np.testing.assert_array_equal(out2d, expected)
    np.testing.assert_array_equal(out3d[..., 0], expected)


def test_rgba_keeps_its_alpha_channel_upscaled_on_its_own(model, rgb):
    rgba = np.concatenate([rgb, np.full((H, W, 1), 200, np.uint8)], axis=2)
    out = model.upscale(rgba)
    assert out.shape == (4 * H, 4 * W, 4) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[..., :3], reference(model, rgb))
    assert np.all(out[..., 3] == 200)  # a constant alpha stays constant under bicubic interpolation


def test_uint16_stays_uint16_and_floats_come_back_as_the_same_float_type(model, rgb):
    deep = rgb.astype(np.uint16) * 257
    out16 = model.upscale(deep)
    assert out16.dtype == np.uint16
    np.testing.assert_array_equal(out16, reference(model, deep, bit_depth=16))
    for dtype in (np.float32, np.float64):
        out = model.upscale(deep.astype(dtype) / 65535)
        assert out.dtype == dtype and out.shape == (4 * H, 4 * W, 3)
        np.testing.assert_allclose(out, out16 / 65535.0, atol=1e-6)


def test_pil_images_come_back_as_pil_images_of_the_same_mode(model, rgb):
    for mode, pixels in (("RGB", rgb), ("L", rgb[..., 1]), ("RGBA", np.dstack([rgb, rgb[..., :1]]))):
        image = Image.fromarray(pixels)
        assert image.mode == mode
        out = model.upscale(image)
        assert isinstance(out, Image.Image) and out.mode == mode and out.size == (4 * W, 4 * H)
        np.testing.assert_array_equal(np.asarray(out), model.upscale(pixels))


@pytest.mark.parametrize("bad, message", [
    (np.full((8, 8, 3), 254.5), "float pixels must lie in [0, 1], but these range from 254.5 to 254.5; "
                                "divide 0–255 values by 255"),
    (np.full((8, 8, 3), -0.5), "float pixels must lie in [0, 1], but these range from -0.5 to -0.5"),
    (np.full((8, 8, 3), np.nan), "float pixels must lie in [0, 1], but the image holds NaN or infinity"),
    (np.zeros((8, 8, 3), np.int32), "expected uint8, uint16 or float pixels in [0, 1], got int32"),
    (np.zeros((8, 8, 5), np.uint8), "expected an image of shape (H, W) or (H, W, C) with C in 1–4, got (8, 8, 5)"),
    (Image.new("P", (8, 8)), "PIL images of mode 'P' are not supported; use one of L, LA, RGB, RGBA, I;16 "
                             "(e.g. image.convert('RGB'))"),
])
def test_bad_inputs_are_one_value_error_naming_the_problem(model, bad, message):
    with pytest.raises(ValueError) as err:
        model.upscale(bad)
    assert str(err.value) == message


def test_upscale_file_keeps_16_bit_and_never_writes_over_its_input(model, rgb, tmp_path):
    src, dst = str(tmp_path / "deep.png"), str(tmp_path / "deep_x4.png")
    deep = rgb.astype(np.uint16) * 257
    write_image(src, deep, like=LoadedImage(deep, None, bit_depth=16, mode="rgb", path=src))
    before = open(src, "rb").read()
    result = model.upscale_file(src, dst)
    written = read_image(dst)
    assert written.bit_depth == 16 and written.mode == "rgb"
    np.testing.assert_array_equal(written.colour_pixels, result.sr)
    np.testing.assert_array_equal(result.sr, reference(model, deep, bit_depth=16))
    with pytest.raises(WriteError) as err:
        model.upscale_file(src, src, overwrite=True)
    assert str(err.value) == f"output {src} is the input {src}; inputs are never written, choose another path"
    assert open(src, "rb").read() == before
    with pytest.raises(WriteError, match=r"exists; --overwrite replaces it$"):
        model.upscale_file(src, dst)


def readme_python_api_snippet():
    with open(os.path.join(REPO, "README.md"), encoding="utf-8") as f:
        readme = f.read()
    section = readme.split("\n## Python API\n", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_readmes_python_api_snippet_runs_as_written(rgb, tmp_path, monkeypatch):
    snippet = readme_python_api_snippet()
    assert len(snippet.strip().splitlines()) == 3
    monkeypatch.chdir(tmp_path)
    Image.fromarray(rgb).save("photo.png")
    exec(compile(snippet, "README.md", "exec"), {})
    with Image.open("photo_x4.png") as out:
        assert out.size == (4 * W, 4 * H) and out.mode == "RGB"


def test_inference_never_imports_the_training_stack(tmp_path):
    code = (
        "import sys, numpy as np\n"
        "import classsr_jax\n"
        "classsr_jax.load('quickstart').upscale(np.zeros((8, 8, 3), np.uint8))\n"
        "import classsr_jax.cli.upscale\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'tensorflow', 'clu', 'ml_collections', 'torch'}))\n"
    )
    env = {**os.environ, "PYTHONPATH": REPO}
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env,
                         timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip().splitlines()[-1] == "[]"
