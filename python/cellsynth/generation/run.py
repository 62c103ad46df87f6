"""Generate synthetic cells from a bundle: the Python face of ``cellsynth sample``.

The denoiser is any backend (:mod:`cellsynth.backends`: torch, onnxruntime, tensorrt) behind one
interface; the update rule, the noise and the final zero-negation truncation are the C++ scheduler
(:mod:`cellsynth.scheduler`). Generation never branches on the backend.

A latent-diffusion bundle (an SCDG over autoencoder codes) is generated the same way in its latent
space (width D, no truncation: codes are not zero-negated); each batch's final codes are then
divided by the bundle's latent scale and decoded to cells by a :class:`~cellsynth.backends.Decoder`
chosen with the denoiser (:func:`cellsynth.backends.load_decoder`: the autoencoder's module for
torch, its exported decoder for onnxruntime, so an ONNX run needs no PyTorch), with values below
the decoder's zero threshold set to 0. Everything else (labels, keyed noise, chunks, shards,
counts, provenance) is the same for both kinds.

Randomness is keyed, never sequential: x_T and every step's noise are Philox4x32-10 normals keyed
by (seed, global cell index, step, gene), and each batch passes the global index of its first cell
as ``cell_offset``. Labels are assigned for all ``n_cells`` first, then sliced. Batches, chunks and
shard boundaries all lie on one global grid of multiples of ``batch_size``, so every cell is
denoised in the same batch, at the same row, whether the run is whole, chunked, resumed or
sharded: the values are bit-identical (matrix-multiply kernels may round a row differently when
the batch shape changes, so another ``batch_size`` agrees only to float rounding).

Large runs stream: with ``out=``, chunks of cells are written to disk as they finish
(:mod:`cellsynth.generation.chunks`), an interrupted run resumes, and the final .h5ad is
assembled in bounded memory (:mod:`cellsynth.generation.h5ad_stream`) under a temporary name,
then renamed.
"""

from __future__ import annotations

import datetime as _dt
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import anndata
import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from cellsynth._version import __version__
from cellsynth.bundle.load import Bundle, load_bundle
from cellsynth.bundle.scale import NORMALISATION
from cellsynth.errors import BundleError, DataError
from cellsynth.files import check_output, remove_orphans
from cellsynth.generation import engine_pool
from cellsynth.generation.collect import ChunkCollector
from cellsynth.generation.conditions import LabelRuns, assign_label_runs, composition_label_runs
from cellsynth.generation.open_engines import open_engines
from cellsynth.generation.options import (
    OutputOptions,
    RuntimeOptions,
    SamplingOptions,
    group_options,
)
from cellsynth.generation.sampling import ChunkSampler
from cellsynth.generation.shards import chunk_bounds, shard_range

NOISE = "philox4x32-10"


