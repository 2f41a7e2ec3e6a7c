"""The 1-D 'data' mesh, batch placement and the shard_map-in-jit step wrapper, on 8 simulated CPU devices."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType
from jax.sharding import PartitionSpec as P

from classsr_jax import parallel

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_mesh_spans_all_devices_with_an_auto_data_axis():
    mesh = parallel.create_mesh()
    assert mesh.axis_names == ("data",)
    assert mesh.devices.shape == (8,)
    assert mesh.axis_types == (AxisType.Auto,)
    assert parallel.local_mesh().devices.size == 8


def test_process_batch_size_needs_an_even_split():
    mesh = parallel.create_mesh()
    assert parallel.process_batch_size(96, mesh) == 96  # one process holds all 8 devices
    with pytest.raises(ValueError, match=r"^batch size 60 does not split evenly over 8 devices$"):
        parallel.process_batch_size(60, mesh)
    assert parallel.process_batch_size(60, parallel.create_mesh(jax.devices()[:4])) == 60


def test_global_batch_is_split_along_data_and_replicate_copies_everywhere():
    mesh = parallel.create_mesh()
    x = np.arange(16 * 3, dtype=np.float32).reshape(16, 3)
    batch = parallel.global_batch({"x": x}, mesh)["x"]
    assert batch.shape == (16, 3)
    assert [s.data.shape for s in batch.addressable_shards] == [(2, 3)] * 8
    np.testing.assert_array_equal(np.asarray(batch), x)
    state = parallel.replicate({"w": np.ones((2, 2), np.float32), "step": np.int32(3)}, mesh)
    assert state["w"].sharding.is_fully_replicated and len(state["w"].addressable_shards) == 8
    host = parallel.host_copy(state)
    assert isinstance(host["w"], np.ndarray) and int(host["step"]) == 3


def test_data_parallel_runs_the_per_device_step_on_shards():
    mesh = parallel.create_mesh()

    def step(state, batch):
        # Each device sees 2 rows; pmean gives the global mean, as under pmap.
        local = jnp.mean(batch, axis=0)
        assert batch.shape == (2, 3)
        return state + jax.lax.pmean(local, "data"), jax.lax.psum(jnp.sum(batch), "data")

    run = parallel.data_parallel(step, mesh, donate_state=False)
    x = np.random.default_rng(0).random((16, 3)).astype(np.float32)
    state = parallel.replicate(np.zeros(3, np.float32), mesh)
    new_state, total = run(state, parallel.global_batch(x, mesh))
    np.testing.assert_allclose(np.asarray(new_state), x.mean(0), rtol=1e-6)
    assert float(total) == pytest.approx(float(x.sum()), rel=1e-6)
    assert new_state.sharding.spec == P()


def test_local_batch_fn_applies_a_function_split_over_local_devices():
    w = np.random.default_rng(1).random((3, 5)).astype(np.float32)
    fn = parallel.local_batch_fn(lambda v, x: x @ v["w"], {"w": w})
    x = np.random.default_rng(2).random((16, 3)).astype(np.float32)
    np.testing.assert_allclose(fn(x), x @ w, rtol=1e-6)


def test_cpu_devices_apply_in_a_fresh_process_and_only_warn_once_jax_has_started(caplog):
    script = "import jax; from classsr_jax import parallel; parallel.use_cpu_devices(3); print(jax.device_count())"
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2 --xla_backend_optimization_level=0"}
    fresh = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, cwd=REPO)
    assert fresh.returncode == 0, fresh.stderr[-2000:]
    assert fresh.stdout.strip() == "3"

    started = jax.device_count()  # this test process's 8 simulated devices
    parallel.use_cpu_devices(0)
    parallel.use_cpu_devices(started)
    assert not caplog.records
    parallel.use_cpu_devices(3)
    assert jax.device_count() == started
    assert [r.getMessage() for r in caplog.records] == [
        f"cpu_devices=3 not applied: JAX started with {started} CPU device(s) before it was read; "
        "set it in a fresh process, before any JAX computation"
    ]
