"""The Colab notebooks (colab/*.ipynb): committed clean, and executed top to bottom with nbclient in smoke mode
(CLASSSR_SMOKE=1: CPU, tiny config, bundled photos), asserting what they produced."""

import base64
import json
import os
import re

import nbformat
import numpy as np
import pytest
from independent import matlab_bicubic_upscale, psnr_rgb
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient

from classsr_jax import checkpointing
from classsr_jax import notebooks as nh
from classsr_jax.checkpointing import resolve_model_dir
from classsr_jax.models import ModelSpec
from classsr_jax.models.flops import model_flops

pytestmark = pytest.mark.slow  # both notebooks, run by a kernel: out of the quick loop

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = ("train_tpu", "upscale_demo")
KERNEL = "classsr-test-python3"
CELL_TIMEOUT = 300  # seconds per cell; each smoke run takes about a minute on 2 cores
RESULT = "NOTEBOOK_RESULT:"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def read_notebook(name):
    return nbformat.read(os.path.join(REPO, "colab", f"{name}.ipynb"), as_version=4)


@pytest.fixture(scope="module")
def kernel_dir(tmp_path_factory):
    """A kernel spec for this very interpreter, registered with ipykernel (requirements-test.txt) in a temporary
    folder, so the notebooks run with the packages under test whatever `jupyter kernelspec list` holds."""
    from ipykernel.kernelspec import install

    prefix = tmp_path_factory.mktemp("jupyter")
    install(kernel_name=KERNEL, display_name="classsr_jax tests", prefix=str(prefix))
    kernels = os.path.join(str(prefix), "share", "jupyter", "kernels")
    assert os.path.isfile(os.path.join(kernels, KERNEL, "kernel.json"))
    return kernels


def execute(name, kernel_dir, tmp_path, probe):
    """Runs the notebook in smoke mode with `probe` appended as a last cell; returns (notebook, probe's JSON)."""
    nb = read_notebook(name)
    nb.cells.append(nbformat.v4.new_code_cell(f"import json\nprint({RESULT!r} + json.dumps({probe}))"))
    env = {
        **os.environ,
        "CLASSSR_SMOKE": "1",
        # Two simulated CPU devices: the data-parallel path runs as on a TPU, at a fraction of eight's compile time.
        "XLA_FLAGS": "--xla_force_host_platform_device_count=2 --xla_backend_optimization_level=0",
        "CUDA_VISIBLE_DEVICES": "",
        "TF_CPP_MIN_LOG_LEVEL": "3",
        "TF_ENABLE_ONEDNN_OPTS": "0",
        "MPLBACKEND": "Agg",
        "PYTHONPATH": os.pathsep.join([REPO] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]),
        "TMPDIR": str(tmp_path),  # the notebooks' temporary workdirs and checkpoints land in pytest's folder
    }
    km = KernelManager(kernel_name=KERNEL, kernel_spec_manager=KernelSpecManager(kernel_dirs=[kernel_dir]))
    client = NotebookClient(nb, km=km, timeout=CELL_TIMEOUT, resources={"metadata": {"path": REPO}})
    client.execute(env=env)
    text = "".join(o.get("text", "") for o in nb.cells[-1].outputs if o.output_type == "stream")
    line = next(line for line in text.splitlines() if line.startswith(RESULT))
    return nb, json.loads(line[len(RESULT):])


def cell_text(cell):
    """Everything a cell printed or displayed as text (stream, text/plain, text/markdown)."""
    parts = []
    for o in cell.outputs:
        if o.output_type == "stream":
            parts.append(o.text)
        for kind in ("text/markdown", "text/plain"):
            if kind in o.get("data", {}):
                parts.append(o["data"][kind])
    return "\n".join(parts)


def cell_with(nb, source_fragment):
    return next(c for c in nb.cells if c.cell_type == "code" and source_fragment in c.source)


def pngs(cell):
    return [base64.b64decode(o["data"]["image/png"]) for o in cell.outputs if "image/png" in o.get("data", {})]


