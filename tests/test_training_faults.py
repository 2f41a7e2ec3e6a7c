"""Training under hostile conditions: two runs on one workdir, changed photos or config between runs, a damaged
checkpoint, folders that cannot be made, missing configs, a full disk, a hand-edited results.json, a read-only
finished workdir, an empty validation folder, and Ctrl-C or SIGTERM. Each ends in one line (or none)."""

import errno
import hashlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys

import pytest
from orbax_faults import corrupt_step
from test_train import REPO, _variables, original_stage_args, tiny_config
from training_fixtures import tiny_photos

from classsr_jax import checkpointing
from classsr_jax.cli import prepare
from classsr_jax.cli import train as train_cli
from classsr_jax.errors import CheckpointError, ConfigError, DataError, TrainError
from classsr_jax.training import configuration, guard, stages, train
from classsr_jax.training.context import manual_sources
from classsr_jax.training.workdir import Workdir

pytestmark = pytest.mark.slow  # training runs under faults, subprocesses and signals: out of the quick loop

TEMPORARY = (".orbax-checkpoint-tmp", ".tmp-")


def run_original(data, workdir, steps=2, **overrides):
    """Stage original of the smoke config for `steps` steps, a checkpoint every 2, every checkpoint kept."""
    config = tiny_config(data, stages="original", **{
        "original.num_steps": steps, "original.checkpoint_every_steps": 2, "original.eval_every_steps": 1000,
        "checkpoint.keep_last": 100, **overrides})
    return train.train_and_evaluate(config, str(workdir))


def tree(root):
    """Every file and folder under root with its inode and modification time: equal trees, nothing written."""
    out = []
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(folder, name)
            stat = os.stat(path)
            out.append((os.path.relpath(path, root), stat.st_ino, stat.st_mtime_ns))
    return sorted(out)


def leftovers(root):
    found = [os.path.join(d, n) for d, dirs, files in os.walk(root) for n in dirs + files]
    return [path for path in found if any(t in os.path.basename(path) for t in TEMPORARY)]


# ------------------------------------------------------------------------------------------------ the lock

HOLDER = (
    "import fcntl, os, sys\n"
    "fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)\n"
    "fcntl.flock(fd, fcntl.LOCK_EX)\n"
    "os.write(fd, str(os.getpid()).encode())\n"
    "print('locked', flush=True)\n"
    "sys.stdin.read()\n"
)


def test_a_second_run_on_a_locked_workdir_is_refused_and_a_killed_holders_lock_does_not_block(data, tmp_path):
    workdir = tmp_path / "w"
    workdir.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(workdir / ".lock")], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(TrainError) as err:
            run_original(data, workdir)
        assert str(err.value) == (f"workdir {workdir} is in use by another run (PID {holder.pid}); wait for it to end, "
                                  "or use another --workdir")
        assert os.listdir(workdir) == [".lock"]  # nothing written
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
    run_original(data, workdir)  # the kernel released the dead holder's lock; its PID is still in the file
    assert (workdir / "stages" / "original" / "model").is_dir()
    assert (workdir / ".lock").read_text().strip() == str(os.getpid())
    lock = guard.WorkdirLock(str(workdir))
    lock.acquire()  # released at the end of the run (flock is per open file, so this would fail if it were held)
    lock.release()


# ------------------------------------------------------------------------------------- changed sources


def open_train_split(photos, tfds_dir, workdir):
    config = tiny_config((str(photos), str(tfds_dir)))
    return stages.StageContext(config, Workdir(str(workdir)), None, None, None).train_dataset()


def test_a_prepared_dataset_is_refused_for_other_photos_than_it_was_prepared_from(tmp_path):
    first, second, tfds_dir = tmp_path / "a", tmp_path / "b", tmp_path / "tfds"
    tiny_photos(str(first))
    tiny_photos(str(second))
    os.remove(second / "photo3.png")
    tfds_dir.mkdir()
    open_train_split(first, tfds_dir, tmp_path / "w")
    prepared = tfds_dir / "classsr_folder" / "x2" / "1.0.0"
    marker = json.loads((prepared / "classsr_sources.json").read_text())
    assert (marker["manual_dir"], marker["files"]) == (str(first), 5)
    with pytest.raises(DataError) as err:
        open_train_split(second, tfds_dir, tmp_path / "w")
    assert str(err.value) == (
        f"dataset classsr_folder/x2 in {prepared} was prepared from another folder ({first}, 5 files) than "
        f"config.data.manual_dir has now ({second}, 4 files): use another config.data.data_dir, or delete "
        f"{prepared} to prepare it again"
    )
    assert len(list(open_train_split(first, tfds_dir, tmp_path / "w"))) == 4  # the same photos: the same data
    os.remove(first / "photo3.png")
    with pytest.raises(DataError, match=rf"^dataset classsr_folder/x2 in {prepared} was prepared from other files "):
        open_train_split(first, tfds_dir, tmp_path / "w")


