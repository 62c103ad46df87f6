"""The one timing loop of cellsynth: ``cellsynth bench``, ``benchmarks/engines.py`` and
``benchmarks/acceleration.py`` all time through it.

A :class:`Method` is a way to generate a batch: ``run(steps, limit)`` runs the whole
``steps``-step schedule (``limit`` None) or only its first ``limit`` timesteps. :func:`measure`
times several methods side by side: each is probed first (:func:`probe`: one untimed step, then
a few timed ones, giving its cost per step), :func:`plan` decides how many steps a timed run
covers within the budget, and the methods take turns within each round (machine noise hits all
alike). When ``repeats`` whole runs would exceed ``budget_s``, each run covers only the first
k >= ``MIN_TIMED_STEPS`` steps (after an untimed warm-up step) and its time is extrapolated to
all steps (``per-step time x steps``, plus the parts that do not grow with the steps, such as a
latent bundle's decoder); the result says so.

For a ``cellsynth bench`` configuration (:func:`time_config`) the method is the loop generation
runs, :meth:`cellsynth.backends.base.Denoiser.denoise`, with its ``timer`` hook splitting model
calls from scheduler steps (on the CPU; on a GPU or under a captured graph only the whole is
timed). Peak memory is the highest resident set size of the process sampled every 5 ms while the
configuration runs (it includes what earlier configurations left allocated: an upper bound).
"""

from __future__ import annotations

import math
import statistics
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cellsynth.backends.base import Denoiser, StepTimes
from cellsynth.bench.plan import Config
from cellsynth.bundle.load import Bundle

MIN_TIMED_STEPS = 3
PERCENTILES = (50, 95, 99)

# What a method's run may return: seconds of its parts; "seconds" replaces the wall time the
# caller measured, "fixed_s" is the part that does not grow with the steps (not extrapolated).
Parts = Mapping[str, float | None]


@dataclass
class Method:
    """One way to generate: ``run(steps, limit)`` runs the ``steps``-step schedule, whole
    (``limit`` None) or its first ``limit`` timesteps, and may return its :data:`Parts` (a
    return value that is not a mapping is ignored)."""

    name: str
    run: Callable[[int, int | None], Parts | None]
    unavailable: str | None = None  # why it cannot run here (said in its row)
    seconds_per_step: float = float("nan")  # set by probe()
    first_step_s: float = float("nan")  # probe()'s untimed cold step (without fixed parts)


@dataclass
class Timing:
    """The timed runs of one method at ``steps`` steps."""

    steps: int
    timed_steps: int
    runs: list[dict[str, Any]] = field(default_factory=list)

    @property
    def extrapolated(self) -> bool:
        return self.timed_steps < self.steps

    def seconds(self) -> list[float]:
        """Each run's seconds for all ``steps`` steps (extrapolated when it timed fewer)."""
        scale = self.steps / self.timed_steps
        out = []
        for r in self.runs:
            fixed = r.get("fixed_s") or 0.0
            out.append((r["seconds"] - fixed) * scale + fixed)
        return out

    def median(self, part: str) -> float | None:
        """Median of a part over the runs, per timed step (None if a run lacks it)."""
        values = [r.get(part) for r in self.runs]
        if not values or any(v is None for v in values):
            return None
        return statistics.median(values) / self.timed_steps


def _timed(method: Method, steps: int, limit: int | None) -> dict[str, Any]:
    start = time.perf_counter()
    parts = method.run(steps, limit)
    seconds = time.perf_counter() - start
    # Anything else a run returns (the cells) is not a timing.
    return {"seconds": seconds, **(parts if isinstance(parts, Mapping) else {})}


def probe(method: Method, steps: int) -> float:
    """Seconds per step of ``method``: one untimed (cold) step, then ``MIN_TIMED_STEPS``."""
    cold = _timed(method, steps, 1)
    method.first_step_s = cold["seconds"] - (cold.get("fixed_s") or 0.0)
    k = min(MIN_TIMED_STEPS, steps)
    run = _timed(method, steps, k)
    method.seconds_per_step = (run["seconds"] - (run.get("fixed_s") or 0.0)) / k
    return method.seconds_per_step


