"""The original ClassSR code's way from an LR file to an SR file, in PyTorch, for `bench_file_to_file original`.

  python -m benchmarks.original_way --state-dict SD.pt --network fsrcnn --widths 16,36,56 --input LR.png
      --output SR.png [--threads N]

What the original's test does: cv2.imread, BGR to RGB in [0, 1]; a 32/28 grid of tiles with no border tiles,
each through the Class-Module alone (batch 1), argmax, that one branch, the tile rounded to uint8; the tiles
added on a canvas and the overlap strips halved; cv2.imwrite. The networks are tests/torch_reference.py's, which
the parity tests hold to the original's. Prints one JSON line: read_s, setup_s (build and load the weights),
loop_s, write_s and the tiles per branch.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import cv2
import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))
import torch_reference as ref  # noqa: E402  (tests/ is not a package)

TILE, STEP = 32, 28


def build_model(network: str, widths: tuple[int, ...], scale: int, state_dict_path: str) -> ref.ClassSR:
    """The reference ClassSR with these branch widths, its weights loaded, in eval mode."""
    nets = [ref.build(network, width, scale=scale) for width in widths]
    model = ref.ClassSR(ref.Classifier(), *nets, rcan=network == "rcan")
    model.load_state_dict(torch.load(state_dict_path))
    return model.eval()


def tile_corners(length: int) -> list[int]:
    """Where the original's crop puts tiles along an axis: every STEP, none past the border."""
    return list(range(0, length - TILE + 1, STEP))


@torch.no_grad()
def upscale_tiles(model: ref.ClassSR, lr01: np.ndarray, scale: int) -> tuple[np.ndarray, list[int]]:
    """The canvas (float32, uint8 levels, strips halved) and the tiles per branch."""
    ys, xs = tile_corners(lr01.shape[0]), tile_corners(lr01.shape[1])
    canvas = np.zeros(((ys[-1] + TILE) * scale, (xs[-1] + TILE) * scale, 3), np.float32)
    counts = [0] * len(model.branches())
    for y in ys:
        for x in xs:
            tile = torch.from_numpy(np.ascontiguousarray(lr01[y:y + TILE, x:x + TILE].transpose(2, 0, 1)))[None]
            sr, _, classes = model.forward_test(tile * 255.0 if model.rcan else tile)
            sr = sr / 255.0 if model.rcan else sr
            counts[int(classes[0])] += 1
            sr8 = torch.round(sr[0].clamp(0, 1) * 255.0).permute(1, 2, 0).numpy()
            canvas[y * scale:(y + TILE) * scale, x * scale:(x + TILE) * scale] += sr8
    overlap, step = (TILE - STEP) * scale, STEP * scale
    for j in range(1, len(xs)):
        canvas[:, j * step:j * step + overlap] /= 2
    for i in range(1, len(ys)):
        canvas[i * step:i * step + overlap] /= 2
    return canvas, counts


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--state-dict", required=True, help="a torch.save'd state_dict in the original's layout")
    parser.add_argument("--network", required=True, choices=sorted(ref.WIDTHS))
    parser.add_argument("--widths", required=True, help="the branch widths, comma-separated")
    parser.add_argument("--scale", type=int, default=4)
    parser.add_argument("--input", required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    lr01 = cv2.imread(args.input, cv2.IMREAD_COLOR)[:, :, ::-1].astype(np.float32) / np.float32(255.0)
    t1 = time.perf_counter()
    model = build_model(args.network, tuple(int(w) for w in args.widths.split(",")), args.scale, args.state_dict)
    t2 = time.perf_counter()
    canvas, counts = upscale_tiles(model, lr01, args.scale)
    t3 = time.perf_counter()
    if not cv2.imwrite(args.output, np.ascontiguousarray(np.rint(canvas).astype(np.uint8)[:, :, ::-1])):
        raise SystemExit(f"error: could not write {args.output}")
    t4 = time.perf_counter()
    print(json.dumps({"read_s": t1 - t0, "setup_s": t2 - t1, "loop_s": t3 - t2, "write_s": t4 - t3,
                      "class_counts": counts, "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
