"""`bench_file_to_file cores`: a warm in-process upscale at 2K output on the JAX CPU backend as 1 device and as 2,
this checkout against REV; REV at 1 device is "today".

One `upscale_worker.py` process per (tree, device count), the count set before JAX starts through
XLA_FLAGS=--xla_force_host_platform_device_count=N (both trees honour it); each builds the same thirds-routing
random ClassSR (`fixtures.thirds_classsr`) and photo-like image, compiles, and then the workers time one warm
upscale each in turn, from the decoded uint8 image to the uint8 output in host memory. Target: this checkout at
2 devices at least 1.4× as fast as today.
"""

from __future__ import annotations

import contextlib
import os

from benchmarks import harness
from benchmarks.f2f_common import met, print_results

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "upscale_worker.py")
NETWORKS = ("srresnet", "carn")
LR_HW = {"2K": (270, 480), "quick": (90, 160)}
DEVICE_COUNTS = (1, 2)
TARGET = 1.4  # this checkout at 2 devices over today


def worker_pools(stack: contextlib.ExitStack, trees: dict[str, str]) -> dict[tuple[str, int], harness.Workers]:
    """One `harness.Workers` per device count (the count is an environment variable, one for all its trees)."""
    pools = {}
    for count in DEVICE_COUNTS:
        env = {"XLA_FLAGS": f"--xla_force_host_platform_device_count={count}", "JAX_PLATFORMS": "cpu"}
        workers = stack.enter_context(harness.Workers(WORKER, trees, env=env))
        for tree in trees:
            pools[(tree, count)] = workers
    return pools


def measure(pools: dict[tuple[str, int], harness.Workers], network: str, lr_hw, rounds: int) -> dict:
    """{(tree, count): {"seconds": [...], "setup": answer, "last": answer}} for every worker, interleaved."""
    results = {}
    for (tree, count), workers in pools.items():
        setup = workers.ask(tree, {"cmd": "setup", "network": network, "lr_hw": list(lr_hw)})
        if setup["devices"] != count:
            raise RuntimeError(f"the {tree} worker asked for {count} CPU device(s) sees {setup['devices']}")
        results[(tree, count)] = {"seconds": [], "setup": setup}
    keys = list(pools)
    for r in range(rounds):
        for key in keys[r % len(keys):] + keys[: r % len(keys)]:
            answer = pools[key].ask(key[0], {"cmd": "run"})
            results[key]["seconds"].append(answer["seconds"])
            results[key]["last"] = answer
    return results


def cores_rows(network: str, size: str, against: str, results: dict) -> tuple[list[list[str]], float]:
    """Rows per (tree, count) with the speed-up over today, and this checkout's 2-device speed-up."""
    today = harness.median(results[("before", 1)]["seconds"])
    rows = []
    for (tree, count), result in results.items():
        label = f"before ({against})" if tree == "before" else "now"
        t = harness.median(result["seconds"])
        rows.append([f"{size} ClassSR-{network}", label, str(count), harness.spread(result["seconds"]),
                     f"{today / t:.2f}×", "/".join(map(str, result["last"]["class_counts"]))])
    return rows, today / harness.median(results[("now", 2)]["seconds"])


HEADERS = ["case", "tree", "CPU devices", "warm upscale", "speed-up over today", "tiles per branch"]


def cores(args) -> None:
    print(harness.machine_line(), flush=True)
    lr_hw = LR_HW["quick" if args.quick else "2K"]
    size = "2K" if not args.quick else f"{4 * lr_hw[1]}×{4 * lr_hw[0]}"
    networks = args.networks.split(",") if args.networks else NETWORKS
    rows, targets = [], []
    with harness.worktree(args.against) as old:
        for network in networks:
            with contextlib.ExitStack() as stack:
                pools = worker_pools(stack, {"before": old, "now": harness.REPO})
                results = measure(pools, network, lr_hw, args.rounds)
            network_rows, speedup = cores_rows(network, size, args.against, results)
            rows += network_rows
            targets.append([f"{size} ClassSR-{network}: now at 2 devices ≥ {TARGET}× today", f"{speedup:.2f}×",
                            met(speedup >= TARGET)])
            print(harness.table(HEADERS, network_rows), flush=True)
    print_results(f"Warm upscale, LR {lr_hw[1]}×{lr_hw[0]} ×4, thirds-routing random ClassSR, median (min–max) of "
                  f"{args.rounds} round(s); today = before at 1 device", HEADERS, rows, targets)
