"""classsr_jax.notebooks: what the Colab notebooks compute (configs, curves, exports, checkpoints,
side-by-side comparison, budget sweep), tested without a notebook kernel."""

import os
import tempfile

import jax
import numpy as np
import pytest
import torch
import torch_reference as ref
from independent import matlab_bicubic_upscale, psnr_rgb
from PIL import Image

from classsr_jax import checkpointing
from classsr_jax import notebooks as nh
from classsr_jax.errors import ConfigError
from classsr_jax.evaluation import scoring
from classsr_jax.inference.upscaler import Upscaler
from classsr_jax.training import configuration

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# ------------------------------------------------------------------------------------------------ configs


def test_configs_are_found_by_name_or_path_and_unknown_names_list_the_available_ones():
    from configs import quickstart

    assert configuration.load_config("quickstart").to_dict() == quickstart.get_config().to_dict()
    assert configuration.load_config(os.path.join(REPO, "configs", "rcan.py")).model.network == "rcan"
    with pytest.raises(ConfigError, match="available: .*fsrcnn.*quickstart"):
        configuration.find_config("nope")
    with pytest.raises(ConfigError, match="does not exist"):
        configuration.find_config("nope.py")


def test_overrides_set_dotted_fields_and_refuse_unknown_ones():
    config = configuration.apply_overrides(
        configuration.load_config("fsrcnn"), {"original.num_steps": 7, "half_precision": True}
    )
    assert config.original.num_steps == 7 and config.half_precision is True
    with pytest.raises(ConfigError, match="original.num_stepz"):
        configuration.apply_overrides(config, {"original.num_stepz": 1})
    with pytest.raises(ConfigError, match="nowhere.x"):
        configuration.apply_overrides(config, {"nowhere.x": 1})


def test_training_config_chooses_drive_manual_dir_or_the_tfds_catalogue(tmp_path):
    drive = nh.training_config("fsrcnn", data="drive", manual_dir="/drive/DIV2K_HR", data_dir=str(tmp_path / "tfds"))
    assert drive.data.dataset == "classsr_div2k/x4_aug" and drive.data.manual_dir == "/drive/DIV2K_HR"
    assert os.path.isdir(tmp_path / "tfds") and drive.data.data_dir == str(tmp_path / "tfds")
    catalogue = nh.training_config("carn", data="catalogue", manual_dir="/ignored")
    assert (catalogue.data.dataset, catalogue.data.validation_dataset) == ("div2k/bicubic_x4", "div2k/bicubic_x4")
    assert catalogue.data.validation_split == "validation[:10]" and catalogue.data.manual_dir == ""
    for config in (drive, catalogue):
        configuration.validate_config(config)
    with pytest.raises(ValueError, match="needs manual_dir"):
        nh.training_config("fsrcnn", data="drive")
    with pytest.raises(ValueError, match="unknown data source"):
        nh.training_config("fsrcnn", data="usb")


def test_training_setup_smoke_is_a_tiny_valid_run_in_a_new_temporary_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    config, workdir = nh.training_setup(
        True, "rcan", data="drive", workdir="/ignored", overrides={"half_precision": True}
    )
    assert workdir.startswith(str(tmp_path)) and not os.path.exists(workdir)
    assert os.path.isdir(config.data.data_dir) and config.data.data_dir.startswith(str(tmp_path))
    assert config.data.dataset == "classsr_bundled/x4" and tuple(config.model.widths) == (4, 6, 8)
    assert config.half_precision is False  # smoke mode ignores the real run's overrides
    for stage in ("original", "branches", "joint"):
        assert config[stage].num_steps <= 8 and config[stage].batch_size % 8 == 0
    assert "4/6/8" in nh.describe_config(config)
    real, real_workdir = nh.training_setup(
        False, "srresnet", data="catalogue", workdir=str(tmp_path / "w"), overrides={"original.num_steps": 5}
    )
    assert real.model.network == "srresnet" and real.original.num_steps == 5 and real_workdir == str(tmp_path / "w")
    with pytest.raises(ValueError, match="workdir"):
        nh.training_setup(False, "fsrcnn", data="catalogue")


# -------------------------------------------------------------------------------------------- run outputs


