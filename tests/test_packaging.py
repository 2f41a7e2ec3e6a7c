"""The package installs as users get it: the wheel (built without network) declares an inference-only base
install and the [train] and [convert] extras, carries the bundled models and the configs, and its commands work
from a folder outside the checkout; a missing extra is one line naming it."""

import configparser
import os
import shutil
import subprocess
import sys
import venv
import zipfile

import numpy as np
import pytest
from PIL import Image

from classsr_jax.cli import launcher
from classsr_jax.training import configuration

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMANDS = {
    "classsr-train": "classsr_jax.cli.launcher:train",
    "classsr-upscale": "classsr_jax.cli.launcher:upscale",
    "classsr-evaluate": "classsr_jax.cli.launcher:evaluate",
    "classsr-convert": "classsr_jax.cli.launcher:convert",
    "classsr-prepare": "classsr_jax.cli.launcher:prepare",
}
BASE = {"jax", "ml_dtypes", "flax", "orbax-checkpoint", "absl-py", "numpy", "pillow", "tifffile", "tqdm", "fpng",
        "imagecodecs"}
TRAIN = {"tensorflow-cpu", "tensorflow-datasets", "importlib_resources", "tensorboard", "clu", "ml-collections",
         "optax", "matplotlib", "scikit-image"}
SHIMS = ("main", "upscale", "evaluate", "convert", "prepare")


def build_wheel(out_dir) -> str:
    """Builds the wheel from a copy of the sources (setuptools writes build/ and *.egg-info beside them, never in
    the checkout), without isolation, dependencies or an index: nothing is downloaded."""
    source = os.path.join(out_dir, "source")
    os.makedirs(source)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(os.path.join(REPO, name), source)
    for folder in ("classsr_jax", "configs"):
        shutil.copytree(os.path.join(REPO, folder), os.path.join(source, folder),
                        ignore=shutil.ignore_patterns("__pycache__"))
    run = subprocess.run([sys.executable, "-m", "pip", "wheel", source, "--no-deps", "--no-build-isolation",
                          "--no-index", "-w", out_dir], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    (name,) = [n for n in os.listdir(out_dir) if n.startswith("classsr_jax-") and n.endswith(".whl")]
    return os.path.join(out_dir, name)


@pytest.fixture(scope="module")
def wheel_path(tmp_path_factory):
    return build_wheel(str(tmp_path_factory.mktemp("wheel")))


def _member(wheel, suffix):
    (name,) = [n for n in wheel.namelist() if n.endswith(suffix)]
    return wheel.read(name).decode()


def _requirements(wheel):
    """{extra or '': {distribution names}} from the wheel's METADATA."""
    found = {}
    for line in _member(wheel, ".dist-info/METADATA").splitlines():
        if line.startswith("Requires-Dist:"):
            requirement, _, marker = line.split(":", 1)[1].partition(";")
            name = requirement.strip().split(">")[0].split("<")[0].split("=")[0].strip().lower()
            extra = marker.split("==")[1].strip().strip("\"'") if "extra" in marker else ""
            found.setdefault(extra, set()).add(name)
    return found


def test_the_base_install_is_inference_only_and_the_extras_add_training_and_torch(wheel_path):
    with zipfile.ZipFile(wheel_path) as wheel:
        requires = _requirements(wheel)
    assert requires[""] == BASE
    assert requires["train"] == TRAIN
    assert requires["convert"] == {"torch"}


def test_the_wheel_has_the_launcher_commands_the_bundled_models_and_the_configs(wheel_path):
    with zipfile.ZipFile(wheel_path) as wheel:
        entry_points = configparser.ConfigParser()
        entry_points.read_string(_member(wheel, ".dist-info/entry_points.txt"))
        names = set(wheel.namelist())
    assert dict(entry_points["console_scripts"]) == COMMANDS
    for model in ("quickstart", "quickstart-original"):
        folder = os.path.join(REPO, "classsr_jax", "pretrained", model)
        files = {os.path.relpath(os.path.join(root, f), REPO).replace(os.sep, "/")
                 for root, _, fs in os.walk(folder) for f in fs}
        assert files and files <= names, sorted(files - names)
    configs = {f"classsr_jax/configs/{f}" for f in os.listdir(os.path.join(REPO, "configs")) if f.endswith(".py")}
    assert "classsr_jax/configs/rcan.py" in configs and configs <= names
    assert "classsr_jax/api.py" in names and "classsr_jax/cli/upscale.py" in names
    assert not any(n.startswith(("tests/", "benchmarks/", "configs/")) for n in names)


def test_a_missing_extra_is_one_line_naming_it(monkeypatch, capsys):
    hidden = {"torch", "clu", "ml_collections"}
    find_spec = launcher.importlib.util.find_spec
    monkeypatch.setattr(launcher.importlib.util, "find_spec", lambda name: None if name in hidden else find_spec(name))
    assert launcher.launch("classsr-convert", ["--help"]) == 1
    assert launcher.launch("classsr-train", ["--help"]) == 1
    assert capsys.readouterr().err.splitlines() == [
        "error: classsr-convert needs torch: pip install 'classsr_jax[convert]'",
        "error: classsr-train needs clu, ml-collections: pip install 'classsr_jax[train]'",
    ]


def test_python_dash_m_names_the_missing_extra_too(tmp_path):
    code = ("import runpy, sys; sys.modules['torch'] = None; sys.argv = ['convert', '--help']; "
            "runpy.run_module('classsr_jax.convert', run_name='__main__')")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                         env={**os.environ, "PYTHONPATH": REPO}, timeout=300)
    assert run.returncode == 1
    assert run.stderr.strip() == "error: classsr-convert needs torch: pip install 'classsr_jax[convert]'"


