"""classsr_jax.checkpointing: model checkpoints (finite values only, digests, parameter counts), the training
CheckpointManager (last N and best, restore), and failing Orbax saves as one-line errors."""

import os
import subprocess
import sys

import jax
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from flax.traverse_util import flatten_dict, unflatten_dict
from orbax_faults import DiskFull, faulty_async_save

from classsr_jax import checkpointing, parallel
from classsr_jax.checkpointing import resolve_model_dir
from classsr_jax.errors import CheckpointError
from classsr_jax.models import ModelSpec
from classsr_jax.training import train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_EXTRA = {"s": 4, "m": 1}
SPEC = ModelSpec("classsr", "fsrcnn", (4, 6, 8), 2, TINY_EXTRA)


def random_variables(spec, seed=0):
    rng = np.random.default_rng(seed)
    shapes = spec.abstract()
    return jax.tree_util.tree_map(lambda a: (0.1 * rng.normal(size=a.shape)).astype(a.dtype), dict(shapes))


def write_model_with_orbax(directory, spec, variables):
    """A model checkpoint written straight through Orbax, bypassing save_model's checks (a damaged export)."""
    description = {
        "format": checkpointing.FORMAT,
        "version": checkpointing.FORMAT_VERSION,
        "model": spec.to_dict(),
        "metadata": {},
    }
    variables = {**variables, "batch_stats": {}}
    with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as ckptr:
        ckptr.save(
            directory,
            ocp.args.Composite(variables=ocp.args.StandardSave(variables), model=ocp.args.JsonSave(description)),
        )


def with_value(variables, path, value):
    flat = flatten_dict(variables)
    key = tuple(path.split("/"))
    array = np.array(flat[key], copy=True)
    array.flat[1] = value
    flat[key] = array
    return unflatten_dict(flat)


# ----------------------------------------------------------------------------------------------- models


def test_save_and_load_round_trip_with_count_and_digest(tmp_path):
    variables = random_variables(SPEC)
    path = checkpointing.save_model(str(tmp_path / "m"), SPEC, variables, {"note": "x"})
    loaded = checkpointing.load_model(path)
    assert loaded.spec == SPEC and loaded.metadata == {"note": "x"} and loaded.path == path
    jax.tree_util.tree_map(np.testing.assert_array_equal, loaded.variables, variables)
    by_hand = sum(int(np.prod(a.shape)) for a in jax.tree_util.tree_leaves(variables["params"]))
    assert checkpointing.count_params(loaded.variables) == by_hand
    assert checkpointing.count_params(SPEC.abstract()) == by_hand  # shapes suffice
    digest = checkpointing.variables_digest(loaded.variables)
    assert digest == checkpointing.variables_digest(variables) and digest.startswith("sha256:")
    changed = with_value(variables, "params/classifier/fc/kernel", 0.5)
    assert checkpointing.variables_digest(changed) != digest


def test_load_model_refuses_non_finite_parameters_naming_the_first(tmp_path):
    variables = with_value(random_variables(SPEC), "params/net2/head_conv/kernel", np.nan)
    variables = with_value(variables, "params/net3/tail_deconv/kernel", np.inf)
    path = str(tmp_path / "diverged")
    write_model_with_orbax(path, SPEC, variables)
    with pytest.raises(CheckpointError) as err:
        checkpointing.load_model(path)
    assert str(err.value) == (
        f"checkpoint {path} has non-finite values (NaN or infinity) in params/net2/head_conv/kernel; it cannot be used"
    )
    # Nothing writes one either.
    with pytest.raises(
        CheckpointError, match=r"^refusing to write .*/again: parameter params/net2/head_conv/kernel is not finite"
    ):
        checkpointing.save_model(str(tmp_path / "again"), SPEC, variables)
    assert not os.path.exists(tmp_path / "again")


def test_resolve_model_dir_takes_a_model_or_a_workdirs_export(tmp_path):
    model = checkpointing.save_model(str(tmp_path / "run" / "export" / "classsr"), SPEC, random_variables(SPEC))
    assert resolve_model_dir(model) == model
    assert resolve_model_dir(str(tmp_path / "run")) == model
    os.makedirs(tmp_path / "empty")
    with pytest.raises(CheckpointError) as err:
        resolve_model_dir(str(tmp_path / "empty"))
    assert (
        str(err.value)
        == f"{tmp_path / 'empty'} is not a classsr_jax checkpoint (no model/ and variables/ inside, "
        "and no export/classsr)"
    )
    with pytest.raises(CheckpointError) as err:
        resolve_model_dir(str(tmp_path / "nowhere"))
    assert str(err.value) == (
        f"checkpoint {tmp_path / 'nowhere'} does not exist "
        "(and it is not a bundled model: quickstart, quickstart-original)"
    )
    with pytest.raises(CheckpointError, match=r"is not a classsr_jax checkpoint \(no model/ and variables/ inside\)$"):
        checkpointing.load_model(str(tmp_path / "run"))  # load_model itself takes a model directory only


