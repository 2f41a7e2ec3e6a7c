"""`bench_file_to_file original`: the original code's way (`original_way.py`: PyTorch, one tile at a time,
cv2 to read and write) against this checkout's `upscale --protocol paper`, same weights, same routing, file to
file, interleaved.

Cases: the trained quickstart ClassSR-FSRCNN at 8K output, random thirds-routing ClassSR-CARN-M and
ClassSR-SRResNet (saved with `checkpointing.save_model`) at 2K. The PyTorch side gets the same weights through
`torch_names.variables_to_state_dict` and runs with torch.set_num_threads(os.cpu_count()). Both outputs are
compared pixel by pixel (the two ways must agree to a rounding step). Targets: ≥ 3× at 8K for FSRCNN, ≥ 1.5×
for CARN-M and SRResNet at 2K, on the whole command's wall time.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile

import numpy as np
import torch
from PIL import Image

from benchmarks import f2f_common, harness
from benchmarks.f2f_common import CommandRun, met
from classsr_jax.checkpointing import load_model
from classsr_jax.models.torch_names import variables_to_state_dict

CASES = {  # network: (output size, LR (h, w), target speed-up)
    "fsrcnn": ("8K", (1080, 1920), 3.0),
    "carn": ("2K", (270, 480), 1.5),
    "srresnet": ("2K", (270, 480), 1.5),
}
QUICK_LR_HW = (90, 160)


def case_model(tmp: str, network: str, lr: np.ndarray, checkpoint: str | None) -> str:
    """The checkpoint of a case: the trained quickstart for FSRCNN, a random thirds-routing model otherwise."""
    if network == "fsrcnn":
        return checkpoint or f2f_common.default_checkpoint()
    return f2f_common.save_thirds_model(tmp, network, lr)


def torch_state_dict(checkpoint: str, path: str) -> str:
    """The checkpoint's weights as a torch.save'd state_dict in the original's layout; returns the widths."""
    loaded = load_model(checkpoint)
    state = variables_to_state_dict(loaded.variables, loaded.spec)
    torch.save({key: torch.from_numpy(np.array(value)) for key, value in state.items()}, path)
    return ",".join(map(str, loaded.spec.widths))


def original_command(state_dict: str, network: str, widths: str, src: str, dst: str) -> CommandRun:
    """`python -m benchmarks.original_way`; its JSON line stands in for the report."""
    argv = [sys.executable, "-m", "benchmarks.original_way", f"--state-dict={state_dict}", f"--network={network}",
            f"--widths={widths}", f"--input={src}", f"--output={dst}", f"--threads={os.cpu_count()}"]
    env = {**os.environ, "PYTHONPATH": harness.REPO}
    wall, rss, stdout = f2f_common.run_child(argv, harness.REPO, env, "the original's way")
    return CommandRun(wall, rss, json.loads(stdout.strip().splitlines()[-1]))


def outputs_agree(a_path: str, b_path: str) -> str:
    """'largest difference (share of values that differ)' of two 8-bit RGB images of the same size."""
    a = np.asarray(Image.open(a_path).convert("RGB"), np.int16)
    b = np.asarray(Image.open(b_path).convert("RGB"), np.int16)
    if a.shape != b.shape:
        return f"**shapes differ**: {a.shape} vs {b.shape}"
    diff = np.abs(a - b)
    return f"{int(diff.max())} ({100 * float((diff > 0).mean()):.3f} %)"


def run_case(tmp: str, network: str, lr_hw, rounds: int, checkpoint: str | None) -> dict:
    """Both ways, interleaved for `rounds` rounds: their runs and how their last outputs compare."""
    lr = f2f_common.photo_frame(lr_hw)
    src = f2f_common.write_png(os.path.join(tmp, f"lr_{network}.png"), lr)
    model = case_model(tmp, network, lr, checkpoint)
    state_dict = os.path.join(tmp, f"{network}.pt")
    widths = torch_state_dict(model, state_dict)
    outputs = {"original": os.path.join(tmp, "sr_original.png"), "ours": os.path.join(tmp, "sr_ours.png")}

    def command(name: str, _tree: str) -> CommandRun:
        if name == "original":
            return original_command(state_dict, network, widths, src, outputs[name])
        return f2f_common.upscale_command(harness.REPO, model, src, outputs[name], os.path.join(tmp, "r.json"),
                                          "--protocol=paper")

    runs = f2f_common.interleaved_commands({"original": "", "ours": harness.REPO}, rounds, command)
    agree = outputs_agree(outputs["original"], outputs["ours"])
    for path in outputs.values():
        os.unlink(path)
    return {"runs": runs, "agree": agree}


def case_row(label: str, result: dict) -> tuple[list[str], float]:
    """One case's row and the file-to-file speed-up (the original's wall over ours)."""
    original, ours = result["runs"]["original"], result["runs"]["ours"]
    med = harness.median
    o_wall, u_wall = med([r.wall_s for r in original]), med([r.wall_s for r in ours])
    o_loop = med([r.report["loop_s"] for r in original])
    u_timing = [f2f_common.image_timing(r) for r in ours]
    u_device = med([t["compile_s"] + t["inference_s"] for t in u_timing])
    o_io = med([r.report["read_s"] + r.report["write_s"] for r in original])
    u_io = med([t["read_s"] + t["write_s"] for t in u_timing])
    row = [label, harness.seconds(o_wall), harness.seconds(u_wall), f"{o_wall / u_wall:.2f}×",
           harness.seconds(o_loop), harness.seconds(u_device), harness.seconds(o_io), harness.seconds(u_io),
           f"{med([r.peak_rss_gib for r in original]):.2f} / {med([r.peak_rss_gib for r in ours]):.2f} GiB",
           result["agree"], "/".join(map(str, original[-1].report["class_counts"])),
           "/".join(map(str, ours[-1].report["class_counts"]))]
    return row, o_wall / u_wall


HEADERS = ["case", "original: wall", "ours: wall", "speed-up", "original: tile loop", "ours: compile + inference",
           "original: read + write", "ours: read + write", "peak RSS original / ours",
           "outputs: largest difference (share differing)", "tiles per branch: original", "tiles per branch: ours"]


def original(args) -> None:
    print(harness.machine_line(), flush=True)
    print(f"torch {torch.__version__}, {os.cpu_count()} threads", flush=True)
    networks = args.networks.split(",") if args.networks else list(CASES)
    rows, targets = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for network in networks:
            size, lr_hw, target = CASES[network]
            if args.quick:
                size, lr_hw = f"{4 * QUICK_LR_HW[1]}×{4 * QUICK_LR_HW[0]}", QUICK_LR_HW
            label = f"{size} ClassSR-{network}" + (" (quickstart)" if network == "fsrcnn" else " (random thirds)")
            row, speedup = case_row(label, run_case(tmp, network, lr_hw, args.rounds, args.checkpoint))
            rows.append(row)
            targets.append([f"{label}: ≥ {target}× the original's way", f"{speedup:.2f}×", met(speedup >= target)])
            print(harness.table(HEADERS, rows[-1:]), flush=True)
    f2f_common.print_results(f"The original's way (PyTorch, tile by tile, cv2) against `upscale --protocol paper`, "
                             f"photo content, median of {args.rounds} round(s)", HEADERS, rows, targets)
