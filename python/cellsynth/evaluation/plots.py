"""The figures of ``cellsynth evaluate`` (matplotlib, Agg backend, PNG, written atomically).

Every function takes real [n, G] and synthetic [m, G] expression in one representation
(log-normalised), draws one figure and writes it through a temporary name. Scatter plots of
cells draw at most ``MAX_POINTS`` cells per side: more only adds ink, and the PCA/UMAP cost
grows with them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cellsynth.files import atomic_path
from cellsynth.metrics import sound

MAX_POINTS = 5000
REAL_COLOUR, SYN_COLOUR = "0.55", "tab:red"


def pyplot():
    """matplotlib.pyplot on the Agg backend (files only, no display); imported on first use."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path) -> Path:
    """Write ``fig`` as PNG at ``path`` atomically (temporary name, then rename) and close it."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    pyplot().close(fig)
    return path


def _rows(n: int, rng: np.random.Generator) -> np.ndarray:
    """At most MAX_POINTS random row indices of n, sorted."""
    return np.arange(n) if n <= MAX_POINTS else np.sort(rng.choice(n, MAX_POINTS, replace=False))


def _colours(classes: list[str]) -> dict[str, tuple]:
    plt = pyplot()
    cmap = plt.cm.tab10 if len(classes) <= 10 else plt.cm.tab20
    return {c: cmap(i % cmap.N) for i, c in enumerate(classes)}


def embedding_figure(
    real_xy: np.ndarray,
    syn_xy: np.ndarray,
    real_labels: np.ndarray | None,
    syn_labels: np.ndarray | None,
    key: str | None,
    axis: str,
    path: Path,
) -> Path:
    """Panels on 2-D coordinates [n, 2] / [m, 2]: both by source; real and synthetic by label."""
    plt = pyplot()
    n_panels = 3 if real_labels is not None else 1
    fig, axes = plt.subplots(
        1, n_panels, figsize=(5.6 * n_panels, 5), sharex=True, sharey=True, squeeze=False
    )
    axes = axes[0]
    axes[0].scatter(
        *real_xy.T, s=3, color=REAL_COLOUR, label=f"real ({len(real_xy)})", rasterized=True
    )
    axes[0].scatter(
        *syn_xy.T,
        s=3,
        color=SYN_COLOUR,
        alpha=0.5,
        label=f"synthetic ({len(syn_xy)})",
        rasterized=True,
    )
    axes[0].set_title("real and synthetic, by source")
    axes[0].legend(markerscale=4, fontsize=8)
    if real_labels is not None:
        classes = sorted(set(real_labels) | set(syn_labels))
        colours = _colours(classes)
        for ax, xy, labels, who in (
            (axes[1], real_xy, real_labels, "real"),
            (axes[2], syn_xy, syn_labels, "synthetic"),
        ):
            for c in classes:
                sel = labels == c
                ax.scatter(*xy[sel].T, s=3, color=colours[c], label=c, rasterized=True)
            ax.set_title(f"{who}, by {key}")
        axes[1].legend(markerscale=4, fontsize=7, loc="best")
    for ax in axes:
        ax.set_xlabel(f"{axis}1 (fitted on real cells)")
    axes[0].set_ylabel(f"{axis}2")
    fig.tight_layout()
    return save_figure(fig, path)


def stat_scatter(real_stat: np.ndarray, syn_stat: np.ndarray, what: str, path: Path) -> Path:
    """Per-gene statistic [G], real (x) against synthetic (y), with the diagonal and Pearson r."""
    plt = pyplot()
    ok = np.isfinite(real_stat) & np.isfinite(syn_stat)
    r = sound.pearson(real_stat[ok], syn_stat[ok])
    fig, ax = plt.subplots(figsize=(5.2, 5))
    ax.scatter(real_stat[ok], syn_stat[ok], s=4, alpha=0.5, color="tab:blue", rasterized=True)
    lo = float(min(real_stat[ok].min(), syn_stat[ok].min())) if ok.any() else 0.0
    hi = float(max(real_stat[ok].max(), syn_stat[ok].max())) if ok.any() else 1.0
    ax.plot([lo, hi], [lo, hi], color="k", lw=1, ls="--", label="y = x")
    ax.set_xlabel(f"real: {what}")
    ax.set_ylabel(f"synthetic: {what}")
    ax.set_title(f"{what} per gene\n{ok.sum()} genes, Pearson r = {r:.3f}")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


def violins(
    real_zero_cell: np.ndarray,
    syn_zero_cell: np.ndarray,
    real_cv: np.ndarray,
    syn_cv: np.ndarray,
    path: Path,
) -> Path:
    """Two violin panels: per-cell zero proportion and per-gene CV, real against synthetic."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.5))
    for ax, (r, s), title in (
        (axes[0], (real_zero_cell, syn_zero_cell), "zero proportion per cell"),
        (axes[1], (real_cv, syn_cv), "coefficient of variation per gene"),
    ):
        data = [v[np.isfinite(v)] for v in (r, s)]
        data = [d if len(d) else np.zeros(1) for d in data]  # violinplot needs values
        parts = ax.violinplot(data, showmedians=True)
        for body, colour in zip(parts["bodies"], (REAL_COLOUR, SYN_COLOUR), strict=True):
            body.set_facecolor(colour)
            body.set_alpha(0.6)
        unit = "cells" if "cell" in title else "genes"
        ax.set_xticks(
            [1, 2], [f"real ({len(data[0])} {unit})", f"synthetic ({len(data[1])} {unit})"]
        )
        ax.set_title(title)
    fig.suptitle(
        f"equal samples: {len(real_zero_cell)} real and {len(syn_zero_cell)} synthetic cells",
        fontsize=9,
    )
    fig.tight_layout()
    return save_figure(fig, path)