def test_bundled_names_open_the_package_models_unless_a_path_of_that_name_exists(tmp_path, monkeypatch):
    package = os.path.dirname(os.path.abspath(checkpointing.__file__))
    monkeypatch.chdir(tmp_path)
    assert resolve_model_dir("quickstart") == os.path.join(package, "pretrained", "quickstart")
    assert resolve_model_dir("quickstart-original") == os.path.join(package, "pretrained", "quickstart-original")
    classsr, original = checkpointing.open_model("quickstart"), checkpointing.open_model("quickstart-original")
    assert (classsr.spec.kind, classsr.spec.network, classsr.spec.widths, classsr.spec.scale) == (
        "classsr",
        "fsrcnn",
        (16, 36, 56),
        4,
    )
    assert (original.spec.kind, original.spec.widths) == ("network", (56,))
    # A folder called quickstart in the working directory is what the user means.
    model = checkpointing.save_model(str(tmp_path / "quickstart"), SPEC, random_variables(SPEC))
    assert resolve_model_dir("quickstart") == "quickstart" and os.path.abspath("quickstart") == model


def test_a_failing_model_write_is_one_line_naming_the_directory_and_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(ocp.StandardCheckpointHandler, "async_save", faulty_async_save(DiskFull))
    target = str(tmp_path / "export" / "classsr")
    with pytest.raises(CheckpointError) as err:
        checkpointing.export_model(target, SPEC, random_variables(SPEC), {"stage": "joint"})
    assert str(err.value) == f"cannot write model {target}: OSError: [Errno 28] No space left on device"
    assert os.listdir(tmp_path / "export") == []  # no half-written folder, no temporary left behind


# ------------------------------------------------------------------------------------- training state


def test_checkpoint_manager_keeps_the_last_n_and_the_best(tmp_path):
    state = {"w": np.zeros(3, np.float32)}
    with checkpointing.train_checkpoint_manager(
        str(tmp_path), keep_last=2, save_every_steps=1, asynchronous=False
    ) as manager:
        for step, psnr in zip(range(1, 7), [20.0, 25.0, 21.0, 22.0, 23.0, 22.5]):
            checkpointing.save_train_state(
                manager, step, {"w": state["w"] + step}, {"stage": "t"}, metrics={"psnr": psnr}, force=True
            )
        manager.wait_until_finished()
        assert list(manager.all_steps()) == [2, 5, 6]
        assert manager.best_step() == 2
        restored, progress = checkpointing.restore_train_state(
            manager, 2, {"w": jax.ShapeDtypeStruct((3,), np.float32)}
        )
    np.testing.assert_array_equal(restored["w"], np.full(3, 2, np.float32))
    assert progress == {"stage": "t"}
    assert checkpointing.latest_train_step(str(tmp_path)) == 6
    assert checkpointing.read_train_progress(str(tmp_path)) == {"stage": "t"}


def test_restoring_another_architecture_is_a_one_line_error(tmp_path):
    tx = optax.adam(1e-3)
    spec = ModelSpec("classsr", "fsrcnn", (4, 6, 8), 2, TINY_EXTRA)
    zeros = jax.tree_util.tree_map(lambda a: np.zeros(a.shape, a.dtype), spec.abstract())
    state = train.create_train_state(zeros, tx, ("classifier",))
    with checkpointing.train_checkpoint_manager(str(tmp_path), asynchronous=False) as manager:
        checkpointing.save_train_state(manager, 1, state, {"stage": "joint"}, force=True)
    other = ModelSpec("classsr", "srresnet", (4, 4, 8), 2, {"nb": 1})
    abstract = train.abstract_train_state(other, tx, None, parallel.create_mesh(), 32)
    with checkpointing.train_checkpoint_manager(str(tmp_path), asynchronous=False) as manager:
        with pytest.raises(CheckpointError) as err:
            checkpointing.restore_train_state(manager, 1, abstract)
    assert "does not fit this run" in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("failing_step", [2, 3])
def test_a_failing_background_save_is_one_line_at_the_next_save_or_the_wait(tmp_path, monkeypatch, failing_step):
    """Step 2's background write fails: the error surfaces at step 3's save; step 3's (the last) at the wait.
    Either way the last complete checkpoint stays the latest."""
    monkeypatch.setattr(ocp.StandardCheckpointHandler, "async_save", faulty_async_save(DiskFull, skip=failing_step - 1))
    directory = str(tmp_path / "checkpoints")
    manager = checkpointing.train_checkpoint_manager(directory, keep_last=5, save_every_steps=1, asynchronous=True)
    with pytest.raises(CheckpointError) as err:
        for step in range(1, 4):
            checkpointing.save_train_state(
                manager, step, {"w": np.full(3, step, np.float32)}, {"step": step}, force=True
            )
        checkpointing.wait_for_train_saves(manager)
    where = (
        f"the training checkpoint of step 3 in {directory}"
        if failing_step == 2
        else f"a training checkpoint in {directory}"
    )
    assert str(err.value) == f"cannot save {where}: OSError: [Errno 28] No space left on device"
    manager.close()
    assert checkpointing.latest_train_step(directory) == failing_step - 1


def test_the_model_door_runs_without_tensorflow_clu_or_ml_collections():
    """upscale and evaluate open workdirs through workdir.resolve_model_dir on a bare JAX machine."""
    code = (
        "import sys; import classsr_jax.training.workdir, classsr_jax.checkpointing; "
        "print(sorted(m for m in ('tensorflow', 'clu', 'ml_collections') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"
