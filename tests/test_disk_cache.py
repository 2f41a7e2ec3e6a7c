"""What commands keep on disk beside JAX's compilation cache (`classsr_jax.disk_cache`), so that a new process (a
command's second run) neither compiles nor traces: compiled band programs (same pixels, no compile; a broken entry
is compiled again), a model's variable shapes, and opened models (a changed checkpoint is read again)."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from command_fixtures import SPEC, photo

from classsr_jax import checkpointing, disk_cache
from classsr_jax.inference import bands, program_cache
from classsr_jax.inference.upscaler import Upscaler
from classsr_jax.io.images import read_image, write_image
from classsr_jax.models import ModelSpec
from classsr_jax.models import spec as spec_module

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def cache_folder(tmp_path, monkeypatch):
    """A fresh cache folder, and no program of this process's own memory (as in a new process)."""
    monkeypatch.setattr(disk_cache, "folder", lambda kind: str(tmp_path / kind))
    monkeypatch.setattr(bands, "_programs", type(bands._programs)())
    return tmp_path / program_cache.KIND


def upscale(variables, image):
    return Upscaler(SPEC, variables, protocol="full").upscale(image)


def no_tracing(*_args, **_kwargs):
    raise AssertionError("the band program was traced again")


def test_a_kept_program_loads_without_tracing_and_a_broken_one_is_compiled_again(cache_folder, monkeypatch):
    variables, image = SPEC.init(seed=5), photo(40, 72, seed=2)
    other = jax.tree_util.tree_map(lambda a: a * 0.9, variables)  # other weights, same program
    first, first_other = upscale(variables, image), upscale(other, image)
    assert not np.array_equal(first.sr, first_other.sr)
    (entry,) = cache_folder.iterdir()
    assert entry.name.endswith(".executable")
    with monkeypatch.context() as patched:  # a new process: nothing in memory, and no tracing allowed
        patched.setattr(bands, "_programs", type(bands._programs)())
        patched.setattr(bands, "_band_program", no_tracing)
        loaded = upscale(other, image)
    np.testing.assert_array_equal(loaded.sr, first_other.sr)
    assert loaded.compile_s < first.compile_s
    entry.write_bytes(entry.read_bytes()[:100])  # truncated, as by a full disk
    monkeypatch.setattr(bands, "_programs", type(bands._programs)())
    again = upscale(variables, image)  # compiled again
    np.testing.assert_array_equal(again.sr, first.sr)
    assert entry.stat().st_size > 100 and program_cache.load(str(entry), jax.local_devices()) is not None


def test_the_entry_changes_with_the_source_the_devices_and_the_key(monkeypatch):
    devices = jax.local_devices()
    path = program_cache.entry_path(("route", 1), devices)
    assert path == program_cache.entry_path(("route", 1), devices)
    assert path != program_cache.entry_path(("route", 2), devices)
    assert path != program_cache.entry_path(("route", 1), devices[:1])
    monkeypatch.setattr(disk_cache, "source_digest", lambda *packages: "an edited module")
    assert path != program_cache.entry_path(("route", 1), devices)


def test_the_folder_follows_jax_compilation_cache():
    before = jax.config.jax_compilation_cache_dir
    try:
        jax.config.update("jax_compilation_cache_dir", None)
        assert disk_cache.folder("kind") is None  # JAX's cache off: nothing kept
        assert program_cache.entry_path(("route", 1), jax.local_devices()) is None
        jax.config.update("jax_compilation_cache_dir", "/somewhere")
        assert disk_cache.folder("kind") == os.path.join("/somewhere", "kind")
    finally:
        jax.config.update("jax_compilation_cache_dir", before)


def test_variable_shapes_are_kept_and_equal_a_fresh_trace(cache_folder, monkeypatch):
    spec = ModelSpec("classsr", "carn", (36, 52, 64))
    spec_module._variable_rows.cache_clear()  # and this process's memory
    traced = spec.abstract()
    (entry,) = (cache_folder.parent / "classsr_shapes").iterdir()
    with monkeypatch.context() as patched:
        patched.setattr(jax, "eval_shape", no_tracing)
        spec_module._variable_rows.cache_clear()
        kept = spec.abstract()
    assert jax.tree_util.tree_structure(kept) == jax.tree_util.tree_structure(traced)
    assert jax.tree_util.tree_leaves(kept) == jax.tree_util.tree_leaves(traced)
    entry.write_text("[[")  # damaged: traced again and written anew
    spec_module._variable_rows.cache_clear()
    assert jax.tree_util.tree_leaves(spec.abstract()) == jax.tree_util.tree_leaves(traced)
    assert json.loads(entry.read_text())[0][0].startswith(("params/", "batch_stats/"))


def test_a_program_jax_already_cached_is_compiled_again_before_it_is_kept(checkpoint, tmp_path):
    """JAX's own cache holding the program (an earlier run without ours) must not leak into ours: an executable
    JAX reloaded serializes incompletely, and running that copy in the next process fails."""
    env = {**os.environ, "JAX_COMPILATION_CACHE_DIR": str(tmp_path / "xla"), "JAX_PLATFORMS": "cpu"}
    image = tmp_path / "in.png"
    write_image(str(image), photo(40, 72, seed=2))
    jax_only = ("import sys; from classsr_jax import checkpointing, parallel; from classsr_jax.inference import "
                "program_cache; from classsr_jax.inference.upscaler import Upscaler; from classsr_jax.io.images import "
                "read_image; parallel.use_compilation_cache(); program_cache.entry_path = lambda *a: None; "
                "m = checkpointing.open_model(sys.argv[1]); "
                "Upscaler(m.spec, m.variables).upscale(read_image(sys.argv[2]).pixels)")
    command = ["-m", "classsr_jax.upscale", "--checkpoint", checkpoint, "-i", str(image), "-o"]
    for run in (["-c", jax_only, checkpoint, str(image)], command + [str(tmp_path / "1.png")],
                command + [str(tmp_path / "2.png")]):
        done = subprocess.run([sys.executable, *run], capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
        assert done.returncode == 0, done.stderr
    assert len(os.listdir(tmp_path / "xla" / program_cache.KIND)) == 1
    outputs = [read_image(str(tmp_path / f"{i}.png")).pixels for i in (1, 2)]
    np.testing.assert_array_equal(outputs[1], outputs[0])


def test_an_opened_model_is_kept_and_a_changed_checkpoint_is_read_again(cache_folder, tmp_path, monkeypatch):
    path = str(tmp_path / "model")
    variables = SPEC.init(seed=5)
    checkpointing.save_model(path, SPEC, variables)
    first = checkpointing.open_model(path)
    assert len(os.listdir(cache_folder.parent / checkpointing.OPENED_KIND)) == 1
    with monkeypatch.context() as patched:
        patched.setattr(checkpointing, "_restore_model", no_tracing)  # Orbax is not asked again
        kept = checkpointing.open_model(path)
    assert kept.spec == first.spec and kept.metadata == first.metadata
    assert jax.tree_util.tree_all(jax.tree_util.tree_map(np.array_equal, kept.variables, first.variables))
    expected = jax.tree_util.tree_map(lambda a: a * 0.5, variables)
    checkpointing.save_model(path, SPEC, expected, overwrite=True)  # the same folder, new weights
    again = checkpointing.open_model(path)
    assert jax.tree_util.tree_all(jax.tree_util.tree_map(np.array_equal, again.variables, expected))
