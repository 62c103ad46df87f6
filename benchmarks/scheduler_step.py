"""Per-step cost of the scheduler update on a 4096 x 2000 float32 batch, against copy bandwidth.

One scheduler step is pure memory streaming (a few flops per value), so its yardstick is this
machine's copy bandwidth: ``np.copyto`` of an array of the same size. Effective GB/s of a step
counts the bytes it must read and write once each (model output + sample read, result written;
plus the noise array read where the caller passes one, and the history read and written for
DPM-Solver++ second order). Timed side by side in one run, in interleaved rounds, medians:

* cellsynth: the C++ step through ``cellsynth.scheduler`` (CPU: OpenMP, in place, Philox noise);
* diffusers: ``DDIMScheduler.step`` on torch CPU tensors;
* numpy: the reference formulas in float32 (one expression, NumPy temporaries);
* CUDA (where a GPU and a CUDA build exist): the fused kernel on CUDA tensors against a
  device-to-device copy, timed with CUDA events.

    python benchmarks/scheduler_step.py --out benchmarks/results
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import math
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from _machine import machine as base_machine

from cellsynth import _core
from cellsynth.scheduler import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

GOAL_SPEEDUP = 5.0  # x faster than diffusers' step (CPU)
GOAL_CPU_FRACTION = 0.60  # of copy bandwidth (CPU)
GOAL_GPU_FRACTION = 0.70  # of device copy bandwidth


def machine() -> dict[str, object]:
    return {
        **base_machine(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS", "unset (OpenMP default)"),
        "numpy": np.__version__,
        "diffusers": _version("diffusers"),
        "cuda_compiled": bool(getattr(_core, "cuda_compiled", False)),
    }


def _version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "absent"


def one_thread_limiter():
    """A context factory capping OpenMP (the C++ step) at one thread, or None without
    threadpoolctl."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return None
    return lambda: threadpool_limits(1, user_api="openmp")


def interleaved_medians(
    fns: dict[str, Callable[[], object]],
    repeats: int,
    warmup: int,
    contexts: dict[str, Callable[[], object]] | None = None,
) -> dict[str, float]:
    """Median seconds of each function, timed round-robin so drift hits all of them alike.

    ``contexts[name]()`` is entered around that function's calls (outside the timed region).
    """
    contexts = contexts or {}

    def timed(name: str, fn: Callable[[], object], n: int) -> list[float]:
        ctx = contexts[name]() if name in contexts else contextlib.nullcontext()
        out = []
        with ctx:
            for _ in range(n):
                start = time.perf_counter()
                fn()
                out.append(time.perf_counter() - start)
        return out

    for name, fn in fns.items():
        timed(name, fn, warmup)
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            times[name] += timed(name, fn, 1)
    return {k: statistics.median(v) for k, v in times.items()}


