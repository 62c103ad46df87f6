"""``cellsynth demo``: the main job on the default data, with nothing but the install.

Generates cells with the label mix of the real held-out cells the bundle never saw (every Kang
cell type in both conditions; ``--cells-per-group`` for a balanced set instead) with the engine
chosen automatically, and compares them with those real cells:

    OUT/demo.h5ad       the synthetic cells (log-normalised X, labels in obs, provenance in uns)
    OUT/demo.png        PCA of the real held-out cells with the synthetic cells projected on it:
                        real and synthetic side by side coloured by each label, both by source,
                        and a caption of the key fidelity numbers beside real cells' own
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

from cellsynth.bundle.heldout import held_out_cells
from cellsynth.bundle.load import load_bundle
from cellsynth.data import datasets
from cellsynth.files import atomic_path
from cellsynth.generation.run import generate
from cellsynth.metrics import quick_summary
from cellsynth.metrics.sound import fit_pca_randomized
from cellsynth.stages import say_stage


def run_demo(
    out: str | os.PathLike = "cellsynth-demo",
    bundle: str = "kang-dit",
    n_cells: int = 4000,
    cells_per_group: int | None = None,
    scheduler: str = "dpmsolver++",
    steps: int = 20,
    seed: int = 0,
    engine: str = "auto",
    threads: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Run the demo and return {'h5ad', 'png', 'fidelity', 'summary', 'seconds'}.

    The synthetic cells have the label mix of the real held-out cells (``n_cells`` of them), so
    both sides of every comparison hold the same mix; ``cells_per_group`` makes a balanced set
    instead (that many cells of every label combination the bundle knows).
    """
    say_stage(f"loading the model {bundle}", progress)
    b = load_bundle(bundle)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    spec = b.labels

    # The real cells first: a missing data package should fail before minutes of sampling.
    data_name = b.config.get("training", {}).get("data", "kang")
    say_stage(f"reading the real held-out cells of {data_name}", progress)
    real_x, real_obs = held_out_cells(b, datasets.load(data_name))
    if cells_per_group is None:
        composition = real_obs[spec.keys].astype(str)
        mix = f"the label mix of the {len(real_obs)} real held-out cells"
    else:
        groups = pd.DataFrame(
            [
                {k: spec.vocabularies[k][c] for k, c in zip(spec.keys, codes, strict=True)}
                for codes, _ in spec.combinations
            ]
        )
        composition = groups.loc[groups.index.repeat(cells_per_group)].reset_index(drop=True)
        composition.index = composition.index.astype(str)
        n_cells = len(composition)
        mix = f"balanced: {cells_per_group} cells of each of {len(groups)} label combinations"

    say_stage(f"sampling {n_cells} cells (the engine is chosen first)", progress)
    started = time.perf_counter()
    synthetic = generate(
        b,
        n_cells=n_cells,
        steps=steps,
        scheduler=scheduler,
        seed=seed,
        composition=anndata.AnnData(obs=composition),
        engine=engine,
        threads=threads,
        out=out / "demo.h5ad",
        overwrite=True,  # the CLI checked --out (and --overwrite) before any work
        progress=progress,
    )
    seconds = time.perf_counter() - started
    syn_x = synthetic.X[:].toarray()
    syn_obs = synthetic.obs.copy()
    synthetic.file.close()

    say_stage(f"comparing {len(syn_x)} synthetic with {len(real_x)} real held-out cells", progress)
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
            "cells_per_second": round(n_cells / seconds, 1),
            "label_mix": mix,
        }
    )
    with atomic_path(out / "fidelity.json") as tmp:
        tmp.write_text(json.dumps(summary, indent=1) + "\n")
    say_stage("drawing the figure", progress)
    caption = _caption(summary, spec.keys, mix)
    png = plot_overlay(real_x, real_obs, syn_x, syn_obs, list(spec.keys), out / "demo.png", caption)
    return {
        "h5ad": out / "demo.h5ad",
        "png": png,
        "fidelity": out / "fidelity.json",
        "summary": summary,
        "seconds": seconds,
    }


