"""Training: schedule, steps (data parallel, frozen branches, BatchNorm), configs, the stages end to end on a
tiny model (configs/smoke.py), NaN and failing saves, fresh evaluation results, CLI errors, resume after kill -9
(also in the middle of a background save), and a 2-process run."""

import functools
import json
import os
import signal
import socket
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from orbax_faults import TMP_SUFFIX, DiskFull, faulty_async_save

from classsr_jax import checkpointing, parallel
from classsr_jax.checkpointing import resolve_model_dir
from classsr_jax.data import input_pipeline
from classsr_jax.data.colour_augment import ColourAugment
from classsr_jax.errors import CheckpointError, ConfigError, TrainError
from classsr_jax.models import ModelSpec, slim
from classsr_jax.models.interpolation_init import interpolating_params
from classsr_jax.training import configuration, stages, train, validation
from classsr_jax.training.losses import Objective
from classsr_jax.training.workdir import Workdir

pytestmark = pytest.mark.slow  # whole training runs, kill -9 and multi-process runs: out of the quick loop

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_EXTRA = {"s": 4, "m": 1}


def load_config_file(name):
    return configuration.load_config(os.path.join(REPO, name))


def tiny_config(data, **overrides):
    photos, tfds_dir = data
    return configuration.load_config(
        "configs/smoke.py", {"data.manual_dir": photos, "data.data_dir": tfds_dir, **overrides}
    )


# ------------------------------------------------------------------------------------------------ schedule


def test_learning_rate_schedule_is_the_truncated_cosine_of_the_original():
    # The original's joint schedule: lr(1) = 2e-4, lr(100k) = 1.8091e-4, lr(200k) = 1.3094e-4;
    # RCAN 2.7326e-5 and 2.0326e-5.
    schedule = train.learning_rate_schedule(2e-4, 1e-7, 500_000)
    assert float(schedule(0)) == pytest.approx(2e-4, rel=1e-6)  # optax count 0 is update 1
    assert float(schedule(100_000 - 1)) == pytest.approx(1.8091e-4, rel=1e-4)
    assert float(schedule(200_000 - 1)) == pytest.approx(1.3094e-4, rel=1e-4)
    rcan = train.learning_rate_schedule(3e-5, 2e-6, 500_000)
    assert float(rcan(100_000 - 1)) == pytest.approx(2.7326e-5, rel=1e-4)
    assert float(rcan(200_000 - 1)) == pytest.approx(2.0326e-5, rel=1e-4)
    # Branch pretraining: one cosine that reaches eta_min at update 500k; update 500,001 restarts (weight 1).
    branch = train.learning_rate_schedule(1e-3, 1e-7, 500_000)
    assert float(branch(500_000 - 1)) == pytest.approx(1e-7, rel=1e-3)
    assert float(branch(500_000)) == pytest.approx(1e-3, rel=1e-6)


# ------------------------------------------------------------------------------------------------- configs


@pytest.mark.parametrize("name", ["fsrcnn", "carn", "srresnet", "rcan", "quickstart", "smoke"])
def test_configs_validate_and_start_with_their_command(name):
    config = load_config_file(f"configs/{name}.py")
    configuration.validate_config(config)
    doc = open(os.path.join(REPO, "configs", f"{name}.py")).read()
    assert doc.split('"""')[1].startswith(f"python -m classsr_jax.main --config configs/{name}.py --workdir")
    assert (config.optimizer.b1, config.optimizer.b2) == (0.9, 0.99)


def test_paper_configs_carry_the_papers_hyperparameters():
    configs = {n: load_config_file(f"configs/{n}.py") for n in ("fsrcnn", "carn", "srresnet", "rcan")}
    for name, config in configs.items():
        assert tuple(config.model.widths) == {"fsrcnn": (16, 36, 56), "rcan": (36, 50, 64)}.get(name, (36, 52, 64))
        joint = config.joint
        assert (joint.num_steps, joint.cosine_period, joint.class_loss_weight, joint.average_loss_weight) == (
            200_000,
            500_000,
            0.5,
            3.0,
        )
        assert joint.batch_size == (60 if name == "rcan" else 96)
        assert config.branches.batch_size == 16 and config.branches.cosine_period == 500_000
        assert config.branches.learning_rate == (1e-3 if name == "fsrcnn" else 2e-4)
    assert (configs["fsrcnn"].joint.learning_rate, configs["fsrcnn"].joint.l1_weight) == (2e-4, 1000.0)
    rcan = configs["rcan"]
    assert (rcan.joint.learning_rate, rcan.joint.eta_min, rcan.joint.l1_weight, rcan.loss.pixel_range) == (
        3e-5,
        2e-6,
        4.0,
        255.0,
    )
    assert rcan.branches.num_steps == 1_000_000


def retyped(data, section, field, value):
    """The smoke config with one field holding a value of another type (an override of it would be refused)."""
    config = tiny_config(data)
    del config[section][field]
    config[section][field] = value
    return config


