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

from cellsynth.metrics import paper, sound, structure
from cellsynth.metrics.inputs import (
    check_widths,
    dense,
    floor_label_sets,
    joint_labels,
    label_sets,
)
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
    "corr_agreement": (
        "higher",
        "r of within-class (pooled) gene-gene correlations of the most variable genes",
    ),
}


FAMILIES: dict[str, tuple[str, ...]] = {
    "paper": (
        "paper_kl_softmax",
        "paper_wasserstein_values",
        "paper_wasserstein_gene_means",
        "paper_mmd_multikernel",
    ),
    "distribution": ("mmd2_rbf_pca", "w2_pca", "sliced_w2_pca", "knn_auc"),
    "genes": tuple(n for n in METRICS if n.startswith("gene_")),
    "structure": ("corr_agreement",),
}


def _all_metrics(
    real: np.ndarray,
    syn: np.ndarray,
    real_pc: np.ndarray,
    syn_pc: np.ndarray,
    real_groups: np.ndarray | None,
    syn_groups: np.ndarray | None,
    sigma2: float,
    seed: int,
    opts: dict[str, Any],
) -> dict[str, float]:
    """Every metric of the chosen families for one comparison.

    Expression real [n, G] / syn [m, G], PCA scores [n, k] / [m, k], and the class of each cell
    (for the within-class correlation; None: one class).
    """
    families = opts["families"]
    out: dict[str, float] = {}
    if "paper" in families:
        out.update(
            paper.paper_metrics(real, syn, opts["gene_chunk"], opts["paper_max_cells"], seed)
        )
    if "distribution" in families:
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
    if "genes" in families:
        out.update(sound.gene_stat_agreement(real, syn))
    if "structure" in families:
        out["corr_agreement"] = structure.correlation_agreement(
            real, syn, real_groups, syn_groups, opts["corr_gene_index"], opts["corr_min_cells"]
        )["value"]
    return out


