"""Structure metrics: what per-gene statistics and distribution distances can miss.

- :func:`top_variable_genes`: the genes whose co-variation is compared (most variable first).
- :func:`correlation_agreement`: do synthetic cells reproduce which genes rise and fall together
  *within* a class? Pearson r between the upper triangles of the real and synthetic gene-gene
  correlation matrices of the cells' deviations from their class mean (pooled over classes). A
  generator that draws every gene independently scores ~0 even with perfect per-gene marginals;
  two samples of real cells score below 1 only by sampling noise (its floor).
- :func:`label_transfer_accuracy`: a logistic regression (scikit-learn) trained on labelled cells
  of one set and tested on another: trained on synthetic and tested on real cells it says whether
  the labels sit where they sit in real data; trained on real cells it gives the ceiling.
"""

from __future__ import annotations

import warnings

import numpy as np

from cellsynth.metrics.sound import pearson


def top_variable_genes(x: np.ndarray, n_genes: int = 200) -> np.ndarray:
    """Column indices [min(n_genes, G)] of the most variable genes of x [n, G], highest first.

    Genes constant in x are never chosen (their correlation is undefined).
    """
    var = np.asarray(x, dtype=np.float64).var(axis=0)
    order = np.argsort(-var, kind="stable")
    order = order[var[order] > 0]
    return order[: min(n_genes, len(order))]


def _upper_correlations(x: np.ndarray) -> np.ndarray:
    """Upper-triangle entries [g (g - 1) / 2] of the gene-gene Pearson matrix of x [n, g].

    NaN where a gene is constant within x (no variation, no correlation).
    """
    x = np.asarray(x, dtype=np.float64)
    xc = x - x.mean(axis=0)
    sd = np.sqrt((xc * xc).sum(axis=0))
    with np.errstate(divide="ignore", invalid="ignore"):
        z = xc / sd  # [n, g]; NaN columns where sd == 0
    corr = z.T @ z  # [g, g]
    return corr[np.triu_indices(x.shape[1], k=1)]


def correlation_agreement_one(real: np.ndarray, synthetic: np.ndarray) -> float:
    """Pearson r between the gene-gene correlations of real [n, g] and synthetic [m, g] cells.

    Gene pairs undefined on either side (a constant gene) are left out; NaN when fewer than 3
    pairs remain or either side's correlations are all equal.
    """
    a, b = _upper_correlations(real), _upper_correlations(synthetic)
    keep = np.isfinite(a) & np.isfinite(b)
    return pearson(a[keep], b[keep]) if keep.sum() >= 3 else float("nan")


def _within_class(x: np.ndarray, groups: np.ndarray, keep: set[str]) -> np.ndarray:
    """Rows of x [n, g] in the kept classes, each minus its class mean (float64)."""
    rows = np.isin(groups, sorted(keep))
    x, groups = np.asarray(x[rows], dtype=np.float64), groups[rows]
    out = np.empty_like(x)
    for c in keep:
        sel = groups == c
        out[sel] = x[sel] - x[sel].mean(axis=0)
    return out


def correlation_agreement(
    real: np.ndarray,
    synthetic: np.ndarray,
    real_groups: np.ndarray | None,
    synthetic_groups: np.ndarray | None,
    genes: np.ndarray,
    min_cells: int = 20,
) -> dict[str, object]:
    """Agreement of within-class gene-gene correlations, real [n, G] against synthetic [m, G].

    Each cell is centred on its class mean (so differences between classes, which any generator
    that gets the class means right reproduces, do not count), and the gene-gene correlations of
    these residuals are pooled over classes: the within-class correlation matrix. Its upper
    triangle for real cells against synthetic cells gives the Pearson r returned.

    Parameters
    ----------
    real_groups, synthetic_groups : [n] / [m] class of each cell (e.g. the joint label), or None
        for one class holding every cell.
    genes : column indices of the genes compared (e.g. :func:`top_variable_genes` of real cells).
    min_cells : classes with fewer cells on either side are left out (their means are noise).

    Returns
    -------
    dict
        ``value``: the r (NaN when no class qualifies); ``classes``: the classes pooled;
        ``skipped``: classes with too few cells.
    """
    if real_groups is None or synthetic_groups is None:
        real_groups = np.zeros(len(real), dtype=object)
        synthetic_groups = np.zeros(len(synthetic), dtype=object)
    real_groups = np.asarray(real_groups).astype(str)
    synthetic_groups = np.asarray(synthetic_groups).astype(str)
    keep, skipped = set(), []
    for c in sorted(set(real_groups) | set(synthetic_groups)):
        size = min(int((real_groups == c).sum()), int((synthetic_groups == c).sum()))
        (keep.add(c) if size >= min_cells else skipped.append(c))
    if not keep:
        return {"value": float("nan"), "classes": [], "skipped": skipped}
    a = _within_class(np.asarray(real)[:, genes], real_groups, keep)
    b = _within_class(np.asarray(synthetic)[:, genes], synthetic_groups, keep)
    return {"value": correlation_agreement_one(a, b), "classes": sorted(keep), "skipped": skipped}


def label_transfer_accuracy(
    train_x: np.ndarray,
    train_labels: np.ndarray,
    test_x: np.ndarray,
    test_labels: np.ndarray,
    seed: int = 0,
) -> float:
    """Accuracy on (test_x [m, d], test_labels [m]) of a logistic regression fitted on train.

    scikit-learn's ``LogisticRegression`` (L2, C = 1, lbfgs) on standardised features (scaled
    by the training set). A test class the training set lacks counts as wrong. NaN when the
    training set holds a single class.
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    train_labels = np.asarray(train_labels).astype(str)
    test_labels = np.asarray(test_labels).astype(str)
    if len(np.unique(train_labels)) < 2 or len(test_labels) == 0:
        return float("nan")
    model = make_pipeline(
        StandardScaler(), LogisticRegression(C=1.0, max_iter=1000, random_state=seed)
    )
    with warnings.catch_warnings():
        # A few more iterations change the accuracy by far less than its sampling noise.
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(np.asarray(train_x, dtype=np.float64), train_labels)
    predicted = model.predict(np.asarray(test_x, dtype=np.float64))
    return float((predicted == test_labels).mean())
