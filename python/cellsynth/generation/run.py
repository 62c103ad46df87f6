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
import functools
import math
import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import anndata
import numpy as np
import pandas as pd
import scipy.sparse as sp
from tqdm.auto import tqdm

from cellsynth._version import __version__
from cellsynth.backends import choose_engine, load_engine
from cellsynth.bundle.load import Bundle, load_bundle
from cellsynth.bundle.scale import NORMALISATION
from cellsynth.errors import BundleError, DataError
from cellsynth.files import atomic_path, check_output, remove_orphans
from cellsynth.generation.chunks import ChunkStore
from cellsynth.generation.conditions import (
    ConditionValue,
    LabelRuns,
    assign_label_runs,
    composition_label_runs,
)
from cellsynth.generation.counts import (
    LibraryModel,
    counts_and_expression,
    draw_library_sizes,
    expression_to_counts,
)
from cellsynth.generation.h5ad_stream import StreamingH5ADWriter
from cellsynth.scheduler import SCHEDULER_NAMES, TIMESTEP_SPACINGS

NOISE = "philox4x32-10"
DEFAULT_CHUNK_CELLS = 8192
# log1p-normalised expression beyond this is garbage, not a cell (a real cell's values stay below
# log1p(target_sum), about 9; e^1000 overflows every float): it is refused, never written.
MAX_LOG_EXPRESSION = 1000.0
# Classifier-free guidance beyond this only amplifies the model's errors (values explode).
MAX_GUIDANCE = 50.0


