"""The losses of ClassSR training against hand-computed values and independent numpy references, incl. data parallel."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from classsr_jax import parallel
from classsr_jax.training import losses


def numpy_class_loss(p):
    pairs = sum(np.abs(p[:, j] - p[:, k]) for j, k in itertools.combinations(range(p.shape[1]), 2))
    return np.mean((p.shape[1] - 1) - pairs)


def numpy_average_loss(p):
    n, m = p.shape
    return np.sum(np.abs(p.sum(0) - n / m)) / (4 * n / m)  # the original's normaliser for M = 3


def random_probs(n, seed=0):
    logits = np.random.default_rng(seed).normal(size=(n, 3)).astype(np.float32)
    return np.asarray(jax.nn.softmax(logits, axis=-1), np.float64)


def test_l1_loss_is_the_mean_absolute_error_on_the_chosen_range():
    rng = np.random.default_rng(1)
    sr, hr = rng.random((2, 4, 4, 3), np.float32), rng.random((2, 4, 4, 3), np.float32)
    assert float(losses.l1_loss(sr, hr)) == pytest.approx(np.mean(np.abs(sr - hr)), rel=1e-6)
    assert float(losses.l1_loss(sr, hr, 255.0)) == pytest.approx(255 * np.mean(np.abs(sr - hr)), rel=1e-6)


def test_class_loss_range_and_values():
    uniform = np.full((5, 3), 1 / 3, np.float32)
    one_hot = np.eye(3, dtype=np.float32)[[0, 1, 2, 2]]
    assert float(losses.class_loss(uniform)) == pytest.approx(2.0, abs=1e-6)
    assert float(losses.class_loss(one_hot)) == pytest.approx(0.0, abs=1e-7)
    # p = (0.5, 0.3, 0.2): 2 − (0.2 + 0.3 + 0.1) = 1.4
    assert float(losses.class_loss(np.array([[0.5, 0.3, 0.2]], np.float32))) == pytest.approx(1.4, abs=1e-6)
    p = random_probs(96)
    assert float(losses.class_loss(p.astype(np.float32))) == pytest.approx(numpy_class_loss(p), abs=1e-6)


def test_average_loss_range_normaliser_and_values():
    n = 96
    balanced = np.eye(3, dtype=np.float32)[np.arange(n) % 3]
    all_one = np.tile(np.array([[0, 0, 1]], np.float32), (n, 1))
    assert float(losses.average_loss(balanced)) == pytest.approx(0.0, abs=1e-7)
    assert float(losses.average_loss(np.full((n, 3), 1 / 3, np.float32))) == pytest.approx(0.0, abs=1e-5)
    assert float(losses.average_loss(all_one)) == pytest.approx(1.0, abs=1e-6)
    # Masses (48, 48, 0) for n = 96: (16 + 16 + 32) / 128 = 0.5.
    half = np.eye(3, dtype=np.float32)[np.arange(n) % 2]
    assert float(losses.average_loss(half)) == pytest.approx(64 / 128, abs=1e-6)
    p = random_probs(n, seed=3)
    assert float(losses.average_loss(p.astype(np.float32))) == pytest.approx(numpy_average_loss(p), abs=1e-6)


def test_abs_gradient_at_zero_is_pytorchs():
    assert float(jax.grad(losses.torch_abs)(0.0)) == 0.0
    assert float(jax.grad(jnp.abs)(0.0)) == 1.0  # why torch_abs exists
    assert float(jax.grad(losses.torch_abs)(-2.0)) == -1.0
    assert float(jax.grad(losses.torch_abs)(3.0)) == 1.0


def test_class_loss_gradient_with_tied_probabilities():
    # Rows with ties: the PyTorch subgradient sign(0) = 0 makes tied pairs contribute nothing.
    p = np.array([[0.4, 0.4, 0.2], [0.25, 0.5, 0.25], [0.6, 0.3, 0.1]], np.float32)
    grad = np.asarray(jax.grad(losses.class_loss)(p))
    n = p.shape[0]
    expected = np.zeros_like(p)
    for i, j in itertools.product(range(n), range(3)):
        expected[i, j] = -sum(np.sign(p[i, j] - p[i, k]) for k in range(3) if k != j) / n
    np.testing.assert_allclose(grad, expected, atol=1e-7)


def test_average_loss_gradient():
    p = random_probs(12, seed=4).astype(np.float32)
    grad = np.asarray(jax.grad(losses.average_loss)(p))
    sign = np.sign(p.astype(np.float64).sum(0) - 12 / 3) / (4 * 12 / 3)
    np.testing.assert_allclose(grad, np.broadcast_to(sign, p.shape), atol=1e-7)


def test_classsr_loss_is_the_weighted_sum():
    rng = np.random.default_rng(5)
    sr, hr = rng.random((6, 8, 8, 3), np.float32), rng.random((6, 8, 8, 3), np.float32)
    p = random_probs(6, seed=6).astype(np.float32)
    total, terms = losses.classsr_loss(sr, hr, p, l1_weight=1000, class_loss_weight=0.5, average_loss_weight=3)
    p64 = p.astype(np.float64)
    expected = 1000 * np.mean(np.abs(sr - hr)) + 0.5 * numpy_class_loss(p64) + 3 * numpy_average_loss(p64)
    assert float(total) == pytest.approx(expected, rel=1e-5)
    assert set(terms) == {"l1", "class_loss", "average_loss"}


def test_data_parallel_average_loss_matches_the_global_batch():
    """8 devices with 4 samples each: value and pmean'd gradient equal the 32-sample loss's."""
    mesh = parallel.create_mesh()
    assert mesh.devices.size == 8
    logits = np.random.default_rng(7).normal(size=(32, 3)).astype(np.float32)
    weights = np.random.default_rng(8).normal(size=(3,)).astype(np.float32)  # shifts logits: a parameter

    def global_loss(w, x):
        probs = jax.nn.softmax(x + w, axis=-1)
        return losses.average_loss(probs) + losses.class_loss(probs)

    def per_device(w, x):
        w = jax.lax.pcast(w, parallel.DATA_AXIS, to="varying")

        def loss(w):
            probs = jax.nn.softmax(x + w, axis=-1)
            return losses.average_loss(probs, parallel.DATA_AXIS) + losses.class_loss(probs)

        value, grad = jax.value_and_grad(loss)(w)
        return jax.lax.pmean(value, parallel.DATA_AXIS), jax.lax.pmean(grad, parallel.DATA_AXIS)

    sharded = jax.jit(jax.shard_map(per_device, mesh=mesh, in_specs=(P(), P("data")), out_specs=(P(), P())))
    value, grad = sharded(weights, logits)
    ref_value, ref_grad = jax.value_and_grad(global_loss)(weights, logits)
    assert float(value) == pytest.approx(float(ref_value), abs=1e-6)
    np.testing.assert_allclose(np.asarray(grad), np.asarray(ref_grad), atol=1e-6)
