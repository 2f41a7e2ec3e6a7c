"""Tests for classsr_jax.evaluation.metrics against hand-computed values and scikit-image."""

import numpy as np
import pytest
from skimage.metrics import structural_similarity

from classsr_jax.evaluation.metrics import psnr, psnr_y, rgb_to_y, ssim, ssim_y


def _smooth(img: np.ndarray, passes: int = 3) -> np.ndarray:
    """Cheap 3x3 box smoothing (edge-replicated), repeated."""
    for _ in range(passes):
        p = np.pad(img, 1, mode="edge")
        img = sum(p[i:i + img.shape[0], j:j + img.shape[1]] for i in range(3) for j in range(3)) / 9
    return img


# ------------------------------------------------------------------ PSNR

def test_psnr_uniform_error_of_one():
    hr = np.full((20, 20, 3), 100, dtype=np.uint8)
    sr = hr.astype(np.float32) + 1.0
    # 20 log10(255 / 1)
    assert psnr(sr, hr) == pytest.approx(48.1308036, abs=1e-6)
    assert psnr(hr.astype(np.float64) - 2.0, hr) == pytest.approx(20 * np.log10(127.5), abs=1e-9)


def test_psnr_half_pixels_wrong():
    hr = np.zeros((10, 10, 3))
    sr = hr.copy()
    sr[:, :5] = 2.0  # MSE = 2 over the whole (uncropped) image
    assert psnr(sr, hr, crop_border=0) == pytest.approx(10 * np.log10(255 ** 2 / 2), abs=1e-9)


def test_psnr_zero_error_is_80():
    img = np.random.default_rng(0).integers(0, 256, (16, 16, 3)).astype(np.uint8)
    assert psnr(img, img) == 80.0
    assert psnr(img.astype(np.float32), img) == 80.0


def test_psnr_border_crop_excludes_the_border():
    hr = np.full((24, 30, 3), 50.0)
    sr = hr.copy()
    sr[:4] += 10
    sr[-4:] += 10
    sr[:, :4] += 10
    sr[:, -4:] += 10
    assert psnr(sr, hr, crop_border=4) == 80.0
    # A 3-px crop keeps one erroneous ring of the 18x24 remainder: 18*24 - 16*22 = 80
    # pixels, the 4 ring corners with error 20 (in two strips), the other 76 with 10.
    mse = (76 * 10 ** 2 + 4 * 20 ** 2) / (18 * 24)
    assert psnr(sr, hr, crop_border=3) == pytest.approx(10 * np.log10(255 ** 2 / mse), abs=1e-9)


def test_psnr_shape_mismatch_message():
    with pytest.raises(ValueError) as info:
        psnr(np.zeros((10, 12, 3)), np.zeros((10, 11, 3)))
    assert "(10, 12, 3)" in str(info.value) and "(10, 11, 3)" in str(info.value)
    assert "\n" not in str(info.value)


# ------------------------------------------------------------------ Y channel

@pytest.mark.parametrize(
    "rgb, y",
    [
        ((255, 0, 0), 81.481),
        ((0, 255, 0), 144.553),
        ((0, 0, 255), 40.966),
        ((255, 255, 255), 235.0),
        ((0, 0, 0), 16.0),
    ],
)
def test_rgb_to_y_hand_values(rgb, y):
    img = np.array(rgb, dtype=np.uint8).reshape(1, 1, 3)
    out = rgb_to_y(img)
    assert out.shape == (1, 1) and out.dtype == np.float64
    assert out[0, 0] == pytest.approx(y, abs=1e-9)


def test_rgb_to_y_is_not_rounded():
    # (65.481 + 128.553 + 24.966) * 100/255 + 16 = 219 * 100/255 + 16
    out = rgb_to_y(np.full((1, 1, 3), 100.0))
    assert out[0, 0] == pytest.approx(219 * 100 / 255 + 16, abs=1e-9)
    assert out[0, 0] != np.round(out[0, 0])


def test_psnr_y_uses_luma():
    hr = np.full((12, 12, 3), 100.0)
    sr = hr.copy()
    sr[..., 0] += 255 / 65.481  # moves Y by exactly 1, everywhere
    assert psnr_y(sr, hr) == pytest.approx(48.1308036, abs=1e-6)


# ------------------------------------------------------------------ SSIM

def _skimage_ssim(a, b):
    return structural_similarity(a, b, gaussian_weights=True, sigma=1.5,
                                 use_sample_covariance=False, data_range=255)


@pytest.mark.parametrize("smooth", [False, True])
def test_ssim_matches_skimage(smooth):
    # skimage filters the whole image with reflect padding, then drops the 5-px
    # filter radius (crop(S, 5)) before averaging: exactly the 'valid' region.
    rng = np.random.default_rng(1 + smooth)
    a = rng.random((40, 53)) * 255
    b = np.clip(a + rng.normal(0, 20, a.shape), 0, 255)
    if smooth:
        a, b = _smooth(a), _smooth(b)
    ours = ssim(a, b)
    assert abs(ours - _skimage_ssim(a, b)) <= 1e-9
    assert 0.0 < ours < 1.0


def test_ssim_of_image_with_itself_is_one():
    a = np.random.default_rng(3).integers(0, 256, (30, 30)).astype(np.uint8)
    assert ssim(a, a) == pytest.approx(1.0, abs=1e-12)


def test_ssim_is_sensitive_to_structure():
    a = _smooth(np.random.default_rng(4).random((32, 32)) * 255)
    assert ssim(a, 255 - a) < 0  # inverted structure: negative correlation


def test_ssim_y_matches_skimage_on_luma_with_crop():
    rng = np.random.default_rng(5)
    hr = rng.integers(0, 256, (36, 44, 3)).astype(np.uint8)
    sr = np.clip(hr + rng.normal(0, 10, hr.shape), 0, 255)
    expected = _skimage_ssim(rgb_to_y(sr)[4:-4, 4:-4], rgb_to_y(hr)[4:-4, 4:-4])
    assert abs(ssim_y(sr, hr) - expected) <= 1e-9
    assert ssim_y(hr, hr) == pytest.approx(1.0, abs=1e-12)


def test_ssim_rejects_bad_inputs():
    with pytest.raises(ValueError, match=r"\(20, 20\).*\(20, 21\)"):
        ssim(np.zeros((20, 20)), np.zeros((20, 21)))
    with pytest.raises(ValueError, match="smaller"):
        ssim(np.zeros((10, 20)), np.zeros((10, 20)))