def test_training_curves_read_the_scalars_back_from_tensorboard_event_files(tmp_path):
    from clu import metric_writers

    for stage, offset in (("original", 0.0), ("joint", 5.0)):
        writer = metric_writers.create_default_writer(str(tmp_path / "tensorboard" / stage), asynchronous=False)
        for step in (2, 4, 6):
            writer.write_scalars(step, {"train/loss": offset + 1.0 / step, "val/psnr": 20.0 + step})
        writer.write_images(6, {"val/sr": np.zeros((1, 8, 8, 3), np.float32)})
        writer.flush()
        writer.close()
    curves = nh.training_curves(str(tmp_path), tags=("train/loss", "val/psnr", "val/sr", "missing"))
    assert set(curves) == {"original", "joint"}
    steps, values = curves["joint"]["train/loss"]
    assert steps == [2, 4, 6] and values == pytest.approx([5.5, 5.25, 5.0 + 1 / 6])
    assert curves["original"]["val/psnr"][1] == pytest.approx([22.0, 24.0, 26.0])
    assert "val/sr" not in curves["original"] and "missing" not in curves["original"]  # images are not curves
    assert nh.training_curves(str(tmp_path / "nothing")) == {}
    assert nh.figure_png(nh.curves_figure(curves)).startswith(PNG_MAGIC)


def test_exported_models_are_listed_with_their_description_and_parameter_count(official, tmp_path):
    loaded, _ = official
    checkpointing.save_model(str(tmp_path / "export" / "classsr"), loaded.spec, loaded.variables)
    exports = nh.exported_models(str(tmp_path))
    params = sum(np.size(v) for v in jax.tree_util.tree_leaves(loaded.variables["params"]))  # counted by hand
    assert params == 112_940  # the README's ClassSR-FSRCNN
    assert exports == [
        {
            "name": "classsr",
            "path": str(tmp_path / "export" / "classsr"),
            "model": "ClassSR-fsrcnn x4 (widths 16/36/56)",
            "params": params,
        }
    ]
    assert "| classsr | ClassSR-fsrcnn x4 (widths 16/36/56) | 112,940 |" in nh.format_exports(exports)
    assert nh.exported_models(str(tmp_path / "none")) == []


def test_evaluation_table_comes_from_the_results_or_the_saved_table(tmp_path):
    assert nh.evaluation_table({"evaluation": {"table": "| T |"}}, str(tmp_path)) == "| T |"
    assert "No evaluation yet" in nh.evaluation_table({"evaluation": None}, str(tmp_path))
    os.makedirs(tmp_path / "evaluation")
    (tmp_path / "evaluation" / "table.md").write_text("| saved |\n")
    assert nh.evaluation_table(None, str(tmp_path)) == "| saved |"


# ------------------------------------------------------------------------------------- checkpoints, images


@pytest.fixture(scope="module")
def official(tmp_path_factory):
    """An official-format ClassSR-FSRCNN .pth (random weights) converted into a checkpoint by open_checkpoint."""
    model = ref.randomize_(ref.build_classsr("fsrcnn").eval(), seed=5)
    root = tmp_path_factory.mktemp("official")
    pth = str(root / "ClassSR_FSRCNN.pth")
    torch.save(model.state_dict(), pth)
    loaded = nh.open_checkpoint(str(root / "classsr_fsrcnn"), official_pth=pth, network="fsrcnn")
    return loaded, pth


def test_an_official_pth_is_converted_once_and_then_reopened(official):
    loaded, pth = official
    assert (loaded.spec.kind, loaded.spec.network, loaded.spec.widths) == ("classsr", "fsrcnn", (16, 36, 56))
    assert loaded.metadata["converted_from"] == pth
    again = nh.open_checkpoint(loaded.path, official_pth="/does/not/exist.pth", network="fsrcnn")  # not reconverted
    jax.tree_util.tree_map(np.testing.assert_array_equal, again.variables, loaded.variables)
    with pytest.raises(ValueError, match="network="):
        nh.open_checkpoint(loaded.path + "_new", official_pth=pth)


def test_demo_setup_uses_the_bundled_model_only_in_smoke_mode(capsys):
    assert nh.demo_setup(False, "/my/ckpt", "coffee") == ("/my/ckpt", "coffee")
    assert nh.demo_setup(True, "/my/ckpt", "coffee") == ("quickstart", "chelsea")
    assert capsys.readouterr().out == "smoke mode: the bundled model quickstart and the bundled photo 'chelsea'\n"


def test_require_tpu_stops_on_a_runtime_without_one_unless_allowed():
    assert jax.devices()[0].platform == "cpu"
    with pytest.raises(RuntimeError) as err:
        nh.require_tpu(allow_cpu=False)
    assert str(err.value) == (
        f"this runtime has no TPU (JAX sees {jax.device_count()} CPU device(s)): choose Runtime → Change runtime type "
        "→ TPU and run the notebook again, or set ALLOW_CPU = True to go on here"
    )
    assert nh.require_tpu(allow_cpu=True) == "cpu"


def test_training_config_bundled_keeps_the_configs_own_data():
    config = nh.training_config("quickstart", data="bundled", manual_dir="/ignored")
    assert config.data.dataset == "classsr_bundled/x4_aug" and config.data.manual_dir == ""
    configuration.validate_config(config)


