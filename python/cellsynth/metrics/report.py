"""compute_metrics: every fidelity metric beside its real-vs-real floor, overall and per label.

A metric alone cannot be read: an MMD of 0.01 may be excellent or poor depending on the data.
Each metric is therefore also computed between two disjoint random halves of the real cells, at
the same sample size as the real-vs-synthetic comparison; that floor is what a perfect generator
would score (up to sampling noise), so a value near its floor is good.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from cellsynth.metrics import paper, sound
from cellsynth.metrics.summary import fit_pca

#: What each metric measures and which way is better ("lower", "higher", or "0.5" for the AUC).
METRICS: dict[str, tuple[str, str]] = {
    "paper_kl_softmax": ("lower", "scRDiT: KL of row softmax, cells paired by row order"),
    "paper_wasserstein_values": ("lower", "scRDiT: 1-D W1 of all pooled expression values"),
    "paper_wasserstein_gene_means": ("lower", "scRDiT: 1-D W1 of per-gene means"),
    "paper_mmd_multikernel": ("lower", "scRDiT: 5-kernel Gaussian MMD averaged over gene chunks"),
    "mmd2_rbf_pca": ("lower", "unbiased MMD^2, RBF median-heuristic kernel, on real-fitted PCA"),
    "w2_pca": ("lower", "exact W2 (optimal transport) on PCA, subsampled to w2_max_cells"),
    "sliced_w2_pca": ("lower", "sliced W2 on PCA, every compared cell"),
    "knn_auc": ("0.5", "kNN real-vs-synthetic classifier AUC (cross-validated) on PCA"),
    **{
        f"gene_{s}_{k}": ("higher" if k == "pearson" else "lower", f"per-gene {s}: {k}")
        for s in ("mean", "var", "zero_fraction", "cv")
        for k in ("pearson", "rmse")
    },
}


def _dense(x: Any) -> np.ndarray:
    """[n, G] float32 (float64 kept as given) from a numpy array or a scipy.sparse matrix."""
    if hasattr(x, "toarray"):
        x = x.toarray()
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"expected a cells x genes matrix, got an array of shape {x.shape}")
    return x if x.dtype in (np.float32, np.float64) else x.astype(np.float32)


def _label_sets(
    real_labels: Any, synthetic_labels: Any, label_key: str | None, n_real: int, n_syn: int
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{key: (real labels [n], synthetic labels [m])} as string arrays, validated."""
    if real_labels is None and synthetic_labels is None:
        return {}
    if real_labels is None or synthetic_labels is None:
        raise ValueError("give labels for both real and synthetic cells, or for neither")
    if isinstance(real_labels, Mapping):
        keys = [label_key] if label_key is not None else list(real_labels)
        for k in keys:
            if k not in real_labels or k not in synthetic_labels:
                raise ValueError(f"label {k!r} missing from real or synthetic labels")
        pairs = {k: (real_labels[k], synthetic_labels[k]) for k in keys}
    else:
        pairs = {label_key or "label": (real_labels, synthetic_labels)}
    out = {}
    for k, (r, s) in pairs.items():
        r, s = np.asarray(r).astype(str), np.asarray(s).astype(str)
        if len(r) != n_real or len(s) != n_syn:
            raise ValueError(
                f"label {k!r}: {len(r)} real / {len(s)} synthetic labels for "
                f"{n_real} real / {n_syn} synthetic cells"
            )
        out[k] = (r, s)
    return out


def _all_metrics(
    real: np.ndarray,
    syn: np.ndarray,
    real_pc: np.ndarray,
    syn_pc: np.ndarray,
    sigma2: float,
    seed: int,
    opts: dict[str, Any],
) -> dict[str, float]:
    """Every metric of one comparison; expression [n, G] / [m, G] and PCA scores [n, k] / [m, k]."""
    out = paper.paper_metrics(real, syn, opts["gene_chunk"], opts["paper_max_cells"], seed)
    out["mmd2_rbf_pca"] = sound.mmd2_unbiased(
        sound.subsample_rows(real_pc, opts["mmd_max_cells"], np.random.default_rng(seed)),
        sound.subsample_rows(syn_pc, opts["mmd_max_cells"], np.random.default_rng(seed + 1)),
        sigma2,
    )
    out["w2_pca"] = sound.wasserstein2_exact(real_pc, syn_pc, opts["w2_max_cells"], seed)
    out["sliced_w2_pca"] = sound.sliced_wasserstein2(
        real_pc, syn_pc, opts["sliced_projections"], seed
    )
    out["knn_auc"] = sound.knn_auc(
        real_pc, syn_pc, opts["knn_k"], opts["knn_folds"], opts["knn_max_cells"], seed
    )
    out.update(sound.gene_stat_agreement(real, syn))
    return out