def class_means(x: np.ndarray, labels: np.ndarray, classes: list[str]) -> np.ndarray:
    """Mean expression per class [C, G]; NaN rows for classes without cells."""
    out = np.full((len(classes), x.shape[1]), np.nan)
    for i, c in enumerate(classes):
        sel = labels == c
        if sel.any():
            out[i] = x[sel].mean(axis=0, dtype=np.float64)
    return out


def top_markers(
    real: np.ndarray, labels: np.ndarray, classes: list[str], per_class: int
) -> list[tuple[str, int]]:
    """(class, gene column) of the top ``per_class`` genes of each class in the real cells.

    Ranked by mean in the class minus mean in all other cells; a gene already picked for an
    earlier class is skipped so that every column of the matrixplot is a distinct gene.
    """
    total = real.sum(axis=0, dtype=np.float64)
    picked: list[tuple[str, int]] = []
    used: set[int] = set()
    for c in classes:
        sel = labels == c
        n_in, n_out = int(sel.sum()), int((~sel).sum())
        if n_in == 0 or n_out == 0:
            continue
        inside = real[sel].sum(axis=0, dtype=np.float64)
        diff = inside / n_in - (total - inside) / n_out
        chosen = [int(g) for g in np.argsort(-diff, kind="stable") if int(g) not in used]
        for g in chosen[:per_class]:
            picked.append((c, g))
            used.add(g)
    return picked