def generate(
    bundle: str | os.PathLike | Bundle,
    n_cells: int = 1000,
    steps: int = 50,
    eta: float = 0.0,
    seed: int = 0,
    conditions: Mapping[str, ConditionValue] | None = None,
    guidance: float = 1.0,
    scheduler: str = "ddim",
    timestep_spacing: str = "leading",
    batch_size: int = 512,
    weights: str = "ema",
    engine: str = "auto",
    device: str = "auto",
    precision: str | None = None,
    threads: int | None = None,
    composition: str | os.PathLike | anndata.AnnData | None = None,
    split: str = "training",
    shard: tuple[int, int] | None = None,
    counts: bool = False,
    mean: bool = False,
    out: str | os.PathLike | None = None,
    resume: bool = False,
    chunk_size: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> anndata.AnnData:
    """Sample synthetic cells.

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
    b = load_bundle(bundle)
    if b.kind == "autoencoder":
        raise BundleError(
            f"{b.path} is an autoencoder bundle: it cannot generate cells by itself; train a "
            "latent diffusion model on it (cellsynth train scdg) and sample from that"
        )
    _check_options(n_cells, steps, eta, guidance, scheduler, timestep_spacing, batch_size, b)
    asked = chunk_size is not None
    chunk_size = DEFAULT_CHUNK_CELLS if chunk_size is None else chunk_size
    if chunk_size < 1:
        raise DataError(f"chunk_size must be at least 1, got {chunk_size}")
    if resume and out is None:
        raise DataError("resume needs an output file (out=... / --out) to resume into")
    if out is not None and not str(out).endswith(".h5ad"):
        raise DataError(f"the output must be an .h5ad file, got {out}")
    if out is not None:
        check_output(out, overwrite)  # before any work: a bad --out costs nothing
        remove_orphans(out)  # the half-assembled file of a killed earlier run
    if chunk_size % batch_size:
        rounded = -(-chunk_size // batch_size) * batch_size
        if progress and asked and out is not None:
            print(
                f"cellsynth: chunk size {chunk_size} rounded up to {rounded} cells (chunks hold "
                f"whole batches of {batch_size})",
                file=sys.stderr,
            )
        chunk_size = rounded  # whole batches on the global grid
    lo, hi = shard_range(n_cells, shard, align=batch_size)
    if threads is not None and not (isinstance(threads, int) and threads >= 1):
        raise DataError(f"threads must be a whole number >= 1, got {threads!r}")
    if not (isinstance(seed, int | np.integer) and 0 <= seed < 2**64):
        raise DataError(f"seed must be a whole number between 0 and 2^64 - 1, got {seed!r}")
    if threads is not None:
        from cellsynth import _core

        _core.set_num_threads(int(threads))  # the C++ loops too: threads means the whole run
    codes = _labels(b, n_cells, conditions, composition, seed, split)  # runs over all shards' cells
    chosen = engine
    resumed_engine = _resumed_engine(out) if engine == "auto" and resume else None
    if resumed_engine is not None and choose_engine(b, device)[1] == "cpu":
        # On the CPU the run being resumed measured its engine already; a new measurement could
        # choose the other one, and every kept chunk (made by that engine) would be computed
        # again. (On a GPU auto follows a fixed order, which chooses the same engine again.)
        chosen, device = resumed_engine, "cpu"
    else:
        resumed_engine = None
    # Latent diffusion ends with the autoencoder's decoder, on the denoiser's kind of engine.
    denoiser, decoder, why = load_engine(
        b,
        engine=chosen,
        device=device,
        weights=weights,
        precision=precision,
        threads=threads,
        run={"batch_size": int(batch_size), "steps": int(steps), "n_cells": int(hi - lo)},
    )
    if resumed_engine is not None:
        why = f"{resumed_engine}, the engine of the run being resumed"
    count_model = decoder is not None and decoder.counts
    if mean and not count_model:
        denoiser.close()
        if decoder is not None:
            decoder.close()
        raise DataError(
            "mean applies to count models (a latent bundle on a negative-binomial autoencoder); "
            f"{b.name} writes expression directly"
        )
    if mean and counts:
        denoiser.close()
        decoder.close()
        raise DataError(
            "mean writes the expected expression, which has no counts: ask for one of mean "
            "and counts"
        )
    counts = bool(counts or count_model) and not mean
    if progress:
        print(
            f"cellsynth: engine {denoiser.name} on {denoiser.device}"
            + (f" (auto: {why})" if engine == "auto" else "")
            + (f", decoder {decoder.name}" if decoder is not None else ""),
            file=sys.stderr,
        )
    run = _Run(
        b, denoiser, decoder, scheduler, timestep_spacing, steps, eta, seed, guidance, batch_size,
        mean,
    )  # fmt: skip
    settings = {
        "bundle_hash": b.hash,
        "n_cells": int(n_cells),
        "shard": [lo, hi],
        "steps": int(steps),
        "eta": float(eta),
        "seed": int(seed),
        "guidance": float(guidance),
        "scheduler": scheduler,
        "timestep_spacing": timestep_spacing,
        "weights": weights,
        "engine": denoiser.name,
        "precision": denoiser.details.get("precision"),
        "labels_sha": codes.digest(),
        "counts": bool(counts),
        "mean": bool(mean),
        "chunk_size": int(chunk_size),
    }
    provenance = {
        "command": "sample",
        "bundle": str(b.path),
        **settings,
        "shard": None if shard is None else [int(shard[0]), int(shard[1])],
        "cells": [lo, hi],
        "engine_choice": why,
        "backend": denoiser.describe(),
        "kind": b.kind,
        "latent_scale": decoder.latent_scale if decoder is not None else None,
        "decoder": decoder.describe() if decoder is not None else None,
        "output": _output_kind(count_model, mean, counts),
        "noise": NOISE,
        "conditions": {
            k: ([v] if isinstance(v, str) else list(v)) for k, v in (conditions or {}).items()
        },
        "composition": None if composition is None else _describe_source(composition),
        "split": split if composition is None else None,
        "batch_size": int(batch_size),
        "normalisation": NORMALISATION.format(target_sum=b.preprocessing.target_sum),
        "cellsynth_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    del provenance["labels_sha"]
    provenance = _without_none(provenance)  # .h5ad cannot store None
    obs = _obs(b, codes[lo:hi], lo)
    if count_model and not mean:
        obs["library_size"] = run.library.draw(codes[lo:hi], seed, lo).astype(np.float32)
    var = b.var
    chunks = chunk_bounds(lo, hi, chunk_size)
    bar = tqdm(total=hi - lo, unit="cell", desc=f"sampling ({scheduler})", disable=not progress)

    def reached(position: float) -> None:  # global cell position -> the bar's count
        bar.update(max(0, int(position) - lo - bar.n))

    if progress:
        run.progress = reached
    started = time.perf_counter()
    try:
        if out is None:
            blocks = []
            for start, stop in chunks:
                blocks.append(run.chunk(codes, start, stop, counts))
                reached(stop)
            provenance["seconds"] = round(time.perf_counter() - started, 3)
            X = sp.vstack([c["X"] for c in blocks], format="csr").astype(np.float32)
            layers = (
                {"counts": sp.vstack([c["counts"] for c in blocks], format="csr")}
                if counts
                else None
            )
            return anndata.AnnData(
                X=X,
                obs=obs,
                var=var,
                layers=layers,
                uns={"cellsynth": provenance},
            )
        store = ChunkStore(out, settings, resume=resume)
        shapes = {"X": len(b.genes), **({"counts": len(b.genes)} if counts else {})}
        reused = 0
        for start, stop in chunks:
            if store.has(start, stop, shapes):
                reused += 1
            else:
                store.save(start, stop, run.chunk(codes, start, stop, counts))
            reached(stop)
        provenance["seconds"] = round(time.perf_counter() - started, 3)
        # A resumed run says so: its seconds cover only the chunks made this time.
        provenance["resumed_chunks"] = [int(reused), len(chunks)]
        _assemble(out, store, chunks, obs, var, counts, provenance)
        store.remove()
        return anndata.read_h5ad(out, backed="r")
    finally:
        bar.close()
        denoiser.close()
        if decoder is not None:
            decoder.close()


def _resumed_engine(out: str | os.PathLike | None) -> str | None:
    """The engine an interrupted run into ``out`` used (None without one)."""
    from cellsynth.backends import ENGINES
    from cellsynth.generation.chunks import started_settings

    settings = started_settings(out) if out is not None else None
    engine = (settings or {}).get("engine")
    return engine if engine in ENGINES else None


def shard_range(n_cells: int, shard: tuple[int, int] | None, align: int = 1) -> tuple[int, int]:
    """Global cell indices [lo, hi) of shard ``(k, N)`` (0-based k); all cells when None.

    Boundaries ``k * n_cells // N`` are rounded down to multiples of ``align`` (the batch size),
    so a shard's batches are the unsharded run's batches.
    """
    if shard is None:
        return 0, n_cells
    try:
        k, n = (int(v) for v in shard)
    except (TypeError, ValueError) as exc:
        raise DataError(f"shard must be (k, N) with 0 <= k < N, got {shard!r}") from exc
    if not 0 <= k < n:
        raise DataError(f"shard must be (k, N) with 0 <= k < N, got {shard!r}")

    def boundary(i: int) -> int:
        return n_cells if i == n else (i * n_cells // n) // align * align

    lo, hi = boundary(k), boundary(k + 1)
    if lo == hi:
        raise DataError(
            f"shard {k}/{n} is empty: {n_cells} cells in batches of {align} do not fill {n} "
            "shards; use fewer shards or a smaller batch size"
        )
    return lo, hi


def chunk_bounds(lo: int, hi: int, chunk_size: int) -> list[tuple[int, int]]:
    """Chunks [start, stop) covering [lo, hi), cut at global multiples of ``chunk_size``."""
    cuts = [lo, *range((lo // chunk_size + 1) * chunk_size, hi, chunk_size), hi]
    return list(zip(cuts[:-1], cuts[1:], strict=True))


def parse_shard(text: str) -> tuple[int, int]:
    """Parse the CLI's ``k/N``."""
    k, sep, n = text.partition("/")
    if not sep or not k.strip().isdigit() or not n.strip().isdigit():
        raise DataError(f"--shard expects k/N with 0 <= k < N (e.g. 0/4), got {text!r}")
    if not int(k) < int(n):
        raise DataError(f"--shard expects k/N with 0 <= k < N (e.g. 0/4), got {text!r}")
    return int(k), int(n)


class _Run:
    """Everything a chunk of cells needs: bundle, denoiser (and decoder, for latent diffusion),
    scheduler and sampling options."""

    def __init__(
        self,
        b: Bundle,
        denoiser: Any,
        decoder: Any,
        scheduler: str,
        timestep_spacing: str,
        steps: int,
        eta: float,
        seed: int,
        guidance: float,
        batch_size: int,
        mean: bool = False,
    ) -> None:
        self.b, self.denoiser, self.decoder = b, denoiser, decoder
        self.count_model = decoder is not None and decoder.counts
        self.mean = mean
        self.library = (
            LibraryModel.from_dict(b.config["latent"]["library"]) if self.count_model else None
        )
        self.steps, self.seed = steps, seed
        self.guidance, self.batch_size = guidance, batch_size
        self.sched = _make_scheduler(b, scheduler, timestep_spacing, seed)
        self.step_options = {"eta": float(eta)} if scheduler == "ddim" else {}
        self.null = np.asarray(b.labels.sizes, dtype=np.int64)  # the null class of each key
        self.width = b.width  # G, or the latent width D
        # Told the global position reached (cells, fractional within a batch) after every
        # denoising step, so a progress bar moves even when one batch takes minutes.
        self.progress: Callable[[float], None] | None = None

    def denoised(
        self, codes: LabelRuns, start: int, stop: int
    ) -> Iterator[tuple[int, int, np.ndarray]]:
        """(first cell, end, final model-space values [B, G] or latent codes [B, D]) per batch."""
        for s in range(start, stop, self.batch_size):
            e = min(s + self.batch_size, stop)
            labels = codes[s:e]  # [B, K]
            self.sched.set_timesteps(self.steps)  # also clears a multistep solver's history
            x_T = self.sched.init_noise(e - s, self.width, cell_offset=s)  # [B, G] or [B, D]
            null = np.broadcast_to(self.null, labels.shape).copy()  # [B, K]
            on_step = None
            if self.progress is not None:
                on_step = functools.partial(
                    _step_done, self.progress, s, e, len(self.sched.timesteps)
                )
            # on_step only when set: a Denoiser written before it existed still works
            extra = {} if on_step is None else {"on_step": on_step}
            x0 = self.denoiser.denoise(
                self.sched, x_T, labels, null, self.guidance, s, self.step_options, **extra
            )  # [B, G] (or [B, D]) float32
            if not np.isfinite(x0).all():
                raise DataError(
                    f"cells {s}..{e - 1} came out non-finite (guidance {self.guidance}): the "
                    "model or the sampling options are broken; nothing was written for them"
                )
            yield s, e, x0

    def batches(self, codes: LabelRuns, start: int, stop: int) -> Iterator[np.ndarray]:
        """Cells [B, G] float32 (log-normalised expression) of each batch."""
        for s, e, x0 in self.denoised(codes, start, stop):
            x = x0 if self.decoder is None else self.decoder(x0)  # [B, G] float32
            top = float(np.abs(x).max(initial=0.0))
            if not top <= MAX_LOG_EXPRESSION:
                raise DataError(
                    f"cells {s}..{e - 1} hold log-normalised values up to {top:.3g} (a real "
                    f"cell's stay below about 9; guidance {self.guidance}): the model or the "
                    "sampling options are broken; nothing was written for them"
                )
            yield x

    def chunk(self, codes: LabelRuns, start: int, stop: int, counts: bool) -> dict[str, Any]:
        """Cells ``start .. stop - 1``: {'X': CSR float32 [n, G]} (+ 'counts': CSR int32)."""
        if self.count_model and not self.mean:
            return self._count_chunk(codes, start, stop)
        X = sp.vstack(
            [sp.csr_matrix(x) for x in self.batches(codes, start, stop)], format="csr"
        ).astype(np.float32)
        out = {"X": X}
        if counts:
            record = self.b.preprocessing
            sizes = draw_library_sizes(record.library_size, stop - start, self.seed, start)
            out["counts"] = expression_to_counts(X, sizes, record.target_sum)
        return out

    def _count_chunk(self, codes: LabelRuns, start: int, stop: int) -> dict[str, Any]:
        """A count model's cells: library sizes and NB counts drawn per cell (keyed); X of them."""
        xs, cs = [], []
        for s, e, latents in self.denoised(codes, start, stop):
            rho, zero_prob = self.decoder.count_parameters(self.decoder.unscale(latents))
            library = self.library.draw(codes[s:e], self.seed, s)  # [B]
            c, x = counts_and_expression(
                rho, self.decoder.theta, zero_prob, library, self.decoder.target_sum, self.seed, s
            )
            cs.append(c)
            xs.append(x)
        return {
            "X": sp.vstack(xs, format="csr").astype(np.float32),
            "counts": sp.vstack(cs, format="csr").astype(np.int32),
        }


def _step_done(report: Callable[[float], None], s: int, e: int, steps: int, done: int) -> None:
    """Progress of cells s..e-1 after ``done`` of ``steps`` steps."""
    report(s + (e - s) * done / steps)


def _labels(
    b: Bundle,
    n_cells: int,
    conditions: Mapping[str, ConditionValue] | None,
    composition: Any,
    seed: int,
    split: str = "training",
) -> LabelRuns:
    """Every cell's label codes, as runs: a shard makes only its own cells' codes."""
    if composition is None:
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


def _assemble(
    out: str | os.PathLike,
    store: ChunkStore,
    chunks: list[tuple[int, int]],
    obs: pd.DataFrame,
    var: pd.DataFrame,
    counts: bool,
    provenance: Mapping[str, Any],
) -> None:
    """Stream the stored chunks, in order, into ``out`` (temporary name, then renamed)."""
    with atomic_path(out) as tmp:
        writer = StreamingH5ADWriter(tmp, var, layers={"counts": np.int32} if counts else None)
        try:
            for start, stop in chunks:
                chunk = store.load(start)
                if chunk["X"].shape[0] != stop - start:
                    raise DataError(f"chunk at cell {start} in {store.path} is incomplete")
                writer.append(chunk["X"], {"counts": chunk["counts"]} if counts else None)
            writer.finish(obs, {"cellsynth": dict(provenance)})
        except BaseException:
            writer.abort()
            raise


def _make_scheduler(b: Bundle, scheduler: str, timestep_spacing: str, seed: int):
    """The bundle's scheduler: its training schedule and prediction type, negatives truncated on
    the last step (not for latent codes, which are not zero-negated), noise keyed by ``seed``."""
    from cellsynth.scheduler import scheduler_for_bundle

    return scheduler_for_bundle(
        b,
        scheduler,
        timestep_spacing=timestep_spacing,
        truncate_final=b.kind != "latent_diffusion",
        seed=seed,
    )


def _check_options(
    n_cells: int,
    steps: int,
    eta: float,
    guidance: float,
    scheduler: str,
    timestep_spacing: str,
    batch_size: int,
    b: Bundle,
) -> None:
    T = b.schedule.num_train_timesteps
    if not 1 <= steps <= T:
        raise DataError(f"steps must be between 1 and the {T} training timesteps, got {steps}")
    if scheduler not in SCHEDULER_NAMES:
        raise DataError(f"scheduler must be one of {SCHEDULER_NAMES}, got {scheduler!r}")
    if not (math.isfinite(eta) and 0 <= eta <= 1):
        raise DataError(f"eta must be between 0 (deterministic) and 1 (DDPM-like), got {eta}")
    if timestep_spacing not in TIMESTEP_SPACINGS:
        raise DataError(
            f"timestep_spacing must be one of {TIMESTEP_SPACINGS}, got {timestep_spacing!r}"
        )
    if scheduler != "ddim" and eta != 0:
        raise DataError(
            f"eta applies to the ddim scheduler only; {scheduler} has no eta "
            "(ddpm always adds its own noise, dpmsolver++ adds none)"
        )
    if not (math.isfinite(guidance) and 0 <= guidance <= MAX_GUIDANCE):
        raise DataError(
            f"guidance must be between 0 (unconditional) and {MAX_GUIDANCE:g}; 1 is off, "
            f"2-5 is usual; got {guidance}"
        )
    if batch_size < 1:
        raise DataError(f"batch_size must be at least 1, got {batch_size}")
    if n_cells < 1:
        raise DataError(f"n_cells must be at least 1, got {n_cells}")