def _compare(
    ref: np.ndarray,
    held: np.ndarray,
    syn: np.ndarray,
    ref_pc: np.ndarray,
    held_pc: np.ndarray,
    syn_pc: np.ndarray,
    seed: int,
    opts: dict[str, Any],
) -> dict[str, dict[str, float]]:
    """{name: {"value": metric(ref, syn), "floor": metric(ref, held)}}, all three sets of one size.

    The RBF bandwidth is fixed from ref vs syn and reused for the floor, so that both MMD^2 values
    share one kernel.
    """
    sigma2 = sound.median_bandwidth(ref_pc, syn_pc, seed=seed)
    values = _all_metrics(ref, syn, ref_pc, syn_pc, sigma2, seed, opts)
    floor = _all_metrics(ref, held, ref_pc, held_pc, sigma2, seed, opts)
    return {k: {"value": v, "floor": floor[k]} for k, v in values.items()}


def _pick(idx: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """size random entries of idx, kept in ascending order (so row order stays the input's)."""
    return np.sort(rng.choice(idx, size, replace=False)) if size < len(idx) else np.sort(idx)


def compute_metrics(
    real: Any,
    synthetic: Any,
    real_labels: Any = None,
    synthetic_labels: Any = None,
    label_key: str | None = None,
    seed: int = 0,
    *,
    n_components: int = 50,
    pca_cells: int = 2000,
    pca_method: str = "randomized",
    gene_chunk: int = 100,
    paper_max_cells: int | None = 2000,
    mmd_max_cells: int | None = 5000,
    w2_max_cells: int | None = 2000,
    sliced_projections: int = 200,
    knn_k: int = 10,
    knn_folds: int = 5,
    knn_max_cells: int | None = 5000,
    min_cells: int = 30,
) -> dict[str, Any]:
    """All paper and sound metrics of synthetic cells against real ones, with real-vs-real floors.

    How the floor is matched. The real cells are split at random into three disjoint parts: a
    PCA part P of n_fit = min(n // 3, pca_cells) cells, a reference part A and a held-out part B,
    A and B each of h = min((n - n_fit) // 2, m) cells; h synthetic cells S are drawn at random
    (all of them when m = h). Every metric is reported as::

        value = metric(A, S)        floor = metric(A, B)

    so value and floor share the reference cells, the sample size h, the PCA, the RBF bandwidth
    and every subsampling cap: a difference between them is due to synthetic vs real cells, not to
    size-dependent bias (W2, the biased paper MMD, RMSE noise all grow as h shrinks). The PCA is
    fitted on P, which none of A, B, S belongs to: cells a PCA was fitted on spread more along its
    noise components than fresh cells do, and a kNN classifier tells them apart (AUC ~0.7 on
    10,000 x 2,000 structureless cells), which would bias whichever comparison holds fitted cells.
    A perfect generator scores the floor up to sampling noise (kNN AUC ~0.5). The price: at most
    (n - n_fit) // 2 real cells and h synthetic cells enter a value.

    Per label, the same holds within each class c: A_c, B_c and S_c are the class's cells of
    A, B and the synthetic set, each cut at random to h_c = min(|A_c|, |B_c|, m_c); the global
    PCA is kept. Classes with h_c < min_cells are skipped and listed with the reason.

    Parameters
    ----------
    real : [n, G] expression of real cells (numpy or scipy.sparse), preprocessed the same way as
        synthetic (e.g. log-normalised), genes in the same order; n >= 6.
    synthetic : [m, G] expression of synthetic cells; m >= 2.
    real_labels, synthetic_labels : optional per-cell labels, either arrays [n] / [m] or mappings
        {key: array}; with a mapping, ``label_key`` picks one key (default: every key). With
        arrays, ``label_key`` names the breakdown (default "label").
    seed : seeds every random choice (halves, subsamples, folds, projections).
    n_components : PCA components, fitted on the PCA part P of the real cells.
    pca_cells : most real cells set aside to fit the PCA (n_fit = min(n // 3, pca_cells)).
    pca_method : "randomized" (:func:`sound.fit_pca_randomized`, ~0.1 s for 2,000 x 2,000) or
        "exact" (:func:`fit_pca`, thin SVD, ~1 s there).
    gene_chunk, paper_max_cells : :func:`paper.mmd_multikernel` chunk size and per-side cell cap.
    mmd_max_cells : per-side cap for the unbiased PCA MMD^2 (random subsample).
    w2_max_cells : per-side cap for exact W2 (random subsample; 2000 takes ~1 s).
    sliced_projections : directions for sliced W2 (every compared cell is used).
    knn_k, knn_folds, knn_max_cells : :func:`sound.knn_auc` settings.
    min_cells : smallest per-class comparison size h_c evaluated.

    Returns
    -------
    dict, JSON-serialisable::

        {"n_real", "n_synthetic", "n_genes", "settings": {...},
         "n_pca": n_fit, "n_compared": h,    # cells in P; in each of A, B, S
         "metrics": {name: {"value": float, "floor": float}},
         "by_label": {key: {"classes": {class: {"n_real", "n_synthetic", "n_compared",
                                                "metrics"}},
                            "skipped": {class: reason}}}}   # only when labels are given

    NaN marks a metric undefined for the data (e.g. a Pearson r of constant values). Directions
    and meanings of the metric names are in :data:`METRICS`.
    """
    real, synthetic = _dense(real), _dense(synthetic)
    if real.shape[1] != synthetic.shape[1]:
        raise ValueError(
            f"real cells have {real.shape[1]} genes and synthetic cells {synthetic.shape[1]}: "
            "align both to the same genes first"
        )
    n, m = len(real), len(synthetic)
    if n < 6 or m < 2:
        raise ValueError(f"need at least 6 real and 2 synthetic cells, got {n} and {m}")
    labels = _label_sets(real_labels, synthetic_labels, label_key, n, m)
    opts = {
        "n_components": n_components,
        "pca_cells": pca_cells,
        "pca_method": pca_method,
        "gene_chunk": gene_chunk,
        "paper_max_cells": paper_max_cells,
        "mmd_max_cells": mmd_max_cells,
        "w2_max_cells": w2_max_cells,
        "sliced_projections": sliced_projections,
        "knn_k": knn_k,
        "knn_folds": knn_folds,
        "knn_max_cells": knn_max_cells,
        "min_cells": min_cells,
        "seed": seed,
    }

    rng = np.random.default_rng(seed)
    n_fit = min(n // 3, pca_cells)
    h = min((n - n_fit) // 2, m)
    perm = rng.permutation(n)
    fit = np.sort(perm[:n_fit])
    ref, held = np.sort(perm[n_fit : n_fit + h]), np.sort(perm[n_fit + h : n_fit + 2 * h])
    syn = _pick(np.arange(m), h, rng)

    if pca_method == "randomized":
        mean, comps = sound.fit_pca_randomized(real[fit], n_components, seed=seed)
    elif pca_method == "exact":
        mean, comps = fit_pca(real[fit], n_components)
    else:
        raise ValueError(f"pca_method must be 'randomized' or 'exact', got {pca_method!r}")
    # Scores of every real and synthetic cell: the per-label comparisons pick their own rows.
    real_pc = sound.project(real, mean, comps)  # [n, k]
    syn_pc = sound.project(synthetic, mean, comps)  # [m, k]

    def compare(a: np.ndarray, b: np.ndarray, s: np.ndarray) -> dict[str, dict[str, float]]:
        return _compare(real[a], real[b], synthetic[s], real_pc[a], real_pc[b], syn_pc[s],
                        seed, opts)

    out: dict[str, Any] = {
        "n_real": n,
        "n_synthetic": m,
        "n_genes": int(real.shape[1]),
        "settings": opts,
        "n_pca": int(n_fit),
        "n_compared": int(h),
        "metrics": compare(ref, held, syn),
    }
    if not labels:
        return out

    out["by_label"] = {}
    for key, (r_lab, s_lab) in labels.items():
        classes, skipped = {}, {}
        for c in sorted(set(r_lab) | set(s_lab)):
            a, b = ref[r_lab[ref] == c], held[r_lab[held] == c]
            s = np.flatnonzero(s_lab == c)
            h_c = min(len(a), len(b), len(s))
            if h_c < min_cells:
                skipped[c] = (
                    f"too few cells: {int((r_lab == c).sum())} real, {len(s)} synthetic "
                    f"(compared sets of {h_c} < min_cells={min_cells})"
                )
                continue
            classes[c] = {
                "n_real": int((r_lab == c).sum()),
                "n_synthetic": int(len(s)),
                "n_compared": int(h_c),
                "metrics": compare(_pick(a, h_c, rng), _pick(b, h_c, rng), _pick(s, h_c, rng)),
            }
        out["by_label"][key] = {"classes": classes, "skipped": skipped}
    return out