def test_the_sources_are_the_files_names_and_sizes_without_a_tfds_folder_inside(tmp_path):
    (tmp_path / "a.png").write_bytes(b"12")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.png").write_bytes(b"")
    expected = hashlib.sha256(b"a.png|2\nsub/b.png|0").hexdigest()
    assert manual_sources(str(tmp_path)) == {"manual_dir": str(tmp_path), "files": 2, "digest": f"sha256:{expected}"}
    (tmp_path / "tfds").mkdir()
    (tmp_path / "tfds" / "prepared").write_bytes(b"1")
    assert manual_sources(str(tmp_path), str(tmp_path / "tfds"))["digest"] == f"sha256:{expected}"
    (tmp_path / "a.png").write_bytes(b"123")  # the same name, another size
    assert manual_sources(str(tmp_path), str(tmp_path / "tfds"))["digest"] != f"sha256:{expected}"


def test_an_empty_validation_folder_is_named_as_the_validation_split(tmp_path):
    photos, tfds_dir = tmp_path / "photos", tmp_path / "tfds"
    tiny_photos(str(photos))
    os.remove(photos / "validation" / "photo4.png")
    tfds_dir.mkdir()
    with pytest.raises(DataError) as err:
        open_train_split(photos, tfds_dir, tmp_path / "w")
    assert str(err.value) == (
        f"cannot prepare dataset classsr_folder/x2 in {tfds_dir}: its split 'validation' has no images in {photos}"
    )


# ------------------------------------------------------------------------------------------ changed config


def test_a_rerun_with_another_config_is_refused_unless_allow_changed_names_the_fields(data, tmp_path):
    workdir = tmp_path / "w"
    run_original(data, workdir, steps=2)
    run_original(data, workdir, steps=3)  # step counts may change
    recorded = json.loads((workdir / "config.json").read_text())
    assert recorded["config"]["original"]["num_steps"] == 3 and recorded["earlier"] == [{"original.num_steps": 2}]
    before = (workdir / "config.json").read_bytes()
    changed = {"original.learning_rate": 5e-4, "seed": 11}
    with pytest.raises(ConfigError) as err:
        run_original(data, workdir, steps=3, **changed)
    assert str(err.value) == (
        f"workdir {workdir} was run with another config: original.learning_rate, seed differ from its config.json; "
        "rerun with its values, add --config.allow_changed=original.learning_rate,seed to go on with yours, "
        "or use another --workdir"
    )
    assert (workdir / "config.json").read_bytes() == before
    with pytest.raises(ConfigError, match=r"^config field allow_changed names unknown field\(s\): original\.lr$"):
        run_original(data, workdir, steps=3, allow_changed="original.lr", **changed)
    with pytest.raises(ConfigError, match=r"differ from its config.json.*allow_changed=seed "):
        run_original(data, workdir, steps=3, allow_changed="original", **changed)  # a section allows its fields
    run_original(data, workdir, steps=3, allow_changed="original.learning_rate,seed", **changed)
    recorded = json.loads((workdir / "config.json").read_text())
    assert (recorded["config"]["original"]["learning_rate"], recorded["config"]["seed"]) == (5e-4, 11)
    assert recorded["earlier"] == [{"original.num_steps": 2}, {"original.learning_rate": 1e-3, "seed": 10}]


# ------------------------------------------------------------------------------------- damaged checkpoint