def cpu_rows(n_cells: int, n_genes: int, repeats: int, warmup: int) -> tuple[list[dict], dict]:
    rng = np.random.default_rng(0)
    shape = (n_cells, n_genes)
    nbytes = n_cells * n_genes * 4
    model_output = rng.standard_normal(shape, dtype=np.float32)
    sample = rng.standard_normal(shape, dtype=np.float32)
    noise = rng.standard_normal(shape, dtype=np.float32)
    x = sample.copy()  # the in-place state of the C++ steps
    copy_dst = np.empty_like(sample)

    ddim = DDIMScheduler()
    ddim.set_timesteps(50)
    t, t_prev = int(ddim.timesteps[10]), int(ddim.timesteps[11])
    ddpm = DDPMScheduler()
    ddpm.set_timesteps(50)
    # DPM-Solver++ follows a step counter (as diffusers'): a long schedule, stepped along, so every
    # timed step is second order (reads the previous x0 and writes the new one).
    dpm = DPMSolverMultistepScheduler()
    dpm.set_timesteps(500)
    dpm.step(model_output, int(dpm.timesteps[0]), x.copy())

    from diffusers import DDIMScheduler as HFDDIM

    hf = HFDDIM(clip_sample=False)
    hf.set_timesteps(50)
    out_t = torch.from_numpy(model_output)
    sample_t = torch.from_numpy(sample)
    noise_t = torch.from_numpy(noise)
    torch_gen = torch.Generator().manual_seed(0)

    ac = ddim.alphas_cumprod
    ab, ab_prev = np.float32(ac[t]), np.float32(ac[t_prev])
    sigma = np.float32(math.sqrt((1 - ac[t_prev]) / (1 - ac[t]) * (1 - ac[t] / ac[t_prev])))

    def numpy_ddim(eta: float) -> np.ndarray:
        # The reference formulas in float32: x0, then the DDIM update (with temporaries).
        x0 = (sample - np.sqrt(1 - ab) * model_output) / np.sqrt(ab)
        s = eta * sigma
        direction = np.sqrt(np.float32(1) - ab_prev - s * s) * model_output
        prev = np.sqrt(ab_prev) * x0 + direction
        return prev + s * noise if eta > 0 else prev

    fns: dict[str, Callable[[], object]] = {
        "copy": lambda: np.copyto(copy_dst, sample),
        "cellsynth ddim eta=0": lambda: ddim.step(model_output, t, x, out=x),
        "cellsynth ddim eta=1 philox": lambda: ddim.step(model_output, t, x, eta=1.0, out=x),
        "cellsynth ddim eta=1 given noise": lambda: ddim.step(
            model_output, t, x, eta=1.0, variance_noise=noise, out=x
        ),
        "cellsynth ddpm philox": lambda: ddpm.step(model_output, t, x, out=x),
        "cellsynth dpmsolver++ 2M": lambda: dpm.step(
            model_output, int(dpm.timesteps[dpm.step_index]), x, out=x
        ),
        "diffusers ddim eta=0": lambda: hf.step(out_t, t, sample_t),
        "diffusers ddim eta=1 given noise": lambda: hf.step(
            out_t, t, sample_t, eta=1.0, variance_noise=noise_t
        ),
        "diffusers ddim eta=1 generator": lambda: hf.step(
            out_t, t, sample_t, eta=1.0, generator=torch_gen
        ),
        "torch.randn (noise alone)": lambda: torch.randn(shape, generator=torch_gen),
        "numpy ddim eta=0": lambda: numpy_ddim(0.0),
        "numpy ddim eta=1 given noise": lambda: numpy_ddim(1.0),
    }
    # Bytes each must move at least once: arrays read + arrays written.
    arrays = {
        "copy": 2,
        "cellsynth ddim eta=0": 3,
        "cellsynth ddim eta=1 philox": 3,
        "cellsynth ddim eta=1 given noise": 4,
        "cellsynth ddpm philox": 3,
        "cellsynth dpmsolver++ 2M": 5,  # + history read and written
        "diffusers ddim eta=0": 3,
        "diffusers ddim eta=1 given noise": 4,
        "diffusers ddim eta=1 generator": 3,
        "torch.randn (noise alone)": 1,
        "numpy ddim eta=0": 3,
        "numpy ddim eta=1 given noise": 4,
    }
    contexts = {}
    limiter = one_thread_limiter()
    if limiter is not None:
        # The same steps on one core, against the (single-threaded) np.copyto.
        for name in ("cellsynth ddim eta=0", "cellsynth ddim eta=1 philox"):
            fns[f"{name} (1 thread)"] = fns[name]
            arrays[f"{name} (1 thread)"] = arrays[name]
            contexts[f"{name} (1 thread)"] = limiter
    seconds = interleaved_medians(fns, repeats, warmup, contexts)
    copy_gbs = arrays["copy"] * nbytes / seconds["copy"] / 1e9
    rows = []
    for name, s in seconds.items():
        gbs = arrays[name] * nbytes / s / 1e9
        rows.append(
            {
                "device": "cpu",
                "method": name,
                "arrays_moved": arrays[name],
                "ms": s * 1e3,
                "gb_per_s": gbs,
                "fraction_of_copy": gbs / copy_gbs,
            }
        )
    ratios = {
        "speedup_vs_diffusers_eta0": seconds["diffusers ddim eta=0"]
        / seconds["cellsynth ddim eta=0"],
        "speedup_vs_diffusers_eta1": seconds["diffusers ddim eta=1 given noise"]
        / seconds["cellsynth ddim eta=1 given noise"],
        "speedup_vs_diffusers_eta1_drawing_noise": seconds["diffusers ddim eta=1 generator"]
        / seconds["cellsynth ddim eta=1 philox"],
        "speedup_vs_numpy_eta0": seconds["numpy ddim eta=0"] / seconds["cellsynth ddim eta=0"],
        "fraction_of_copy_eta0": (3 * nbytes / seconds["cellsynth ddim eta=0"] / 1e9) / copy_gbs,
        "fraction_of_copy_eta0_1_thread": (
            3 * nbytes / seconds["cellsynth ddim eta=0 (1 thread)"] / 1e9 / copy_gbs
            if "cellsynth ddim eta=0 (1 thread)" in seconds
            else None
        ),
        "copy_gb_per_s": copy_gbs,
    }
    return rows, ratios