def generate(
    bundle: str | os.PathLike | Bundle,
    n_cells: int = 1000,
    *,
    sampling: SamplingOptions | None = None,
    runtime: RuntimeOptions | None = None,
    output: OutputOptions | None = None,
    **options: Any,
) -> anndata.AnnData:
    """Sample synthetic cells.

    The options come as flat keywords (below) or as three groups, ``sampling=``
    :class:`~cellsynth.generation.options.SamplingOptions` (steps .. mean), ``runtime=``
    :class:`~cellsynth.generation.options.RuntimeOptions` (weights, engine, device, precision,
    threads) and ``output=`` :class:`~cellsynth.generation.options.OutputOptions` (out, resume,
    chunk_size, overwrite, shard, progress, on_progress); a flat keyword overrides its group's
    field.

    Parameters
    ----------
    bundle : path, shipped name or Bundle
        The trained model ('kang-dit' names the shipped default): a gene-space diffusion bundle
        or a latent-diffusion bundle (whose cells are decoded by its autoencoder).
    n_cells : int
        Number of cells of the whole run (all shards together).
    steps : int
        Denoising steps (a sub-sequence of the T training steps; ``steps=T`` with
        ``scheduler='ddpm'`` is ancestral DDPM sampling).
    eta : float
        DDIM stochasticity (0 deterministic, 1 DDPM-like); must stay 0 with 'ddpm' and
        'dpmsolver++'.
    seed : int
        Seeds the label draw and the noise (x_T and each step's, keyed per cell).
    conditions : dict, optional
        Label values to generate, e.g. ``{"cell_type": "B", "stim": ["CTRL", "STIM"]}``; labels left
        out are drawn from the training data's mix given the named ones.
    guidance : float
        Classifier-free guidance scale; 1 means plain conditional sampling.
    scheduler : {'ddim', 'ddpm', 'dpmsolver++'}
        The update rule: DDIM (``eta`` 0 deterministic .. 1 DDPM-like), ancestral DDPM, or
        DPM-Solver++(2M), which needs only 10-20 steps.
    timestep_spacing : {'leading', 'trailing', 'linspace', 'quadratic'}
        Which training timesteps the ``steps`` visit (diffusers' lists; 'quadratic' is the DDIM
        paper's, denser near t = 0).
    batch_size : int
        Cells denoised together; the result does not depend on it.
    weights : {'ema', 'model'}
        Which weights the torch engine uses (ONNX exports record their own).
    engine : {'auto', 'torch', 'onnxruntime', 'tensorrt'}
        The denoiser backend; 'auto' takes the fastest available and says which.
    device : str
        'auto', 'cpu', 'cuda' or 'cuda:N'.
    precision : str, optional
        Export precision for onnxruntime ('fp32', 'fp16', 'int8') or TensorRT ('fp16', 'bf16',
        'fp32'), of the denoiser (a latent bundle's decoder runs in fp32).
    threads : int, optional
        CPU threads of the engine and of the C++ loops (scheduler steps, noise, counts).
    composition : path or AnnData, optional
        Real cells whose joint label mix the synthetic cells match (instead of ``conditions``).
    split : {'training', 'even'}
        How the cells are shared among the label combinations ``conditions`` allows: in their
        training proportions (default; ``{"cell_type": ["B", "NK cells"]}`` gives B and NK cells
        as often as in the training data), or the same number for each combination.
    shard : (k, N), optional
        Generate only shard k (0-based) of N: the cells from ``k*n_cells//N`` to
        ``(k+1)*n_cells//N``, each boundary rounded down to a multiple of ``batch_size``, with
        exactly the values an unsharded run (same ``batch_size``) gives them.
    counts : bool
        Also return integer counts in ``layers['counts']``, with library sizes drawn from the
        training cells' distribution. A count model (a latent bundle on a negative-binomial
        autoencoder) always draws counts (``X`` is derived from them), unless ``mean``.
    mean : bool
        Count models only: write the decoder's expected expression as ``X`` instead of a sample
        of counts (no ``layers['counts']``).
    out : path, optional
        Stream to this .h5ad: chunks are kept on disk as they finish, the file is assembled in
        bounded memory and the result is returned opened in backed mode.
    resume : bool
        With ``out``: continue an interrupted run with the same settings.
    chunk_size : int
        Cells per chunk on disk (the unit of resuming; default 8192); rounded up to a multiple
        of ``batch_size`` (and said so, when it was asked for).
    overwrite : bool
        With ``out``: replace an existing file (without it, an existing ``out`` is an error,
        raised before any work).
    progress : bool
        A progress bar and the engine line on stderr.
    on_progress : callable, optional
        Called with the number of this run's (or shard's) cells done so far, after every
        denoising step of a batch (once per batch on a GPU engine), for a caller's own progress
        display.

    Returns
    -------
    AnnData
        ``X``: log-normalised expression, CSR float32 [n, G] (negatives truncated to zero; for a
        latent bundle, decoded values below the decoder's zero threshold set to zero);
        ``var_names``: the bundle's genes; ``obs``: one categorical column per label;
        ``layers['counts']`` (with ``counts``, and always from a count model): CSR int32; for a
        count model ``X = log1p(counts / library_size * target_sum)`` with the cell's drawn
        library size (all genes) in ``obs['library_size']``; ``uns['cellsynth']``: provenance
        (bundle hash, engine, scheduler, spacing, steps, eta, seed, shard, noise, version, ...;
        for a latent bundle also ``kind``, ``latent_scale`` and ``decoder``).
    """
    sampling, runtime, output = group_options(options, sampling, runtime, output)
    return run_generation(bundle, n_cells, sampling, runtime, output)