# Where a fresh 64 MiB buffer lands in the process's memory map, with or without `keep_freed_memory` first.
HEAP_PROBE = """import sys
import numpy as np
from classsr_jax.cli import launcher
if sys.argv[1] == "keep":
    assert launcher.keep_freed_memory()
buffer = np.empty(64 * 2**20, np.uint8)
address = buffer.ctypes.data
with open("/proc/self/maps") as maps:
    for line in maps:
        span, *rest = line.split()
        low, high = (int(x, 16) for x in span.split("-"))
        if low <= address < high:
            print(rest[4] if len(rest) > 4 else "anonymous")
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/maps") or not sys.platform.startswith("linux"),
                    reason="needs Linux's /proc")
def test_band_commands_keep_big_buffers_on_the_heap(tmp_path):
    # glibc maps a buffer this big on its own (and unmaps it when freed) unless the command asked to keep it.
    where = {}
    for mode in ("keep", "default"):
        run = subprocess.run([sys.executable, "-c", HEAP_PROBE, mode], capture_output=True, text=True, cwd=tmp_path,
                             env={**os.environ, "PYTHONPATH": REPO}, timeout=300)
        assert run.returncode == 0, run.stderr
        where[mode] = run.stdout.strip()
    assert where == {"keep": "[heap]", "default": "anonymous"}
    assert launcher.BAND_COMMANDS == ("classsr-upscale", "classsr-evaluate")


def test_bare_config_names_become_the_path_absl_loads(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # found from any working directory: the checkout's (or the wheel's) configs
    quickstart = os.path.join(REPO, "configs", "quickstart.py")
    assert configuration.resolve_config_argument("quickstart") == quickstart
    smoke = os.path.join(REPO, "configs", "smoke.py")
    assert configuration.resolve_config_argument("smoke:bundled") == smoke + ":bundled"
    rcan = os.path.join(REPO, "configs", "rcan.py")
    assert configuration.resolve_config_argument(rcan) == rcan


@pytest.mark.slow
def test_the_installed_wheel_works_outside_the_checkout(wheel_path, tmp_path):
    """A venv over this machine's packages (--system-site-packages), the wheel installed without its
    dependencies or an index; every command and the Python API run from a folder outside the checkout."""
    env_dir, work = str(tmp_path / "venv"), tmp_path / "work"
    venv.create(env_dir, system_site_packages=True, with_pip=True)
    bin_dir = os.path.join(env_dir, "bin")
    python = os.path.join(bin_dir, "python")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PATH"] = bin_dir + os.pathsep + env["PATH"]
    install = subprocess.run([python, "-m", "pip", "install", "--no-deps", "--no-index", wheel_path],
                             capture_output=True, text=True, timeout=600, env=env)
    assert install.returncode == 0, install.stderr[-3000:]
    work.mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (24, 40, 3), dtype=np.uint8)).save(work / "photo.png")

    def run(*args):
        done = subprocess.run(list(args), capture_output=True, text=True, cwd=work, env=env, timeout=600)
        assert done.returncode == 0, (args, done.stderr[-3000:])
        return done

    where = run(python, "-c", "import classsr_jax; print(classsr_jax.__file__)").stdout.strip()
    assert where.startswith(env_dir), where  # the installed package, not the checkout
    run(os.path.join(bin_dir, "classsr-upscale"), "-i", "photo.png", "-o", "out.png")
    run(python, "-c", "import classsr_jax as c; c.load('quickstart').upscale_file('photo.png', 'out2.png')")
    for name in ("out.png", "out2.png"):
        with Image.open(work / name) as image:
            assert image.size == (160, 96)
    for command in COMMANDS:
        assert run(os.path.join(bin_dir, command), "--help").stdout.startswith(f"usage: {command}")
    for shim in SHIMS:
        assert run(python, "-m", f"classsr_jax.{shim}", "--help").stdout.startswith("usage: classsr-")
    loaded = run(python, "-c", "from classsr_jax.training.configuration import load_config; "
                 "c = load_config('rcan'); print(c.model.network, c.joint.batch_size)")
    assert loaded.stdout.split() == ["rcan", "60"]
    # classsr-train finds a config by name, and the config's own `from configs import fsrcnn` works: a bad
    # override is only reported after the config loaded.
    train = subprocess.run([os.path.join(bin_dir, "classsr-train"), "--config", "quickstart", "--workdir", "w",
                            "--config.no_such_field=1"], capture_output=True, text=True, cwd=work, env=env, timeout=600)
    assert (train.returncode, train.stderr.strip()) == (2, "error: unknown config field(s): --config.no_such_field")
