"""``engine='auto'`` on the CPU: the engine measured fastest for this bundle, machine and batch.

Which engine is faster on a CPU depends on the model (a transformer gains from onnxruntime's fused
attention, a small MLP hardly), the batch size, the thread count and the machine, so a fixed
order is wrong somewhere. Before a run, each candidate engine (onnxruntime where the bundle has
an ONNX export, torch where PyTorch is installed) runs a few denoiser calls on
``min(batch_size, CALIBRATION_CELLS)`` cells, after one untimed warm-up call; a latent bundle's
cost also counts its decoder, one call against ``steps`` denoiser calls. The median cost per
cell decides, and the figures are printed and recorded in the run's provenance.

The result is cached (``$CELLSYNTH_CACHE_DIR``, else ``$XDG_CACHE_HOME/cellsynth``, else
``~/.cache/cellsynth``; file ``engine_calibration.json``) under a key of everything it depends
on: bundle hash and ONNX file, machine (CPU model, cores), threads, batch size and library
versions. It keeps the measured call times, so a run with another number of steps decides from
the same measurement. A run too small to pay for a calibration (fewer than
``MIN_CALIBRATED_WORK`` cell-steps) uses the cache or, without one, onnxruntime, and says so.
The cache is advisory: an unreadable one is ignored and rewritten.
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

from cellsynth.bench.machine import cpu_model, library_versions
from cellsynth.bundle.load import Bundle
from cellsynth.errors import CellsynthError
from cellsynth.files import atomic_path

CALIBRATION_CELLS = 64
TIMED_CALLS = 3
#: cells x steps below which a run uses onnxruntime uncalibrated (the calibration would cost
#: more than it could save).
MIN_CALIBRATED_WORK = 20_000
CACHE_FILE = "engine_calibration.json"
CACHE_FORMAT = 1

# Builds (denoiser, decoder or None) for an engine name on the CPU.
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
) -> tuple[str, str, dict[str, Any]]:
    """Pick the fastest of ``candidates`` (engine names) for this run.

    Returns
    -------
    (engine, why, record)
        ``why`` is the line printed after "auto:"; ``record`` goes to the provenance
        (``engine_calibration``): seconds per cell by engine, cells timed, cached or not.
    """
    key = _key(bundle, candidates, batch_size, threads)
    cached = _read_cache().get(key)
    if cached is not None and set(cached.get("seconds_per_call", {})) == set(candidates):
        return _decide(cached["seconds_per_call"], cached["cells"], steps, threads, cached=True)
    if n_cells * steps < MIN_CALIBRATED_WORK:
        engine = "onnxruntime" if "onnxruntime" in candidates else candidates[0]
        record = {
            "engine": engine,
            "calibrated": False,
            "reason": f"{n_cells} cells x {steps} steps is too small a run to calibrate",
        }
        return engine, f"CPU, {engine} (not measured: {record['reason']})", record
    cells = int(min(batch_size, CALIBRATION_CELLS))
    per_call, broken = {}, {}
    for name in candidates:
        try:
            per_call[name] = _seconds_per_call(bundle, load, name, cells)
        except Exception as exc:  # a broken install of one engine leaves the other
            broken[name] = " ".join(str(exc).split())[:200] or type(exc).__name__
    if not per_call:
        raise CellsynthError(
            "no engine could run this bundle on the CPU: "
            + "; ".join(f"{k}: {v}" for k, v in broken.items())
        )
    if broken:  # not cached: the next run tries the broken engine again
        engine, why, record = _decide(per_call, cells, steps, threads, cached=False)
        record["failed"] = broken
        return engine, why + f"; {', '.join(broken)} failed to load", record
    _write_cache(
        key,
        {
            "seconds_per_call": per_call,
            "cells": cells,
            "measured": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        },
    )
    return _decide(per_call, cells, steps, threads, cached=False)


def _decide(
    per_call: dict[str, dict[str, float]], cells: int, steps: int, threads: int | None, cached: bool
) -> tuple[str, str, dict[str, Any]]:
    """The engine with the least time per cell for a run of ``steps`` denoiser calls and one
    decoder call, from the measured call times on ``cells`` cells."""
    per_cell = {
        name: (steps * c["denoise"] + c.get("decode", 0.0)) / cells for name, c in per_call.items()
    }
    engine = min(per_cell, key=per_cell.get)
    record = {
        "engine": engine,
        "calibrated": True,
        "seconds_per_cell": per_cell,
        "seconds_per_call": per_call,
        "cells": cells,
        "steps": int(steps),
        "threads": threads,
        "cached": cached,
    }
    return engine, _why(record), record


def _why(record: dict[str, Any]) -> str:
    if not record.get("calibrated"):
        return f"CPU, {record['engine']} (not measured: {record.get('reason')})"
    per_cell = record["seconds_per_cell"]
    figures = ", ".join(
        f"{name} {1e3 * s:.3g} ms/cell"
        for name, s in sorted(per_cell.items(), key=lambda kv: kv[1])
    )
    how = "cached" if record.get("cached") else f"{record['cells']} cells timed now"
    return f"measured fastest on this CPU: {figures} ({how})"


def _seconds_per_call(bundle: Bundle, load: Loader, engine: str, cells: int) -> dict[str, float]:
    """Median seconds of one denoiser call (``denoise``) and, for a latent bundle, one decoder
    call (``decode``) of ``engine`` on ``cells`` cells."""
    denoiser, decoder = load(engine)
    try:
        rng = np.random.default_rng(0)
        x = rng.standard_normal((cells, bundle.width), dtype=np.float32)
        labels = np.zeros((cells, len(bundle.labels.keys)), dtype=np.int64)
        x_n, lab = denoiser.to_native(x), denoiser.to_native(labels)
        t = denoiser.timesteps(bundle.schedule.num_train_timesteps // 2, cells)

        def call() -> None:
            denoiser.to_host(denoiser(x_n, t, lab))

        seconds = {"denoise": _median_seconds(call)}
        if decoder is not None:  # a latent bundle's width is its decoder's input width
            seconds["decode"] = _median_seconds(lambda: decoder.run(x))
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


def _key(bundle: Bundle, candidates: Sequence[str], batch_size: int, threads: int | None) -> str:
    from cellsynth._version import __version__
    from cellsynth.bundle.exports import export_entry

    onnx = export_entry(bundle, "onnx", "fp32") or {}
    graph = onnx.get("onnxruntime_graph") or {}
    parts = {
        "bundle": bundle.hash,
        "onnx": graph.get("sha256") or onnx.get("sha256"),
        "engines": sorted(candidates),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "threads": threads,
        "batch": int(batch_size),
        "versions": library_versions(tuple(candidates)),
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