def plan(seconds_per_step: float, steps: int, budget_s: float, repeats: int) -> int:
    """Steps a timed run covers: all when ``repeats`` whole runs fit in ``budget_s``, else the
    most that fit, at least ``MIN_TIMED_STEPS``."""
    if not math.isfinite(seconds_per_step) or seconds_per_step * steps * repeats <= budget_s:
        return steps
    affordable = int(budget_s / (repeats * seconds_per_step))
    return min(steps, max(MIN_TIMED_STEPS, affordable))


def measure(
    methods: Sequence[Method], steps: int, budget_s: float, repeats: int
) -> dict[str, Timing]:
    """Time every method ``repeats`` times at ``steps`` steps, interleaved (each round runs each
    method once). Methods not yet probed are probed at ``steps`` first."""
    for m in methods:
        if not math.isfinite(m.seconds_per_step):
            probe(m, steps)
    timings = {
        m.name: Timing(steps, plan(m.seconds_per_step, steps, budget_s, repeats)) for m in methods
    }
    for _ in range(repeats):
        for m in methods:
            t = timings[m.name]
            if t.extrapolated:
                m.run(steps, 1)  # warm-up step, untimed
            t.runs.append(_timed(m, steps, t.timed_steps if t.extrapolated else None))
    return timings


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

            def run(steps: int, limit: int | None) -> Parts:
                return _run(denoiser, decoder, sched, config, batch, limit)

            method = Method(config.label, run)
            timing = measure([method], config.steps, budget_s, repeats)[method.name]
        finally:
            denoiser.close()
            if decoder is not None:
                decoder.close()
    latencies = timing.seconds()
    p = {q: float(np.percentile(latencies, q)) for q in PERCENTILES}
    model, steps = timing.median("model_s"), timing.median("step_s")
    decode = statistics.median(r["fixed_s"] for r in timing.runs)
    warm_step = (p[50] - decode) / config.steps
    return {
        "latency_p50_s": p[50],
        "latency_p95_s": p[95],
        "latency_p99_s": p[99],
        "device": denoiser.device,
        "cells_per_s": config.batch_size / p[50],
        "model_ms_per_step": 1e3 * model if model is not None else None,
        "scheduler_ms_per_step": 1e3 * steps if steps is not None else None,
        "decode_ms": 1e3 * decode if decoder is not None else None,
        "load_s": load_s,
        # Opening the engine, the first (cold) step, the other steps warm, then the decoder.
        "first_cell_s": load_s + method.first_step_s + warm_step * (config.steps - 1) + decode,
        "peak_rss_mb": memory.peak_mb,
        "repeats": repeats,
        "timed_steps": timing.timed_steps,
        "extrapolated": timing.extrapolated,
        "engine_details": denoiser.describe(),
    }


def _batch(bundle: Bundle, n: int, seed: int) -> dict[str, np.ndarray]:
    """Random classes for every label column and the null codes guidance would use."""
    rng = np.random.default_rng(seed)
    sizes = bundle.model_label_sizes
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
    limit: int | None,
) -> Parts:
    """One batch through the first ``limit`` (None: all) of ``config.steps`` steps, by the loop
    generation runs, then the decoder: seconds of the whole, its model calls and scheduler steps
    (None where they cannot be told apart), and the decoder's (``fixed_s``)."""
    sched.set_timesteps(config.steps)
    timesteps = sched.timesteps.tolist()
    if limit is not None and limit < len(timesteps):
        sched.set_timesteps(timesteps=timesteps[:limit])
    x_T = sched.init_noise(config.batch_size, int(batch["width"]))
    times = StepTimes()
    start = time.perf_counter()
    x = denoiser.denoise(sched, x_T, batch["labels"], batch["null"], 1.0, 0, {}, timer=times)
    loop_s = time.perf_counter() - start
    decode_s = 0.0
    if decoder is not None:
        a = time.perf_counter()
        decoder.run(np.ascontiguousarray(x, dtype=np.float32))
        decode_s = time.perf_counter() - a
    return {
        "seconds": loop_s + decode_s,
        "model_s": times.model_s if times.split else None,
        "step_s": times.step_s if times.split else None,
        "fixed_s": decode_s,
    }


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