def _compare(
    ref: np.ndarray,
    held: np.ndarray,
    syn: np.ndarray,
    ref_pc: np.ndarray,
    held_pc: np.ndarray,
    syn_pc: np.ndarray,
    groups: tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None],
    seed: int,
    opts: dict[str, Any],
) -> dict[str, dict[str, float]]:
    """{name: {"value": metric(ref, syn), "floor": metric(ref, held)}}, all three sets of one size.

    ``groups`` holds the class of each cell of ref, held and syn (or three None). The RBF
    bandwidth is fixed from ref vs syn and reused for the floor, so that both MMD^2 values share
    one kernel (set from ref vs held instead with ``mmd_bandwidth="floor"``).
    """
    # The bandwidth comes from ref vs syn by default; from ref vs held ("floor") it is the same
    # for every generator compared against the same real cells, so their MMDs can be ranked.
    other = held_pc if opts["mmd_bandwidth"] == "floor" else syn_pc
    sigma2 = sound.median_bandwidth(ref_pc, other, seed=seed)
    g_ref, g_held, g_syn = groups
    values = _all_metrics(ref, syn, ref_pc, syn_pc, g_ref, g_syn, sigma2, seed, opts)
    floor = _all_metrics(ref, held, ref_pc, held_pc, g_ref, g_held, sigma2, seed, opts)
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
    floor_real: Any = None,
    floor_labels: Any = None,
    pca_real: Any = None,
    families: tuple[str, ...] | None = None,
    class_metrics: tuple[str, ...] | None = None,
    n_components: int = 50,
    pca_cells: int = 2000,
    pca_method: str = "randomized",
    gene_chunk: int = 100,
    paper_max_cells: int | None = 2000,
    mmd_max_cells: int | None = 5000,
    mmd_bandwidth: str = "synthetic",
    w2_max_cells: int | None = 2000,
    sliced_projections: int = 200,
    knn_k: int = 10,
    knn_folds: int = 5,
    knn_max_cells: int | None = 5000,
    corr_genes: int = 200,
    corr_min_cells: int = 20,
    min_cells: int = 30,
) -> dict[str, Any]:
    """All paper and sound metrics of synthetic cells against real ones, with real-vs-real floors.

    How the floor is matched. By default the real cells are split at random into three disjoint
    parts: a PCA part P of n_fit = min(n // 3, pca_cells) cells, a reference part A and a
    held-out part B, A and B each of h = min((n - n_fit) // 2, m) cells; h synthetic cells S are
    drawn at random (all of them when m = h). Every metric is reported as::

        value = metric(A, S)        floor = metric(A, B)

    so value and floor share the reference cells, the sample size h, the PCA, the RBF bandwidth
    and every subsampling cap: a difference between them is due to synthetic vs real cells, not to
    size-dependent bias (W2, the biased paper MMD, RMSE noise all grow as h shrinks). The PCA is
    fitted on P, which none of A, B, S belongs to: cells a PCA was fitted on spread more along its
    noise components than fresh cells do, and a kNN classifier tells them apart (AUC ~0.7 on
    10,000 x 2,000 structureless cells), which would bias whichever comparison holds fitted cells.
    A perfect generator scores the floor up to sampling noise (kNN AUC ~0.5). The price: at most
    (n - n_fit) // 2 real cells and h synthetic cells enter a value.

    With ``pca_real`` the PCA is fitted on those cells instead (e.g. a model's training cells),
    and every real cell can be compared. With ``floor_real`` (e.g. training cells of the same
    label mix, a benchmark's choice) B is drawn from them instead of from ``real``, so A can hold
    h = min(n, m, n_floor) cells. They must be disjoint from ``pca_real`` for the reason above.

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
    floor_real, floor_labels : a second sample of real cells [n_f, G] (and its labels, like
        ``real_labels``) to draw the floor's B from.
    pca_real : real cells [n_p, G] to fit the PCA on; default: the part P of ``real``.
    families : metric families to compute (keys of :data:`FAMILIES`); default all.
    class_metrics : the metrics computed per class (default: all computed ones).
    n_components : PCA components.
    pca_cells : most real cells set aside to fit the PCA (n_fit = min(n // 3, pca_cells)), or
        taken from ``pca_real``.
    pca_method : "randomized" (:func:`sound.fit_pca_randomized`, ~0.1 s for 2,000 x 2,000) or
        "exact" (:func:`fit_pca`, thin SVD, ~1 s there).
    gene_chunk, paper_max_cells : :func:`paper.mmd_multikernel` chunk size and per-side cell cap.
    mmd_max_cells : per-side cap for the unbiased PCA MMD^2 (random subsample).
    mmd_bandwidth : "synthetic" (the median heuristic on A vs S) or "floor" (on A vs B: the same
        kernel for every synthetic set compared with the same real cells and seed).
    w2_max_cells : per-side cap for exact W2 (random subsample; 2000 takes ~1 s).
    sliced_projections : directions for sliced W2 (every compared cell is used).
    knn_k, knn_folds, knn_max_cells : :func:`sound.knn_auc` settings.
    corr_genes, corr_min_cells : the within-class correlation agreement compares the
        ``corr_genes`` most variable genes of the PCA cells, in classes (the joint label of every
        label key given) of at least ``corr_min_cells`` cells on both sides.
    min_cells : smallest per-class comparison size h_c evaluated.

    Returns
    -------
    dict, JSON-serialisable::

        {"n_real", "n_synthetic", "n_genes", "settings": {...},
         "n_pca": n_fit, "n_compared": h,    # cells in P; in each of A, B, S
         "metrics": {name: {"value": float, "floor": float}},
         "label_transfer": {key: {"value": float, "floor": float}},  # with labels
         "by_label": {key: {"classes": {class: {"n_real", "n_synthetic", "n_compared",
                                                "metrics"}},
                            "skipped": {class: reason}}}}   # only when labels are given

    ``label_transfer``: accuracy on A of a logistic regression on PCA scores fitted on S
    (value) or on B (floor) (:func:`structure.label_transfer_accuracy`). NaN marks a metric
    undefined for the data (e.g. a Pearson r of constant values). Directions and meanings of the
    metric names are in :data:`METRICS`.
    """
    params = dict(locals())  # every option as passed, before any other name exists
    real, synthetic = dense(real), dense(synthetic)
    check_widths(real, synthetic, floor_real, pca_real)
    n, m = len(real), len(synthetic)
    if n < 6 or m < 2:
        raise ValueError(f"need at least 6 real and 2 synthetic cells, got {n} and {m}")
    labels = label_sets(real_labels, synthetic_labels, label_key, n, m)
    floor = dense(floor_real) if floor_real is not None else None
    floor_lab = floor_label_sets(floor_labels, labels, label_key, floor)
    opts = _settings(params, floor is not None)

    rng = np.random.default_rng(seed)
    pca_source, ref, held, syn = _split_cells(real, m, floor, pca_real, pca_cells, rng)
    n_fit, h = len(pca_source), len(ref)
    # pool: the real cells B is drawn from (real itself, or floor_real)
    pool, pool_labels = (real, labels) if floor is None else (floor, floor_lab)

    if pca_method == "randomized":
        mean, comps = sound.fit_pca_randomized(pca_source, n_components, seed=seed)
    elif pca_method == "exact":
        mean, comps = fit_pca(pca_source, n_components)
    else:
        raise ValueError(f"pca_method must be 'randomized' or 'exact', got {pca_method!r}")
    opts["corr_gene_index"] = structure.top_variable_genes(pca_source, corr_genes)
    # Scores of every real and synthetic cell: the per-label comparisons pick their own rows.
    real_pc = sound.project(real, mean, comps)  # [n, k]
    syn_pc = sound.project(synthetic, mean, comps)  # [m, k]
    pool_pc = real_pc if floor is None else sound.project(floor, mean, comps)  # [n_pool, k]
    joint = joint_labels(labels), joint_labels(pool_labels), joint_labels(labels, synthetic=True)

    def compare(
        a: np.ndarray, b: np.ndarray, s: np.ndarray, chosen: dict[str, Any] = opts
    ) -> dict[str, dict[str, float]]:
        groups = tuple(None if g is None else g[i] for g, i in zip(joint, (a, b, s), strict=True))
        return _compare(real[a], pool[b], synthetic[s], real_pc[a], pool_pc[b], syn_pc[s],
                        groups, seed, chosen)  # fmt: skip

    out: dict[str, Any] = {
        "n_real": n,
        "n_synthetic": m,
        "n_genes": int(real.shape[1]),
        "settings": {k: v for k, v in opts.items() if k != "corr_gene_index"},
        "n_pca": int(n_fit),
        "n_compared": int(h),
        "metrics": compare(ref, held, syn),
    }
    if not labels:
        return out

    out["label_transfer"] = {
        key: {
            "value": structure.label_transfer_accuracy(
                syn_pc[syn], s_lab[syn], real_pc[ref], r_lab[ref], seed
            ),
            "floor": structure.label_transfer_accuracy(
                pool_pc[held], pool_labels[key][0][held], real_pc[ref], r_lab[ref], seed
            ),
        }  # fmt: skip
        for key, (r_lab, s_lab) in labels.items()
    }
    per_class = _class_options(opts)
    out["by_label"] = {
        key: _by_class(
            lambda a, b, s: compare(a, b, s, per_class),
            ref,
            held,
            r_lab,
            pool_labels[key][0],
            s_lab,
            rng,
            opts,
        )  # fmt: skip
        for key, (r_lab, s_lab) in labels.items()
    }
    return out


