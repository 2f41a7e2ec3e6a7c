"""One folder, several processes: `upscale --num-processes N --process-index I` splits the files between the
processes (on one host or several), each writes its own share and its own report, and a rerun skips what is done,
so a preempted job resumes."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from classsr_jax.cli import upscale
from classsr_jax.io.images import write_image

pytestmark = pytest.mark.slow  # two command processes on one folder: out of the quick loop

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMAGES = 5


def photos(folder, count=IMAGES):
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(count):
        write_image(str(folder / f"p{i}.png"), rng.random((20 + i, 24, 3)).astype(np.float32))


def start(checkpoint, folder, out, report, index, processes=2):
    cmd = [sys.executable, "-m", "classsr_jax.upscale", "--checkpoint", checkpoint, "-i", str(folder), "-o", str(out),
           "--report", str(report), "--num-processes", str(processes), "--process-index", str(index),
           "--cpu-devices", "1"]
    env = {**os.environ, "XLA_FLAGS": "--xla_backend_optimization_level=0"}
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def run_both(checkpoint, folder, out, report):
    procs = [start(checkpoint, folder, out, report, i) for i in range(2)]
    results = [p.communicate(timeout=600) for p in procs]
    for p, (stdout, stderr) in zip(procs, results):
        assert p.returncode == 0, stderr
    return [stdout for stdout, _ in results]


def test_two_processes_write_every_image_exactly_once_and_a_rerun_resumes(checkpoint, tmp_path):
    folder, out, report = tmp_path / "in", tmp_path / "out", tmp_path / "r.json"
    photos(folder)
    lines = run_both(checkpoint, folder, out, report)
    assert "(process 1 of 2)" in lines[0] and "(process 2 of 2)" in lines[1]
    reports = [json.loads((tmp_path / f"r.process{i + 1}-of-2.json").read_text()) for i in range(2)]
    written = [[os.path.basename(e["output"]) for e in r["images"]] for r in reports]
    assert sorted(written[0] + written[1]) == [f"p{i}.png" for i in range(IMAGES)]  # each once, none twice
    assert written == [["p0.png", "p2.png", "p4.png"], ["p1.png", "p3.png"]]  # every second file, in order
    assert sorted(os.listdir(out)) == [f"p{i}.png" for i in range(IMAGES)]
    stamps = {name: os.stat(out / name).st_mtime_ns for name in os.listdir(out)}
    run_both(checkpoint, folder, out, report)  # a rerun (a preempted job started again) skips the finished files
    reports = [json.loads((tmp_path / f"r.process{i + 1}-of-2.json").read_text()) for i in range(2)]
    assert [r["images"] for r in reports] == [[], []] and [len(r["kept"]) for r in reports] == [3, 2]
    assert {name: os.stat(out / name).st_mtime_ns for name in os.listdir(out)} == stamps


def test_process_flags_are_checked(checkpoint, tmp_path, capsys):
    photos(tmp_path / "in", 1)
    rc = upscale.main(["--checkpoint", checkpoint, "-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"),
                       "--num-processes", "2", "--process-index", "2"])
    assert rc == 2
    assert capsys.readouterr().err.strip() == "error: --process-index 2 is out of range for --num-processes 2 (0–1)"
    rc = upscale.main(["--checkpoint", checkpoint, "-i", str(tmp_path / "in" / "p0.png"), "-o",
                       str(tmp_path / "o.png"), "--num-processes", "2", "--process-index", "0"])
    assert rc == 2
    assert capsys.readouterr().err.strip() == "error: --num-processes splits a folder: give a folder as --input"


def test_a_rerun_updates_its_own_report_but_keeps_any_other_file(checkpoint, tmp_path, capsys):
    photos(tmp_path / "in", 2)
    notes = tmp_path / "notes.json"
    notes.write_text('{"mine": true}')
    args = ["--checkpoint", checkpoint, "-i", str(tmp_path / "in"), "-o", str(tmp_path / "out")]
    assert upscale.main(args + ["--report", str(notes)]) == 1
    assert capsys.readouterr().err.strip() == f"error: report {notes} exists; --overwrite replaces it"
    assert notes.read_text() == '{"mine": true}'
    report = tmp_path / "r.json"
    assert upscale.main(args + ["--report", str(report)]) == 0
    assert upscale.main(args + ["--report", str(report)]) == 0  # the earlier run's report: brought up to date
    assert [len(json.loads(report.read_text())[key]) for key in ("images", "kept")] == [0, 2]
