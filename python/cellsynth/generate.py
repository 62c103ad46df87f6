"""Generate synthetic cells from a bundle: the Python face of ``cellsynth sample``.

For now the denoising loop is the PyTorch reference sampler (cellsynth.training.sampler); the C++
scheduler and the torch-free engines replace it on this path without changing this signature.
"""

from __future__ import annotations

import datetime as _dt
import math
import os
import time
from collections.abc import Mapping

import anndata
import numpy as np
import pandas as pd
import scipy.sparse as sp
from tqdm.auto import tqdm

from cellsynth._version import __version__
from cellsynth.bundle import Bundle, _require_torch, load_bundle
from cellsynth.conditions import ConditionValue, assign_labels
from cellsynth.errors import DataError

SCHEDULERS = ("ddim", "ddpm")


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
    device: str = "auto",
    progress: bool = True,
) -> anndata.AnnData:
    """Sample synthetic cells.

    Parameters
    ----------
    bundle : path or Bundle
        The trained model.
    n_cells : int
        Number of cells to generate.
    steps : int
        Denoising steps (a sub-sequence of the T training steps; ``steps=T`` with
        ``scheduler='ddpm'`` is ancestral DDPM sampling).
    eta : float
        DDIM stochasticity (0 deterministic, 1 DDPM-like); must stay 0 with 'ddpm'.
    seed : int
        Seeds the label draw and the noise.
    conditions : dict, optional
        Label values to generate, e.g. ``{"cell_type": "B", "stim": ["CTRL", "STIM"]}``; labels left
        out are drawn from the training data's mix given the named ones.
    guidance : float
        Classifier-free guidance scale; 1 means plain conditional sampling.
    scheduler : {'ddim', 'ddpm'}
    timestep_spacing : {'leading', 'trailing', 'linspace'}
    batch_size : int
        Cells denoised together.
    weights : {'ema', 'model'}
    device : str
        'auto' (CUDA when available), 'cpu', 'cuda', ...

    Returns
    -------
    AnnData
        ``X``: log-normalised expression, CSR float32 [n_cells, G] (negatives truncated to zero);
        ``var_names``: the bundle's genes; ``obs``: one categorical column per label;
        ``uns['cellsynth']``: provenance (bundle hash, steps, eta, seed, version, ...).
    """
    torch = _require_torch()
    from cellsynth.training.sampler import sample

    b = load_bundle(bundle)
    _check_options(n_cells, steps, eta, guidance, scheduler, batch_size, b)
    spec = b.labels
    codes = assign_labels(spec, n_cells, conditions, seed=seed)
    dev = torch.device(
        ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
    )
    model = b.to_torch(weights=weights, device=str(dev))
    alphas_cumprod = b.schedule.alphas_cumprod

    blocks = []
    started = time.perf_counter()
    bar = tqdm(total=n_cells, unit="cell", desc="sampling", disable=not progress)
    for start in range(0, n_cells, batch_size):
        labels = torch.from_numpy(codes[start : start + batch_size]).to(dev)
        # One generator per batch, keyed by seed and first cell, so a run is reproducible.
        gen = torch.Generator(device=dev).manual_seed(_batch_seed(seed, start))
        x = sample(
            model,
            alphas_cumprod,
            labels,
            steps=steps,
            scheduler=scheduler,
            eta=eta,
            guidance_scale=guidance,
            prediction_type=b.prediction_type,
            timestep_spacing=timestep_spacing,
            generator=gen,
            truncate=True,
        )
        blocks.append(sp.csr_matrix(x.float().cpu().numpy()))
        bar.update(len(labels))
    bar.close()
    seconds = time.perf_counter() - started

    X = sp.vstack(blocks, format="csr").astype(np.float32)
    obs = pd.DataFrame(
        {
            key: pd.Categorical.from_codes(codes[:, j], categories=spec.vocabularies[key])
            for j, key in enumerate(spec.keys)
        },
        index=pd.Index([f"synthetic-{i}" for i in range(n_cells)], dtype=object),
    )
    var = pd.DataFrame(index=pd.Index(b.genes, dtype=object, name="gene"))
    provenance = {
        "bundle": str(b.path),
        "bundle_hash": b.hash,
        "n_cells": int(n_cells),
        "steps": int(steps),
        "eta": float(eta),
        "seed": int(seed),
        "guidance": float(guidance),
        "scheduler": scheduler,
        "timestep_spacing": timestep_spacing,
        "weights": weights,
        "engine": "torch",
        "device": str(dev),
        "conditions": {
            k: ([v] if isinstance(v, str) else list(v)) for k, v in (conditions or {}).items()
        },
        "seconds": round(seconds, 3),
        "cellsynth_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    return anndata.AnnData(X=X, obs=obs, var=var, uns={"cellsynth": provenance})


def _batch_seed(seed: int, first_cell: int) -> int:
    return (seed * 0x9E3779B97F4A7C15 + first_cell) % (2**63)


def _check_options(
    n_cells: int,
    steps: int,
    eta: float,
    guidance: float,
    scheduler: str,
    batch_size: int,
    b: Bundle,
) -> None:
    T = b.schedule.num_train_timesteps
    if not 1 <= steps <= T:
        raise DataError(f"steps must be between 1 and the {T} training timesteps, got {steps}")
    if scheduler not in SCHEDULERS:
        raise DataError(f"scheduler must be one of {SCHEDULERS}, got {scheduler!r}")
    if not (math.isfinite(eta) and eta >= 0):
        raise DataError(f"eta must be a finite number >= 0, got {eta}")
    if scheduler == "ddpm" and eta != 0:
        raise DataError("eta applies to the ddim scheduler only; ddpm always adds its own noise")
    if not math.isfinite(guidance):
        raise DataError(f"guidance must be finite, got {guidance}")
    if batch_size < 1:
        raise DataError(f"batch_size must be at least 1, got {batch_size}")
    if n_cells < 1:
        raise DataError(f"n_cells must be at least 1, got {n_cells}")
