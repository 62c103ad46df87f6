"""``engine='auto'``: the engine measured fastest for this bundle, machine, batch and guidance.

Which engine is faster depends on the model (a transformer gains from onnxruntime's fused
attention, a small MLP hardly), the batch size, the thread count and the machine, so a fixed
order is wrong somewhere. Before a run, each candidate engine (on the CPU: onnxruntime where the
bundle has an ONNX export, torch where PyTorch is installed; on a GPU: TensorRT, onnxruntime-gpu
and torch with CUDA, where present) runs the denoising loop generation runs
(:meth:`~cellsynth.backends.base.Denoiser.denoise`, with the run's guidance, which doubles the
rows each model call sees) for ``CALIBRATION_STEPS`` steps on ``min(batch_size,
CALIBRATION_CELLS)`` cells (``GPU_CALIBRATION_CELLS`` on a GPU, whose cost per cell falls with
the batch), after one untimed warm-up run; a latent bundle's cost also counts its decoder, one
call against ``steps`` steps. The median cost per cell decides, and the figures are printed and
recorded in the run's provenance.

The result is cached (``$CELLSYNTH_CACHE_DIR``, else ``$XDG_CACHE_HOME/cellsynth``, else
``~/.cache/cellsynth``; file ``engine_calibration.json``) under a key of everything it depends
on: bundle hash and ONNX file, machine (CPU model, cores, GPU), device, threads, batch size,
guided or not, and library versions. It keeps the measured step times, so a run with another
number of steps decides from the same measurement. A run too small to pay for a calibration
(fewer than ``MIN_CALIBRATED_WORK`` cell-steps, ``MIN_GPU_CALIBRATED_WORK`` on a GPU) uses the
cache or, without one, the default engine (onnxruntime on the CPU, the first of the fixed GPU
order), and says so. The cache is advisory: an unreadable one is ignored and rewritten.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cellsynth.bench.machine import cpu_model, gpu_name, library_versions
from cellsynth.bundle.load import Bundle
from cellsynth.errors import CellsynthError
from cellsynth.files import atomic_path

CALIBRATION_CELLS = 64
GPU_CALIBRATION_CELLS = 1024
CALIBRATION_STEPS = 3
TIMED_CALLS = 3
#: cells x steps below which a run takes the default engine uncalibrated (the calibration
#: would cost more than it could save). A GPU does a CPU's work of minutes in seconds, and its
#: candidates take longer to open (a TensorRT build), so its threshold is higher.
MIN_CALIBRATED_WORK = 20_000
MIN_GPU_CALIBRATED_WORK = 2_000_000
CACHE_FILE = "engine_calibration.json"
CACHE_FORMAT = 2  # 2: step times of the loop, guidance and device in the key

# Builds (denoiser, decoder or None) for an engine name on the run's device.
Loader = Callable[[str], tuple[Any, Any]]


def cache_dir() -> Path:
    """Where the calibration cache lives (see the module docstring)."""
    if os.environ.get("CELLSYNTH_CACHE_DIR"):
        return Path(os.environ["CELLSYNTH_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "cellsynth"


def choose_by_speed(
    bundle: Bundle,
    candidates: Sequence[str],
    load: Loader,
    batch_size: int,
    steps: int,
    n_cells: int,
    threads: int | None,
    guidance: float = 1.0,
    device: str = "cpu",
) -> tuple[str, str, dict[str, Any]]:
    """Pick the fastest of ``candidates`` (engine names, the default first) for this run.

    Returns
    -------
    (engine, why, record)
        ``why`` is the line printed after "auto:"; ``record`` goes to the provenance
        (``engine_calibration``): seconds per cell by engine, cells timed, cached or not.
    """
    where = "GPU" if device.startswith("cuda") else "CPU"
    key = _key(bundle, candidates, batch_size, threads, guidance != 1.0, device)
    cached = _read_cache().get(key)
    if cached is not None and set(cached.get("seconds_per_step", {})) == set(candidates):
        return _decide(cached["seconds_per_step"], cached["cells"], steps, threads, where, True)
    threshold = MIN_GPU_CALIBRATED_WORK if where == "GPU" else MIN_CALIBRATED_WORK
    if n_cells * steps < threshold:
        engine = candidates[0]
        record = {
            "engine": engine,
            "calibrated": False,
            "reason": f"{n_cells} cells x {steps} steps is too small a run to calibrate",
        }
        return engine, _why(record, where), record
    limit = GPU_CALIBRATION_CELLS if where == "GPU" else CALIBRATION_CELLS
    cells = int(min(batch_size, limit))
    per_step, broken = {}, {}
    for name in candidates:
        try:
            per_step[name] = _seconds_per_step(bundle, load, name, cells, guidance)
        except Exception as exc:  # a broken install of one engine leaves the other
            broken[name] = " ".join(str(exc).split())[:200] or type(exc).__name__
    if not per_step:
        raise CellsynthError(
            f"no engine could run this bundle on the {where}: "
            + "; ".join(f"{k}: {v}" for k, v in broken.items())
        )
    if broken:  # not cached: the next run tries the broken engine again
        engine, why, record = _decide(per_step, cells, steps, threads, where, cached=False)
        record["failed"] = broken
        return engine, why + f"; {', '.join(broken)} failed to load", record
    _write_cache(
        key,
        {
            "seconds_per_step": per_step,
            "cells": cells,
            "measured": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        },
    )
    return _decide(per_step, cells, steps, threads, where, cached=False)


def _decide(
    per_step: dict[str, dict[str, float]],
    cells: int,
    steps: int,
    threads: int | None,
    where: str,
    cached: bool,
) -> tuple[str, str, dict[str, Any]]:
    """The engine with the least time per cell for a run of ``steps`` steps and one decoder
    call, from the measured times on ``cells`` cells."""
    per_cell = {
        name: (steps * c["denoise"] + c.get("decode", 0.0)) / cells for name, c in per_step.items()
    }
    engine = min(per_cell, key=per_cell.get)
    record = {
        "engine": engine,
        "calibrated": True,
        "seconds_per_cell": per_cell,
        "seconds_per_step": per_step,
        "cells": cells,
        "steps": int(steps),
        "threads": threads,
        "cached": cached,
    }
    return engine, _why(record, where), record


def _why(record: dict[str, Any], where: str) -> str:
    if not record.get("calibrated"):
        return f"{where}, {record['engine']} (not measured: {record.get('reason')})"
    per_cell = record["seconds_per_cell"]
    figures = ", ".join(
        f"{name} {1e3 * s:.3g} ms/cell"
        for name, s in sorted(per_cell.items(), key=lambda kv: kv[1])
    )
    how = "cached" if record.get("cached") else f"{record['cells']} cells timed now"
    return f"measured fastest on this {where}: {figures} ({how})"


def _seconds_per_step(
    bundle: Bundle, load: Loader, engine: str, cells: int, guidance: float
) -> dict[str, float]:
    """Median seconds of one step of the denoising loop (``denoise``) and, for a latent bundle,
    of one decoder call (``decode``) of ``engine`` on ``cells`` cells."""
    from cellsynth.scheduler import scheduler_for_bundle

    denoiser, decoder = load(engine)
    try:
        sched = scheduler_for_bundle(bundle, "ddim", truncate_final=True, seed=0)
        sched.set_timesteps(CALIBRATION_STEPS)
        x_T = sched.init_noise(cells, bundle.width)
        sizes = np.asarray(bundle.model_label_sizes, dtype=np.int64)
        labels = np.zeros((cells, len(sizes)), dtype=np.int64)
        null = np.ascontiguousarray(np.broadcast_to(sizes, labels.shape))
        steps = len(sched.timesteps)

        def loop() -> None:  # from a fresh x_T: a CPU loop may step its input in place
            denoiser.denoise(sched, x_T.copy(), labels, null, guidance, 0, {})

        seconds = {"denoise": _median_seconds(loop) / steps}
        if decoder is not None:  # a latent bundle's width is its decoder's input width
            seconds["decode"] = _median_seconds(lambda: decoder.run(x_T))
        return seconds
    finally:
        denoiser.close()
        if decoder is not None:
            decoder.close()


def _median_seconds(fn: Callable[[], Any]) -> float:
    fn()  # warm-up: first-call allocations and lazy initialisation
    times = []
    for _ in range(TIMED_CALLS):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _key(
    bundle: Bundle,
    candidates: Sequence[str],
    batch_size: int,
    threads: int | None,
    guided: bool,
    device: str,
) -> str:
    from cellsynth._version import __version__
    from cellsynth.bundle.exports import export_entry

    onnx = export_entry(bundle, "onnx", "fp32") or {}
    graph = onnx.get("onnxruntime_graph") or {}
    gpu = device.startswith("cuda")
    libraries = (*candidates, "onnxruntime-gpu") if gpu else tuple(candidates)
    parts = {
        "bundle": bundle.hash,
        "onnx": graph.get("sha256") or onnx.get("sha256"),
        "engines": sorted(candidates),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "device": device,
        "gpu": gpu_name(int(device.partition(":")[2] or 0)) if gpu else None,
        "threads": threads,
        "batch": int(batch_size),
        "guided": bool(guided),
        "versions": library_versions(libraries),
        "cellsynth": __version__,
    }
    return json.dumps(parts, sort_keys=True)


def _read_cache() -> dict[str, Any]:
    try:
        data = json.loads((cache_dir() / CACHE_FILE).read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("format") != CACHE_FORMAT:
        return {}
    entries = data.get("entries")
    return entries if isinstance(entries, dict) else {}


def _write_cache(key: str, record: dict[str, Any]) -> None:
    """Add one measurement to the cache; a cache that cannot be written is skipped silently
    (a read-only home costs a calibration per run, nothing else)."""
    entries = _read_cache()
    entries[key] = record
    path = cache_dir() / CACHE_FILE
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            Path(tmp).write_text(json.dumps({"format": CACHE_FORMAT, "entries": entries}, indent=1))
    except OSError:
        pass