def matrixplot(
    real: np.ndarray,
    syn: np.ndarray,
    real_labels: np.ndarray,
    syn_labels: np.ndarray,
    key: str,
    genes: np.ndarray,
    path: Path,
) -> Path:
    """Heatmaps of class means of the top marker genes: real (left) and synthetic (right).

    Each gene's colour is its class mean divided by its largest class mean over both panels, so
    the two panels share a scale per gene and a marker shows as a bright cell in its row.
    """
    plt = pyplot()
    classes = sorted(set(real_labels))
    per_class = int(np.clip(40 // max(len(classes), 1), 3, 5))
    markers = top_markers(real, real_labels, classes, per_class)
    cols = [g for _, g in markers]
    r_mean = class_means(real[:, cols], real_labels, classes)  # [C, K]
    s_mean = class_means(syn[:, cols], syn_labels, classes)  # [C, K]
    scale = np.nanmax(np.vstack([r_mean, s_mean]), axis=0)
    scale[~(scale > 0)] = 1.0
    width = max(5.0, 0.2 * len(cols) + 2.0)
    fig, axes = plt.subplots(
        1,
        2,
        figsize=(2 * width + 1.0, 0.35 * len(classes) + 2.8),
        sharey=True,
        layout="constrained",
    )
    cmap = plt.cm.viridis.with_extremes(bad="0.85")  # grey: classes without synthetic cells
    for ax, m, who in ((axes[0], r_mean, "real"), (axes[1], s_mean, "synthetic")):
        im = ax.imshow(m / scale, aspect="auto", cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
        ax.set_xticks(range(len(cols)), [str(genes[g]) for g in cols], rotation=90, fontsize=7)
        ax.set_yticks(range(len(classes)), classes, fontsize=8)
        ax.set_title(f"{who}: mean expression per {key}")
    fig.colorbar(im, ax=axes, fraction=0.025, label="class mean / largest class mean of the gene")
    return save_figure(fig, path)


def _umap_coords(real: np.ndarray, syn: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """UMAP fitted on 50 real-fitted PCs of the real cells, synthetic cells embedded by it."""
    import umap  # umap-learn; optional

    mean, comps = sound.fit_pca_randomized(real, min(50, min(real.shape) - 1), seed=seed)
    reducer = umap.UMAP(random_state=seed, n_jobs=1)
    real_xy = reducer.fit_transform(sound.project(real, mean, comps))
    return real_xy, reducer.transform(sound.project(syn, mean, comps))


def write_all(
    out: Path,
    real: np.ndarray,
    syn: np.ndarray,
    real_labels: np.ndarray | None,
    syn_labels: np.ndarray | None,
    key: str | None,
    genes: np.ndarray,
    seed: int,
    umap: bool = False,
) -> tuple[dict[str, Path], list[str]]:
    """Every figure of the report into ``out``; ({file name: path}, notes for the report)."""
    rng = np.random.default_rng(seed)
    ri, si = _rows(len(real), rng), _rows(len(syn), rng)
    r_sub, s_sub = real[ri], syn[si]
    rl = None if real_labels is None else real_labels[ri]
    sl = None if syn_labels is None else syn_labels[si]
    files: dict[str, Path] = {}
    notes: list[str] = []

    mean, comps = sound.fit_pca_randomized(r_sub, 2, seed=seed)
    files["pca.png"] = embedding_figure(
        sound.project(r_sub, mean, comps),
        sound.project(s_sub, mean, comps),
        rl,
        sl,
        key,
        "PC",
        out / "pca.png",
    )
    if umap:
        try:
            r_xy, s_xy = _umap_coords(r_sub, s_sub, seed)
        except ImportError:
            notes.append("UMAP skipped: umap-learn is not installed (pip install umap-learn)")
        else:
            files["umap.png"] = embedding_figure(r_xy, s_xy, rl, sl, key, "UMAP", out / "umap.png")

    rs, ss = sound.gene_stats(real), sound.gene_stats(syn)
    files["gene_means.png"] = stat_scatter(
        rs["mean"], ss["mean"], "mean expression", out / "gene_means.png"
    )
    files["gene_zero_fractions.png"] = stat_scatter(
        rs["zero_fraction"],
        ss["zero_fraction"],
        "fraction of zeros",
        out / "gene_zero_fractions.png",
    )
    # The CV of a rare gene grows with the number of cells (up to sqrt(n - 1) for a gene seen
    # in one cell), so the violins compare equal numbers of real and synthetic cells.
    k = min(len(real), len(syn))
    r_eq = real[np.sort(rng.choice(len(real), k, replace=False))] if len(real) > k else real
    s_eq = syn[np.sort(rng.choice(len(syn), k, replace=False))] if len(syn) > k else syn
    files["violins.png"] = violins(
        (r_eq == 0).mean(axis=1),
        (s_eq == 0).mean(axis=1),
        sound.gene_stats(r_eq)["cv"],
        sound.gene_stats(s_eq)["cv"],
        out / "violins.png",
    )
    if real_labels is not None:
        files["matrixplot.png"] = matrixplot(
            real, syn, real_labels, syn_labels, key, genes, out / "matrixplot.png"
        )
    else:
        notes.append("no label key given: no label-coloured panels and no marker matrixplot")
    return files, notes
