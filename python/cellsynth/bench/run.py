"""``cellsynth bench``: latency, throughput and (optionally) fidelity of generation per engine,
precision, scheduler setting and batch size, on this machine, for one bundle.

It runs without PyTorch (the torch engine is then listed as skipped). Every configuration of the
grid (:mod:`cellsynth.bench.plan`) is either measured (:mod:`cellsynth.bench.timing`) or listed
with the reason it was not; with ``fidelity`` the cells of each scheduler setting and precision
are also generated with the real cells' label mix and scored against them
(:func:`cellsynth.evaluation.evaluate.evaluate`), the columns of the acceleration table. The report
(:mod:`cellsynth.bench.report`) is a terminal table, JSON, Markdown and PNGs.
"""

from __future__ import annotations

import datetime as dt
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cellsynth.bench.machine import describe_machine
from cellsynth.bench.plan import (
    DEFAULT_BATCH_SIZES,
    DEFAULT_SCHEDULERS,
    Config,
    grid,
    parse_schedulers,
    static_skip,
)
from cellsynth.bench.timing import time_config
from cellsynth.bundle.load import Bundle, load_bundle
from cellsynth.errors import CellsynthError

DEFAULT_REPEATS = 5
DEFAULT_BUDGET_S = 5.0
FIDELITY_CELLS = 2000
FIDELITY_METRICS = ("knn_auc", "mmd2_rbf_pca", "gene_mean_pearson", "gene_zero_fraction_pearson")


