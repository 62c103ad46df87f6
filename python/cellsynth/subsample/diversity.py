"""Diversity of a set of cells: of its label composition, and of its expression (Vendi score).

For label proportions p_k over the K types present:

- Shannon index ``H = -sum_k p_k ln p_k`` (natural log, nats): 0 for one type, ln K for K
  equally common types.
- Gini-Simpson index ``1 - sum_k p_k^2``: the chance that two cells drawn with replacement
  have different types; 0 for one type, 1 - 1/K for K equal types.

The Vendi score (Friedman & Dieng 2023) is the exponential of the Shannon entropy of the
eigenvalues of K/n, where K [n, n] is a similarity kernel with unit diagonal: the "effective
number of distinct cells", 1 when all cells are identical and n when all are orthogonal. It is
computed on PCA features of log-normalised expression with one of two kernels:

- ``"cosine"`` (default): ``K = U U^T`` with U the L2-normalised rows of the centred PCA
  features, so it measures how many different directions away from the mean the cells spread
  in; it is bounded by the number of components. Because K = U U^T, K/n has the same non-zero
  eigenvalues as the d x d matrix ``U^T U / n`` (the "dual" form), which costs n d^2 instead of
  n^2 memory and n^3 time, and is exact.
- ``"rbf"``: ``K_ij = exp(-|x_i - x_j|^2 / h)`` with h the median squared distance between
  distinct cells (median heuristic). It also sees distances, not only directions, but has no
  dual form here, so it is limited to ``RBF_MAX_CELLS`` cells.

``method="auto"`` uses the ``vendi_score`` package on the n x n kernel (the "primal") up to
``PRIMAL_MAX_CELLS`` cells and the dual form above that.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import anndata as ad
import numpy as np

from cellsynth.data.validate import validate_labels
from cellsynth.errors import DataError, MissingDependencyError
from cellsynth.subsample.features import (
    DEFAULT_N_COMPONENTS,
    DEFAULT_N_TOP_GENES,
    pca_features,
)

VENDI_KERNELS: tuple[str, ...] = ("cosine", "rbf")
VENDI_METHODS: tuple[str, ...] = ("auto", "primal", "dual")
# Above this many cells "auto" switches to the dual form: an n x n eigendecomposition of 1000
# cells takes ~0.2 s, of 10,000 cells minutes and 800 MB.
PRIMAL_MAX_CELLS = 1000
# The RBF kernel has no dual form; 3000 cells is a 72 MB kernel and ~10 s of eigvalsh.
RBF_MAX_CELLS = 3000


def _proportions(labels: Sequence | np.ndarray) -> np.ndarray:
    """Fraction of cells of each type present, shape [n_types]."""
    labels = np.asarray(labels).astype(str)
    if labels.size == 0:
        raise DataError("Diversity of an empty set of cells is undefined.")
    _, counts = np.unique(labels, return_counts=True)
    return counts / counts.sum()


def shannon_index(labels: Sequence | np.ndarray) -> float:
    """Shannon index ``-sum p ln p`` (nats) of the label composition; labels shape [n_cells]."""
    p = _proportions(labels)
    return float(-(p * np.log(p)).sum())


def gini_simpson_index(labels: Sequence | np.ndarray) -> float:
    """Gini-Simpson index ``1 - sum p^2`` of the label composition; labels shape [n_cells]."""
    p = _proportions(labels)
    return float(1.0 - (p * p).sum())


def _exp_entropy(eigenvalues: np.ndarray) -> float:
    """exp of the Shannon entropy of eigenvalues that sum to ~1 (round-off negatives dropped)."""
    w = eigenvalues[eigenvalues > 0]
    return float(np.exp(-(w * np.log(w)).sum()))


def _unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm; all-zero rows (a cell exactly at the mean) stay zero."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms > 0, norms, 1.0)


def _rbf_kernel(x: np.ndarray) -> np.ndarray:
    """exp(-d^2 / median d^2) over distinct pairs, shape [n, n]."""
    sq = (x * x).sum(axis=1)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2.0 * (x @ x.T), 0.0)  # [n, n]
    off = d2[np.triu_indices(len(x), k=1)]
    h = float(np.median(off)) if off.size else 0.0
    return np.exp(-d2 / (h if h > 0 else 1.0))


def vendi_score(
    features: np.ndarray, kernel: str = "cosine", method: str = "auto"
) -> tuple[float, str]:
    """Vendi score of cells given as feature rows.

    Parameters
    ----------
    features : np.ndarray, shape [n_cells, n_dims]
        Usually centred PCA scores (:func:`pca_features`).
    kernel : {"cosine", "rbf"}
        Similarity; see the module docstring.
    method : {"auto", "primal", "dual"}
        "primal": the ``vendi_score`` package on the n x n kernel; "dual": eigenvalues of the
        d x d matrix U^T U / n (cosine only, exact). "auto": primal up to PRIMAL_MAX_CELLS cells
        when the package is installed, else dual.

    Returns
    -------
    score : float
        Between 1 and min(n_cells, n_dims) for the cosine kernel, 1 and n_cells for RBF.
    method : str
        The form used ("primal" or "dual").
    """
    if kernel not in VENDI_KERNELS:
        raise DataError(f"Unknown Vendi kernel {kernel!r}; choose one of {VENDI_KERNELS}.")
    if method not in VENDI_METHODS:
        raise DataError(f"Unknown Vendi method {method!r}; choose one of {VENDI_METHODS}.")
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or len(x) == 0:
        raise DataError(f"Vendi score needs a non-empty cells x features matrix, got {x.shape}.")
    if not np.isfinite(x).all():
        raise DataError("Features for the Vendi score contain NaN or infinite values.")
    n = len(x)
    if kernel == "rbf":
        if method == "dual":
            raise DataError("The dual form of the Vendi score exists for the cosine kernel only.")
        if n > RBF_MAX_CELLS:
            raise DataError(
                f"The RBF Vendi score needs an n x n kernel; {n} cells is more than "
                f"{RBF_MAX_CELLS}. Use the cosine kernel (dual form) or fewer cells."
            )
        return _vendi_primal(_rbf_kernel(x)), "primal"
    u = _unit_rows(x)
    if method == "auto" and n <= PRIMAL_MAX_CELLS:
        try:
            return _vendi_primal(u @ u.T), "primal"
        except MissingDependencyError:
            method = "dual"  # the same score, exactly, without the vendi-score package
    if method == "dual" or method == "auto":
        # U^T U / n [d, d] shares the non-zero eigenvalues of U U^T / n [n, n].
        return _exp_entropy(np.linalg.eigvalsh(u.T @ u / n)), "dual"
    return _vendi_primal(u @ u.T), "primal"


def _vendi_primal(kernel: np.ndarray) -> float:
    """The ``vendi_score`` package's score of an n x n kernel with unit diagonal (q = 1)."""
    try:
        from vendi_score import vendi
    except ImportError as exc:
        raise MissingDependencyError(
            "the Vendi score needs the vendi-score package: pip install vendi-score==0.0.3"
        ) from exc
    with warnings.catch_warnings():
        # vendi-score 0.0.3 compares against scipy.sparse.csr.csr_matrix, a deprecated alias.
        warnings.simplefilter("ignore", DeprecationWarning)
        return float(vendi.score_K(kernel, q=1))


