"""Small helpers the command-line tools share: one-line errors, atomic JSON, checkpoint → Upscaler."""

from __future__ import annotations

import json
import os
import sys
import tempfile
from typing import Any


def fail(message: str, code: int = 1) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code


def write_json_atomic(path: str, data: Any) -> None:
    """Writes JSON to a temp file beside `path`, then renames it into place."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def add_routing_flags(parser) -> None:
    parser.add_argument("--checkpoint", required=True, help="converted checkpoint, exported model or training workdir")
    parser.add_argument("--force-class", type=int, default=None, metavar="K",
                        help="send every tile to branch K (1 = simplest; the last branch is the -O network)")
    parser.add_argument("--budget", type=float, default=None, metavar="F",
                        help="aim at this fraction of the -O network's FLOPs by shifting the classifier's logits")
    parser.add_argument("--report", default=None, metavar="R.json", help="write the report as JSON")


def make_upscaler(args, protocol: str):
    """Opens the checkpoint and builds the Upscaler the flags ask for (ValueErrors carry one-line messages)."""
    from classsr_jax.checkpointing import load_model
    from classsr_jax.inference import Upscaler

    loaded = load_model(args.checkpoint)
    force = None
    if args.force_class is not None:
        if not 1 <= args.force_class <= loaded.spec.num_branches:
            raise ValueError(
                f"--force-class {args.force_class} is out of range: the model has branches 1–{loaded.spec.num_branches}"
            )
        force = args.force_class - 1
    return loaded, Upscaler(loaded.spec, loaded.variables, protocol=protocol, force_class=force, budget=args.budget)