# --------------------------------------------------------------------------------------- committed notebooks


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_committed_notebook_is_valid_and_clean(name):
    nb = read_notebook(name)
    nbformat.validate(nb)
    assert nb.nbformat == 4
    assert nb.metadata.kernelspec.name == "python3"
    first = nb.cells[0]
    assert first.cell_type == "markdown" and "CLASSSR_SMOKE=1" in first.source
    assert f"colab/{name}.ipynb" in first.source  # how to open it in Colab
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, "commit the notebooks with cleared outputs"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebooks_hold_calls_only_and_read_the_smoke_switch_once(name):
    code = [c.source for c in read_notebook(name).cells if c.cell_type == "code"]
    source = "\n".join(code)
    assert not re.search(r"^\s*(def|class|lambda)\b", source, re.M), "logic belongs in classsr_jax.notebooks"
    assert not re.search(r"^\s*(import|from)\s+(numpy|matplotlib|PIL|tensorflow|orbax)\b", source, re.M)
    assert source.count("os.environ") == 1 and 'os.environ.get("CLASSSR_SMOKE") == "1"' in code[0]


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_one_variable_names_the_repository_and_no_placeholder_owner_is_left(name):
    with open(os.path.join(REPO, "colab", f"{name}.ipynb"), encoding="utf-8") as f:
        assert "OWNER" not in f.read()
    code = [c.source for c in read_notebook(name).cells if c.cell_type == "code"]
    (line,) = [line for line in code[0].splitlines() if line.startswith("REPO_URL = ")]
    assert "CHANGE THIS" in line
    assert sum(source.count("github.com") for source in code) == 1, "every other use goes through REPO_URL"


def test_the_training_notebook_defaults_to_the_short_schedule_and_stops_without_a_tpu():
    code = "\n".join(c.source for c in read_notebook("train_tpu").cells if c.cell_type == "code")
    assert 'CONFIG, DATA = "quickstart", "bundled"' in code
    assert '# CONFIG, DATA = "fsrcnn", "drive"' in code  # the paper's recipe, one line away
    assert "ALLOW_CPU = False" in code and "notebooks.require_tpu(allow_cpu=ALLOW_CPU or SMOKE)" in code


def test_the_demo_installs_the_inference_profile_and_says_when_to_restart():
    setup = read_notebook("upscale_demo").cells[1].source
    assert 'SETUP = [f"pip install -q git+{REPO_URL}"]' in setup and "[train]" not in setup
    assert "restart" in setup
    assert "restart" in read_notebook("train_tpu").cells[1].source


# ------------------------------------------------------------------------------------------- smoke runs


def test_training_notebook_trains_evaluates_and_exports_in_smoke_mode(kernel_dir, tmp_path):
    probe = (
        '{"workdir": WORKDIR, "smoke": SMOKE, "stages": results["stages"], "devices": jax.device_count(), '
        '"curves": {stage: sorted(tags) for stage, tags in curves.items()}, "exports": [e["name"] for e in exports]}'
    )
    nb, out = execute("train_tpu", kernel_dir, tmp_path, probe)
    assert out["smoke"] is True and out["devices"] == 2
    workdir = out["workdir"]
    assert workdir.startswith(str(tmp_path)), "smoke mode works in a temporary folder"

    # Nothing installed, no Drive, no TensorBoard server: each says what it would have done.
    assert "would run" in cell_text(nb.cells[2]) and "pip install" in cell_text(nb.cells[2])
    assert "would mount Google Drive" in cell_text(cell_with(nb, "drive.mount"))
    assert "%tensorboard --logdir" in cell_text(cell_with(nb, "LOGDIR ="))
    assert "2 CPU device(s)" in cell_text(cell_with(nb, "jax.devices()"))

    # All stages ran, with training curves for each network.
    assert out["stages"] == ["original", "divide", "branches", "joint", "evaluate"]
    # The quickstart's recipe, shrunk: its hard branch is -O itself, so there is no branch3 stage.
    assert set(out["curves"]) == {"original", "branch1", "branch2", "joint"}
    assert all("train/loss" in tags for tags in out["curves"].values())
    curves_png = pngs(cell_with(nb, "curves_figure"))
    assert len(curves_png) == 1 and curves_png[0].startswith(PNG_MAGIC)

    # The paper's table: ClassSR, -O and bicubic PSNR on the held-out photos.
    table = cell_text(cell_with(nb, "evaluation_table"))
    assert "PSNR" in table and "ClassSR-FSRCNN" in table and "FSRCNN-O" in table and "Bicubic" in table
    assert os.path.isfile(os.path.join(workdir, "evaluation", "results.json"))

    # The exported Orbax checkpoints open, and the workdir itself means its export/classsr.
    assert out["exports"] == ["classsr", "original"]
    classsr = checkpointing.load_model(resolve_model_dir(workdir))
    assert classsr.path == os.path.join(workdir, "export", "classsr")
    assert classsr.spec == ModelSpec("classsr", "fsrcnn", (4, 6, 8), 4, {"s": 4, "m": 1})
    original = checkpointing.load_model(os.path.join(workdir, "export", "original"))
    assert original.spec.kind == "network" and original.spec.widths == (8,)
    assert os.path.join(workdir, "export", "classsr") in cell_text(cell_with(nb, "format_exports"))