def diversity(
    adata_or_matrix: ad.AnnData | np.ndarray,
    label_key: str | None = None,
    *,
    labels: Sequence | np.ndarray | None = None,
    kernel: str = "cosine",
    method: str = "auto",
    n_components: int = DEFAULT_N_COMPONENTS,
    n_top_genes: int = DEFAULT_N_TOP_GENES,
) -> dict[str, float | int | str]:
    """Shannon and Gini-Simpson indices of the labels and the Vendi score of the cells.

    Parameters
    ----------
    adata_or_matrix : AnnData [n_cells, n_genes] or np.ndarray [n_cells, n_dims]
        An AnnData with raw counts: the Vendi score is computed on the PCA of its own
        log-normalised expression (:func:`pca_features`). A matrix is used as the features
        as given (pass PCA scores fitted on a common reference to compare selections).
    label_key : str, optional
        obs column of an AnnData whose composition is scored.
    labels : array, shape [n_cells], optional
        Labels given directly (for a matrix input).
    kernel, method : str
        See :func:`vendi_score`.
    n_components, n_top_genes : int
        PCA settings for an AnnData input.

    Returns
    -------
    dict
        ``n_cells``, ``vendi``, ``vendi_kernel``, ``vendi_method`` and, when labels are given,
        ``n_types``, ``shannon``, ``gini_simpson``.
    """
    if isinstance(adata_or_matrix, ad.AnnData):
        if labels is None and label_key is not None:
            validate_labels(adata_or_matrix.obs, [label_key])
            labels = adata_or_matrix.obs[label_key].to_numpy()
        features = pca_features(adata_or_matrix, n_components, n_top_genes)
    else:
        if label_key is not None:
            raise DataError("label_key needs an AnnData; pass labels= with a matrix.")
        features = np.asarray(adata_or_matrix)
    out: dict[str, float | int | str] = {"n_cells": int(len(features))}
    if labels is not None:
        labels = np.asarray(labels)
        if len(labels) != len(features):
            raise DataError(f"{len(labels)} labels for {len(features)} cells.")
        out["n_types"] = int(np.unique(labels.astype(str)).size)
        out["shannon"] = shannon_index(labels)
        out["gini_simpson"] = gini_simpson_index(labels)
    out["vendi"], out["vendi_method"] = vendi_score(features, kernel, method)
    out["vendi_kernel"] = kernel
    return out
