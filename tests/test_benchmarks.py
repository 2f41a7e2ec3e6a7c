"""The benchmark scripts that tests can afford, run in their smoke modes so that they cannot rot."""

import os
import re
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_module(module, *args):
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # one CPU device, as on a one-GPU machine
    env["JAX_PLATFORMS"] = "cpu"
    return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=900)


def test_gpu_suite_smoke_mode_prints_every_section():
    run = run_module("benchmarks.gpu_suite", "--smoke")
    assert run.returncode == 0, run.stderr[-3000:]
    table = run.stdout.split("\n\n")[-1]
    rows = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith("| case")]
    labels = [row.split(" | ")[0][2:] for row in rows]
    assert labels == [
        "A. 8K ClassSR-fsrcnn, float32",
        "A. 8K ClassSR-fsrcnn, bfloat16",
        "B. fsrcnn b3/b1 (bf16)",
        "C. fsrcnn tile loop vs bucketed (bf16)",
        "D. 8K ClassSR-fsrcnn bf16, buckets 8/2",
        "E. file to file, 288×160 ClassSR-fsrcnn bf16, PNG",
    ]
    # Every timing is a number of seconds, and the host share a percentage.
    assert all(re.match(r"\| [^|]+ \| \d+\.\d+ (s|ms/tile|/ \d+\.\d+ s)", row) or "b3/b1" in row for row in rows[:-1])
    assert re.match(r"\| E\. [^|]+ \| read \d+\.\d\d s \| inference \d+\.\d+ s \| write \d+\.\d\d s \(photo-like\) \| "
                    r"host: \d+ cores \|", rows[-1])
    assert re.search(r"host \d+\.\d %", rows[0])
    assert "suite:" in run.stdout and "nproc=" in run.stdout


def markdown_tables(stdout: str) -> dict[str, list[dict[str, str]]]:
    """Each '### title' section's table as rows of {header: cell}."""
    tables = {}
    for section in stdout.split("\n### ")[1:]:
        title, _, body = section.partition("\n")
        lines = [line for line in body.splitlines() if line.startswith("|")]
        heads = [h.strip() for h in lines[0].strip("|").split("|")]
        tables[title] = [dict(zip(heads, (c.strip() for c in line.strip("|").split("|")))) for line in lines[2:]]
    return tables


def seconds(cell: str) -> float:
    """The median of a time cell: '12.3 ms', '1.23 s', or either followed by ' (min–max)'."""
    value, unit = cell.split()[:2]
    return float(value) * (1e-3 if unit == "ms" else 1.0)


def test_bench_routing_both_parts_on_fsrcnn():
    run = run_module("benchmarks.bench_routing", "efficiency", "tile-loop", "--networks", "fsrcnn", "--size", "64",
                     "--reps", "1")
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.startswith("nproc=")
    tables = markdown_tables(run.stdout)
    assert list(tables) == [
        "Routing efficiency, 64×64 LR image (9 tiles), medians",
        "Bucketed routing against the tile-at-a-time loop, 64×64 LR image (9 tiles), median (min–max)",
    ]
    (eff,), (loop,) = tables.values()
    assert eff["network"] == "fsrcnn (1 reps)"
    # FSRCNN's FLOPs ratio of branch 3 to branch 1 at widths 16/56: 3.31 counting the deconv on the HR grid
    # (the paper's convention), 2.28 on the LR grid.
    assert eff["b3/b1 FLOPs (paper)"] == "3.31 (true 2.28)"
    forced1, forced3, mixed, own = (seconds(eff[k]) for k in ("forced 1", "forced 3", "mixed", "Σ own"))
    classifier = seconds(eff["classifier"])
    # Cells are rounded to 0.1 ms, so the ratios computed from them agree to a few percent.
    assert abs(float(eff["mixed / Σ own"]) - mixed / own) < 0.05 * mixed / own + 0.01
    assert abs(float(eff["(mixed − classifier) / Σ own"]) - (mixed - classifier) / own) < 0.05 * mixed / own + 0.01
    assert abs(float(eff["b3/b1 time"]) - forced3 / forced1) < 0.05 * forced3 / forced1 + 0.01
    assert re.fullmatch(r"\d+ % \(true FLOPs: \d+ %\)", eff["b3/b1 as % of FLOPs ratio"])
    assert seconds(eff["upscale"]) > 0
    # The thirds classifier splits the 9 tiles 3/3/3; the tile loop and Upscaler agreed on every class
    # (the script asserts it) and the speed-up is the ratio of the two medians.
    assert loop["network"] == "fsrcnn (1 reps)" and loop["tiles per branch"] == "3/3/3"
    looped, bucketed = seconds(loop["tile loop (batch 1)"]), seconds(loop["Upscaler (default)"])
    assert abs(float(loop["speed-up"].rstrip("×")) - looped / bucketed) < 0.05 * looped / bucketed + 0.05
    best = seconds(loop["best compute"])
    assert 0 < best <= seconds(loop["Σ own"]) * 1.001 + 1e-4  # one call of all n_k tiles is among the candidates
    bound = float(loop["loop / best compute: bound on any speed-up"].rstrip("×"))
    assert abs(bound - looped / best) < 0.05 * looped / best + 0.05


def test_bench_routing_refuses_an_unknown_variant_before_any_work():
    run = run_module("benchmarks.bench_routing", "efficiency", "--variants", "chunks:64/128")
    assert run.returncode == 1
    assert run.stderr.strip().splitlines()[-1] == (
        "unknown variant 'chunks:64/128': use accelerator, buckets:B/S, widths:A/B/C")
    assert run.stdout == ""
