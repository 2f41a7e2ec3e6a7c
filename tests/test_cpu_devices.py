"""Inference on a CPU spreads each band's tiles over the cores as JAX devices (`--cpu-devices`, default one per
core): the same output, within one uint8 level, on 1 and on 2 devices."""

import json
import os
import subprocess
import sys

import numpy as np
from PIL import Image
from skimage import data as skdata

from classsr_jax import parallel

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = "quickstart"  # the bundled model: trained, so its outputs are real photo content


def upscale(tmp_path, photo, devices):
    out, report = tmp_path / f"out{devices}.png", tmp_path / f"r{devices}.json"
    env = {**os.environ, "XLA_FLAGS": "--xla_backend_optimization_level=0"}  # conftest's 8 devices would win
    cmd = [sys.executable, "-m", "classsr_jax.upscale", "--checkpoint", MODEL, "--input", str(photo),
           "--output", str(out), "--report", str(report), "--cpu-devices", str(devices)]
    run = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=600)
    assert run.returncode == 0, run.stderr
    return np.asarray(Image.open(out)), json.loads(report.read_text())


def test_one_and_two_cpu_devices_give_the_same_image(tmp_path):
    photo = tmp_path / "coffee.png"
    Image.fromarray(skdata.coffee()[:120, :200]).save(photo)  # trained model, photo content: a real output
    one, report1 = upscale(tmp_path, photo, 1)
    two, report2 = upscale(tmp_path, photo, 2)
    assert (report1["devices"], report2["devices"]) == (1, 2)
    assert one.shape == two.shape == (480, 800, 3)
    assert np.abs(one.astype(int) - two.astype(int)).max() <= 1
    assert report1["class_counts"] == report2["class_counts"]


def test_the_default_is_one_device_per_core_unless_xla_flags_set_a_count(monkeypatch):
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    assert parallel.default_cpu_devices() == len(os.sched_getaffinity(0))
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
    assert parallel.default_cpu_devices() == 0  # the user's own count stands


def test_commands_keep_compiled_programs_in_a_cache_folder(tmp_path):
    code = ("from classsr_jax import parallel; import jax; "
            "print(parallel.use_compilation_cache(), jax.config.jax_compilation_cache_dir)")
    env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
    env["XDG_CACHE_HOME"] = str(tmp_path / "cache")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    folder = str(tmp_path / "cache" / "classsr_jax" / "xla")
    assert run.stdout.split() == [folder, folder] and os.path.isdir(folder)
    env["JAX_COMPILATION_CACHE_DIR"] = str(tmp_path / "mine")  # the user's own setting wins
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert run.stdout.split()[0] == str(tmp_path / "mine")
