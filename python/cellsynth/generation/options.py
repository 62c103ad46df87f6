"""The options of a generation run, in three small validated groups.

- :class:`SamplingOptions`: which cells (labels, sampler, steps, guidance, seed, batch grid, and
  whether counts or the decoder's mean are written): everything that decides the values.
- :class:`RuntimeOptions`: how they are computed (engine, device, precision, threads, weights).
- :class:`OutputOptions`: where they go (the .h5ad, resuming, chunks, a shard, progress).

:func:`cellsynth.generate` takes the groups (``sampling=``, ``runtime=``, ``output=``) or the same
options as flat keywords (``steps=20, engine="onnxruntime"``), as diffusers' pipelines do; the CLI
and the Ray path build the groups. A bad value is refused when the group is built, before any
bundle is loaded; what depends on the bundle (steps beyond its training timesteps) is checked by
:meth:`SamplingOptions.check_for`.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from cellsynth.errors import DataError
from cellsynth.generation.conditions import SPLITS
from cellsynth.scheduler import SCHEDULER_NAMES, TIMESTEP_SPACINGS

# Classifier-free guidance beyond this only amplifies the model's errors (values explode).
MAX_GUIDANCE = 50.0
DEFAULT_CHUNK_CELLS = 8192


@dataclass(frozen=True)
class SamplingOptions:
    """Which cells: see :func:`cellsynth.generate` for each option."""

    steps: int = 50
    eta: float = 0.0
    seed: int = 0
    conditions: Mapping[str, Any] | None = None
    guidance: float = 1.0
    scheduler: str = "ddim"
    timestep_spacing: str = "leading"
    batch_size: int = 512
    composition: Any = None  # path or AnnData of real cells whose label mix to match
    split: str = "training"
    counts: bool = False
    mean: bool = False

    def __post_init__(self) -> None:
        if self.scheduler not in SCHEDULER_NAMES:
            raise DataError(f"scheduler must be one of {SCHEDULER_NAMES}, got {self.scheduler!r}")
        if not (math.isfinite(self.eta) and 0 <= self.eta <= 1):
            raise DataError(
                f"eta must be between 0 (deterministic) and 1 (DDPM-like), got {self.eta}"
            )
        if self.timestep_spacing not in TIMESTEP_SPACINGS:
            raise DataError(
                f"timestep_spacing must be one of {TIMESTEP_SPACINGS}, "
                f"got {self.timestep_spacing!r}"
            )
        if self.scheduler != "ddim" and self.eta != 0:
            raise DataError(
                f"eta applies to the ddim scheduler only; {self.scheduler} has no eta "
                "(ddpm always adds its own noise, dpmsolver++ adds none)"
            )
        if not (math.isfinite(self.guidance) and 0 <= self.guidance <= MAX_GUIDANCE):
            raise DataError(
                f"guidance must be between 0 (unconditional) and {MAX_GUIDANCE:g}; 1 is off, "
                f"2-5 is usual; got {self.guidance}"
            )
        if self.batch_size < 1:
            raise DataError(f"batch_size must be at least 1, got {self.batch_size}")
        if not (isinstance(self.seed, int | np.integer) and 0 <= self.seed < 2**64):
            raise DataError(
                f"seed must be a whole number between 0 and 2^64 - 1, got {self.seed!r}"
            )
        if self.split not in SPLITS:
            raise DataError(f"split must be one of {SPLITS}, got {self.split!r}")

    def check_for(self, bundle: Any) -> None:
        """What depends on the bundle: ``steps`` within its training timesteps."""
        T = bundle.schedule.num_train_timesteps
        if not 1 <= self.steps <= T:
            raise DataError(
                f"steps must be between 1 and the {T} training timesteps, got {self.steps}"
            )


@dataclass(frozen=True)
class RuntimeOptions:
    """How the cells are computed: see :func:`cellsynth.generate` for each option."""

    engine: str = "auto"
    device: str = "auto"
    precision: str | None = None
    threads: int | None = None
    weights: str = "ema"

    def __post_init__(self) -> None:
        if self.threads is not None and not (isinstance(self.threads, int) and self.threads >= 1):
            raise DataError(f"threads must be a whole number >= 1, got {self.threads!r}")


@dataclass(frozen=True)
class OutputOptions:
    """Where the cells go: see :func:`cellsynth.generate` for each option."""

    out: str | os.PathLike | None = None
    resume: bool = False
    chunk_size: int | None = None  # None: DEFAULT_CHUNK_CELLS
    overwrite: bool = False
    shard: tuple[int, int] | None = None
    progress: bool = True
    # Told the cells of this run (or shard) done so far, as they are done (after every denoising
    # step, or once per batch on a GPU engine); the Ray path's progress. Not part of the cells.
    on_progress: Callable[[int], None] | None = None

    def __post_init__(self) -> None:
        if self.chunk_size is not None and self.chunk_size < 1:
            raise DataError(f"chunk_size must be at least 1, got {self.chunk_size}")
        if self.resume and self.out is None:
            raise DataError("resume needs an output file (out=... / --out) to resume into")
        if self.out is not None and not str(self.out).endswith(".h5ad"):
            raise DataError(f"the output must be an .h5ad file, got {self.out}")

    def chunk_cells(self, batch_size: int) -> int:
        """Cells per chunk on disk: whole batches on the global grid (rounded up)."""
        size = DEFAULT_CHUNK_CELLS if self.chunk_size is None else self.chunk_size
        return -(-size // batch_size) * batch_size


GROUPS = {"sampling": SamplingOptions, "runtime": RuntimeOptions, "output": OutputOptions}


def group_options(
    flat: Mapping[str, Any],
    sampling: SamplingOptions | None = None,
    runtime: RuntimeOptions | None = None,
    output: OutputOptions | None = None,
) -> tuple[SamplingOptions, RuntimeOptions, OutputOptions]:
    """The three groups from flat keywords, on top of groups given (a flat keyword wins)."""
    given = {"sampling": sampling, "runtime": runtime, "output": output}
    known = {f.name: group for group, cls in GROUPS.items() for f in dataclasses.fields(cls)}
    unknown = sorted(set(flat) - set(known))
    if unknown:
        raise TypeError(f"generate() got unexpected options {unknown}")
    built = []
    for group, cls in GROUPS.items():
        mine = {k: v for k, v in flat.items() if known[k] == group}
        base = given[group]
        built.append(dataclasses.replace(base, **mine) if base is not None else cls(**mine))
    return built[0], built[1], built[2]


def flat_options(*groups: Any) -> dict[str, Any]:
    """The groups as the flat keywords of :func:`cellsynth.generate` (Ray workers, manifests)."""
    return {f.name: getattr(g, f.name) for g in groups for f in dataclasses.fields(g)}