def test_demo_notebook_compares_and_sweeps_the_budget_in_smoke_mode(kernel_dir, tmp_path):
    probe = (
        '{"checkpoint": CHECKPOINT, "image": IMAGE, "sweep": sweep, "lr": list(lr.shape), "hr": list(hr.shape), '
        '"sr": list(comparison.sr.shape), "flops_percent": comparison.flops_percent, '
        '"class_counts": comparison.class_counts, "psnr_bicubic": comparison.psnr_bicubic, '
        '"psnr_sr": comparison.psnr_sr}'
    )
    nb, out = execute("upscale_demo", kernel_dir, tmp_path, probe)
    assert out["checkpoint"] == "quickstart" and out["image"] == "chelsea"
    assert "would run" in cell_text(nb.cells[1])
    assert "would mount Google Drive" in cell_text(cell_with(nb, "drive.mount"))
    opened = cell_text(cell_with(nb, "demo_setup"))
    assert "the bundled model quickstart" in opened
    assert "ClassSR-fsrcnn x4 (widths 16/36/56)" in opened
    assert checkpointing.open_model(out["checkpoint"]).spec.widths == (16, 36, 56)

    # Side by side: one figure; the SR image is exactly scale × the LR; the FLOPs figure is the paper's.
    assert out["sr"] == out["hr"] == [4 * out["lr"][0], 4 * out["lr"][1], 3]
    assert sum(out["class_counts"]) > 0 and 0 < out["flops_percent"] < 110
    assert out["psnr_sr"] > out["psnr_bicubic"]  # the bundled model never saw chelsea, and beats bicubic on it
    _, lr, hr = nh.demo_pair("chelsea", 4)  # the notebook's pair (tested in test_notebook_helpers)
    assert out["psnr_bicubic"] == pytest.approx(psnr_rgb(matlab_bicubic_upscale(lr, 4), hr, 4), abs=0.01)  # 30.05 dB
    shown = cell_with(nb, "comparison_figure")
    assert "saved" in cell_text(shown) and len(pngs(shown)) == 1 and pngs(shown)[0].startswith(PNG_MAGIC)

    # The budget sweep: the budget is a cap (free routing when it fits), FLOPs never decrease with it.
    sweep = out["sweep"]
    assert [row["budget"] for row in sweep] == [0.4, 0.6, 0.8, 1.0]
    flops = [row["flops_percent"] for row in sweep]
    assert all(a <= b for a, b in zip(flops, flops[1:])) and flops[-1] > flops[0]
    cost = model_flops(ModelSpec("classsr", "fsrcnn", (16, 36, 56), 4))
    for row in sweep:  # the paper's figure of the row's class counts (Class-Module included), within the budget
        mean = sum(n * f for n, f in zip(row["class_counts"], cost.branches)) / sum(row["class_counts"])
        assert row["flops_percent"] == pytest.approx(100 * (mean + cost.classifier) / cost.branches[-1], rel=1e-12)
        assert row["flops_percent"] <= 100 * row["budget"]
    assert all(np.isfinite(row["psnr"]) for row in sweep)
    plot = cell_with(nb, "budget_figure")
    assert "| budget |" in cell_text(plot) and len(pngs(plot)) == 1