def test_unknown_missing_and_bad_config_fields_are_one_line_errors(data):
    # The config is the only schema: an override of a field it does not have, or of another type, is refused.
    with pytest.raises(ConfigError, match=r"^unknown config field\(s\): joint\.lr$"):
        tiny_config(data, **{"joint.lr": 1.0})
    with pytest.raises(ConfigError, match=r"^config field joint\.batch_size: .*int"):
        tiny_config(data, **{"joint.batch_size": "8"})
    config = tiny_config(data)
    del config.evaluate["protocol"]
    with pytest.raises(ConfigError, match=r"^config lacks field\(s\): evaluate\.protocol$"):
        configuration.validate_config(config)
    with pytest.raises(ConfigError, match=r"^config field stages has unknown stage\(s\) jointt: use 'all'"):
        configuration.validate_config(tiny_config(data, stages="original,jointt"))
    with pytest.raises(ConfigError, match=r"^config field joint.batch_size must be int, got '8'$"):
        configuration.validate_config(retyped(data, "joint", "batch_size", "8"))
    with pytest.raises(ConfigError, match=r"^config field joint.num_steps must be positive, got 0$"):
        configuration.validate_config(tiny_config(data, **{"joint.num_steps": 0}))
    with pytest.raises(
        ConfigError, match=r"^config field model.widths needs 3 widths \(simple, medium, hard\), got \(4, 6\)$"
    ):
        configuration.validate_config(tiny_config(data, **{"model.widths": (4, 6)}))
    with pytest.raises(ConfigError, match=r"^config field model: unknown field\(s\) for fsrcnn: q$"):
        configuration.validate_config(tiny_config(data, **{"model.extra": {"q": 1}}))
    with pytest.raises(
        ConfigError, match=r"^config field evaluate.datasets: 'div2k' is neither 'validation' nor 'dataset:split'$"
    ):
        configuration.validate_config(tiny_config(data, **{"evaluate.datasets": "validation,test=div2k"}))
    with pytest.raises(
        ConfigError,
        match=r"^config field evaluate.budget is -0.5: use a positive share of the -O FLOPs, or 0 for none$",
    ):
        configuration.validate_config(tiny_config(data, **{"evaluate.budget": -0.5}))
    with pytest.raises(ConfigError, match=r"^config field finetune.calibrate_routing is 1: use True or False$"):
        configuration.validate_config(retyped(data, "finetune", "calibrate_routing", 1))
    with pytest.raises(ConfigError, match=r"^config field branches.slim_from_original is 'yes': use True or False$"):
        configuration.validate_config(retyped(data, "branches", "slim_from_original", "yes"))
    with pytest.raises(
        ConfigError,
        match=r"^config field branches.slim_from_original: cutting branches out of -O is implemented for fsrcnn, "
        r"not carn$",
    ):
        configuration.validate_config(
            tiny_config(data, **{"model.network": "carn", "model.extra": {}, "branches.slim_from_original": True})
        )
    with pytest.raises(
        ConfigError,
        match=r"^config field branches.slim_from_original needs branches no wider than -O \(the last width\), "
        r"got \(4, 10, 8\)$",
    ):
        configuration.validate_config(
            tiny_config(data, **{"model.widths": (4, 10, 8), "branches.slim_from_original": True})
        )
    with pytest.raises(ConfigError, match=r"^config field model.init is 'bicubic': use 'paper' or 'interpolation'$"):
        configuration.validate_config(tiny_config(data, **{"model.init": "bicubic"}))
    with pytest.raises(
        ConfigError, match=r"^config field model.init: an interpolating start is implemented for fsrcnn, not carn$"
    ):
        configuration.validate_config(
            tiny_config(data, **{"model.network": "carn", "model.extra": {}, "model.init": "interpolation"})
        )
    with pytest.raises(
        ConfigError, match=r"^config field cpu_devices is -1: use a number of devices, or 0 for JAX's default$"
    ):
        configuration.validate_config(tiny_config(data, cpu_devices=-1))
    assert configuration.selected_stages(tiny_config(data)) == ("original", "divide", "branches", "joint", "evaluate")
    assert "finetune" in configuration.selected_stages(tiny_config(data, **{"finetune.enabled": True}))


def test_each_stage_draws_its_tiles_where_its_config_says(data, tmp_path, monkeypatch):
    """branches.tiles 'class': branch k gets the division and class k, 'any': neither; joint/finetune.tiles
    'grid': the division without a class, 'any': neither; stage original always draws any tile."""
    from classsr_jax.data import division as division_lib

    work = Workdir(str(tmp_path))
    division_lib.save_division(
        division_lib.Division(
            names=("a",),
            image_index=np.zeros(3, np.int32),
            y=np.zeros(3, np.int32),
            x=np.array([0, 16, 32], np.int32),
            psnr=np.array([20.0, 30.0, 40.0], np.float32),
            label=np.array([2, 1, 0], np.int8),
            thresholds=(25.0, 35.0),
            scale=2,
        ),
        work.division,
    )
    drawn = []
    monkeypatch.setattr(
        stages, "create_train_iterator", lambda _, **kw: drawn.append((kw["division"], kw["class_filter"]))
    )

    def draws(stage, **overrides):
        config = tiny_config(data, **overrides)
        ctx = stages.StageContext(config, work, configuration.model_spec(config), parallel.local_mesh(), jnp.float32)
        ctx.datasets[f"{config.data.dataset}:{config.data.train_split}"] = None  # not opened: the patch ignores it
        drawn.clear()
        for unit in stages.plan_training(ctx, stage):
            unit.make_iterator(0)
        return [(None if d is None else d.names, k) for d, k in drawn]

    assert draws("branches") == [(("a",), 0), (("a",), 1), (("a",), 2)]
    assert draws("branches", **{"branches.tiles": "any"}) == [(None, None)] * 3
    assert draws("joint") == [(("a",), None)]
    assert draws("joint", **{"joint.tiles": "any"}) == [(None, None)]
    assert draws("finetune", **{"finetune.tiles": "any"}) == [(None, None)]
    assert draws("original", **{"joint.tiles": "grid"}) == [(None, None)]
    with pytest.raises(ConfigError, match=r"^config field joint.tiles is 'class': use 'grid' or 'any'$"):
        configuration.validate_config(tiny_config(data, **{"joint.tiles": "class"}))
    with pytest.raises(ConfigError, match=r"^config field branches.tiles is 'grid': use 'class' or 'any'$"):
        configuration.validate_config(tiny_config(data, **{"branches.tiles": "grid"}))


