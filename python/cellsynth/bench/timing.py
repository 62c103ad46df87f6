"""The one timing loop: the latency of one whole batch of generation, split into its parts.

For a configuration (:class:`cellsynth.bench.plan.Config`) the engine is opened (timed: part of
the time to the first cell), one untimed step warms it up, and then each repeat runs the batch
from x_T through every scheduler step (and a latent bundle's decoder), exactly the loop
:meth:`cellsynth.backends.base.Denoiser.denoise` runs, with a host clock around each model call
and each scheduler step. A backend that replaces the loop wholesale (TensorRT's captured CUDA
graph) is timed as a whole and has no split.

Long configurations: when ``repeats`` whole runs would exceed ``budget_s``, each repeat times
only the first k >= 3 steps and the latency is extrapolated (``per-step time x steps`` plus the
decoder), and the row says so. Peak memory is the highest resident set size of the process
sampled every 5 ms while the configuration runs (it includes what earlier configurations left
allocated, so it is an upper bound).
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from cellsynth.backends.base import Denoiser, step_threads
from cellsynth.bench.plan import Config
from cellsynth.bundle.load import Bundle

MIN_TIMED_STEPS = 3
PERCENTILES = (50, 95, 99)


def time_config(
    bundle: Bundle,
    config: Config,
    open_engine: Callable[[], tuple[Denoiser, Any]],
    repeats: int,
    budget_s: float,
    seed: int = 0,
) -> dict[str, Any]:
    """Measure one configuration; ``open_engine`` returns (denoiser, decoder or None)."""
    from cellsynth.scheduler import scheduler_for_bundle

    with PeakMemory() as memory:
        start = time.perf_counter()
        denoiser, decoder = open_engine()
        load_s = time.perf_counter() - start
        try:
            sched = scheduler_for_bundle(bundle, config.scheduler, truncate_final=True, seed=seed)
            batch = _batch(bundle, config.batch_size, seed)
            whole_loop = type(denoiser).denoise is not Denoiser.denoise
            cold = _run(denoiser, decoder, sched, config, batch, limit=1, whole=False)
            per_step = _run(denoiser, decoder, sched, config, batch, MIN_TIMED_STEPS, False)
            step_s = per_step["loop_s"] / min(MIN_TIMED_STEPS, config.steps)
            full_s = step_s * config.steps
            limit = config.steps
            if not whole_loop and full_s * repeats > budget_s:
                affordable = int(budget_s / (repeats * step_s))
                limit = min(config.steps, max(MIN_TIMED_STEPS, affordable))
            runs = [
                _run(denoiser, decoder, sched, config, batch, limit, whole_loop)
                for _ in range(repeats)
            ]
        finally:
            denoiser.close()
            if decoder is not None:
                decoder.close()
    scale = config.steps / limit
    latencies = [r["loop_s"] * scale + r["decode_s"] for r in runs]
    p = {q: float(np.percentile(latencies, q)) for q in PERCENTILES}
    model = [r["model_s"] / limit for r in runs if r["model_s"] is not None]
    steps = [r["step_s"] / limit for r in runs if r["step_s"] is not None]
    warm_step = statistics.median(r["loop_s"] for r in runs) / limit
    decode = statistics.median(r["decode_s"] for r in runs)
    return {
        "latency_p50_s": p[50],
        "latency_p95_s": p[95],
        "latency_p99_s": p[99],
        "device": denoiser.device,
        "cells_per_s": config.batch_size / p[50],
        "model_ms_per_step": 1e3 * statistics.median(model) if model else None,
        "scheduler_ms_per_step": 1e3 * statistics.median(steps) if steps else None,
        "decode_ms": 1e3 * decode if decoder is not None else None,
        "load_s": load_s,
        # Opening the engine, the first (cold) step, the other steps warm, then the decoder.
        "first_cell_s": load_s + cold["loop_s"] + warm_step * (config.steps - 1) + decode,
        "peak_rss_mb": memory.peak_mb,
        "repeats": repeats,
        "timed_steps": limit,
        "extrapolated": limit < config.steps,
        "engine_details": denoiser.describe(),
    }


def _batch(bundle: Bundle, n: int, seed: int) -> dict[str, np.ndarray]:
    """Random classes for every label column and the null codes guidance would use."""
    rng = np.random.default_rng(seed)
    sizes = bundle.labels.sizes
    labels = np.stack([rng.integers(0, s, n) for s in sizes], 1) if sizes else np.zeros((n, 0))
    null = np.broadcast_to(np.asarray(sizes, dtype=np.int64), (n, len(sizes)))
    return {
        "labels": np.ascontiguousarray(labels, dtype=np.int64),
        "null": np.ascontiguousarray(null),
        "width": np.asarray(bundle.width),
    }


def _run(
    denoiser: Denoiser,
    decoder: Any,
    sched: Any,
    config: Config,
    batch: dict[str, np.ndarray],
    limit: int,
    whole: bool,
) -> dict[str, Any]:
    """One batch through the first ``limit`` of ``config.steps`` steps; seconds of the loop,
    of the model calls and scheduler steps within it (None when ``whole``), of the decoder."""
    sched.set_timesteps(config.steps)
    timesteps = sched.timesteps.tolist()[:limit]
    n, width = config.batch_size, int(batch["width"])
    x_T = sched.init_noise(n, width)
    labels = batch["labels"]
    model_s = step_s = 0.0
    start = time.perf_counter()
    if whole:
        sched.set_timesteps(timesteps=timesteps)
        x = denoiser.denoise(sched, x_T, labels, batch["null"], 1.0, 0, {})
        loop_s = time.perf_counter() - start
        model_s = step_s = None
    else:
        x = denoiser.to_native(x_T)
        lab = denoiser.to_native(labels)
        with step_threads(denoiser.step_threads):
            for t in timesteps:
                a = time.perf_counter()
                out = denoiser(x, denoiser.timesteps(t, n), lab)
                b = time.perf_counter()
                sched.step(out, t, x, cell_offset=0, out=x)
                c = time.perf_counter()
                model_s += b - a
                step_s += c - b
        x = denoiser.to_host(x)
        loop_s = time.perf_counter() - start
    decode_s = 0.0
    if decoder is not None:
        a = time.perf_counter()
        decoder.run(np.ascontiguousarray(x, dtype=np.float32))
        decode_s = time.perf_counter() - a
    return {"loop_s": loop_s, "model_s": model_s, "step_s": step_s, "decode_s": decode_s}


class PeakMemory:
    """Highest resident set size (MB) of this process while the block runs, sampled every 5 ms
    from /proc/self/statm (None where that file does not exist)."""

    def __init__(self, interval_s: float = 0.005) -> None:
        self.interval_s = interval_s
        self.peak_mb: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> PeakMemory:
        self._read()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._read()

    def _sample(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._read()

    def _read(self) -> None:
        try:
            pages = int(Path("/proc/self/statm").read_text().split()[1])
        except (OSError, ValueError, IndexError):
            return
        import resource

        mb = pages * resource.getpagesize() / 2**20
        self.peak_mb = mb if self.peak_mb is None else max(self.peak_mb, mb)
