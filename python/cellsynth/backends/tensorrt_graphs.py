"""When the TensorRT denoiser may replay its loop as a CUDA graph, and under which key.

A graph is captured once per configuration (scheduler and its config, batch size, guidance,
timesteps, step options, noise mode) and replayed; these functions decide whether a scheduler can
run as a graph at all and what identifies a capture.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass
class GraphEntry:
    """One captured loop: the graph, the buffers and execution context it reads and writes."""

    graph: Any  # _core.CudaGraph
    buffers: Any  # backends._cuda.LoopBuffers
    context: Any  # the TensorRT execution context it was captured with
    noise: bool  # the noise offset must be written before each launch
    launches: int = 0


def noise_mode(scheduler: Any, step_options: Mapping[str, Any]) -> str | None:
    """'none' (no step noise), 'device' (noise keyed by step index and global cell: drawn in the
    graph from a device-memory offset) or None (unknown scheduler: no graph)."""
    from cellsynth.scheduler import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

    if "variance_noise" in step_options or "generator" in step_options:
        return None
    if isinstance(scheduler, DPMSolverMultistepScheduler):
        return "none"
    if isinstance(scheduler, DDIMScheduler):
        return "none" if float(step_options.get("eta", 0.0)) == 0.0 else "device"
    if isinstance(scheduler, DDPMScheduler):
        return "device"
    return None


def needs_history(scheduler: Any) -> bool:
    """A second-order DPM-Solver keeps a history buffer the graph must own."""
    from cellsynth.scheduler import DPMSolverMultistepScheduler

    return isinstance(scheduler, DPMSolverMultistepScheduler) and (
        scheduler.config["solver_order"] == 2
    )


def graph_key(scheduler, n_cells, guided, guidance, timesteps, step_options, noise) -> tuple:
    """What a captured graph depends on: a new key means a new capture."""
    config = json.dumps(dict(scheduler.config), sort_keys=True, default=repr)
    options = json.dumps(dict(step_options), sort_keys=True, default=repr)
    return (
        type(scheduler).__module__,
        type(scheduler).__qualname__,
        config,
        int(n_cells),
        bool(guided),
        float(guidance) if guided else None,
        tuple(int(t) for t in timesteps),
        options,
        noise,
    )
