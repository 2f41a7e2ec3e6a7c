"""The training objective by value: the joint step's loss, terms and PSNR against numpy, one classifier gradient
against a finite difference, and the validation sums (padding weighted 0) against numpy."""

import functools
import os

import jax
import numpy as np
import optax
import pytest

from classsr_jax import parallel
from classsr_jax.models import ModelSpec
from classsr_jax.training import configuration, stages, train, validation
from classsr_jax.training.losses import Objective

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPEC = ModelSpec("classsr", "fsrcnn", (4, 6, 8), 2, {"s": 4, "m": 1})


@pytest.fixture(scope="module")
def variables():
    """Random weights; the classifier's last layer is scaled up so the probabilities are far from uniform
    (Class-Loss and Average-Loss both well away from 0 and from each other)."""
    rng = np.random.default_rng(11)
    params = jax.tree_util.tree_map(lambda a: (0.1 * rng.normal(size=a.shape)).astype(a.dtype),
                                    SPEC.abstract()["params"])
    params["classifier"]["fc"]["kernel"] *= 6.0
    params["classifier"]["fc"]["bias"] = np.array([0.3, -0.2, 0.1], np.float32)
    return {"params": params}


def batch_of(n, seed):
    rng = np.random.default_rng(seed)
    contrast = np.linspace(0.1, 1.0, n)[:, None, None, None]  # tiles of varied difficulty
    lr = (0.5 + contrast * (rng.random((n, 32, 32, 3)) - 0.5)).astype(np.float32)
    hr = np.clip(lr.repeat(2, 1).repeat(2, 2) + 0.1 * rng.normal(size=(n, 64, 64, 3)), 0, 1).astype(np.float32)
    return {"lr": lr, "hr": hr}


@functools.lru_cache(maxsize=None)
def _apply():
    return jax.jit(lambda v, x: SPEC.build().apply(v, x, False))


def forward(variables, lr):
    mixed, probs = _apply()(variables, lr)
    return np.asarray(mixed, np.float64), np.asarray(probs, np.float64)


def numpy_terms(mixed, probs, hr):
    """L1, Class-Loss and Average-Loss from the paper's formulas, in float64."""
    n, m = probs.shape
    l1 = np.mean(np.abs(mixed - hr))
    pairwise = sum(np.abs(probs[:, j] - probs[:, k]) for j in range(m) for k in range(j + 1, m))
    class_loss = np.mean((m - 1) - pairwise)
    average_loss = np.sum(np.abs(probs.sum(0) - n / m)) / (2 * (m - 1) * n / m)
    return l1, class_loss, average_loss


def numpy_psnr(mixed, hr):
    mse = np.mean((np.clip(mixed, 0, 1) - hr) ** 2, axis=(1, 2, 3))
    return -10.0 * np.log10(mse)


def paper_weights():
    """(L1, Class-Loss, Average-Loss) weights of the paper's FSRCNN joint stage, read from the config."""
    joint = configuration.load_config(os.path.join(REPO, "configs/fsrcnn.py")).joint
    return joint.l1_weight, joint.class_loss_weight, joint.average_loss_weight


def objectives():
    paper = stages.objective_for(configuration.load_config(os.path.join(REPO, "configs/fsrcnn.py")), "joint", SPEC)
    return [(paper, paper_weights()), (Objective("classsr", 2.0, 0.7, 3.0), (2.0, 0.7, 3.0))]


def sgd_step(objective, mesh=None):
    """One train step with SGD at rate 1: the parameter change is minus the gradient."""
    tx = optax.sgd(1.0)
    fn = functools.partial(train.train_step, model=SPEC.build(), tx=tx, objective=objective,
                           axis_name=None if mesh is None else parallel.DATA_AXIS)
    step = jax.jit(fn) if mesh is None else parallel.data_parallel(fn, mesh, donate_state=False)
    return tx, step


def run_step(variables, batch, objective, mesh=None):
    tx, step = sgd_step(objective, mesh)
    state = train.create_train_state(variables, tx, ("classifier",))
    if mesh is None:
        new_state, metrics = step(state, batch)
    else:
        new_state, metrics = step(parallel.replicate(state, mesh), parallel.global_batch(batch, mesh))
    return state, parallel.host_copy(new_state) if mesh else new_state, parallel.host_copy(metrics) if mesh else metrics