def _caption(summary: dict[str, Any], keys: list[str], mix: str) -> str:
    """One line of the key numbers beside what real cells score (their floor or ceiling)."""
    s = summary
    parts = [
        f"r(gene means) {s['r_gene_means']:.3f}",
        f"r(gene zero fractions) {s['r_gene_zero_fractions']:.3f}",
        f"zeros {s['zero_fraction_synthetic']:.3f} (real {s['zero_fraction_real']:.3f})",
    ]
    parts += [
        f"{k} agreement {s[k + '_agreement']:.2f} (real cells {s[k + '_agreement_real']:.2f})"
        for k in keys
        if k + "_agreement" in s
    ]
    return "  ·  ".join(parts) + f"\nsynthetic cells: {mix}"


# Colours of the two sources: outside the label palettes (tab10 / tab20 have greys and reds).
REAL_COLOUR, SYNTHETIC_COLOUR = "#111111", "#00a6a6"


def plot_overlay(
    real_x: np.ndarray,
    real_obs: pd.DataFrame,
    syn_x: np.ndarray,
    syn_obs: pd.DataFrame,
    keys: list[str],
    path: Path,
    caption: str = "",
) -> Path:
    """PCA of the real cells (fitted on them; synthetic cells projected): one row per label,
    real and synthetic side by side coloured by it with one legend per label, and a panel by
    source with real cells drawn over synthetic ones at the same alpha; ``caption`` below.
    Written to ``path`` (PNG) through a temporary name."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mean, comps = fit_pca_randomized(real_x, 2)
    pr, ps = (real_x - mean) @ comps.T, (syn_x - mean) @ comps.T  # [n, 2], [m, 2]
    rows = max(1, len(keys))
    fig, axes = plt.subplots(
        rows, 3, figsize=(17, 4.6 * rows + 0.8), squeeze=False, sharex=True, sharey=True
    )
    for row, key in enumerate(keys):
        classes = sorted(set(real_obs[key].astype(str)) | set(syn_obs[key].astype(str)))
        palette = plt.cm.tab10 if len(classes) <= 10 else plt.cm.tab20
        colours = {c: palette(i % palette.N) for i, c in enumerate(classes)}
        for ax, pts, obs, title in [
            (axes[row, 0], pr, real_obs, f"real held-out cells ({len(pr)})"),
            (axes[row, 1], ps, syn_obs, f"synthetic cells ({len(ps)})"),
        ]:
            labels = obs[key].astype(str).to_numpy()
            for c in classes:
                sel = labels == c
                ax.scatter(
                    pts[sel, 0],
                    pts[sel, 1],
                    s=3,
                    color=colours[c],
                    label=c,
                    alpha=0.6,
                    rasterized=True,
                )
            ax.set_title(f"{title}, by {key}")
        axes[row, 1].legend(
            title=key,
            markerscale=4,
            fontsize=7,
            loc="upper left",
            bbox_to_anchor=(1.01, 1.0),
            frameon=False,
        )
        axes[row, 2].axis("off")
    both = axes[0, 2]
    both.axis("on")
    # Synthetic first, real on top, the same alpha: where real cells are missing, teal shows.
    for pts, colour, name in ((ps, SYNTHETIC_COLOUR, "synthetic"), (pr, REAL_COLOUR, "real")):
        both.scatter(pts[:, 0], pts[:, 1], s=3, color=colour, alpha=0.35,
                     label=f"{name} ({len(pts)})", rasterized=True)  # fmt: skip
    both.set_title("both, by source (real drawn over synthetic)")
    both.legend(markerscale=4, fontsize=8, loc="best")
    for ax in [axes[r, c] for r in range(rows) for c in range(2)] + [both]:
        ax.set_xlabel("PC1 (real cells)")
        ax.set_ylabel("PC2 (real cells)")
    if caption:
        fig.text(0.01, 0.005, caption, fontsize=9, va="bottom", ha="left")
    fig.tight_layout(rect=(0, 0.06 if caption else 0, 1, 1))
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return path