def test_demo_pair_degrades_a_bundled_photo_or_a_file_with_the_matlab_bicubic(tmp_path):
    from classsr_jax.data.bicubic import bicubic_degrade

    name, lr, hr = nh.demo_pair("chelsea", 4)  # 451 x 300: cropped to 448 x 300
    assert name == "chelsea" and hr.shape == (300, 448, 3) and lr.shape == (75, 112, 3)
    assert lr.dtype == hr.dtype == np.uint8
    np.testing.assert_array_equal(lr, bicubic_degrade(hr, 4))
    photo = np.random.default_rng(0).integers(0, 256, (50, 61, 3), dtype=np.uint8)
    Image.fromarray(photo).save(tmp_path / "mine.png")
    name, lr, hr = nh.demo_pair(str(tmp_path / "mine.png"), 3)
    assert name == "mine" and lr.shape == (16, 20, 3)
    np.testing.assert_array_equal(hr, photo[:48, :60])


# --------------------------------------------------------------------------------- comparison and budget


@pytest.fixture(scope="module")
def upscaler(official):
    loaded, _ = official
    return Upscaler(loaded.spec, loaded.variables)


def test_compare_shows_lr_bicubic_classsr_and_the_class_map_with_the_flops_saved(upscaler):
    from classsr_jax.inference.class_map import class_map_overlay

    name, lr, hr = nh.demo_pair("coffee", 4)
    c = nh.compare(upscaler, lr, hr, name)
    direct = upscaler.upscale(lr.astype(np.float32) / 255.0)
    assert c.sr.shape == c.bicubic.shape == c.class_map.shape == hr.shape
    assert c.class_counts == direct.class_counts and sum(c.class_counts) == direct.grid.num_tiles
    assert c.flops_percent == pytest.approx(direct.flops_percent)
    assert c.flops_saved_percent == pytest.approx(100 - direct.flops_percent)
    np.testing.assert_array_equal(c.bicubic, matlab_bicubic_upscale(lr, 4))
    assert c.psnr_bicubic == pytest.approx(psnr_rgb(matlab_bicubic_upscale(lr, 4), hr, 4), abs=0.01)
    assert c.psnr_sr == pytest.approx(psnr_rgb(direct.sr, hr, 4), abs=0.01)
    # The class map is the paper's picture (the `--mask` of the upscale command) of this routing.
    np.testing.assert_array_equal(c.class_map, class_map_overlay(c.sr, direct.grid.hr_boxes(4), direct.classes))
    assert f"{c.flops_saved_percent:.0f}% saved" in c.summary()
    assert nh.figure_png(nh.comparison_figure(c)).startswith(PNG_MAGIC)


def test_budget_sweep_caps_the_flops_and_reuses_the_programs(official, upscaler):
    _, lr, hr = nh.demo_pair("coffee", 4)
    free = upscaler.upscale(lr)
    compilations = upscaler.num_compilations
    budgets = (0.35, 0.5, 0.7, free.flops_percent / 100 + 0.05)
    sweep = nh.budget_sweep(upscaler, lr, hr, budgets)
    assert upscaler.num_compilations == compilations  # the routing programs are reused
    flops = [row["flops_percent"] for row in sweep]
    assert all(a <= b for a, b in zip(flops, flops[1:])) and flops[-1] > flops[0]
    for row in sweep:
        assert row["flops_percent"] <= 100 * row["budget"]  # a ceiling, the Class-Module's FLOPs included
    # A cap above free routing leaves it as it is: the same classes, the same PSNR.
    assert sweep[-1]["class_counts"] == free.class_counts
    assert sweep[-1]["psnr"] == pytest.approx(scoring.image_metrics(free, hr, 4)["psnr"], abs=1e-9)
    assert "| 0.35 |" in nh.format_sweep(sweep)
    assert nh.figure_png(nh.budget_figure(sweep)).startswith(PNG_MAGIC)
    with pytest.raises(
        ValueError, match=r"^the budget must be a positive fraction of the -O network's FLOPs, got 0.0$"
    ):
        nh.budget_sweep(upscaler, lr, hr, (0.5, 0.0))


def test_budget_sweep_needs_a_classsr_model(official):
    loaded, _ = official
    spec = loaded.spec.branch(2)
    single = Upscaler(spec, {"params": loaded.variables["params"]["net3"]})
    with pytest.raises(ValueError, match=r"^a FLOPs budget needs a ClassSR model; this one is a single network$"):
        nh.budget_sweep(single, np.zeros((8, 8, 3), np.uint8), np.zeros((32, 32, 3), np.uint8))
