"""Generate synthetic cells from a bundle: the Python face of ``cellsynth sample``.

The denoiser is the bundle's PyTorch model; the update rule, the noise and the final zero-negation
truncation are the C++ scheduler (:mod:`cellsynth.scheduler`). Classifier-free guidance stays here:
the model sees ``[x; x]`` with the cells' labels and the null labels, and the scheduler steps on
``uncond + g * (cond - uncond)``.

Randomness is keyed, never sequential: x_T and every step's noise are Philox4x32-10 normals keyed
by (seed, global cell index, step, gene), and each batch passes the global index of its first cell
as ``cell_offset``. So a cell's values do not depend on ``batch_size`` (nor on how a run is split
into chunks or shards).
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

from cellsynth import _core
from cellsynth._version import __version__
from cellsynth.bundle import Bundle, _require_torch, load_bundle
from cellsynth.conditions import ConditionValue, assign_labels
from cellsynth.errors import DataError

SCHEDULERS = ("ddim", "ddpm", "dpmsolver++")
TIMESTEP_SPACINGS = ("leading", "trailing", "linspace", "quadratic")
NOISE = "philox4x32-10"


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
    device : str
        Where the model runs: 'auto' (CUDA when available), 'cpu', 'cuda', ...

    Returns
    -------
    AnnData
        ``X``: log-normalised expression, CSR float32 [n_cells, G] (negatives truncated to zero);
        ``var_names``: the bundle's genes; ``obs``: one categorical column per label;
        ``uns['cellsynth']``: provenance (bundle hash, scheduler, spacing, steps, eta, seed, noise
        generator, version, ...).
    """
    torch = _require_torch()

    b = load_bundle(bundle)
    _check_options(n_cells, steps, eta, guidance, scheduler, timestep_spacing, batch_size, b)
    spec = b.labels
    codes = assign_labels(spec, n_cells, conditions, seed=seed)
    dev = torch.device(
        ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
    )
    model = b.to_torch(weights=weights, device=str(dev))  # already in eval mode
    model_dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), None)
    sched = _make_scheduler(b, scheduler, timestep_spacing, seed)
    step_kw = {"eta": float(eta)} if scheduler == "ddim" else {}
    n_genes = len(b.genes)
    guided = guidance != 1.0

    blocks = []
    started = time.perf_counter()
    bar = tqdm(total=n_cells, unit="cell", desc=f"sampling ({scheduler})", disable=not progress)
    # The scheduler steps CUDA tensors in place on the GPU when the core has CUDA; otherwise the
    # state lives on the CPU (NumPy memory shared with torch, no copies there).
    step_dev = dev if dev.type == "cuda" and _core.cuda_compiled else torch.device("cpu")
    with torch.no_grad():
        for start in range(0, n_cells, batch_size):
            labels = torch.from_numpy(codes[start : start + batch_size]).to(dev)  # [B, K]
            B = len(labels)
            if guided:
                labels = torch.cat([labels, model.null_labels(B, device=dev)])  # [2B, K]
            sched.set_timesteps(steps)  # also clears a multistep solver's history
            x_T = sched.init_noise(B, n_genes, cell_offset=start)  # [B, G] float32
            x = torch.from_numpy(x_T).to(step_dev)  # [B, G]
            for t in sched.timesteps.tolist():
                xin = x.to(dev, model_dtype)  # [B, G]
                if guided:
                    xin = torch.cat([xin, xin])  # [2B, G]
                tb = torch.full((len(xin),), t, dtype=torch.long, device=dev)  # [B] or [2B]
                out = model(xin, tb, labels).float()  # [B, G] or [2B, G]
                if guided:
                    cond, uncond = out.chunk(2)  # each [B, G]
                    out = uncond + guidance * (cond - uncond)  # [B, G]
                out = out.to(step_dev).contiguous()  # [B, G] float32
                if out.data_ptr() == x.data_ptr():  # a model that hands back its input
                    out = out.clone()
                # In place; negatives are truncated on the last step (truncate_final).
                sched.step(out, t, x, cell_offset=start, out=x, **step_kw)  # [B, G]
            blocks.append(sp.csr_matrix(x.cpu().numpy()))
            bar.update(B)
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
        "noise": NOISE,
        "conditions": {
            k: ([v] if isinstance(v, str) else list(v)) for k, v in (conditions or {}).items()
        },
        "seconds": round(seconds, 3),
        "cellsynth_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    return anndata.AnnData(X=X, obs=obs, var=var, uns={"cellsynth": provenance})


def _make_scheduler(b: Bundle, scheduler: str, timestep_spacing: str, seed: int):
    """The bundle's scheduler: its training schedule and prediction type, negatives truncated on
    the last step, noise keyed by ``seed``."""
    from cellsynth.scheduler import scheduler_for_bundle

    return scheduler_for_bundle(
        b,
        scheduler,
        timestep_spacing=timestep_spacing,
        truncate_final=True,
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
    if scheduler not in SCHEDULERS:
        raise DataError(f"scheduler must be one of {SCHEDULERS}, got {scheduler!r}")
    if not (math.isfinite(eta) and eta >= 0):
        raise DataError(f"eta must be a finite number >= 0, got {eta}")
    if timestep_spacing not in TIMESTEP_SPACINGS:
        raise DataError(
            f"timestep_spacing must be one of {TIMESTEP_SPACINGS}, got {timestep_spacing!r}"
        )
    if scheduler != "ddim" and eta != 0:
        raise DataError(
            f"eta applies to the ddim scheduler only; {scheduler} has no eta "
            "(ddpm always adds its own noise, dpmsolver++ adds none)"
        )
    if not math.isfinite(guidance):
        raise DataError(f"guidance must be finite, got {guidance}")
    if batch_size < 1:
        raise DataError(f"batch_size must be at least 1, got {batch_size}")
    if n_cells < 1:
        raise DataError(f"n_cells must be at least 1, got {n_cells}")