@pytest.mark.parametrize("devices", [None, 8])
def test_the_joint_step_loss_terms_and_psnr_equal_numpy(variables, devices):
    batch = batch_of(16, seed=1)
    mixed, probs = forward(variables, batch["lr"])
    l1, class_loss, average_loss = numpy_terms(mixed, probs, batch["hr"])
    assert class_loss > 0.2 and average_loss > 0.1 and abs(class_loss - average_loss) > 0.1  # every term matters
    mesh = None if devices is None else parallel.create_mesh(jax.devices()[:devices])
    for objective, (w_l1, w_class, w_average) in objectives():
        _, _, metrics = run_step(variables, batch, objective, mesh)
        assert float(metrics["l1"]) == pytest.approx(l1, rel=1e-5)
        assert float(metrics["class_loss"]) == pytest.approx(class_loss, rel=1e-5)
        assert float(metrics["average_loss"]) == pytest.approx(average_loss, rel=1e-4)
        expected = w_l1 * l1 + w_class * class_loss + w_average * average_loss
        assert float(metrics["loss"]) == pytest.approx(expected, rel=2e-6)
        assert float(metrics["psnr"]) == pytest.approx(np.mean(numpy_psnr(mixed, batch["hr"])), abs=1e-4)
        np.testing.assert_allclose(metrics["prob_mass"], probs.mean(0), rtol=1e-5)


def test_a_classifier_gradient_equals_a_finite_difference_of_the_numpy_loss(variables):
    """Over 8 devices, where Average-Loss's gradient goes through the per-device surrogate."""
    batch = batch_of(16, seed=2)
    objective, weights = objectives()[1]
    state, new_state, _ = run_step(variables, batch, objective, parallel.create_mesh())
    bias = lambda s: np.asarray(s.params["classifier"]["fc"]["bias"])
    gradient = bias(state) - bias(new_state)

    def numpy_loss(bias_change):
        params = jax.tree_util.tree_map(np.array, variables["params"])
        params["classifier"]["fc"]["bias"] += np.float32(bias_change)
        mixed, probs = forward({"params": params}, batch["lr"])
        return float(np.dot(weights, numpy_terms(mixed, probs, batch["hr"])))

    eps = 1e-2
    for k in range(3):
        change = np.zeros(3, np.float32)
        change[k] = eps
        finite_difference = (numpy_loss(change) - numpy_loss(-change)) / (2 * eps)
        assert gradient[k] == pytest.approx(finite_difference, rel=2e-2, abs=2e-3), k
    assert np.abs(gradient).max() > 0.05  # a gradient worth checking


def test_validation_class_loss_psnr_and_loss_equal_numpy_with_padding_weighted_zero(variables):
    objective, (w_l1, w_class, w_average) = objectives()[1]
    batch = batch_of(16, seed=3)
    batch["weight"] = (np.arange(16) < 11).astype(np.float32)  # 5 padding tiles: their values must not count
    mesh = parallel.create_mesh()
    run = parallel.data_parallel(functools.partial(train.eval_step, model=SPEC.build(), objective=objective), mesh,
                                 donate_state=False, out_specs=jax.sharding.PartitionSpec())
    sums = parallel.host_copy(run(parallel.replicate(variables, mesh), parallel.global_batch(batch, mesh)))
    out = validation.summarize_eval(sums, objective)
    mixed, probs = forward(variables, batch["lr"])
    mixed, probs, hr = mixed[:11], probs[:11], batch["hr"][:11]
    l1, class_loss, average_loss = numpy_terms(mixed, probs, hr)
    assert out["l1"] == pytest.approx(l1, rel=1e-5)
    assert out["class_loss"] == pytest.approx(class_loss, rel=1e-5)
    assert out["average_loss"] == pytest.approx(average_loss, rel=1e-4)
    assert out["tile_psnr"] == pytest.approx(np.mean(numpy_psnr(mixed, hr)), abs=1e-4)
    assert out["loss"] == pytest.approx(w_l1 * l1 + w_class * class_loss + w_average * average_loss, rel=1e-5)
    # The padding differs from the valid tiles, so counting it would move every number.
    all_terms = numpy_terms(*forward(variables, batch["lr"]), batch["hr"])
    assert abs(all_terms[1] - class_loss) > 1e-3 and abs(all_terms[0] - l1) > 1e-4
