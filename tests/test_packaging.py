"""The package installs with its dependencies and its commands: the wheel, built without network."""

import configparser
import importlib
import os
import shutil
import subprocess
import sys
import zipfile

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMANDS = {
    "classsr-train": "classsr_jax.main:main",
    "classsr-upscale": "classsr_jax.upscale:main",
    "classsr-evaluate": "classsr_jax.evaluate:main",
    "classsr-convert": "classsr_jax.convert:main",
    "classsr-prepare": "classsr_jax.prepare:main",
}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    # setuptools writes build/ and *.egg-info beside the sources: build from a copy, never in the checkout.
    source = tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(os.path.join(REPO, name), source / name)
    shutil.copytree(os.path.join(REPO, "classsr_jax"), source / "classsr_jax",
                    ignore=shutil.ignore_patterns("__pycache__"))
    # No isolation and no dependencies: nothing is downloaded.
    run = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation", "--no-index",
         "-w", str(out)],
        capture_output=True, text=True, timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    (path,) = out.glob("classsr_jax-*.whl")
    return zipfile.ZipFile(path)


def _member(wheel, suffix):
    (name,) = [n for n in wheel.namelist() if n.endswith(suffix)]
    return wheel.read(name).decode()


def test_wheel_declares_the_runtime_dependencies_as_ranges(wheel):
    requires = [line.split(":", 1)[1].strip() for line in _member(wheel, ".dist-info/METADATA").splitlines()
                if line.startswith("Requires-Dist:")]
    names = {r.split(">")[0].split("<")[0].split("=")[0].split(";")[0].strip().lower() for r in requires}
    for package in ("jax", "flax", "optax", "orbax-checkpoint", "clu", "ml-collections", "tensorflow-cpu",
                    "tensorflow-datasets", "absl-py", "numpy", "pillow", "tifffile", "scikit-image", "tqdm"):
        assert package in names, package
    jax = next(r for r in requires if r.lower().startswith("jax"))
    assert ">=" in jax and "<" in jax and "==" not in jax
    # torch is only for converting official checkpoints: an extra, not a requirement of every install.
    assert any("torch" in r and "extra" in r for r in requires)
    assert not any(r.lower().startswith("torch") and "extra" not in r for r in requires)


def test_wheel_installs_the_five_commands(wheel):
    entry_points = configparser.ConfigParser()
    entry_points.read_string(_member(wheel, ".dist-info/entry_points.txt"))
    assert dict(entry_points["console_scripts"]) == COMMANDS
    for target in COMMANDS.values():
        module, function = target.split(":")
        assert callable(getattr(importlib.import_module(module), function))


def test_wheel_holds_the_package_and_not_the_tests(wheel):
    names = wheel.namelist()
    for module in ("engine.py", "inference.py", "upscale.py", "models/rcan.py", "datasets/builders.py"):
        assert f"classsr_jax/{module}" in names, module
    assert not any(n.startswith(("tests/", "benchmarks/")) for n in names)


def test_upscale_help_runs_as_a_command():
    run = subprocess.run([sys.executable, "-c", "import sys; from classsr_jax.upscale import main; sys.exit(main())",
                          "--help"], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "--checkpoint" in run.stdout and "--[no]overwrite" in run.stdout and "--max-pixels" in run.stdout