def cuda_rows(n_cells: int, n_genes: int, repeats: int, warmup: int) -> tuple[list[dict], dict]:
    if not torch.cuda.is_available():
        return [], {"status": "no GPU: torch.cuda.is_available() is False"}
    if not getattr(_core, "cuda_compiled", False):
        return [], {"status": "no GPU build: cellsynth._core.cuda_compiled is False"}
    dev = torch.device("cuda")
    shape = (n_cells, n_genes)
    nbytes = n_cells * n_genes * 4
    gen = torch.Generator(device=dev).manual_seed(0)
    model_output = torch.randn(shape, device=dev, generator=gen)
    x = torch.randn(shape, device=dev, generator=gen)
    src, dst = torch.randn(shape, device=dev, generator=gen), torch.empty(shape, device=dev)
    ddim = DDIMScheduler()
    ddim.set_timesteps(50)
    t = int(ddim.timesteps[10])
    fns = {
        "copy (device to device)": lambda: dst.copy_(src),
        "cellsynth ddim eta=0": lambda: ddim.step(model_output, t, x, out=x),
        "cellsynth ddim eta=1 philox": lambda: ddim.step(model_output, t, x, eta=1.0, out=x),
    }
    arrays = {
        "copy (device to device)": 2,
        "cellsynth ddim eta=0": 3,
        "cellsynth ddim eta=1 philox": 3,
    }
    seconds = {}
    for name, fn in fns.items():
        for _ in range(warmup):
            fn()
        torch.cuda.synchronize()
        times = []
        for _ in range(repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        seconds[name] = statistics.median(times)
    copy_gbs = 2 * nbytes / seconds["copy (device to device)"] / 1e9
    rows = [
        {
            "device": torch.cuda.get_device_name(0),
            "method": name,
            "arrays_moved": arrays[name],
            "ms": s * 1e3,
            "gb_per_s": arrays[name] * nbytes / s / 1e9,
            "fraction_of_copy": arrays[name] * nbytes / s / 1e9 / copy_gbs,
        }
        for name, s in seconds.items()
    ]
    return rows, {"status": "measured", "copy_gb_per_s": copy_gbs}


def markdown(result: dict) -> str:
    """The Markdown report of a result dict (also used to re-render a saved JSON)."""
    m, a, r = result["machine"], result["args"], result["cpu_summary"]
    lines = [
        f"Measured {result['date']} on {m['cpu']} ({m['cores']} cores; OpenMP threads: "
        f"{m['omp_num_threads']}; torch {m['torch']} with {m['torch_threads']} threads; "
        f"diffusers {m['diffusers']}); one step on {a['cells']} x {a['genes']} float32 "
        f"({a['cells'] * a['genes'] * 4 / 1e6:.1f} MB per array), median of {a['repeats']} "
        f"interleaved rounds; load average at the end {m['load_average_1_5_15_min']}.",
        "",
        "| device | method | arrays read + written | ms / step | GB/s | of copy bandwidth |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for row in result["rows"]:
        lines.append(
            f"| {row['device']} | {row['method']} | {row['arrays_moved']} | {row['ms']:.2f} | "
            f"{row['gb_per_s']:.1f} | {100 * row['fraction_of_copy']:.0f}% |"
        )
    speed_ok = r["speedup_vs_diffusers_eta0"] >= GOAL_SPEEDUP
    bw_ok = r["fraction_of_copy_eta0"] >= GOAL_CPU_FRACTION
    lines += [
        "",
        "CPU goals (DDIM eta = 0, in place):",
        f"- {r['speedup_vs_diffusers_eta0']:.1f}x faster than diffusers' step (goal >= "
        f"{GOAL_SPEEDUP:.0f}x): {'met' if speed_ok else 'NOT met'}; with eta = 1 and caller "
        f"noise {r['speedup_vs_diffusers_eta1']:.1f}x; with eta = 1, each drawing its own noise "
        f"(Philox vs torch.randn) {r['speedup_vs_diffusers_eta1_drawing_noise']:.2f}x.",
        f"- {100 * r['fraction_of_copy_eta0']:.0f}% of copy bandwidth "
        f"({r['copy_gb_per_s']:.1f} GB/s, np.copyto) (goal >= {100 * GOAL_CPU_FRACTION:.0f}%): "
        f"{'met' if bw_ok else 'NOT met'}"
        + (
            f"; on one thread {100 * r['fraction_of_copy_eta0_1_thread']:.0f}% "
            "(np.copyto is single-threaded)."
            if r.get("fraction_of_copy_eta0_1_thread") is not None
            else "."
        ),
        f"- {r['speedup_vs_numpy_eta0']:.1f}x faster than the NumPy formulas.",
        "",
        "GB/s counts each array read or written once. The cellsynth steps run in place "
        "(out = sample, and the DPM-Solver history), which saves the read-for-ownership a copy "
        "into a fresh buffer pays, so they can exceed 100% of np.copyto. The Philox rows draw "
        "their noise (Box-Muller) inside the step and are compute-bound.",
        "",
        f"CUDA: {result['cuda_summary']['status']}.",
    ]
    if result["cuda_summary"]["status"] == "measured":
        lines[-1] += (
            f" Goal >= {100 * GOAL_GPU_FRACTION:.0f}% of the device copy bandwidth "
            f"({result['cuda_summary']['copy_gb_per_s']:.0f} GB/s)."
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cells", type=int, default=4096)
    p.add_argument("--genes", type=int, default=2000)
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="OpenMP and torch threads (default: the OpenMP default, all cores)",
    )
    args = p.parse_args()
    if args.threads is not None and os.environ.get("OMP_NUM_THREADS") != str(args.threads):
        # OpenMP reads OMP_NUM_THREADS once, at start-up: run again with it set.
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
        os.execve(sys.executable, [sys.executable, *sys.argv], env)
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    rows, summary = cpu_rows(args.cells, args.genes, args.repeats, args.warmup)
    gpu_rows, gpu_summary = cuda_rows(args.cells, args.genes, args.repeats, args.warmup)
    result = {
        "date": dt.date.today().isoformat(),
        "machine": machine(),
        "args": vars(args),
        "goals": {
            "cpu_speedup_vs_diffusers": GOAL_SPEEDUP,
            "cpu_fraction_of_copy": GOAL_CPU_FRACTION,
            "gpu_fraction_of_copy": GOAL_GPU_FRACTION,
        },
        "rows": rows + gpu_rows,
        "cpu_summary": summary,
        "cuda_summary": gpu_summary,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "scheduler_step.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / "scheduler_step.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
