"""Worker process for side-by-side inference benchmarks (`harness.Workers`): the classsr_jax it imports is
the code tree on its PYTHONPATH, this checkout's or an older commit's; the fixtures always come from here.

Requests (JSON lines): {"cmd": "setup", "network", "lr_hw", "band_tiles"?, "dtype"?} builds a thirds-routing
ClassSR and a photo-like image and compiles; {"cmd": "run"} times one warm upscale from the decoded image to
the uint8 output in host memory.
"""

import importlib.util
import json
import os
import resource
import sys
import time

import jax
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))


def _load(name):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", os.path.join(HERE, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


fixtures = _load("fixtures")  # only what both code trees provide: fixtures import nothing newer

try:  # the tree on PYTHONPATH, after the fixtures
    from classsr_jax.inference.upscaler import Upscaler
except ImportError:  # a tree from before the package was grouped by role (inference was one module)
    from classsr_jax.inference import Upscaler

DEVICE_ENGINE = hasattr(Upscaler, "band_shape")  # this session's engine; older trees merge on the host
state = {}


def cpu_seconds() -> float:
    """CPU time of this process (all its threads): less sensitive than wall time to other jobs' load."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def upscale_once():
    up, image = state["upscaler"], state["image"]
    state["cpu0"] = cpu_seconds()
    t0 = time.perf_counter()
    if DEVICE_ENGINE:
        result = up.upscale(image)
        out = result.sr
    else:
        from classsr_jax.image_io import to_uint8  # only trees from before the device engine get here

        result = up.upscale(image.astype(np.float32) / np.float32(255.0))
        out = to_uint8(result.sr)
    return time.perf_counter() - t0, result, out


def handle(request):
    if request["cmd"] == "setup":
        h, w = request["lr_hw"]
        image01 = fixtures.photo_like(h, w, seed=0)
        spec, variables = fixtures.thirds_classsr(request["network"], image01)
        kw = {}
        if DEVICE_ENGINE and request.get("band_tiles"):
            kw["band_tiles"] = request["band_tiles"]
        if DEVICE_ENGINE and request.get("dtype"):
            kw["dtype"] = request["dtype"]
        state["upscaler"] = Upscaler(spec, variables, **kw)
        state["image"] = np.rint(image01 * 255).astype(np.uint8)
        seconds, result, _ = upscale_once()
        return {"first_s": seconds, "compile_s": result.compile_s, "engine": "device" if DEVICE_ENGINE else "host",
                "devices": len(jax.devices())}
    seconds, result, out = upscale_once()
    return {
        "seconds": seconds,
        "cpu_s": cpu_seconds() - state["cpu0"],
        "inference_s": result.inference_s,
        "host_s": getattr(result, "host_s", None),
        "class_counts": list(result.class_counts),
        "shape": list(out.shape),
        "checksum": int(out[::97, ::89].astype(np.int64).sum()),
    }


def serve() -> None:
    """The worker side of harness.Workers: one JSON request per line on stdin, one JSON answer per line."""
    for line in sys.stdin:
        print(json.dumps(handle(json.loads(line))), flush=True)


if __name__ == "__main__":
    serve()