def bench(
    bundle: str | os.PathLike | Bundle,
    *,
    engines: Sequence[str] = ("onnxruntime", "torch", "tensorrt"),
    schedulers: Sequence[str] = DEFAULT_SCHEDULERS,
    batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES,
    precisions: Sequence[str] = ("fp32",),
    threads: int | None = None,
    repeats: int = DEFAULT_REPEATS,
    budget_s: float = DEFAULT_BUDGET_S,
    device: str = "auto",
    fidelity: Any = None,
    fidelity_cells: int = FIDELITY_CELLS,
    fidelity_metrics: Sequence[str] = FIDELITY_METRICS,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Measure generation on this machine; return the result (what bench.json holds).

    Parameters
    ----------
    bundle : bundle name or path
    engines, precisions : engine and precision names (every combination is tried)
    schedulers : scheduler specs ``NAME:STEPS[,STEPS...]``
    batch_sizes : cells per batch
    threads : CPU threads of the engine and the C++ loops (default: all cores)
    repeats : timed runs per configuration (p50 / p95 / p99 over them)
    budget_s : seconds per configuration; longer ones are timed over their first steps and
        extrapolated (said in the row)
    device : 'auto' (a GPU for tensorrt and, where present, the others), 'cpu' or 'cuda[:N]'
    fidelity : real cells (AnnData, .h5ad path or data set name) to score each scheduler setting
        against; None: speed only
    fidelity_cells : synthetic cells per scored setting (at most as many as there are real ones)
    fidelity_metrics : the metrics of :func:`cellsynth.metrics.compute_metrics` to keep
    seed : seeds labels and noise
    """
    if repeats < 1:
        raise CellsynthError(f"repeats must be >= 1, got {repeats}")
    if budget_s <= 0:
        raise CellsynthError(f"budget_s must be > 0, got {budget_s}")
    if fidelity_cells < 1:
        raise CellsynthError(f"fidelity_cells must be >= 1, got {fidelity_cells}")
    b = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
    if b.kind == "autoencoder":
        raise CellsynthError(f"{b.path} is an autoencoder bundle: it has no denoiser to time")
    settings = parse_schedulers(schedulers, b.schedule.num_train_timesteps)
    configs = grid(engines, precisions, settings, batch_sizes)
    if threads is not None:
        from cellsynth import _core

        _core.set_num_threads(int(threads))
    started = time.perf_counter()
    rows = []
    for i, config in enumerate(configs, 1):
        row = {**_fields(config), "rate": b.schedule.num_train_timesteps / config.steps}
        reason = static_skip(config)
        if reason is None:
            try:
                row.update(
                    time_config(
                        b, config, _opener(b, config, device, threads), repeats, budget_s, seed
                    )
                )
            except CellsynthError as exc:  # cannot apply here: the reason says why
                reason = str(exc).splitlines()[0]
            except Exception as exc:  # a bug or a broken library: one row, not the whole run
                row["failed"] = f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
        if reason is not None:
            row["skipped"] = reason
        rows.append(row)
        if progress:
            print(f"cellsynth bench [{i}/{len(configs)}] {_progress_line(config, row)}",
                  file=sys.stderr, flush=True)  # fmt: skip
    result = {
        "command": "bench",
        "date": dt.date.today().isoformat(),
        "bundle": str(b.path),
        "bundle_name": b.name,
        "bundle_hash": b.hash,
        "machine": describe_machine(),
        "threads": threads,
        "repeats": repeats,
        "budget_s": budget_s,
        "seed": seed,
        "rows": rows,
        "seconds": None,
    }
    if fidelity is not None:
        scoring = {"cells": fidelity_cells, "metrics": tuple(fidelity_metrics)}
        result["fidelity"] = _fidelity(b, rows, fidelity, scoring, device, threads, seed, progress)
    result["seconds"] = round(time.perf_counter() - started, 1)
    return result


def _fields(config: Config) -> dict[str, Any]:
    return {
        "engine": config.engine,
        "precision": config.precision,
        "scheduler": config.scheduler,
        "steps": config.steps,
        "batch_size": config.batch_size,
    }


def _opener(b: Bundle, config: Config, device: str, threads: int | None):
    """Opens (denoiser, decoder) for ``config``: the same loaders generation uses."""
    from cellsynth.backends import load_engine

    eager = config.engine == "torch-eager"
    engine = "torch" if eager else config.engine
    precision = None if engine == "torch" else config.precision

    def open_engine():
        denoiser, decoder, _ = load_engine(b, engine, device, precision=precision, threads=threads)
        if eager:
            denoiser.set_cuda_graphs(False)
        return denoiser, decoder

    return open_engine


def _progress_line(config: Config, row: dict[str, Any]) -> str:
    if "skipped" in row:
        return f"{config.label}: skipped ({row['skipped']})"
    if "failed" in row:
        return f"{config.label}: FAILED ({row['failed']})"
    how = f" (extrapolated from {row['timed_steps']} steps)" if row["extrapolated"] else ""
    return (
        f"{config.label}: p50 {1e3 * row['latency_p50_s']:.1f} ms, "
        f"{row['cells_per_s']:.4g} cells/s{how}"
    )


def _fidelity(
    b: Bundle,
    rows: list[dict[str, Any]],
    real: Any,
    scoring: dict[str, Any],
    device: str,
    threads: int | None,
    seed: int,
    progress: bool,
) -> list[dict[str, Any]]:
    """Score each measured (scheduler, steps, precision) once, on the first engine that ran it:
    the cells do not depend on the engine or batch size beyond float rounding."""
    import anndata as ad
    import numpy as np

    import cellsynth
    from cellsynth.evaluation.evaluate import evaluate

    real_ad = real if isinstance(real, ad.AnnData) else cellsynth.datasets.load(real)
    real_name = "an AnnData object" if isinstance(real, ad.AnnData) else str(real)
    keys = [k for k in b.labels.keys if k in real_ad.obs]
    n = min(real_ad.n_obs, scoring["cells"])
    # The label mix of (a random n of) the real cells, so both sides have the same classes.
    pick = np.sort(np.random.default_rng(seed).choice(real_ad.n_obs, n, replace=False))
    composition = ad.AnnData(obs=real_ad.obs[keys].iloc[pick].copy()) if keys else None
    done: dict[tuple[str, int, str], dict[str, Any]] = {}
    for row in rows:
        key = (row["scheduler"], row["steps"], row["precision"])
        if "skipped" in row or "failed" in row or key in done:
            continue
        synthetic = cellsynth.generate(
            b,
            n_cells=n,
            steps=row["steps"],
            scheduler=row["scheduler"],
            seed=seed,
            engine="torch" if row["engine"] == "torch-eager" else row["engine"],
            precision=None if row["engine"].startswith("torch") else row["precision"],
            device=device,
            threads=threads,
            composition=composition,
            progress=False,
        )
        # The synthetic cells already follow the real cells' label mix; matching would only
        # shrink the scored set and break comparison with earlier bench runs.
        report = evaluate(
            real_ad, synthetic, label_key=keys[0] if keys else None, seed=seed, progress=False,
            match_labels=False,
        )  # fmt: skip
        metrics = {
            name: {k: report["metrics"][name].get(k) for k in ("value", "floor")}
            for name in scoring["metrics"]
            if name in report["metrics"]
        }
        done[key] = {
            "scheduler": row["scheduler"],
            "steps": row["steps"],
            "precision": row["precision"],
            "engine": row["engine"],
            "cells": n,
            "real": real_name,
            "metrics": metrics,
        }
        if progress:
            auc = metrics.get("knn_auc", {}).get("value")
            said = f": kNN AUC {auc:.3f}" if auc is not None else " scored"
            print(f"cellsynth bench: fidelity {key[0]} {key[1]} {key[2]}{said}",
                  file=sys.stderr, flush=True)  # fmt: skip
    return list(done.values())


def write_outputs(result: dict[str, Any], out: str | os.PathLike) -> dict[str, Path]:
    """bench.json, bench.md and the PNGs in ``out`` (see :mod:`cellsynth.bench.report`)."""
    from cellsynth.bench.report import write_report

    return write_report(result, Path(out))