# compute_metrics' options recorded under "settings" (the data arguments are not).
SETTINGS = (
    "n_components", "pca_cells", "pca_method", "gene_chunk", "paper_max_cells", "mmd_max_cells",
    "mmd_bandwidth", "w2_max_cells", "sliced_projections", "knn_k", "knn_folds", "knn_max_cells",
    "corr_genes", "corr_min_cells", "min_cells", "seed",
)  # fmt: skip


def _settings(params: Mapping[str, Any], external_floor: bool) -> dict[str, Any]:
    """The checked options of one compute_metrics call, as its result records them."""
    if params["mmd_bandwidth"] not in ("synthetic", "floor"):
        raise ValueError(
            f"mmd_bandwidth must be 'synthetic' or 'floor', got {params['mmd_bandwidth']!r}"
        )
    families = params["families"]
    families = tuple(FAMILIES) if families is None else tuple(families)
    unknown = sorted(set(families) - set(FAMILIES))
    if unknown:
        raise ValueError(f"unknown metric families {unknown}; choose from {sorted(FAMILIES)}")
    class_metrics = params["class_metrics"]
    return {
        "families": families,
        "class_metrics": None if class_metrics is None else list(class_metrics),
        **{k: params[k] for k in SETTINGS},
        "external_pca": params["pca_real"] is not None,
        "external_floor": external_floor,
    }


