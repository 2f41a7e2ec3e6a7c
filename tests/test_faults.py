"""A hostile probe of the commands, run as a user would: each case checks the one-line error or exit code and,
by sha256 before and after, that no input, checkpoint file or earlier output changed."""

import errno
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import torch
from command_fixtures import photo
from PIL import Image

from classsr_jax import checkpointing
from classsr_jax.cli import convert, evaluate, upscale
from classsr_jax.evaluation.pairing import pair_folders
from classsr_jax.io import atomic, outputs
from classsr_jax.io.images import read_image, write_image

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEMP_NAME = re.compile(r"\..+\.[0-9a-f]{12}\.tmp")


def hashes(*roots) -> dict[str, str]:
    """sha256 of every file under the roots (files or folders), by path."""
    found = {}
    for root in map(str, roots):
        paths = [root] if os.path.isfile(root) else [os.path.join(d, n) for d, _, ns in os.walk(root) for n in ns]
        for path in paths:
            with open(path, "rb") as f:
                found[path] = hashlib.sha256(f.read()).hexdigest()
    return found


def error_lines(capsys) -> list[str]:
    """The error lines on stderr (without the progress bar's)."""
    return [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]


def no_model_load(monkeypatch):
    """Every refusal below must come before any work: opening the model fails the test."""
    monkeypatch.setattr(checkpointing, "open_model", lambda path: pytest.fail("the model was opened"))