def run_generation(
    bundle: str | os.PathLike | Bundle,
    n_cells: int,
    sampling: SamplingOptions,
    runtime: RuntimeOptions,
    output: OutputOptions,
) -> anndata.AnnData:
    """:func:`generate` with its options grouped (what the CLI and the Ray workers call)."""
    b = _generating_bundle(bundle)
    sampling.check_for(b)
    if n_cells < 1:
        raise DataError(f"n_cells must be at least 1, got {n_cells}")
    chunk_size = _prepare_output(output, sampling.batch_size)
    lo, hi = shard_range(n_cells, output.shard, align=sampling.batch_size)
    if runtime.threads is not None:
        from cellsynth import _core

        _core.set_num_threads(runtime.threads)  # the C++ loops too: threads means the whole run
    codes = _labels(b, n_cells, sampling)  # runs over all shards' cells
    engines = open_engines(b, sampling, runtime, output, hi - lo)
    try:  # the engines are closed (or kept by engine_pool) whatever happens from here on
        return _sample(b, n_cells, codes, (lo, hi), chunk_size, engines, sampling, runtime, output)
    finally:
        engine_pool.release(engines[0], engines[1])


def _sample(
    b: Bundle,
    n_cells: int,
    codes: LabelRuns,
    cells: tuple[int, int],
    chunk_size: int,
    engines: tuple[Any, Any, str],
    sampling: SamplingOptions,
    runtime: RuntimeOptions,
    output: OutputOptions,
) -> anndata.AnnData:
    """The run with its engines open: settings, provenance and obs, then the chunks."""
    (lo, hi), (denoiser, decoder, why) = cells, engines
    count_model = decoder is not None and decoder.counts
    counts = bool(sampling.counts or count_model) and not sampling.mean
    if output.progress:
        print(
            f"cellsynth: engine {denoiser.name} on {denoiser.device}"
            + (f" (auto: {why})" if runtime.engine == "auto" else "")
            + (f", decoder {decoder.name}" if decoder is not None else ""),
            file=sys.stderr,
        )
    sampler = ChunkSampler(b, denoiser, decoder, sampling)
    settings = {
        "bundle_hash": b.hash,
        "n_cells": int(n_cells),
        "shard": [lo, hi],
        "steps": int(sampling.steps),
        "eta": float(sampling.eta),
        "seed": int(sampling.seed),
        "guidance": float(sampling.guidance),
        "scheduler": sampling.scheduler,
        "timestep_spacing": sampling.timestep_spacing,
        "weights": runtime.weights,
        "engine": denoiser.name,
        "precision": denoiser.details.get("precision"),
        "labels_sha": codes.digest(),
        "counts": bool(counts),
        "mean": bool(sampling.mean),
        "chunk_size": int(chunk_size),
    }
    if denoiser.device != "cpu":  # a GPU's cells differ in rounding (absent on the CPU, as before)
        settings["device"] = "cuda"
    provenance = _provenance(b, settings, sampling, output, (lo, hi), why, denoiser, decoder)
    provenance["output"] = _output_kind(count_model, sampling.mean, counts)
    obs = _obs(b, codes[lo:hi], lo)
    if count_model and not sampling.mean:
        library = sampler.library.draw(codes[lo:hi], sampling.seed, lo)
        obs["library_size"] = library.astype(np.float32)
    chunks = chunk_bounds(lo, hi, chunk_size)
    bar = tqdm(
        total=hi - lo,
        unit="cell",
        desc=f"sampling ({sampling.scheduler})",
        disable=not output.progress,
    )

    def reached(position: float) -> None:  # global cell position -> the bar's count
        bar.update(max(0, int(position) - lo - bar.n))
        if output.on_progress is not None:
            output.on_progress(int(position) - lo)

    if output.progress or output.on_progress is not None:
        sampler.progress = reached
    run = ChunkCollector(sampler, codes, chunks, obs, b.var, counts, provenance, reached)
    try:
        if output.out is None:
            return run.in_memory()
        return run.to_file(output, settings, len(b.genes))
    finally:
        bar.close()


def _generating_bundle(bundle: str | os.PathLike | Bundle) -> Bundle:
    b = load_bundle(bundle)
    if b.kind == "autoencoder":
        raise BundleError(
            f"{b.path} is an autoencoder bundle: it cannot generate cells by itself; train a "
            "latent diffusion model on it (cellsynth train scdg) and sample from that"
        )
    return b