def _split_cells(
    real: np.ndarray,
    m: int,
    floor: np.ndarray | None,
    pca_real: Any,
    pca_cells: int,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(PCA cells P, rows of A in ``real``, rows of B in the pool, rows of S), as the
    :func:`compute_metrics` docstring describes; the pool is ``floor`` when given, else ``real``."""
    n = len(real)
    if pca_real is None:
        n_fit = min(n // 3, pca_cells)
        perm = rng.permutation(n)
        fit_rows, rest = perm[:n_fit], perm[n_fit:]
        pca_source = real[np.sort(fit_rows)]
    else:
        pca_source = dense(pca_real)
        if len(pca_source) > pca_cells:
            pca_source = pca_source[np.sort(rng.choice(len(pca_source), pca_cells, False))]
        rest = rng.permutation(n)
    if floor is None:
        h = min(len(rest) // 2, m)
        ref, held = np.sort(rest[:h]), np.sort(rest[h : 2 * h])
    else:
        h = min(len(rest), m, len(floor))
        ref, held = np.sort(rest[:h]), _pick(np.arange(len(floor)), h, rng)
    return pca_source, ref, held, _pick(np.arange(m), h, rng)


def _by_class(
    compare: Any,
    ref: np.ndarray,
    held: np.ndarray,
    r_lab: np.ndarray,
    p_lab: np.ndarray,
    s_lab: np.ndarray,
    rng: np.random.Generator,
    opts: dict[str, Any],
) -> dict[str, Any]:
    """One label key's per-class comparisons: A_c, B_c, S_c cut to h_c each (min_cells at least)."""
    min_cells = opts["min_cells"]
    classes, skipped = {}, {}
    for c in sorted(set(r_lab) | set(s_lab)):
        a, b = ref[r_lab[ref] == c], held[p_lab[held] == c]
        s = np.flatnonzero(s_lab == c)
        h_c = min(len(a), len(b), len(s))
        if h_c < min_cells:
            skipped[c] = (
                f"too few cells: {int((r_lab == c).sum())} real, {len(s)} synthetic "
                f"(compared sets of {h_c} < min_cells={min_cells})"
            )
            continue
        metrics = compare(_pick(a, h_c, rng), _pick(b, h_c, rng), _pick(s, h_c, rng))
        if opts["class_metrics"] is not None:
            metrics = {k: v for k, v in metrics.items() if k in opts["class_metrics"]}
        classes[c] = {
            "n_real": int((r_lab == c).sum()),
            "n_synthetic": int(len(s)),
            "n_compared": int(h_c),
            "metrics": metrics,
        }
    return {"classes": classes, "skipped": skipped}


def _class_options(opts: dict[str, Any]) -> dict[str, Any]:
    """opts limited to the families the per-class metrics need."""
    if opts["class_metrics"] is None:
        return opts
    wanted = set(opts["class_metrics"])
    fams = tuple(f for f, names in FAMILIES.items() if wanted & set(names))
    fams = tuple(f for f in fams if f in opts["families"])
    return {**opts, "families": fams}