@pytest.fixture
def photos(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for i, name in enumerate(("a.png", "b.png")):
        write_image(str(folder / name), photo(20, 24, i))
    return folder


# ------------------------------------------------------------------ 1. one rule for every path a command writes


def test_report_mask_and_output_never_replace_an_input_or_the_checkpoint(checkpoint, photos, tmp_path, capsys,
                                                                         monkeypatch):
    no_model_load(monkeypatch)
    earlier = tmp_path / "m.png"  # an earlier output: the mask and the report of this run may not both take it
    earlier.write_bytes(b"earlier output")
    before = hashes(photos, checkpoint, earlier)
    metadata = os.path.join(checkpoint, "model", "metadata")
    a, out = photos / "a.png", tmp_path / "out"
    os.link(a, tmp_path / "hard.png")
    os.symlink(a, tmp_path / "link.json")
    cases = [
        (["--input", str(photos), "--output", str(out), "--report", str(a)],
         f"report {a} is the input {a}; inputs are never written, choose another path"),
        (["--input", str(photos), "--output", str(out), "--report", str(tmp_path / "link.json")],
         f"report {tmp_path / 'link.json'} is the input {a}; inputs are never written, choose another path"),
        (["--input", str(a), "--output", str(tmp_path / "o.png"), "--mask", str(tmp_path / "hard.png")],
         f"mask {tmp_path / 'hard.png'} is the input {a}; inputs are never written, choose another path"),
        (["--input", str(a), "--output", str(tmp_path / "o.png"), "--report", metadata],
         f"report {metadata} lies inside {checkpoint}, which this run reads; choose another path"),
        (["--input", str(photos), "--output", os.path.join(checkpoint, "model")],
         f"output {os.path.join(checkpoint, 'model', 'a.png')} lies inside {checkpoint}, which this run reads; "
         "choose another path"),
        (["--input", str(a), "--output", str(tmp_path / "o.png"), "--mask", str(tmp_path / "m.png"),
          "--report", str(tmp_path / "m.png")],
         f"{tmp_path / 'm.png'} would be written twice: as the mask and as the report; give each output its own name"),
        (["--input", str(a), "--output", str(tmp_path / "o.png"), "--mask", str(tmp_path / "o.png")],
         f"{tmp_path / 'o.png'} would be written twice: as the output and as the mask; give each output its own name"),
    ]
    for args, message in cases:
        assert upscale.main(["--checkpoint", checkpoint, *args, "--overwrite"]) == 1, args
        assert error_lines(capsys) == [f"error: {message}"]
    assert hashes(photos, checkpoint, earlier) == before
    assert not out.exists() and not (tmp_path / "o.png").exists()


def test_evaluate_report_is_checked_against_the_images_and_its_folder_before_any_work(checkpoint, tmp_path, capsys,
                                                                                       monkeypatch):
    no_model_load(monkeypatch)
    lr, hr = tmp_path / "LR", tmp_path / "HR"
    lr.mkdir()
    hr.mkdir()
    for name in ("p1.png", "p2.png"):
        write_image(str(lr / name), photo(16, 16))
        write_image(str(hr / name), photo(64, 64))
    (tmp_path / "file").write_bytes(b"x")
    before = hashes(lr, hr, checkpoint)
    base = ["--checkpoint", checkpoint, "--lr-dir", str(lr), "--hr-dir", str(hr), "--overwrite", "--report"]
    cases = [
        (hr / "p2.png", f"report {hr / 'p2.png'} is the input {hr / 'p2.png'}; inputs are never written, "
                        "choose another path"),
        (os.path.join(checkpoint, "r.json"), f"report {os.path.join(checkpoint, 'r.json')} lies inside {checkpoint}, "
                                             "which this run reads; choose another path"),
        (tmp_path / "file" / "r.json", f"cannot create folder {tmp_path / 'file'}: {tmp_path / 'file'} is a file"),
    ]
    for report, message in cases:
        assert evaluate.main([*base, str(report)]) == 1
        assert error_lines(capsys) == [f"error: {message}"]
    assert hashes(lr, hr, checkpoint) == before


def test_overwrite_replaces_only_earlier_outputs(checkpoint, photos, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "a.png").write_bytes(b"earlier output")
    before = hashes(photos, checkpoint)
    assert upscale.main(["--checkpoint", checkpoint, "--input", str(photos), "--output", str(out),
                         "--report", str(tmp_path / "r.json"), "--overwrite"]) == 0
    assert read_image(str(out / "a.png")).pixels.shape == (80, 96, 3)
    assert hashes(photos, checkpoint) == before


# ------------------------------------------------------------------------------------ 2. the output size limit


def test_default_output_limit_is_an_eighth_of_memory_in_float32_rgb(monkeypatch):
    values = {"SC_PHYS_PAGES": 4 * 1024 * 1024, "SC_PAGE_SIZE": 4096}  # 16 GiB
    monkeypatch.setattr(os, "sysconf", lambda name: values[name])
    assert outputs.memory_output_limit() == 16 * 2**30 // 8 // 12 == 178_956_970


def test_a_small_file_with_a_huge_output_is_refused_from_its_header(checkpoint, tmp_path, capsys, monkeypatch):
    big = tmp_path / "in" / "big.png"
    big.parent.mkdir()
    Image.new("P", (9000, 9000)).save(big)  # about 10 KB on disk, 81 MP: under the input pixel limit
    assert os.path.getsize(big) < 100_000
    write_image(str(big.parent / "small.png"), photo(20, 24))
    values = {"SC_PHYS_PAGES": 4 * 1024 * 1024, "SC_PAGE_SIZE": 4096}  # a 16 GiB host
    monkeypatch.setattr(os, "sysconf", lambda name: values[name])
    decode = upscale.read_image
    monkeypatch.setattr(upscale, "read_image", lambda path, *a: decode(path, *a) if "small" in path else
                        pytest.fail(f"{path} was decoded"))
    out = tmp_path / "out"
    assert upscale.main(["--checkpoint", checkpoint, "--input", str(big.parent), "--output", str(out)]) == 1
    assert error_lines(capsys)[0] == (
        f"error: {big}: its x4 output would be 36000x36000 (1,296,000,000 pixels), more than --max-output-pixels "
        "178,956,970; raise it (0: no limit) or upscale a smaller image")
    assert sorted(os.listdir(out)) == ["small.png"]
    assert upscale.main(["--checkpoint", checkpoint, "--input", str(big.parent / "small.png"), "--output",
                         str(tmp_path / "s.png"), "--max-output-pixels", "7679"]) == 1
    assert error_lines(capsys) == [
        f"error: {big.parent / 'small.png'}: its x4 output would be 96x80 (7,680 pixels), more than "
        "--max-output-pixels 7,679; raise it (0: no limit) or upscale a smaller image"]
    assert not (tmp_path / "s.png").exists()


# ------------------------------------------------------------------------------ 3. output names that collide


def test_outputs_that_would_share_a_name_are_refused_before_any_work(checkpoint, tmp_path, capsys, monkeypatch):
    no_model_load(monkeypatch)
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    write_image(str(src / "a.png"), photo(20, 24))
    write_image(str(src / "a.jpg"), photo(20, 24, 1))
    assert upscale.main(["--checkpoint", checkpoint, "--input", str(src), "--output", str(out),
                         "--mask", str(tmp_path / "masks")]) == 1
    assert error_lines(capsys) == [
        f"error: {tmp_path / 'masks' / 'a_mask.png'} would be written twice: as the mask of {src / 'a.jpg'} and as "
        f"the mask of {src / 'a.png'}; give each output its own name"]
    os.remove(src / "a.jpg")
    write_image(str(src / "a_mask.png"), photo(20, 24, 2))
    assert upscale.main(["--checkpoint", checkpoint, "--input", str(src), "--output", str(out),
                         "--mask", str(out)]) == 1
    assert error_lines(capsys) == [
        f"error: {out / 'a_mask.png'} would be written twice: as the mask of {src / 'a.png'} and as the output of "
        f"{src / 'a_mask.png'}; give each output its own name"]
    assert not out.exists() and not (tmp_path / "masks").exists()


# ----------------------------------------------------------------------------- 4. evaluate's ambiguous pairs


def test_two_lr_files_for_one_hr_image_are_refused_and_scored_by_neither(checkpoint, tmp_path, capsys):
    lr, hr = tmp_path / "LR", tmp_path / "HR"
    lr.mkdir()
    hr.mkdir()
    for name in ("X.png", "Xx4.png", "Y.png"):
        write_image(str(lr / name), photo(8, 8))
    for name in ("X.png", "Y.png"):
        write_image(str(hr / name), photo(32, 32))
    pairs, failures = pair_folders(str(lr), str(hr), 4)
    assert pairs == [("Y", str(lr / "Y.png"), str(hr / "Y.png"))]
    assert failures == [{"name": "X", "error": f"X: the LR files {lr / 'X.png'} and {lr / 'Xx4.png'} would share one "
                                                "HR image; keep one of them (none was scored)"}]
    report = tmp_path / "r.json"
    assert evaluate.main(["--checkpoint", checkpoint, "--lr-dir", str(lr), "--hr-dir", str(hr), "--protocol", "full",
                          "--report", str(report)]) == 1
    assert error_lines(capsys) == [f"error: {failures[0]['error']}"]
    scored = json.loads(report.read_text())
    assert [image["name"] for image in scored["images"]] == ["Y"] and scored["failed"] == failures


# --------------------------------------------------------------------------------- 5. convert's hostile files


class MakesAFolder:
    """Unpickling this would run os.mkdir: the converter must refuse the file without running it."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.mkdir, (self.path,))


def test_convert_refuses_a_hostile_file_without_advising_to_unpickle_it(tmp_path, capsys):
    hostile, witness = tmp_path / "hostile.pth", tmp_path / "ran"
    torch.save({"weight": MakesAFolder(str(witness))}, hostile)
    before = hashes(hostile)
    assert convert.main(["--model", "fsrcnn", "--input", str(hostile), "--output", str(tmp_path / "o")]) == 1
    lines = error_lines(capsys)
    assert lines == [f"error: cannot read {hostile} as a PyTorch checkpoint: it is not a plain state_dict of tensors "
                     "(it asks for the Python object posix.mkdir); such files are never unpickled, as that could run "
                     "code"]
    assert "weights_only" not in lines[0]
    assert not witness.exists() and not (tmp_path / "o").exists() and hashes(hostile) == before


# ------------------------------------------------------------------- 6. interrupts and stale temporary files


def test_atomic_write_removes_its_temp_on_interrupt_and_names_only_the_users_path(tmp_path):
    path = tmp_path / "x.png"

    def interrupted(f):
        f.write(b"half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic.write_bytes(path, b"")  # a complete write first: the interrupted one must leave it alone
        atomic.atomic_write(path, interrupted)
    assert os.listdir(tmp_path) == ["x.png"] and path.read_bytes() == b""

    def disk_full(f):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), f.name)

    with pytest.raises(atomic.WriteError) as info:
        atomic.atomic_write(path, disk_full)
    assert str(info.value) == f"cannot write {path}: [Errno {errno.ENOSPC}] {os.strerror(errno.ENOSPC)}"
    assert os.listdir(tmp_path) == ["x.png"]


def test_only_old_temps_of_this_tool_are_removed(tmp_path):
    old, young = tmp_path / ".a.png.0123456789ab.tmp", tmp_path / ".b.png.0123456789ab.tmp"
    others = [tmp_path / ".a.png.tmp", tmp_path / "a.png.0123456789ab.tmp", tmp_path / ".a.png.0123456789AB.tmp",
              tmp_path / "notes.tmp"]
    for path in [old, young, *others]:
        path.write_bytes(b"x")
    link = tmp_path / ".c.png.0123456789ab.tmp"
    link.symlink_to(tmp_path / "notes.tmp")
    hour_ago = time.time() - 3600
    for path in [old, *others]:
        os.utime(path, (hour_ago, hour_ago))
    os.utime(link, (hour_ago, hour_ago), follow_symlinks=False)
    assert outputs.remove_stale_temps(tmp_path) == [str(old)]
    assert sorted(os.listdir(tmp_path)) == sorted(p.name for p in [young, link, *others])


def test_a_rerun_clears_the_temps_a_kill_left_in_the_output_folder(checkpoint, photos, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    stale = out / ".a.png.00112233aabb.tmp"
    stale.write_bytes(b"half an image")
    os.utime(stale, (time.time() - 120, time.time() - 120))
    assert upscale.main(["--checkpoint", checkpoint, "--input", str(photos), "--output", str(out)]) == 0
    assert sorted(os.listdir(out)) == ["a.png", "b.png"]


def run_cli(module, *args, env=None, **kw):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", **(env or {})}
    return subprocess.Popen([sys.executable, "-m", module, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            cwd=REPO, env=env, **kw)


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_an_interrupted_folder_run_ends_in_one_line_and_leaves_no_temp(checkpoint, tmp_path, signum, code):
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    sizes = {f"{i:02d}.png": (20 + 4 * i, 24 + 8 * i) for i in range(24)}
    for name, (h, w) in sizes.items():  # each size compiles its own programs: the run lasts long enough
        write_image(str(src / name), photo(h, w))
    before = hashes(src, checkpoint)
    process = run_cli("classsr_jax.upscale", "--checkpoint", checkpoint, "--input", str(src), "--output", str(out))
    deadline = time.monotonic() + 120
    while not (out.exists() and any(n.endswith(".png") and not n.startswith(".") for n in os.listdir(out))):
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.05)
    process.send_signal(signum)
    stdout, stderr = process.communicate(timeout=60)
    last = stderr.decode().strip().splitlines()[-1]
    assert process.returncode == code, stderr.decode()
    written = sorted(n for n in os.listdir(out))
    assert last == f"interrupted: {len(written)} of 24 images written; rerun to resume"
    assert "Traceback" not in stderr.decode()
    assert 1 <= len(written) < 24 and not any(TEMP_NAME.fullmatch(n) for n in written)
    for name in written:  # every output there is whole
        assert read_image(str(out / name)).pixels.shape[:2] == (4 * sizes[name][0], 4 * sizes[name][1])
    assert hashes(src, checkpoint) == before


# ------------------------------------------------------------ 7. folders that cannot be created (read-only file system)


def test_folders_that_cannot_be_created_are_one_line_naming_them(checkpoint, photos, tmp_path, capsys, monkeypatch):
    (tmp_path / "file").write_bytes(b"x")
    nested = tmp_path / "file" / "out"
    assert upscale.main(["--checkpoint", checkpoint, "--input", str(photos), "--output", str(nested)]) == 1
    assert error_lines(capsys) == [f"error: cannot create folder {nested}: {tmp_path / 'file'} is a file"]
    real_makedirs = os.makedirs

    def read_only(path, *args, **kw):
        if not os.path.isdir(path):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), path)
        return real_makedirs(path, *args, **kw)

    monkeypatch.setattr(os, "makedirs", read_only)
    out = tmp_path / "ro" / "out"
    assert upscale.main(["--checkpoint", checkpoint, "--input", str(photos), "--output", str(out)]) == 1
    assert error_lines(capsys) == [f"error: cannot create folder {out}: {os.strerror(errno.EROFS)}"]
    pth = tmp_path / "net.pth"
    torch.save({"w": torch.zeros(1)}, pth)
    target = tmp_path / "ro" / "nested" / "ckpt"
    assert convert.main(["--model", "fsrcnn", "--input", str(pth), "--output", str(target)]) == 1
    assert error_lines(capsys) == [f"error: cannot create folder {target.parent}: {os.strerror(errno.EROFS)}"]


# ------------------------------------------------ 8, 10. images a protocol or a metric cannot take name their file


def test_too_small_images_are_one_line_naming_the_file(checkpoint, tmp_path, capsys):
    src = tmp_path / "tiny.png"
    write_image(str(src), photo(20, 24))
    assert upscale.main(["--checkpoint", checkpoint, "--input", str(src), "--output", str(tmp_path / "o.png"),
                         "--protocol", "paper"]) == 1
    assert error_lines(capsys) == [
        f"error: {src}: image of 24x20 LR pixels is smaller than the 32x32 tile; the paper protocol cannot handle "
        "it, use protocol 'full'"]
    lr, hr = tmp_path / "LR", tmp_path / "HR"
    lr.mkdir()
    hr.mkdir()
    write_image(str(lr / "t.png"), photo(20, 24))
    write_image(str(hr / "t.png"), photo(80, 96))
    write_image(str(lr / "s.png"), photo(4, 4))  # 16x16 HR, 8x8 after the 4-px border: under SSIM's 11x11 window
    write_image(str(hr / "s.png"), photo(16, 16))
    assert evaluate.main(["--checkpoint", checkpoint, "--lr-dir", str(lr), "--hr-dir", str(hr)]) == 1
    tile = "LR pixels is smaller than the 32x32 tile; the paper protocol cannot handle it, use protocol 'full'"
    assert error_lines(capsys) == [f"error: s ({lr / 's.png'}): image of 4x4 {tile}",
                                   f"error: t ({lr / 't.png'}): image of 24x20 {tile}",
                                   "error: no pair could be evaluated (2 failed)"]
    assert evaluate.main(["--checkpoint", checkpoint, "--lr-dir", str(lr), "--hr-dir", str(hr), "--protocol",
                          "full"]) == 1
    assert error_lines(capsys)[0] == f"error: s ({lr / 's.png'}): image of 8x8 is smaller than the 11x11 SSIM window"


# ---------------------------------------------------------------------- 9. names that are not valid UTF-8


def test_undecodable_names_print_escaped_under_a_strict_utf8_stdout(checkpoint, tmp_path):
    folder = os.fsencode(tmp_path)
    src = os.path.join(folder, b"caf\xe9.png")
    write_image(os.fsdecode(src), photo(20, 24))
    os.mkdir(os.path.join(folder, b"out"))
    process = run_cli("classsr_jax.upscale", "--checkpoint", checkpoint, "--input", os.fsdecode(src), "--output",
                      os.fsdecode(os.path.join(folder, b"out")), env={"PYTHONIOENCODING": "utf-8:strict",
                                                                      "LC_ALL": "C.UTF-8"})
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 0, stderr
    assert stdout.startswith(os.fsencode(tmp_path) + b"/caf\\udce9.png \xe2\x86\x92 ")  # the name, escaped
    assert os.listdir(os.path.join(folder, b"out")) == [b"caf\xe9.png"]
