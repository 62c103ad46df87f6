"""The engines of one generation run: the denoiser, a latent bundle's decoder, and why them.

``engine='auto'`` is measured (:mod:`cellsynth.backends.calibration`) except when the run resumes
an interrupted one: its kept chunks were made by the engine it chose then, on that kind of device,
and a new measurement could choose another engine whose cells they would not match. Engines come
from :mod:`cellsynth.generation.engine_pool` (reused inside ``keep_engines``, else opened anew).
"""

from __future__ import annotations

import os
from typing import Any

from cellsynth.backends import choose_engine, engine_candidates, load_engine
from cellsynth.bundle.load import Bundle
from cellsynth.errors import DataError
from cellsynth.generation import engine_pool
from cellsynth.generation.options import OutputOptions, RuntimeOptions, SamplingOptions


def open_engines(
    b: Bundle,
    sampling: SamplingOptions,
    runtime: RuntimeOptions,
    output: OutputOptions,
    n_cells: int,
) -> tuple[Any, Any, str]:
    """The denoiser, the decoder of a latent bundle (or None) and why this engine."""
    chosen, device = runtime.engine, runtime.device
    resumed = _resumed_engine(output.out) if chosen == "auto" and output.resume else None
    if resumed is not None:
        # The run being resumed measured its engine already; a new measurement could choose
        # another one, whose cells its kept chunks would not match.
        engine, kind = resumed
        where = choose_engine(b, device)[1]
        if kind != ("cpu" if where == "cpu" else "cuda") or engine not in engine_candidates(
            b, where
        ):
            on = "a GPU" if kind == "cuda" else "the CPU"
            raise DataError(
                f"the interrupted run in {output.out} was made with {engine} on {on}, which this "
                f"run cannot use here (device {device!r}): resume it where it started, or pass "
                "overwrite=True (--overwrite) to start again"
            )
        chosen, device = engine, where
    # Latent diffusion ends with the autoencoder's decoder, on the denoiser's kind of engine.
    denoiser, decoder, why = engine_pool.load(
        load_engine,
        b,
        engine=chosen,
        device=device,
        weights=runtime.weights,
        precision=runtime.precision,
        threads=runtime.threads,
        run={
            "batch_size": sampling.batch_size,
            "steps": sampling.steps,
            "n_cells": n_cells,
            "guidance": sampling.guidance,
        },
    )
    if resumed is not None:
        why = f"{resumed[0]}, the engine of the run being resumed"
    count_model = decoder is not None and decoder.counts
    problem = None
    if sampling.mean and not count_model:
        problem = (
            "mean applies to count models (a latent bundle on a negative-binomial "
            f"autoencoder); {b.name} writes expression directly"
        )
    elif sampling.mean and sampling.counts:
        problem = (
            "mean writes the expected expression, which has no counts: ask for one of mean "
            "and counts"
        )
    if problem is not None:
        engine_pool.release(denoiser, decoder)
        raise DataError(problem)
    return denoiser, decoder, why


def _resumed_engine(out: str | os.PathLike | None) -> tuple[str, str] | None:
    """The engine and device kind ('cpu', 'cuda') an interrupted run into ``out`` used (None
    without one)."""
    from cellsynth.backends import ENGINES
    from cellsynth.generation.chunks import started_settings

    settings = started_settings(out) if out is not None else None
    engine = (settings or {}).get("engine")
    return (engine, settings.get("device", "cpu")) if engine in ENGINES else None
