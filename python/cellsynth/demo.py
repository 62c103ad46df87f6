"""``cellsynth demo``: the main job on the default data, with nothing but the install.

Generates the same number of cells for every label combination the default bundle knows (every
Kang cell type in both conditions) with the engine chosen automatically, and compares them with the
real held-out cells the bundle never saw:

    OUT/demo.h5ad       the synthetic cells (log-normalised X, labels in obs, provenance in uns)
    OUT/demo.png        PCA of real held-out cells with the synthetic cells projected on it,
                        coloured by cell type, and both together coloured by source
    OUT/fidelity.json   the short fidelity summary (cellsynth.metrics.quick_summary)
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import anndata
import numpy as np
import pandas as pd

from cellsynth import datasets
from cellsynth.bundle import load_bundle
from cellsynth.files import atomic_path
from cellsynth.generate import generate
from cellsynth.heldout import held_out_cells
from cellsynth.metrics import fit_pca, quick_summary


def run_demo(
    out: str | os.PathLike = "cellsynth-demo",
    bundle: str = "kang-dit",
    cells_per_group: int = 250,
    scheduler: str = "dpmsolver++",
    steps: int = 20,
    seed: int = 0,
    engine: str = "auto",
    progress: bool = True,
) -> dict[str, Any]:
    """Run the demo and return {'h5ad', 'png', 'fidelity', 'summary', 'seconds'}."""
    b = load_bundle(bundle)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    spec = b.labels
    groups = pd.DataFrame(
        [
            {k: spec.vocabularies[k][c] for k, c in zip(spec.keys, codes, strict=True)}
            for codes, _ in spec.combinations
        ]
    )
    composition = groups.loc[groups.index.repeat(cells_per_group)].reset_index(drop=True)
    composition.index = composition.index.astype(str)

    # The real cells first: a missing data package should fail before minutes of sampling.
    data_name = b.config.get("training", {}).get("data", "kang")
    real_x, real_obs = held_out_cells(b, datasets.load(data_name))

    started = time.perf_counter()
    synthetic = generate(
        b,
        n_cells=len(composition),
        steps=steps,
        scheduler=scheduler,
        seed=seed,
        composition=anndata.AnnData(obs=composition),
        engine=engine,
        out=out / "demo.h5ad",
        progress=progress,
    )
    seconds = time.perf_counter() - started
    syn_x = synthetic.X[:].toarray()
    syn_obs = synthetic.obs.copy()
    synthetic.file.close()

    summary = quick_summary(
        real_x,
        syn_x,
        {k: real_obs[k].to_numpy() for k in spec.keys},
        {k: syn_obs[k].to_numpy() for k in spec.keys},
    )
    summary.update(
        {
            "engine": synthetic.uns["cellsynth"]["backend"]["engine"],
            "scheduler": scheduler,
            "steps": steps,
            "sampling_seconds": round(seconds, 2),
            "cells_per_second": round(len(composition) / seconds, 1),
        }
    )
    with atomic_path(out / "fidelity.json") as tmp:
        tmp.write_text(json.dumps(summary, indent=1) + "\n")
    png = plot_overlay(real_x, real_obs, syn_x, syn_obs, spec.keys[0], out / "demo.png")
    return {
        "h5ad": out / "demo.h5ad",
        "png": png,
        "fidelity": out / "fidelity.json",
        "summary": summary,
        "seconds": seconds,
    }


def plot_overlay(
    real_x: np.ndarray,
    real_obs: pd.DataFrame,
    syn_x: np.ndarray,
    syn_obs: pd.DataFrame,
    key: str,
    path: Path,
) -> Path:
    """Three PCA panels (PCs of the real cells): real by ``key``, synthetic by ``key``, both by
    source; written to ``path`` (PNG) through a temporary name."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mean, comps = fit_pca(real_x, 2)
    pr, ps = (real_x - mean) @ comps.T, (syn_x - mean) @ comps.T  # [n, 2], [m, 2]
    classes = sorted(set(real_obs[key].astype(str)) | set(syn_obs[key].astype(str)))
    colours = {c: plt.cm.tab10(i % 10) for i, c in enumerate(classes)}
    fig, axes = plt.subplots(1, 3, figsize=(16, 5), sharex=True, sharey=True)
    for ax, pts, obs, title in [
        (axes[0], pr, real_obs, f"real held-out cells ({len(pr)})"),
        (axes[1], ps, syn_obs, f"synthetic cells ({len(ps)})"),
    ]:
        labels = obs[key].astype(str).to_numpy()
        for c in classes:
            sel = labels == c
            ax.scatter(pts[sel, 0], pts[sel, 1], s=3, color=colours[c], label=c, rasterized=True)
        ax.set_title(f"{title}, by {key}")
    axes[2].scatter(pr[:, 0], pr[:, 1], s=3, color="0.6", label="real", rasterized=True)
    axes[2].scatter(ps[:, 0], ps[:, 1], s=3, color="tab:red", alpha=0.5, label="synthetic")
    axes[2].set_title("both, by source")
    axes[0].legend(markerscale=4, fontsize=7, loc="best")
    axes[2].legend(markerscale=4, fontsize=8)
    for ax in axes:
        ax.set_xlabel("PC1 (real cells)")
    axes[0].set_ylabel("PC2 (real cells)")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return path