def _prepare_output(output: OutputOptions, batch_size: int) -> int:
    """Check ``out`` before any work (a bad --out costs nothing); the chunk size in cells."""
    if output.out is not None:
        check_output(output.out, output.overwrite)
        remove_orphans(output.out)  # the half-assembled file of a killed earlier run
    chunk_size = output.chunk_cells(batch_size)
    asked = output.chunk_size
    if asked is not None and asked != chunk_size and output.progress and output.out is not None:
        print(
            f"cellsynth: chunk size {asked} rounded up to {chunk_size} cells (chunks hold "
            f"whole batches of {batch_size})",
            file=sys.stderr,
        )
    return chunk_size


def _provenance(
    b: Bundle,
    settings: Mapping[str, Any],
    sampling: SamplingOptions,
    output: OutputOptions,
    cells: tuple[int, int],
    why: str,
    denoiser: Any,
    decoder: Any,
) -> dict[str, Any]:
    """``uns['cellsynth']``: the run's settings and everything needed to say how it was made."""
    shard, conditions, composition = output.shard, sampling.conditions, sampling.composition
    provenance = {
        "command": "sample",
        "bundle": str(b.path),
        **settings,
        "shard": None if shard is None else [int(shard[0]), int(shard[1])],
        "cells": list(cells),
        "engine_choice": why,
        "backend": denoiser.describe(),
        "kind": b.kind,
        "latent_scale": decoder.latent_scale if decoder is not None else None,
        "decoder": decoder.describe() if decoder is not None else None,
        "noise": NOISE,
        "conditions": {
            k: ([v] if isinstance(v, str) else list(v)) for k, v in (conditions or {}).items()
        },
        "composition": None if composition is None else _describe_source(composition),
        "split": sampling.split if composition is None else None,
        "batch_size": int(sampling.batch_size),
        "normalisation": NORMALISATION.format(target_sum=b.preprocessing.target_sum),
        "cellsynth_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    del provenance["labels_sha"]
    return _without_none(provenance)  # .h5ad cannot store None


def _labels(b: Bundle, n_cells: int, sampling: SamplingOptions) -> LabelRuns:
    """Every cell's label codes, as runs: a shard makes only its own cells' codes."""
    conditions, composition, split = sampling.conditions, sampling.composition, sampling.split
    if composition is None:
        seed = sampling.seed
        return assign_label_runs(b.labels, n_cells, conditions, seed=seed, split=split)
    if split != "training":
        raise DataError("split applies to conditions; a composition sets the label mix itself")
    if conditions:
        raise DataError("give either conditions or a composition to match, not both")
    if isinstance(composition, anndata.AnnData):
        obs = composition.obs
    else:
        path = Path(composition)
        if not path.is_file():
            raise DataError(f"composition file {path} does not exist")
        obs = anndata.read_h5ad(path, backed="r").obs
    return composition_label_runs(b.labels, obs, n_cells)


def _output_kind(count_model: bool, mean: bool, counts: bool) -> str:
    """What X (and the counts layer) hold, for the provenance."""
    if count_model:
        if mean:
            return "X: the count decoder's expected expression, log1p(share * target_sum)"
        return (
            "counts: negative-binomial draws of the count decoder with a drawn library size "
            "(obs library_size); X: log1p(counts / library_size * target_sum)"
        )
    what = "X: the model's log-normalised expression"
    return what + ("; counts: read back from X with a drawn library size" if counts else "")


def _without_none(d: Mapping[str, Any]) -> dict[str, Any]:
    return {
        k: _without_none(v) if isinstance(v, Mapping) else v for k, v in d.items() if v is not None
    }


def _describe_source(composition: Any) -> str:
    if isinstance(composition, anndata.AnnData):
        return f"AnnData of {composition.n_obs} cells (passed in memory)"
    return str(composition)


def _obs(b: Bundle, codes: np.ndarray, first: int) -> pd.DataFrame:
    spec = b.labels
    return pd.DataFrame(
        {
            key: pd.Categorical.from_codes(codes[:, j], categories=spec.vocabularies[key])
            for j, key in enumerate(spec.keys)
        },
        index=pd.Index([f"synthetic-{first + i}" for i in range(len(codes))], dtype=object),
    )
