"""A short fidelity summary: the few numbers a person checks first.

- overall mean expression and fraction of zeros, real against synthetic;
- Pearson r of per-gene means and of per-gene zero fractions;
- label agreement: each synthetic cell is assigned the label of the nearest real class centroid in
  PCA space (fitted on real cells); the fraction that matches the label it was generated with.
  Real cells scored the same way give the ceiling.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np


def fit_pca(x: np.ndarray, n_components: int = 50) -> tuple[np.ndarray, np.ndarray]:
    """PCA of x [n, G]: returns (mean [G], components [n_components, G]) by thin SVD."""
    x = np.asarray(x, dtype=np.float64)
    mean = x.mean(axis=0)
    _, _, vt = np.linalg.svd(x - mean, full_matrices=False)
    return mean, vt[: min(n_components, vt.shape[0])]


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson r; NaN when either side is constant (r is undefined there)."""
    a, b = a - a.mean(), b - b.mean()
    denom = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / denom) if denom > 0 else float("nan")


def _nearest_centroid_accuracy(
    train: np.ndarray, train_labels: np.ndarray, test: np.ndarray, test_labels: np.ndarray
) -> float:
    classes = np.unique(train_labels)
    centroids = np.stack([train[train_labels == c].mean(axis=0) for c in classes])  # [C, d]
    d2 = ((test[:, None, :] - centroids[None]) ** 2).sum(-1)  # [n, C]
    return float((classes[d2.argmin(axis=1)] == test_labels).mean())


def quick_summary(
    real: np.ndarray,
    synthetic: np.ndarray,
    real_labels: Mapping[str, np.ndarray] | None = None,
    synthetic_labels: Mapping[str, np.ndarray] | None = None,
    n_components: int = 50,
) -> dict[str, float]:
    """Summary numbers of synthetic [m, G] against real [n, G] log-normalised cells.

    Labels are arrays of strings per key ([n] and [m]); ``<key>_agreement`` is the synthetic
    cells' nearest-centroid label agreement and ``<key>_agreement_real`` the real cells' own
    (the ceiling).
    """
    real = np.asarray(real, dtype=np.float64)
    synthetic = np.asarray(synthetic, dtype=np.float64)
    out = {
        "n_real": float(len(real)),
        "n_synthetic": float(len(synthetic)),
        "mean_expression_real": float(real.mean()),
        "mean_expression_synthetic": float(synthetic.mean()),
        "zero_fraction_real": float((real == 0).mean()),
        "zero_fraction_synthetic": float((synthetic == 0).mean()),
        "r_gene_means": _pearson(real.mean(0), synthetic.mean(0)),
        "r_gene_zero_fractions": _pearson((real == 0).mean(0), (synthetic == 0).mean(0)),
    }
    if real_labels:
        from cellsynth.metrics.sound import fit_pca_randomized  # ~20x faster than exact SVD

        mean, comps = fit_pca_randomized(real, n_components)
        pr, ps = (real - mean) @ comps.T, (synthetic - mean) @ comps.T
        for key, r_lab in real_labels.items():
            r_lab = np.asarray(r_lab).astype(str)
            s_lab = np.asarray(synthetic_labels[key]).astype(str)
            out[f"{key}_agreement"] = _nearest_centroid_accuracy(pr, r_lab, ps, s_lab)
            out[f"{key}_agreement_real"] = _nearest_centroid_accuracy(pr, r_lab, pr, r_lab)
    return out
