"""Mutation check: plant one bug at a time and see that the tests named for it fail.

  python -m benchmarks.mutation [--jobs 2] [--only NAME,...] [--baseline] [--timeout 600] [--list]

Each mutant is (name, file, exact old text, new text, pytest arguments). The tracked files of the repository
are copied to one temporary folder per job; a job applies one mutant there, runs
`python3 -m pytest -q -x -p no:cacheprovider <arguments>` with a timeout, and puts the file back. A mutant
whose tests fail (or time out) is killed; one whose tests pass survived. An old text that is not in its file
exactly once is reported as stale: the code moved and the mutant must be updated. --baseline first runs
every test selection on the unmutated code (a selection that fails there would "kill" its mutants for
nothing). The exit code is 0 only when every mutant is killed (and, with --baseline, every selection passes).
Not part of the test suite (minutes per mutant); see docs/mutation.md.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import os
import platform
import queue
import shlex
import shutil
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclasses.dataclass(frozen=True)
class Mutant:
    name: str
    file: str
    old: str
    new: str
    tests: str  # pytest arguments, split like a shell line


def _m(name, file, old, new, tests):
    return Mutant(name, f"classsr_jax/{file}", old, new, tests)


WRITTEN = "tests/test_written_pixels.py"
OBJECTIVE = "tests/test_objective_values.py"
BLEND = "tests/test_blend_values.py"

MUTANTS = [
    # --- the commands and image I/O
    _m("upscale writes BGR", "cli/upscale.py", "write_image(job.output, result.sr, like=image",
       "write_image(job.output, result.sr[..., ::-1], like=image", f"{WRITTEN} -k 8_bit"),
    _m("alpha upscaled bilinear", "inference/layouts.py", '(h * scale, w * scale), "bicubic")',
       '(h * scale, w * scale), "linear")', f"{WRITTEN} -k rgba"),
    _m("gray mean truncated", "io/images.py", "return ((total + 1) // 3).astype(rgb.dtype)",
       "return (total // 3).astype(rgb.dtype)", f"{WRITTEN} -k gray"),
    _m("8 to 16 bit by x256", "io/images.py", "values.astype(np.uint16) * np.uint16(257)",
       "values.astype(np.uint16) * np.uint16(256)", "tests/test_image_io.py -k other_depth"),
    _m("16-bit PNG read bytes swapped", "io/png16.py", "return high << 8 | low", "return low << 8 | high",
       "tests/test_image_io.py -k 16"),
    _m("quantise truncates", "io/pixels.py", "return np.rint(x).astype(dtype)",
       "return np.floor(x).astype(dtype)", "tests/test_image_io.py -k half_to_even"),
    # --- tiling and the merge
    _m("blend window linear ramp", "inference/tiling.py", "ramp = 0.5 - 0.5 * np.cos(np.pi * t)", "ramp = t",
       BLEND),
    _m("last tile not flush", "inference/tiling.py", "np.minimum(np.arange(count) * step, length - tile)",
       "np.minimum(np.arange(count) * step, length - tile - 1)", "tests/test_tiling.py -k full_grid_positions"),
    _m("small images padded on the wrong side", "inference/band_plan.py",
       "pad = ((0, grid.padded_hw[0] - image.shape[0]), (0, grid.padded_hw[1] - image.shape[1]), (0, 0))",
       "pad = ((grid.padded_hw[0] - image.shape[0], 0), (grid.padded_hw[1] - image.shape[1], 0), (0, 0))",
       "tests/test_engine.py -k smaller_than_a_tile"),
    _m("paper merge floors", "inference/bands.py", "values = jnp.round(values * 255.0) if window is None",
       "values = jnp.floor(values * 255.0) if window is None", "tests/test_engine.py -k bands_equal"),
    _m("merge does not clip tiles", "inference/bands.py", "values = jnp.clip(sr[i], 0.0, 1.0)",
       "values = sr[i]", "tests/test_engine.py -k bands_equal"),
    _m("rows quantised by floor", "inference/bands.py", "quantised = jnp.round(jnp.clip(unit, 0.0, 1.0) * peak)",
       "quantised = jnp.floor(jnp.clip(unit, 0.0, 1.0) * peak)", f"{BLEND} -k device_merge"),
    _m("strip handed on but kept", "inference/bands.py",
       "canvas = jax.lax.dynamic_update_slice(canvas, jnp.zeros_like(strip), (0, finished * s, 0))",
       "canvas = canvas", "tests/test_engine.py -k bands_equal"),
    _m("flush column starts a block", "inference/band_plan.py", "if flush and last > 0 and per_device[last] == 1:",
       "if False:", "tests/test_engine.py -k bands_equal"),
    _m("HR overlap not scaled", "inference/bands.py", "tiling.blend_profile(hr_tile, fmt.overlap * scale)",
       "tiling.blend_profile(hr_tile, fmt.overlap)", f"{BLEND} -k two_tile"),
    # --- routing and the budget
    _m("budget offsets subtracted", "inference/routing.py", "jnp.argmax(logits + logit_offsets, axis=-1)",
       "jnp.argmax(logits - logit_offsets, axis=-1)", "tests/test_routing.py -k budget_caps"),
    _m("small buckets round down", "inference/routing.py",
       "n_small = (count - start + buckets.small - 1) // buckets.small",
       "n_small = (count - start) // buckets.small", "tests/test_routing.py -k each_branch_on_its_own"),
    _m("force class ignored", "inference/routing.py", "classes = jnp.where(force_class >= 0, force_class, classes)",
       "classes = classes", "tests/test_routing.py -k force_class"),
    _m("budget ignores the Class-Module", "inference/upscaler.py",
       "target = budget * float(branch_flops[-1]) - overhead", "target = budget * float(branch_flops[-1])",
       "tests/test_routing.py -k budget_is_a_cap"),
    _m("FLOPs figure without the Class-Module", "models/flops.py",
       'return mean + (flops.classifier if network == "fsrcnn" else 0.0)', "return mean",
       "tests/test_flops_values.py"),
    # --- losses, training metrics and validation
    _m("objective drops Average-Loss", "training/losses.py",
       "+ self.class_loss_weight * class_loss + self.average_loss_weight * average_loss",
       "+ self.class_loss_weight * class_loss", f"{OBJECTIVE} -k validation"),
    _m("Class-Loss without the -1", "training/losses.py", "return jnp.mean((num_classes - 1) - pairwise)",
       "return jnp.mean(num_classes - pairwise)", "tests/test_losses.py -k class_loss_range"),
    _m("Average-Loss normaliser", "training/losses.py",
       "return jnp.sum(torch_abs(mass - n / num_classes)) / (2 * (num_classes - 1) * n / num_classes)",
       "return jnp.sum(torch_abs(mass - n / num_classes)) / (2 * num_classes * n / num_classes)",
       "tests/test_losses.py -k average_loss_range"),
    _m("abs gradient 1 at 0", "training/losses.py", "return jnp.abs(x), jnp.sign(x) * t",
       "return jnp.abs(x), jnp.where(x >= 0, 1.0, -1.0) * t", "tests/test_losses.py -k gradient"),
    _m("Average-Loss surrogate not x devices", "training/losses.py", "surrogate = devices * jnp.sum(",
       "surrogate = jnp.sum(", f"{OBJECTIVE} -k finite_difference"),
    _m("train PSNR -20 log10", "training/steps.py", "return jnp.mean(-10.0 * jnp.log10(mse))",
       "return jnp.mean(-20.0 * jnp.log10(mse))", f"{OBJECTIVE} -k joint_step"),
    _m("train step swaps loss weights", "training/steps.py",
       "class_loss_weight=objective.class_loss_weight,\n        average_loss_weight=objective.average_loss_weight,",
       "class_loss_weight=objective.average_loss_weight,\n        average_loss_weight=objective.class_loss_weight,",
       f"{OBJECTIVE} -k joint_step"),
    _m("eval Class-Loss counts padding", "training/steps.py",
       '"class_loss_sum": jnp.sum(weight * per_sample_class)', '"class_loss_sum": jnp.sum(per_sample_class)',
       f"{OBJECTIVE} -k validation"),
    _m("eval PSNR -20 log10", "training/steps.py",
       "psnr = -10.0 * jnp.log10(jnp.maximum(jnp.mean(err, axis=(1, 2, 3)), 1e-10))",
       "psnr = -20.0 * jnp.log10(jnp.maximum(jnp.mean(err, axis=(1, 2, 3)), 1e-10))", f"{OBJECTIVE} -k validation"),
    _m("validation Average-Loss normaliser", "training/validation.py",
       "np.sum(np.abs(mass - n / m)) / (2 * (m - 1) * n / m)", "np.sum(np.abs(mass - n / m)) / (2 * m * n / m)",
       f"{OBJECTIVE} -k validation"),
    # --- metrics
    _m("PSNR 10 log10 of 1/RMSE", "evaluation/metrics.py", "return float(20.0 * np.log10(max_value / np.sqrt(mse)))",
       "return float(10.0 * np.log10(max_value / np.sqrt(mse)))", f"{WRITTEN} -k evaluate"),
    _m("luma weights reversed", "evaluation/metrics.py", "np.array([65.481, 128.553, 24.966])",
       "np.array([24.966, 128.553, 65.481])", "tests/test_metrics.py -k 'psnr_y or rgb_to_y'"),
    _m("SSIM C2 constant", "evaluation/metrics.py", "_SSIM_C2 = (0.03 * 255.0) ** 2", "_SSIM_C2 = (0.02 * 255.0) ** 2",
       "tests/test_metrics.py -k ssim"),
    _m("border crop one side", "evaluation/metrics.py", "return img[border:-border, border:-border]",
       "return img[border:-border, border:]", "tests/test_metrics.py -k crop"),
    # --- MATLAB bicubic
    _m("cubic kernel a = -0.75 far lobe", "data/bicubic.py",
       "far = (a * absx3 - 5.0 * a * absx2 + 8.0 * a * absx - 4.0 * a)",
       "far = (-0.75 * absx3 + 3.75 * absx2 - 6.0 * absx + 3.0)",
       "tests/test_bicubic.py -k by_hand"),
    # --- checkpoint conversion
    _m("conv kernel transposed wrong", "models/torch_names.py", "return value.transpose(2, 3, 1, 0)",
       "return value.transpose(3, 2, 1, 0)", "tests/test_convert.py -k round_trip"),
    _m("deconv FLOPs on the LR grid", "models/flops.py", "paper = math.prod(out.shape[1:-1]) * per_pixel",
       "paper = math.prod(x.shape[1:-1]) * per_pixel", "tests/test_flops.py -k paper_convention"),
    # What commands keep on disk between runs.
    _m("kept programs are compiled through JAX's own cache", "inference/program_cache.py",
       "        compiled = compile_fresh(lower())", "        compiled = lower().compile()",
       "tests/test_disk_cache.py -k jax_already"),
    _m("an opened model is kept by its path alone", "checkpointing.py",
       "(FORMAT_VERSION, path, _fingerprint(path))", "(FORMAT_VERSION, path)",
       "tests/test_disk_cache.py -k opened_model"),
]


def tracked_files() -> list[str]:
    out = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    return [p for p in out.decode().split("\0") if p and os.path.isfile(os.path.join(REPO, p))]


def copy_repository(files: list[str], target: str) -> None:
    for path in files:
        os.makedirs(os.path.join(target, os.path.dirname(path)), exist_ok=True)
        shutil.copy2(os.path.join(REPO, path), os.path.join(target, path))


def stale_reason(mutant: Mutant) -> str | None:
    """Why the mutant cannot be applied to the current code, or None."""
    path = os.path.join(REPO, mutant.file)
    if not os.path.isfile(path):
        return f"{mutant.file} does not exist"
    found = open(path, encoding="utf-8").read().count(mutant.old)
    return None if found == 1 else f"old text found {found} times in {mutant.file}"


def run_mutant(mutant: Mutant, copy: str, timeout: float, cache: str) -> tuple[str, float]:
    """Applies the mutant in `copy`, runs its tests, restores the file: ('killed' | 'survived', seconds)."""
    path = os.path.join(copy, mutant.file)
    original = open(path, encoding="utf-8").read()
    with open(path, "w", encoding="utf-8") as f:
        f.write(original.replace(mutant.old, mutant.new, 1))
    env = {**os.environ, "JAX_COMPILATION_CACHE_DIR": cache, "PYTHONDONTWRITEBYTECODE": "1"}
    command = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *shlex.split(mutant.tests)]
    t0 = time.perf_counter()
    try:
        done = subprocess.run(command, cwd=copy, env=env, capture_output=True, text=True, timeout=timeout)
        if done.returncode == 5:  # no test collected: the selection is wrong, not a kill
            result = "no tests"
        else:
            result = "survived" if done.returncode == 0 else "killed"
    except subprocess.TimeoutExpired:
        result = "killed (timeout)"
    finally:
        with open(path, "w", encoding="utf-8") as f:
            f.write(original)
    return result, time.perf_counter() - t0


def cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def run_all(mutants: list[Mutant], jobs: int, timeout: float) -> dict[str, tuple[str, float]]:
    """Every applicable mutant, `jobs` at a time, each job in its own copy of the repository."""
    results = {m.name: (f"stale: {why}", 0.0) for m in mutants if (why := stale_reason(m))}
    todo = [m for m in mutants if m.name not in results]
    with tempfile.TemporaryDirectory(prefix="classsr_mutation_") as root:
        files = tracked_files()
        copies: queue.Queue[str] = queue.Queue()
        for j in range(jobs):
            copy_repository(files, os.path.join(root, f"copy{j}"))
            copies.put(os.path.join(root, f"copy{j}"))
        cache = os.path.join(root, "xla_cache")

        def one(mutant: Mutant) -> tuple[str, float]:
            copy = copies.get()
            try:
                return run_mutant(mutant, copy, timeout, cache)
            finally:
                copies.put(copy)

        with concurrent.futures.ThreadPoolExecutor(jobs) as pool:
            futures = {pool.submit(one, m): m for m in todo}
            for future in concurrent.futures.as_completed(futures):
                mutant = futures[future]
                results[mutant.name] = future.result()
                print(f"{results[mutant.name][0]:>17}  {results[mutant.name][1]:6.1f} s  {mutant.name}", flush=True)
    return results


def baselines(mutants: list[Mutant]) -> list[Mutant]:
    """One unmutated run per distinct test selection: a mutant whose new text is its old text."""
    first = {}
    for m in mutants:
        first.setdefault(m.tests, m)
    return [Mutant(f"baseline: {tests}", m.file, m.old, m.old, tests) for tests, m in first.items()]


def table(mutants: list[Mutant], results: dict[str, tuple[str, float]]) -> str:
    lines = ["| # | mutant | file | tests | result | s |", "|---|---|---|---|---|---|"]
    for i, m in enumerate(mutants, 1):
        result, seconds = results[m.name]
        if m.old == m.new:  # a baseline run: its tests must pass
            result = {"survived": "passes", "killed": "FAILS"}.get(result, result)
        file = m.file.removeprefix("classsr_jax/")
        lines.append(f"| {i} | {m.name} | {file} | `{m.tests}` | {result} | {seconds:.0f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=2, help="mutants run at the same time (default 2)")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per mutant before it counts as killed")
    parser.add_argument("--only", default="", help="comma-separated mutant names")
    parser.add_argument("--baseline", action="store_true", help="also run every selection unmutated (must pass)")
    parser.add_argument("--list", action="store_true", help="list the mutants (and any stale one) and exit")
    args = parser.parse_args(argv)
    mutants = MUTANTS
    if args.only:
        wanted = {n.strip() for n in args.only.split(",")}
        unknown = wanted - {m.name for m in MUTANTS}
        if unknown:
            print(f"error: unknown mutant(s): {', '.join(sorted(unknown))}", file=sys.stderr)
            return 2
        mutants = [m for m in MUTANTS if m.name in wanted]
    if args.list:
        stale = [stale_reason(m) for m in mutants]
        print("\n".join(f"{m.name}: {m.file} | {m.tests}{f' | STALE: {why}' if why else ''}"
                        for m, why in zip(mutants, stale)))
        return 1 if any(stale) else 0
    t0 = time.perf_counter()
    checks = baselines(mutants) if args.baseline else []
    results = run_all(checks + mutants, max(1, args.jobs), args.timeout)
    killed = sum(results[m.name][0].startswith("killed") for m in mutants)
    failing = [m.tests for m in checks if results[m.name][0] != "survived"]
    print()
    print(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {os.cpu_count()} CPUs ({cpu_model()}); "
          f"--jobs {args.jobs}; {time.perf_counter() - t0:.0f} s in all")
    print(table(mutants, results))
    if checks:
        print("\nBaseline (each selection on the unmutated code):\n" + table(checks, results))
    print(f"\n{killed} of {len(mutants)} killed")
    if checks:
        print(f"baseline: {len(checks) - len(failing)} of {len(checks)} selections pass unmutated"
              + "".join(f"\n  FAILS unmutated: {tests}" for tests in failing))
    return 0 if killed == len(mutants) and not failing else 1


if __name__ == "__main__":
    sys.exit(main())
