"""Quality-control masks and library-size normalisation (scanpy-compatible numerics).

``log1p_normalize(counts, 1e4)`` gives the same float32 values as
``sc.pp.normalize_total(adata, target_sum=1e4); sc.pp.log1p(adata)`` on a CSR float32 X: the
per-cell size factor is ``float32(total) / target_sum`` and each count is divided by it in
float32, exactly as scanpy does.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from cellsynth.errors import DataError


def _detected(counts: sp.csr_matrix) -> sp.csr_matrix:
    """Indicator (1.0) of the strictly positive entries, same sparsity; shape [n_cells, n_genes]."""
    return sp.csr_matrix(
        ((counts.data > 0).astype(np.float32), counts.indices, counts.indptr), shape=counts.shape
    )


def qc_masks(
    counts: sp.csr_matrix, min_genes_per_cell: int, min_cells_per_gene: int
) -> tuple[np.ndarray, np.ndarray]:
    """Cells and genes that pass the usual detection filters.

    Cells are filtered first and genes are then counted over the passing cells, the order of
    ``sc.pp.filter_cells(min_genes=...)`` followed by ``sc.pp.filter_genes(min_cells=...)``.

    Parameters
    ----------
    counts : scipy.sparse.csr_matrix, shape [n_cells, n_genes]
        Raw counts.
    min_genes_per_cell : int
        Keep cells with at least this many detected (count > 0) genes.
    min_cells_per_gene : int
        Keep genes detected in at least this many of the kept cells.

    Returns
    -------
    cell_mask : np.ndarray of bool, shape [n_cells]
    gene_mask : np.ndarray of bool, shape [n_genes]
    """
    if min_genes_per_cell < 0 or min_cells_per_gene < 0:
        raise ValueError("QC thresholds must be >= 0.")
    detected = _detected(sp.csr_matrix(counts))
    genes_per_cell = np.asarray(detected.sum(axis=1)).ravel()
    cell_mask = genes_per_cell >= min_genes_per_cell
    cells_per_gene = np.asarray(detected[cell_mask].sum(axis=0)).ravel()
    gene_mask = cells_per_gene >= min_cells_per_gene
    return cell_mask, gene_mask


def library_sizes(counts: sp.csr_matrix) -> np.ndarray:
    """Total counts per cell, shape [n_cells], float32 (exact for totals below 2**24)."""
    return np.asarray(counts.sum(axis=1, dtype=np.float64)).ravel().astype(np.float32)


def normalize_total(counts: sp.csr_matrix, target_sum: float = 1e4) -> sp.csr_matrix:
    """Scale every cell to the same total count.

    Parameters
    ----------
    counts : scipy.sparse.csr_matrix, shape [n_cells, n_genes]
        Raw counts. The library size is the sum over all the genes given.
    target_sum : float
        Total of every cell after scaling (1e4: "counts per 10k").

    Returns
    -------
    scipy.sparse.csr_matrix, float32, shape [n_cells, n_genes]
        A new matrix; the input is not modified.

    Raises
    ------
    DataError
        If some cells have zero total counts (QC should have removed them).
    """
    if not target_sum > 0:
        raise ValueError(f"target_sum must be positive, got {target_sum}.")
    counts = sp.csr_matrix(counts)
    totals = library_sizes(counts)
    empty = np.flatnonzero(totals == 0)
    if empty.size:
        raise DataError(
            f"{empty.size} cell(s) have zero total counts (first: cell {empty[0]}); they cannot be "
            "normalised. Remove them first, e.g. with min_genes_per_cell >= 1."
        )
    # Same operation order and dtype as scanpy, so the values agree to the last bit.
    size_factor = totals / np.float32(target_sum)
    data = counts.data.astype(np.float32, copy=False) / np.repeat(
        size_factor, np.diff(counts.indptr)
    )
    return sp.csr_matrix((data, counts.indices.copy(), counts.indptr.copy()), shape=counts.shape)


def log1p_normalize(counts: sp.csr_matrix, target_sum: float = 1e4) -> sp.csr_matrix:
    """``log(1 + counts / total * target_sum)`` per cell: the standard log-normalisation.

    Parameters
    ----------
    counts : scipy.sparse.csr_matrix, shape [n_cells, n_genes]
        Raw counts; library sizes are summed over all these genes.
    target_sum : float
        See :func:`normalize_total`.

    Returns
    -------
    scipy.sparse.csr_matrix, float32, shape [n_cells, n_genes]
        Natural-log values (zeros stay zeros, so the matrix stays sparse).
    """
    out = normalize_total(counts, target_sum)
    np.log1p(out.data, out=out.data)
    return out


def renormalize_log1p(x: np.ndarray | sp.spmatrix, target_sum: float = 1e4) -> np.ndarray:
    """Log-normalised expression re-normalised over its own genes: dense float32 [n, G].

    ``x`` is ``log1p(count / L * s)`` for some per-cell library size L (e.g. the total over all
    genes of the original data) and scale s; ``expm1(x)`` is proportional to the counts, so
    ``log1p(target_sum * expm1(x) / sum(expm1(x)))`` is the log-normalisation over exactly these
    genes, whatever L was. Applied to raw counts' ``log1p`` it equals :func:`log1p_normalize`.
    Comparing real and synthetic cells this way puts them on one scale (the modelled genes),
    and per-cell totals that a generator gets wrong show in every gene. Cells whose values are all
    zero stay zero; negative values (zero-negated "not expressed" entries) count as zero. Computed
    in float64 whatever the input's type.
    """
    dense = x.toarray() if sp.issparse(x) else np.asarray(x)
    e = np.expm1(np.maximum(dense.astype(np.float64, copy=False), 0.0))
    totals = e.sum(axis=1, keepdims=True)
    scale = np.divide(target_sum, totals, out=np.zeros_like(totals), where=totals > 0)
    return np.log1p(e * scale).astype(np.float32)