@pytest.mark.parametrize("item", ["state", "progress"])
def test_an_unreadable_latest_checkpoint_falls_back_to_the_previous_one(data, tmp_path, caplog, item):
    workdir = tmp_path / "w"
    run_original(data, workdir, steps=4)
    stage = workdir / "stages" / "original"
    shutil.rmtree(stage / "model")  # as if killed after the last checkpoint, before the model was written
    corrupt_step(str(stage / "checkpoints" / "4"), item)
    with caplog.at_level(logging.WARNING):
        run_original(data, workdir, steps=6)
    moved = [r.getMessage() for r in caplog.records if "cannot be read" in r.getMessage()]
    assert len(moved) == 1 and moved[0].startswith(f"stage original: checkpoint step 4 in {stage / 'checkpoints'} "
                                                   "cannot be read (")
    aside = stage / "unreadable_checkpoints"
    assert moved[0].endswith(f"); moved to {aside}, resuming from step 2, the last complete one")
    assert sorted(os.listdir(stage / "checkpoints")) == ["2", "4", "6"]
    assert os.listdir(stage / "unreadable_checkpoints") == ["4"]
    progress = checkpointing.read_train_progress(str(stage / "checkpoints"))
    assert (progress["started_at_step"], progress["step"]) == (2, 6)
    assert checkpointing.load_model(str(stage / "model")).metadata["steps"] == 6


def test_when_no_checkpoint_can_be_read_the_newest_ones_error_stands(data, tmp_path):
    """Falling back needs a readable checkpoint: nothing is moved aside, and the run does not start afresh."""
    workdir = tmp_path / "w"
    run_original(data, workdir, steps=2)
    shutil.rmtree(workdir / "stages" / "original" / "model")
    corrupt_step(str(workdir / "stages" / "original" / "checkpoints" / "2"))
    with pytest.raises(CheckpointError, match=r"^the training checkpoint at step 2 in .* does not fit this run: "):
        run_original(data, workdir, steps=4)
    assert not (workdir / "stages" / "original" / "unreadable_checkpoints").exists()


# ---------------------------------------------------------------------------------- folders, disks, configs