def test_load_config_works_from_another_working_directory(tmp_path, monkeypatch):
    """`from configs import fsrcnn` inside a config needs the folder holding configs/ on sys.path: load_config
    puts it there, whatever the working directory and sys.path were."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if os.path.abspath(p or ".") != REPO])
    for name in [m for m in sys.modules if m == "configs" or m.startswith("configs.")]:
        monkeypatch.delitem(sys.modules, name)
    config = configuration.load_config(os.path.join(REPO, "configs", "quickstart.py"), {"original.num_steps": 7})
    assert config.data.dataset == "classsr_bundled/x4_aug" and config.original.num_steps == 7
    assert sys.path[0] == REPO
    # By name, from the checkout this package was imported from; 'name:variant' calls get_config(variant).
    bundled = configuration.load_config("smoke:bundled")
    assert bundled.data.dataset == "classsr_bundled/x4" and bundled.model.scale == 4
    with pytest.raises(ConfigError, match=r"^no config 'nope' in .*; available: .*fsrcnn.*smoke"):
        configuration.load_config("nope")
    with pytest.raises(ConfigError, match=r"^cannot load config smoke:nope: ValueError: unknown smoke variant 'nope'"):
        configuration.load_config("smoke:nope")


# --------------------------------------------------------------------------------------------------- steps


def tiny_classsr(network="fsrcnn", widths=(4, 6, 8), extra=TINY_EXTRA, scale=2):
    spec = ModelSpec("classsr", network, widths, scale, dict(extra))
    return spec, _variables(spec)


@functools.lru_cache(maxsize=None)
def _variables_cached(spec_json):
    """Random variables of the right shapes (jit-compiling model.init would cost seconds per model)."""
    rng = np.random.default_rng(1)
    shapes = ModelSpec.from_dict(json.loads(spec_json)).abstract()
    params = jax.tree_util.tree_map(lambda a: (0.1 * rng.normal(size=a.shape)).astype(a.dtype), shapes["params"])
    stats = jax.tree_util.tree_map(lambda a: (rng.random(a.shape) + 0.5).astype(a.dtype), shapes.get("batch_stats", {}))
    return {"params": params, "batch_stats": stats} if stats else {"params": params}


def _variables(spec):
    return _variables_cached(json.dumps(spec.to_dict(), sort_keys=True))


def tiny_batch(n, scale=2, seed=0):
    rng = np.random.default_rng(seed)
    lr = rng.random((n, 32, 32, 3), np.float32)
    hr = np.clip(lr.repeat(scale, 1).repeat(scale, 2) + 0.05 * rng.normal(size=(n, 32 * scale, 32 * scale, 3)), 0, 1)
    return {"lr": lr, "hr": hr.astype(np.float32)}


def run_steps(mesh, state, batches, step_fn):
    step = parallel.data_parallel(step_fn, mesh)
    state = parallel.replicate(state, mesh)
    for batch in batches:
        state, metrics = step(state, parallel.global_batch(batch, mesh))
    return parallel.host_copy(state), parallel.host_copy(metrics)


@pytest.mark.parametrize("kind", ["classsr", "l1"])
def test_eight_devices_equal_one_device_with_the_same_global_batch(kind):
    spec, variables = tiny_classsr()
    tx = optax.adam(1e-2, b1=0.9, b2=0.99)
    if kind == "classsr":
        model, trainable = spec.build(), ("classifier",)
        objective = Objective("classsr", l1_weight=1000.0, class_loss_weight=0.5, average_loss_weight=3.0)
    else:
        spec = spec.branch(2)
        variables = {"params": variables["params"]["net3"]}
        model, trainable, objective = spec.build(), None, Objective("l1")
    state = train.create_train_state(variables, tx, trainable)
    batches = [tiny_batch(16, seed=s) for s in range(3)]
    step_fn = functools.partial(train.train_step, model=model, tx=tx, objective=objective)
    eight, m8 = run_steps(parallel.create_mesh(), state, batches, step_fn)
    one, m1 = run_steps(parallel.create_mesh(jax.devices()[:1]), state, batches, step_fn)
    others = [one]
    if kind == "classsr":  # and the step without any mesh or collective
        plain = jax.jit(functools.partial(train.train_step, model=model, tx=tx, objective=objective, axis_name=None))
        reference = state
        for batch in batches:
            reference, _ = plain(reference, batch)
        others.append(jax.device_get(reference))
    for other in others:
        jax.tree_util.tree_map(
            lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5, rtol=0), eight.params, other.params
        )
    for key in m8:
        np.testing.assert_allclose(m8[key], m1[key], atol=1e-5, rtol=1e-5)
    assert int(eight.step) == 3
    changed = jax.tree_util.tree_leaves(
        jax.tree_util.tree_map(lambda a, b: np.abs(a - b).max(), eight.params, state.params)
    )
    assert max(changed) > 1e-4  # the steps did train


def test_a_raw_uint8_batch_with_colours_trains_like_its_host_finished_floats():
    """The loop hands the step uint8 tiles and colour matrices (`input_pipeline.finish_batch` runs inside it)."""
    spec, variables = tiny_classsr()
    spec = spec.branch(2)
    model, tx = spec.build(), optax.adam(1e-2, b1=0.9, b2=0.99)
    state = train.create_train_state({"params": variables["params"]["net3"]}, tx, None)
    rng = np.random.default_rng(3)
    hr = rng.integers(0, 256, (16, 32, 32, 3), dtype=np.uint8)
    raw = {
        "lr": hr[:, ::2, ::2].copy(),
        "hr": hr,
        "colour": ColourAugment(permute_channels=True, hue_degrees=180.0, saturation=0.25)
        .draw(rng, 16)
        .astype(np.float32),
    }
    step_fn = functools.partial(train.train_step, model=model, tx=tx, objective=Objective("l1"))
    mesh = parallel.create_mesh()
    from_raw, m_raw = run_steps(mesh, state, [raw], step_fn)
    from_floats, m_floats = run_steps(mesh, state, [input_pipeline.finish_batch(raw)], step_fn)
    jax.tree_util.tree_map(
        lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6, rtol=0), from_raw.params, from_floats.params
    )
    np.testing.assert_allclose(m_raw["loss"], m_floats["loss"], rtol=1e-5)
    assert not np.allclose(input_pipeline.finish_batch(raw)["hr"], hr / 255.0, atol=0.05)  # the colours did change


def count_convs(jaxpr) -> int:
    """conv_general_dilated equations in a jaxpr, including those of nested jaxprs (jit, custom_jvp, …)."""

    def nested(param):
        if hasattr(param, "eqns"):
            return [param]
        if hasattr(param, "jaxpr") and hasattr(param.jaxpr, "eqns"):
            return [param.jaxpr]
        if isinstance(param, (tuple, list)):
            return [j for p in param for j in nested(p)]
        return []

    count = 0
    for eqn in jaxpr.eqns:
        count += eqn.primitive.name == "conv_general_dilated"
        for param in eqn.params.values():
            count += sum(count_convs(inner) for inner in nested(param))
    return count


def test_joint_step_differentiates_only_the_classifier():
    """The frozen branches get no backward pass: the step has the forward convs plus the classifier's
    backward convs, and the branch parameters come out bit-identical."""
    spec, variables = tiny_classsr()
    model, tx = spec.build(), optax.adam(1e-3)
    objective = Objective("classsr", l1_weight=1000.0, class_loss_weight=0.5, average_loss_weight=3.0)
    batch = tiny_batch(4)
    x = batch["lr"]

    def step_convs(trainable):
        state = train.create_train_state(variables, tx, trainable)
        fn = functools.partial(train.train_step, model=model, tx=tx, objective=objective, axis_name=None)
        return count_convs(jax.make_jaxpr(fn)(state, batch).jaxpr)

    forward = count_convs(jax.make_jaxpr(lambda v: model.apply(v, x))(variables).jaxpr)
    classify = lambda p: model.apply({"params": {**variables["params"], "classifier": p}}, x, method=model.classify)
    classifier_forward = count_convs(jax.make_jaxpr(classify)(variables["params"]["classifier"]).jaxpr)
    classifier_grad = count_convs(
        jax.make_jaxpr(jax.grad(lambda p: classify(p).sum()))(variables["params"]["classifier"]).jaxpr
    )
    assert step_convs(("classifier",)) == forward + classifier_grad - classifier_forward
    assert step_convs(None) > step_convs(("classifier",)) + 2 * 3  # fine-tuning differentiates the branches

    state = train.create_train_state(variables, tx, ("classifier",))
    new_state, metrics = jax.jit(
        functools.partial(train.train_step, model=model, tx=tx, objective=objective, axis_name=None)
    )(state, batch)
    assert set(new_state.params) == {"classifier"}
    jax.tree_util.tree_map(np.testing.assert_array_equal, new_state.frozen_params, state.frozen_params)
    assert set(metrics) == {
        "loss",
        "l1",
        "class_loss",
        "average_loss",
        "psnr",
        "prob_mass",
        "argmax_share",
        "grad_norm",
    }
    assert metrics["prob_mass"].shape == (3,) and float(metrics["argmax_share"].sum()) == pytest.approx(1.0)


def test_carn_branches_use_stored_statistics_when_frozen_and_batch_statistics_when_trained():
    spec, variables = tiny_classsr("carn", (4, 4, 8), {})
    rng = np.random.default_rng(3)
    stats = jax.tree_util.tree_map(lambda a: (rng.random(a.shape) + 0.5).astype(np.float32), variables["batch_stats"])
    variables = {"params": variables["params"], "batch_stats": stats}
    model, tx = spec.build(), optax.adam(1e-3)
    batch = tiny_batch(4)
    objective = Objective("classsr", l1_weight=1.0, class_loss_weight=0.0, average_loss_weight=0.0)
    state = train.create_train_state(variables, tx, ("classifier",))
    step = jax.jit(functools.partial(train.train_step, model=model, tx=tx, objective=objective, axis_name=None))
    new_state, metrics = step(state, batch)
    jax.tree_util.tree_map(np.testing.assert_array_equal, new_state.batch_stats, stats)
    mixed, _ = jax.jit(lambda v, x: model.apply(v, x, False))(variables, batch["lr"])  # inference-mode BatchNorm
    assert float(metrics["l1"]) == pytest.approx(float(np.mean(np.abs(np.asarray(mixed) - batch["hr"]))), rel=1e-5)
    # Branch pretraining trains BatchNorm: the running statistics move.
    branch_spec = spec.branch(0)
    branch_vars = {"params": variables["params"]["net1"], "batch_stats": stats["net1"]}
    state = train.create_train_state(branch_vars, tx)
    branch_step = functools.partial(
        train.train_step, model=branch_spec.build(), tx=tx, objective=Objective("l1"), axis_name=None
    )
    new_state, _ = jax.jit(branch_step)(state, batch)
    moved = jax.tree_util.tree_map(
        lambda a, b: float(np.abs(np.asarray(a) - b).max()), new_state.batch_stats, stats["net1"]
    )
    assert min(jax.tree_util.tree_leaves(moved)) > 0


def test_half_precision_computes_in_bfloat16_and_keeps_float32_parameters():
    spec, variables = tiny_classsr()
    tx = optax.adam(1e-3)
    objective = Objective("classsr", l1_weight=1000.0, class_loss_weight=0.5, average_loss_weight=3.0)
    state = train.create_train_state(variables, tx, ("classifier",))
    step = functools.partial(
        train.train_step, model=spec.build(dtype=jnp.bfloat16), tx=tx, objective=objective, axis_name=None
    )
    new_state, metrics = jax.jit(step)(state, tiny_batch(8))
    assert all(a.dtype == np.float32 for a in jax.tree_util.tree_leaves(new_state.params))
    assert np.isfinite(metrics["loss"])


def test_eval_step_sums_match_numpy_and_ignore_padding():
    spec, variables = tiny_classsr()
    model = spec.build()
    objective = Objective("classsr", l1_weight=1000.0, class_loss_weight=0.5, average_loss_weight=3.0)
    batch = tiny_batch(16, seed=5)
    batch["weight"] = (np.arange(16) < 11).astype(np.float32)
    run = parallel.data_parallel(
        functools.partial(train.eval_step, model=model, objective=objective),
        parallel.create_mesh(),
        donate_state=False,
        out_specs=jax.sharding.PartitionSpec(),
    )
    mesh = parallel.create_mesh()
    sums = parallel.host_copy(run(parallel.replicate(variables, mesh), parallel.global_batch(batch, mesh)))
    out = validation.summarize_eval(sums, objective)
    mixed, probs = (np.asarray(a, np.float64)[:11] for a in model.apply(variables, batch["lr"]))
    hr = batch["hr"][:11]
    assert out["l1"] == pytest.approx(np.mean(np.abs(mixed - hr)), rel=1e-5)
    assert out["prob_mass"] == pytest.approx(probs.mean(0).tolist(), rel=1e-5)
    assert out["average_loss"] == pytest.approx(
        np.sum(np.abs(probs.sum(0) - 11 / 3)) / (4 * 11 / 3), rel=1e-4, abs=1e-6
    )
    assert out["argmax_share"] == pytest.approx(np.bincount(probs.argmax(1), minlength=3) / 11)


# ------------------------------------------------------------------------------------------- whole recipe


def test_all_stages_end_to_end_then_rerun_skips_and_official_weights_skip_stages(data, tmp_path):
    workdir = str(tmp_path / "run")
    result = train.train_and_evaluate(tiny_config(data, **{"finetune.enabled": True}), workdir)
    assert result["stages"] == ["original", "divide", "branches", "joint", "finetune", "evaluate"]
    for path in (
        "config.json",
        "division/division.npz",
        "division/division.json",
        "division/division_hist.png",
        "evaluation/results.json",
        "evaluation/table.md",
        "stages/branch3/model",
        "stages/finetune/model",
    ):
        assert os.path.exists(os.path.join(workdir, path)), path
    assert os.listdir(os.path.join(workdir, "tensorboard", "joint"))
    exported = checkpointing.load_model(resolve_model_dir(workdir))  # a workdir means its export/classsr
    assert exported.spec == configuration.model_spec(tiny_config(data))
    assert exported.metadata["stage"] == "finetune"
    np.testing.assert_array_equal(
        exported.variables["params"]["classifier"]["fc"]["kernel"],
        result["variables"]["finetune"]["params"]["classifier"]["fc"]["kernel"],
    )
    original = checkpointing.load_model(os.path.join(workdir, "export", "original"))
    assert original.spec == exported.spec.branch(2)
    evaluation = result["evaluation"]
    rows = evaluation["datasets"]["validation"]
    assert set(rows) == {"bicubic", "original", "classsr"}
    assert 0 < rows["classsr"]["flops_percent"] and len(rows["classsr"]["class_ratio"]) == 3
    table = evaluation["table"].split("\n\n")[0].splitlines()
    assert table[0] == (
        "| Dataset | Model | Params | PSNR (dB) | PSNR-Y (dB) | FLOPs/tile (% of -O) | tiles simple/medium/hard (%) |"
    )
    assert [line.split(" | ")[:2] for line in table[2:]] == [
        ["| validation", "Bicubic"],
        ["| validation", "FSRCNN-O"],
        ["| validation", "ClassSR-FSRCNN"],
    ]
    with open(os.path.join(workdir, "evaluation", "results.json")) as f:
        assert json.load(f)["table"] == evaluation["table"]
    # Every stage trained exactly its steps; the checkpoint records the stage and model.
    progress = checkpointing.read_train_progress(os.path.join(workdir, "stages", "joint", "checkpoints"))
    assert (progress["stage"], progress["step"]) == ("joint", 4)

    # The table says what it was computed from: the finetuned export, not the joint model it started from.
    computed = evaluation["computed_from"]
    assert computed["models"] == {
        "original": checkpointing.variables_digest(original.variables),
        "classsr": checkpointing.variables_digest(exported.variables),
    }
    joint = checkpointing.load_model(os.path.join(workdir, "stages", "joint", "model"))
    assert checkpointing.variables_digest(joint.variables) != computed["models"]["classsr"]

    # A rerun skips every finished stage, trains nothing and keeps the table.
    before = checkpointing.latest_train_step(os.path.join(workdir, "stages", "joint", "checkpoints"))
    results_mtime = os.stat(os.path.join(workdir, "evaluation", "results.json")).st_mtime_ns
    again = train.train_and_evaluate(tiny_config(data, **{"finetune.enabled": True}), workdir)
    assert again["evaluation"]["table"] == evaluation["table"]
    assert checkpointing.latest_train_step(os.path.join(workdir, "stages", "joint", "checkpoints")) == before
    assert os.stat(os.path.join(workdir, "evaluation", "results.json")).st_mtime_ns == results_mtime

    # Converted branch checkpoints instead of stages (a)-(c): straight to joint training and evaluation.
    branches = ",".join(os.path.join(workdir, "stages", f"branch{k}", "model") for k in (1, 2, 3))
    other = str(tmp_path / "from_branches")
    config = tiny_config(data, stages="joint,evaluate", **{"pretrained.branches": branches})
    out = train.train_and_evaluate(config, other)
    assert out["stages"] == ["joint", "evaluate"]
    for k in (1, 2, 3):
        jax.tree_util.tree_map(
            np.testing.assert_array_equal,
            out["variables"]["joint"]["params"][f"net{k}"],
            result["variables"][f"branch{k}"]["params"],
        )
    assert set(out["evaluation"]["datasets"]["validation"]) == {"bicubic", "classsr"}  # no -O given
    assert not os.path.exists(os.path.join(other, "division"))


def test_reused_original_is_the_widest_branch_and_tiles_any_needs_no_division(data, tmp_path):
    # The narrow branches start cut out of -O; at a learning rate of 0 they end where they started.
    overrides = {
        "branches.reuse_original": True,
        "branches.tiles": "any",
        "joint.tiles": "any",
        "joint.calibrate_routing": True,
        "branches.slim_from_original": True,
        "branches.learning_rate": 0.0,
        "branches.eta_min": 0.0,
    }
    with pytest.raises(
        TrainError,
        match=r"^config field branches.reuse_original needs the -O network: run stage original, or give "
        r"--config.pretrained.original$",
    ):
        train.train_and_evaluate(tiny_config(data, stages="branches,joint", **overrides), str(tmp_path / "none"))
    with pytest.raises(
        TrainError,
        match=r"^config field branches.slim_from_original needs the -O network: run stage original, or give "
        r"--config.pretrained.original$",
    ):
        train.train_and_evaluate(
            tiny_config(data, stages="branches", **{**overrides, "branches.reuse_original": False}),
            str(tmp_path / "none"),
        )
    assert not os.path.exists(tmp_path / "none")
    workdir = str(tmp_path / "run")
    out = train.train_and_evaluate(tiny_config(data, stages="original,branches,joint", **overrides), workdir)
    assert sorted(out["variables"]) == ["branch1", "branch2", "joint", "original"]
    assert sorted(os.listdir(os.path.join(workdir, "stages"))) == ["branch1", "branch2", "joint", "original"]
    assert not os.path.exists(os.path.join(workdir, "division"))
    params = out["variables"]["joint"]["params"]
    jax.tree_util.tree_map(np.testing.assert_array_equal, params["net3"], out["variables"]["original"]["params"])
    jax.tree_util.tree_map(np.testing.assert_array_equal, params["net1"], out["variables"]["branch1"]["params"])
    for k, width in ((1, 4), (2, 6)):
        cut = slim.slim_params(
            "fsrcnn", jax.tree_util.tree_map(np.asarray, out["variables"]["original"]["params"]), width
        )
        jax.tree_util.tree_map(np.testing.assert_array_equal, out["variables"][f"branch{k}"]["params"], cut)
    # The joint model's routing was calibrated on 256 of its training tiles (the smoke config's): equal shares
    # after, and its record (in the stage's model and its export) holds the offsets added to the Class-Module's
    # last bias.
    record = checkpointing.load_model(os.path.join(workdir, "stages", "joint", "model")).metadata
    report = record["routing_calibration"]
    assert report["tiles"] == 256 and len(report["offsets"]) == 3 and report["offsets"][2] == 0.0
    np.testing.assert_allclose(report["argmax_shares_after"], [1 / 3, 1 / 3, 1 / 3], atol=0.02)
    assert checkpointing.load_model(os.path.join(workdir, "export", "classsr")).metadata == record


def test_networks_trained_from_scratch_start_as_model_init_says(data, tmp_path):
    # At a learning rate of 0 the stages end where they started: -O and each branch trained from scratch start
    # as cubic interpolation, from the random initialisation of their own seed (config seed, + k + 1 for branch k);
    # the smoke config starts the widest branch from -O, so branch3 is -O's start.
    zero = {"learning_rate": 0.0, "eta_min": 0.0}
    overrides = {
        "model.init": "interpolation",
        "branches.tiles": "any",
        **{f"{stage}.{k}": v for stage in ("original", "branches") for k, v in zero.items()},
    }
    config = tiny_config(data, stages="original,branches", **overrides)
    out = train.train_and_evaluate(config, str(tmp_path / "run"))
    spec = configuration.model_spec(config)
    for name, k, seed in (
        ("original", 2, config.seed),
        ("branch1", 0, config.seed + 1),
        ("branch2", 1, config.seed + 2),
        ("branch3", 2, config.seed),
    ):
        branch = spec.branch(k)
        expected = interpolating_params(
            "fsrcnn", branch.init(seed=seed, tile=config.data.lr_patch)["params"], branch.scale
        )
        jax.tree_util.tree_map(
            functools.partial(np.testing.assert_array_equal, err_msg=name), out["variables"][name]["params"], expected
        )


def test_missing_inputs_fail_before_the_workdir_is_touched(data, tmp_path):
    workdir = str(tmp_path / "never")
    with pytest.raises(TrainError, match=r"^data dir /nonexistent/photos does not exist \(config\.data\.manual_dir\)"):
        train.train_and_evaluate(tiny_config(data, **{"data.manual_dir": "/nonexistent/photos"}), workdir)
    with pytest.raises(TrainError, match=r"^stage joint needs trained branches: run stage branches"):
        train.train_and_evaluate(tiny_config(data, stages="joint"), workdir)
    assert not os.path.exists(os.path.join(workdir, "stages"))


def test_a_batch_that_does_not_split_over_the_devices_fails_before_any_data_is_prepared(tmp_path):
    tfds_dir = tmp_path / "tfds"
    os.makedirs(tfds_dir)
    config = configuration.load_config("rcan", {"data.data_dir": str(tfds_dir), "data.manual_dir": str(tmp_path)})
    with pytest.raises(ConfigError) as err:
        train.train_and_evaluate(config, str(tmp_path / "w"))
    assert str(err.value) == (
        "config field joint.batch_size is 60, which does not split evenly over 8 devices; "
        "use a multiple of 8, e.g. --config.joint.batch_size=64"
    )
    assert os.listdir(tfds_dir) == [] and not os.path.exists(tmp_path / "w")


class PoisonedBatches:
    """Training batches with a NaN in the first LR pixel of batch `bad` (1-based); that batch is finished into
    floats on the host (the others stay raw uint8, as the stage iterators yield them)."""

    def __init__(self, inner, bad):
        self.inner, self.bad, self.count = inner, bad, 0

    def __next__(self):
        batch = next(self.inner)
        self.count += 1
        if self.count == self.bad:
            batch = input_pipeline.finish_batch(batch)
            batch["lr"][0, 0, 0, 0] = np.nan
        return batch

    def close(self):
        self.inner.close()


def test_a_nan_in_a_training_batch_stops_the_stage_at_that_step_and_writes_no_model(data, tmp_path, monkeypatch):
    create = stages.create_train_iterator
    monkeypatch.setattr(stages, "create_train_iterator", lambda *a, **k: PoisonedBatches(create(*a, **k), bad=3))
    workdir = tmp_path / "nan"
    config = tiny_config(data, stages="original", **{"original.num_steps": 6, "original.checkpoint_every_steps": 2})
    with pytest.raises(TrainError) as err:
        train.train_and_evaluate(config, str(workdir))
    assert str(err.value) == (
        "stage original: the loss or gradient norm is not finite at step 3 (loss nan, gradient norm nan); "
        "training stopped and its latest checkpoint is step 2: lower the learning rate or check the data"
    )
    checkpoints = workdir / "stages" / "original" / "checkpoints"
    assert checkpointing.latest_train_step(str(checkpoints)) == 2
    with ocp.PyTreeCheckpointer() as reader:
        state = reader.restore(str(checkpoints / "2" / "state"))
    assert all(np.all(np.isfinite(a)) for a in jax.tree_util.tree_leaves(state))
    assert not (workdir / "stages" / "original" / "model").exists()
    assert not (workdir / "export").exists()


@pytest.mark.parametrize("failing", ["checkpoint", "model"])
def test_a_full_disk_during_training_is_one_line_naming_the_folder(data, tmp_path, monkeypatch, failing):
    if failing == "checkpoint":  # the background write of the second checkpoint (step 4, the last)
        fault = faulty_async_save(DiskFull, skip=1, where=lambda d: ".tmp-" not in d)
    else:  # the stage's model, written after the last checkpoint
        fault = faulty_async_save(DiskFull, where=lambda d: ".tmp-" in d)
    monkeypatch.setattr(ocp.StandardCheckpointHandler, "async_save", fault)
    workdir = tmp_path / "full"
    with pytest.raises(CheckpointError) as err:
        train.train_and_evaluate(tiny_config(data, stages="original"), str(workdir))
    checkpoints = workdir / "stages" / "original" / "checkpoints"
    where = (
        f"a training checkpoint in {checkpoints}"
        if failing == "checkpoint"
        else f"model {workdir / 'stages' / 'original' / 'model'}"
    )
    verb = "save" if failing == "checkpoint" else "write"
    assert str(err.value) == f"cannot {verb} {where}: OSError: [Errno 28] No space left on device"
    assert checkpointing.latest_train_step(str(checkpoints)) == (2 if failing == "checkpoint" else 4)
    assert not (workdir / "stages" / "original" / "model").exists()
    assert [n for n in os.listdir(workdir / "stages" / "original") if n != "checkpoints"] == []


def test_evaluation_is_computed_again_when_its_models_datasets_or_protocol_change(data, tmp_path, monkeypatch):
    spec = configuration.model_spec(tiny_config(data))
    first_model, second_model = (
        checkpointing.save_model(
            str(tmp_path / name),
            spec,
            _variables(spec) if seed == 1 else jax.tree_util.tree_map(lambda a: 0.9 * a, _variables(spec)),
        )
        for name, seed in (("a", 1), ("b", 2))
    )
    calls = []
    real = stages.evaluate_pairs
    monkeypatch.setattr(stages, "evaluate_pairs", lambda *a, **k: calls.append(1) or real(*a, **k))
    workdir = tmp_path / "eval"
    results_json = workdir / "evaluation" / "results.json"

    def evaluate(**overrides):
        calls.clear()
        # The evaluation's own fields may change in a used workdir; the model it evaluates must be allowed to.
        config = tiny_config(
            data,
            stages="evaluate",
            allow_changed="pretrained.classsr",
            **{"pretrained.classsr": first_model, **overrides},
        )
        return train.train_and_evaluate(config, str(workdir))["evaluation"], len(calls)

    first, evaluated = evaluate()
    assert evaluated == 1  # one model on one dataset
    pairs = stages.dataset_pairs(
        stages.StageContext(tiny_config(data), None, None, None, None).dataset("classsr_folder/x2", "validation")
    )
    assert first["computed_from"] == {
        "models": {"classsr": checkpointing.variables_digest(checkpointing.load_model(first_model).variables)},
        "datasets": {
            "validation": {"source": "classsr_folder/x2:validation", "images": 1, "digest": stages.pairs_digest(pairs)}
        },
        "protocol": "full",
        "scale": 2,
        "tiles": {"tile": 32, "step": 28, "overlap": 8},
        "budget": 0.0,
    }
    with open(results_json) as f:
        assert json.load(f) == first
    mtime = os.stat(results_json).st_mtime_ns

    same, evaluated = evaluate()  # nothing changed: the saved results
    assert evaluated == 0 and same == first and os.stat(results_json).st_mtime_ns == mtime

    other, evaluated = evaluate(**{"pretrained.classsr": second_model})  # another model (e.g. after finetune)
    assert evaluated == 1
    assert other["computed_from"]["models"]["classsr"] != first["computed_from"]["models"]["classsr"]
    assert other["computed_from"]["datasets"] == first["computed_from"]["datasets"]

    more, evaluated = evaluate(**{"evaluate.datasets": "validation,train=classsr_folder/x2:train"})
    assert evaluated == 2 and list(more["datasets"]) == ["validation", "train"]
    assert more["computed_from"]["datasets"]["train"]["images"] == 4

    budgeted, evaluated = evaluate(**{"evaluate.budget": 0.5})  # one more ClassSR row, at half the -O FLOPs
    assert evaluated == 2 and budgeted["computed_from"]["budget"] == 0.5
    assert [m["key"] for m in budgeted["models"]] == ["bicubic", "classsr", "classsr_budget"]
    assert budgeted["models"][2]["name"].endswith(", 50% budget") and budgeted["models"][2]["name"] in budgeted["table"]

    paper, evaluated = evaluate(**{"evaluate.protocol": "paper"})
    assert evaluated == 1 and paper["computed_from"]["protocol"] == "paper"
    with open(results_json) as f:
        assert json.load(f) == paper


# ---------------------------------------------------------------------------------------------- processes


TWO_DEVICES = "--xla_force_host_platform_device_count=2 --xla_backend_optimization_level=0"  # -O0: see conftest


def uncached_env() -> dict[str, str]:
    """The environment for a command that is killed, or runs beside another: without the session's compilation
    cache (tests/conftest.py), whose entries are written in place and could be left half written."""
    env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
    return {**env, "XLA_FLAGS": TWO_DEVICES}


def cli(*args, cwd=REPO, env=None, **kwargs):
    env = {**os.environ, "XLA_FLAGS": TWO_DEVICES, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "classsr_jax.main", *args], cwd=cwd, env=env, capture_output=True, text=True, **kwargs
    )


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def snapshot(root):
    return sorted(
        (os.path.relpath(os.path.join(d, f), root), os.stat(os.path.join(d, f)).st_mtime_ns)
        for d, _, fs in os.walk(root)
        for f in fs
    )


def test_cli_one_line_errors_and_an_incompatible_workdir_is_left_untouched(data, tmp_path):
    photos, tfds_dir = data
    common = [
        "--config",
        "configs/smoke.py",
        f"--config.data.manual_dir={photos}",
        f"--config.data.data_dir={tfds_dir}",
    ]
    bad = cli(*common, "--workdir", str(tmp_path / "w"), "--config.joint.lr=1")
    assert bad.returncode != 0
    assert error_lines(bad.stderr) == [bad.stderr.strip().splitlines()[-1]]
    assert "unknown config field" in bad.stderr and "--config.joint.lr" in bad.stderr
    assert not os.path.exists(tmp_path / "w")

    workdir = tmp_path / "carn_run"
    os.makedirs(workdir)
    carn = ModelSpec("classsr", "carn", (4, 8, 8), 2)
    (workdir / "config.json").write_text(json.dumps({"model": carn.to_dict()}))
    before = snapshot(workdir)
    out = cli(*common, "--workdir", str(workdir))
    assert out.returncode != 0
    assert error_lines(out.stderr) == [
        f"error: workdir {workdir} holds a ClassSR-carn x2 (widths 4/8/8) run, but this config is "
        "ClassSR-fsrcnn x2 (widths 4/6/8); use another --workdir"
    ]
    assert snapshot(workdir) == before


def test_the_command_runs_from_another_working_directory(data, tmp_path):
    """Neither the working directory nor PYTHONPATH holds the repository: the configs' `from configs import
    fsrcnn` works because main puts the config's repository root on sys.path (as for an installed command)."""
    site = tmp_path / "site"
    os.makedirs(site)
    os.symlink(os.path.join(REPO, "classsr_jax"), site / "classsr_jax")
    out = cli(
        "--config",
        os.path.join(REPO, "configs", "smoke.py"),
        "--workdir",
        str(tmp_path / "w"),
        "--config.stages=jointt",
        cwd=str(tmp_path),
        env={"PYTHONPATH": str(site)},
    )
    assert out.returncode == 1
    assert error_lines(out.stderr) == [
        "error: config field stages has unknown stage(s) jointt: use 'all' or some of original, divide, branches, "
        "joint, finetune, evaluate"
    ]


def finished_steps(directory):
    if not os.path.isdir(directory):
        return []
    return sorted(int(name) for name in os.listdir(directory) if name.isdigit())


def original_stage_args(data, workdir, *, num_steps: int, checkpoint_every: int, log_every: int) -> list[str]:
    """The command line of the smoke config's `original` stage, with every checkpoint kept."""
    photos, tfds_dir = data
    return [
        "--config",
        "configs/smoke.py",
        "--workdir",
        str(workdir),
        "--config.stages=original",
        f"--config.data.manual_dir={photos}",
        f"--config.data.data_dir={tfds_dir}",
        f"--config.original.num_steps={num_steps}",
        f"--config.original.checkpoint_every_steps={checkpoint_every}",
        "--config.original.eval_every_steps=1000",
        f"--config.original.log_every_steps={log_every}",
        "--config.checkpoint.keep_last=100",
    ]


def test_kill_9_after_the_first_checkpoint_then_the_same_command_resumes_and_finishes(data, tmp_path):
    workdir = tmp_path / "resume"
    args = original_stage_args(data, workdir, num_steps=300, checkpoint_every=10, log_every=50)
    env = uncached_env()
    checkpoints = workdir / "stages" / "original" / "checkpoints"
    process = subprocess.Popen(
        [sys.executable, "-m", "classsr_jax.main", *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 120
    while not finished_steps(checkpoints) and time.time() < deadline and process.poll() is None:
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL
    saved = checkpointing.latest_train_step(str(checkpoints))
    assert saved is not None and 10 <= saved < 300, saved
    assert not (workdir / "stages" / "original" / "model").exists()

    # Resumed on 4 CPU devices (config.cpu_devices beats XLA_FLAGS' 2): the checkpoint does not depend on them.
    second = cli(*args, "--config.cpu_devices=4")
    assert second.returncode == 0, second.stderr[-2000:]
    assert "stages original, 4 devices" in second.stderr
    assert f"stage original: resuming from step {saved} of 300" in second.stderr
    assert "stage original: starting" not in second.stderr
    assert (workdir / "stages" / "original" / "model").is_dir()
    assert checkpointing.latest_train_step(str(checkpoints)) == 300
    progress = checkpointing.read_train_progress(str(checkpoints))
    assert progress["started_at_step"] == saved and progress["data_seed"] == train.data_seed(10, "original", saved)
    record = checkpointing.load_model(str(workdir / "stages" / "original" / "model")).metadata
    assert (record["stage"], record["steps"]) == ("original", 300)
    assert checkpointing.load_model(str(workdir / "export" / "original")).metadata == record  # the export carries it


def test_kill_9_during_a_background_save_then_the_rerun_resumes_from_the_last_complete_checkpoint(data, tmp_path):
    workdir = tmp_path / "killed"
    args = original_stage_args(data, workdir, num_steps=40, checkpoint_every=5, log_every=5)
    # The same command on a slow disk: every checkpoint's arrays take 3 s to commit in the background.
    slow_main = tmp_path / "slow_disk_main.py"
    slow_main.write_text(
        f"import sys\nsys.path[:0] = [{os.path.join(REPO, 'tests')!r}, {REPO!r}]\nimport orbax_faults\n"
        "orbax_faults.install(lambda: orbax_faults.SlowDisk(3.0))\n"
        "from classsr_jax import main\nsys.exit(main.main(sys.argv[1:]))\n"
    )
    env = uncached_env()
    checkpoints = workdir / "stages" / "original" / "checkpoints"
    process = subprocess.Popen(
        [sys.executable, str(slow_main), *args], cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    in_progress = lambda: [n for n in os.listdir(checkpoints) if TMP_SUFFIX in n] if checkpoints.is_dir() else []
    deadline = time.time() + 180
    while not (finished_steps(checkpoints) and in_progress()) and time.time() < deadline and process.poll() is None:
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL
    assert in_progress(), "killed while a checkpoint was being written"
    saved = checkpointing.latest_train_step(str(checkpoints))
    assert saved is not None and saved % 5 == 0 and saved < 40, saved

    second = cli(*args)
    assert second.returncode == 0, second.stderr[-2000:]
    assert f"stage original: resuming from step {saved} of 40" in second.stderr
    assert checkpointing.latest_train_step(str(checkpoints)) == 40
    assert in_progress() == []  # the half-written checkpoint was cleaned up
    assert checkpointing.load_model(str(workdir / "stages" / "original" / "model")).metadata["steps"] == 40


def free_port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def test_two_processes_train_two_steps_and_end_with_identical_parameters(data, tmp_path):
    photos, tfds_dir = data
    # Prepare the dataset once beforehand, as a shared data dir would be on a cluster.
    stages.StageContext(tiny_config(data), Workdir(str(tmp_path)), None, None, None).train_dataset()
    port, workdir = free_port(), str(tmp_path / "two")
    env = uncached_env()
    workers = [
        subprocess.Popen(
            [
                sys.executable,
                "tests/multiprocess_worker.py",
                str(i),
                "2",
                str(port),
                workdir,
                photos,
                tfds_dir,
                str(tmp_path / f"p{i}.npz"),
            ],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    logs = [w.communicate(timeout=240)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], "\n".join(log[-3000:] for log in logs)
    first, second = (np.load(tmp_path / f"p{i}.npz") for i in range(2))
    assert int(first["devices"]) == 4  # 2 processes x 2 devices in one mesh
    assert sorted(first.files) == sorted(second.files)
    for key in first.files:
        np.testing.assert_array_equal(first[key], second[key])
    exported = checkpointing.load_model(os.path.join(workdir, "export", "original"))  # written by process 0
    np.testing.assert_array_equal(exported.variables["params"]["tail_deconv"]["kernel"], first["tail_deconv/kernel"])
    assert checkpointing.latest_train_step(os.path.join(workdir, "stages", "original", "checkpoints")) == 2


def test_many_steps_in_flight_on_two_cpu_devices_do_not_deadlock(data, tmp_path):
    """XLA:CPU's in-process all-reduce deadlocks when a few dozen multi-device steps are queued behind each
    other (seen at 32 and 100 on 2 cores); the loop keeps at most `train.MAX_STEPS_IN_FLIGHT` queued. Without
    that bound this run aborts after XLA's 40 s rendezvous timeout."""
    args = original_stage_args(data, tmp_path / "w", num_steps=400, checkpoint_every=400, log_every=400)
    out = cli(*args, "--config.cpu_devices=2", env={"JAX_COMPILATION_CACHE_DIR": ""}, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "stages original, 2 devices" in out.stderr and "may be stuck" not in out.stderr