def test_a_workdir_or_prepare_output_that_cannot_be_made_is_one_line(data, tmp_path, monkeypatch, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(TrainError) as err:
        run_original(data, blocker / "sub")
    assert str(err.value) == f"cannot create workdir {blocker / 'sub'}: {blocker} is a file, not a folder"

    assert prepare.main(["bundled", "--output", str(blocker / "sub"), "--no-progress"]) == 1
    assert capsys.readouterr().err.strip().splitlines() == [
        f"error: cannot write to output folder {blocker / 'sub'}: Not a directory "
        f"({blocker / 'sub' / 'bundled' / 'LR' / 'X4'})"
    ]

    read_only = tmp_path / "read_only"
    real_makedirs = os.makedirs

    def makedirs(path, *args, **kwargs):
        if os.fspath(path).startswith(str(read_only)):
            raise OSError(errno.EROFS, "Read-only file system", path)
        return real_makedirs(path, *args, **kwargs)

    monkeypatch.setattr(os, "makedirs", makedirs)
    with pytest.raises(TrainError) as err:
        run_original(data, read_only / "w")
    assert str(err.value) == f"cannot create workdir {read_only / 'w'}: Read-only file system"


@pytest.mark.parametrize("given", ["/nonexistent.py", "configs/nope.py"])
def test_a_missing_config_file_is_one_line_naming_it_and_the_configs_there(given, capsys):
    assert train_cli.main(["--config", given, "--workdir", "/tmp/never"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith(f"error: config file {given} does not exist; the configs in {REPO}/configs")
    assert ": carn, fsrcnn, quickstart, rcan, smoke, srresnet" in err[0]


def test_a_config_by_name_is_found_from_any_working_directory(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    smoke = os.path.join(REPO, "configs", "smoke.py")
    assert configuration.resolve_config_argument("smoke:bundled") == f"{smoke}:bundled"
    assert train_cli.main(["--config=quickstart", "--workdir", str(tmp_path / "w"), "--config.stages=jointt"]) == 1
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("error: config field stages has unknown stage(s) jointt")
    assert train_cli.main(["--config", "nope", "--workdir", str(tmp_path / "w")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: no config 'nope' in {tmp_path}/configs or {REPO}/configs")


def test_a_full_disk_ends_the_command_with_its_error_and_no_orbax_traceback(data, tmp_path):
    workdir = tmp_path / "full"
    full_disk_main = tmp_path / "full_disk_main.py"
    full_disk_main.write_text(
        f"import sys\nsys.path[:0] = [{os.path.join(REPO, 'tests')!r}, {REPO!r}]\nimport orbax_faults\n"
        "orbax_faults.install(orbax_faults.DiskFull, skip=1, where=lambda d: '.tmp-' not in d)\n"
        "from classsr_jax import main\nsys.exit(main.main(sys.argv[1:]))\n"
    )
    args = original_stage_args(data, workdir, num_steps=4, checkpoint_every=2, log_every=2)
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2 --xla_backend_optimization_level=0"}
    out = subprocess.run([sys.executable, str(full_disk_main), *args], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 1, out.stderr[-2000:]
    last = out.stderr.strip().splitlines()[-1]
    checkpoints = workdir / "stages" / "original" / "checkpoints"
    assert last.startswith("error: cannot save ")
    assert last.endswith(f"in {checkpoints}: OSError: [Errno 28] No space left on device")
    assert "Traceback" not in out.stderr and "No space left" not in out.stderr.replace(last, "")


# ------------------------------------------------------------------------------------------- finished runs


def classsr_model(data, tmp_path):
    spec = configuration.model_spec(tiny_config(data))
    return checkpointing.save_model(str(tmp_path / "classsr"), spec, _variables(spec))


def test_a_results_json_without_its_table_is_computed_again(data, tmp_path):
    config = tiny_config(data, stages="evaluate", **{"pretrained.classsr": classsr_model(data, tmp_path)})
    workdir = tmp_path / "w"
    first = train.train_and_evaluate(config, str(workdir))["evaluation"]
    results = workdir / "evaluation" / "results.json"
    edited = {k: v for k, v in json.loads(results.read_text()).items() if k != "table"}
    results.write_text(json.dumps(edited))
    again = train.train_and_evaluate(config, str(workdir))["evaluation"]
    assert again["table"] == first["table"]
    assert json.loads(results.read_text())["table"] == first["table"]


def test_a_rerun_of_a_finished_run_writes_nothing_even_on_a_read_only_disk(data, tmp_path, monkeypatch):
    """A finished stage writes its export only when that is missing; before, every rerun wrote it again."""
    workdir = tmp_path / "w"
    spec = configuration.model_spec(tiny_config(data))
    finished = workdir / "stages" / "finetune" / "model"
    checkpointing.save_model(str(finished), spec, _variables(spec), {"stage": "finetune"})
    config = tiny_config(data, stages="finetune")
    train.train_and_evaluate(config, str(workdir))  # finished: nothing trains, the missing export is written
    assert checkpointing.load_model(str(workdir / "export" / "classsr")).metadata == {"stage": "finetune"}
    before = tree(workdir)
    real_open = os.open

    def read_only_open(path, flags, *args, **kwargs):
        if os.fspath(path).startswith(str(workdir)) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            raise OSError(errno.EROFS, "Read-only file system", path)
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", read_only_open)  # the lock file cannot be opened: the run goes on unlocked
    out = train.train_and_evaluate(config, str(workdir))
    assert "finetune" in out["variables"]
    assert tree(workdir) == before


# ---------------------------------------------------------------------------------------------- interrupts


class InterruptedBatches:
    """Training batches that stop at batch `at` (1-based) as Ctrl-C (KeyboardInterrupt) or SIGTERM would."""

    def __init__(self, inner, at, how):
        self.inner, self.at, self.how, self.count = inner, at, how, 0

    def __next__(self):
        self.count += 1
        if self.count == self.at:
            if self.how == "sigint":
                raise KeyboardInterrupt
            os.kill(os.getpid(), signal.SIGTERM)  # the handler raises in this thread as soon as kill returns
        return next(self.inner)

    def close(self):
        self.inner.close()


@pytest.mark.parametrize("how, code", [("sigint", 130), ("sigterm", 143)])
def test_an_interrupted_run_ends_with_one_line_and_its_exit_code_and_leaves_no_temporary_files(
        data, tmp_path, monkeypatch, capsys, how, code):
    create = stages.create_train_iterator
    monkeypatch.setattr(stages, "create_train_iterator", lambda *a, **k: InterruptedBatches(create(*a, **k), 4, how))
    workdir = tmp_path / "w"
    handler = signal.getsignal(signal.SIGTERM)
    assert train_cli.main(original_stage_args(data, workdir, num_steps=8, checkpoint_every=2, log_every=2)) == code
    assert capsys.readouterr().err.strip().splitlines()[-1] == "interrupted: stage original at step 3; rerun to resume"
    assert signal.getsignal(signal.SIGTERM) is handler
    assert leftovers(workdir) == []
    assert checkpointing.latest_train_step(str(workdir / "stages" / "original" / "checkpoints")) == 2
    assert not (workdir / "stages" / "original" / "model").exists()
    lock = guard.WorkdirLock(str(workdir))
    lock.acquire()  # released
    lock.release()
