"""Reading .h5ad files and finding the raw counts inside an AnnData."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp

from cellsynth.data.validate import validate_counts
from cellsynth.errors import DataError

CountsSource = Literal["auto", "X", "layers/counts", "raw"]
COUNTS_SOURCES: tuple[str, ...] = ("auto", "X", "layers/counts", "raw")

# Rows per chunk when a dense matrix on disk is read as CSR. A multiple of the HDF5 chunk height of
# the Kang file (107 rows), and small enough that the dense chunk stays ~100 MB at 14k genes.
_READ_CHUNK_ROWS = 2140


def read_h5ad(path: str | Path) -> ad.AnnData:
    """Read a .h5ad file, loading dense X / raw.X chunk by chunk as CSR float matrices.

    Reading a dense matrix chunk-wise keeps peak memory near the sparse size (Kang: ~0.4 GB
    instead of ~1.5 GB for dense + CSR copies). Other elements are read as anndata reads them.

    Parameters
    ----------
    path : str or Path
        The .h5ad file.

    Returns
    -------
    AnnData
        X (and raw.X) as ``scipy.sparse.csr_matrix`` of the on-disk dtype when they were dense.

    Raises
    ------
    DataError
        If the file is missing or is not a readable .h5ad file.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"No .h5ad file at '{path}'.")
    try:
        with h5py.File(path, "r") as f:
            # anndata's as_sparse only accepts elements stored dense; sparse ones are groups.
            dense = tuple(k for k in ("X", "raw/X") if k in f and isinstance(f[k], h5py.Dataset))
            # scipy.sparse has no float16: such a matrix is read dense and widened instead.
            half = {k for k in dense if f[k].dtype == np.float16}
        adata = ad.read_h5ad(
            path,
            as_sparse=tuple(k for k in dense if k not in half),
            as_sparse_fmt=sp.csr_matrix,
            chunk_size=_READ_CHUNK_ROWS,
        )
        if "X" in half:
            adata.X = sp.csr_matrix(np.asarray(adata.X, dtype=np.float32))
        if "raw/X" in half:
            raw = adata.raw.to_adata()
            raw.X = sp.csr_matrix(np.asarray(raw.X, dtype=np.float32))
            adata.raw = raw
        return adata
    except Exception as err:  # h5py and anndata raise many types for a corrupt file
        raise DataError(f"Cannot read '{path}' as an .h5ad file: {err}") from err


def _as_csr(matrix) -> sp.csr_matrix:
    """Any dense or sparse matrix as a CSR matrix (no copy when it already is one)."""
    if sp.issparse(matrix):
        return matrix if isinstance(matrix, sp.csr_matrix) else sp.csr_matrix(matrix)
    return sp.csr_matrix(np.asarray(matrix))


def _looks_like_counts(csr: sp.csr_matrix) -> bool:
    """True if every stored value is a finite, non-negative whole number."""
    if not (np.issubdtype(csr.dtype, np.integer) or np.issubdtype(csr.dtype, np.floating)):
        return False
    data = csr.data
    if np.issubdtype(data.dtype, np.integer):
        return bool((data >= 0).all())
    return bool(np.isfinite(data).all() and (data >= 0).all() and (data == np.round(data)).all())


def _candidates(adata: ad.AnnData) -> dict[str, tuple[object, pd.Index]]:
    """The places raw counts may live, with the gene names that go with each."""
    found: dict[str, tuple[object, pd.Index]] = {}
    if "counts" in adata.layers:
        found["layers/counts"] = (adata.layers["counts"], adata.var_names)
    if adata.X is not None:
        found["X"] = (adata.X, adata.var_names)
    if adata.raw is not None:
        # .raw keeps its own genes (often more than X, e.g. before HVG subsetting).
        found["raw"] = (adata.raw.X, adata.raw.var_names)
    return found


def extract_counts(
    adata: ad.AnnData, source: CountsSource = "auto", require_integer: bool = True
) -> tuple[sp.csr_matrix, pd.Index, str]:
    """Take the raw counts out of an AnnData as a validated CSR float32 matrix.

    Parameters
    ----------
    adata : AnnData, shape [n_cells, n_vars]
        The data set.
    source : {"auto", "X", "layers/counts", "raw"}
        Where the counts are. "auto" prefers ``layers['counts']``, then X if it holds
        non-negative whole numbers, then ``.raw`` if it does; if none qualifies, X is validated
        and the error says what is wrong with it.
    require_integer : bool
        Require whole-number counts (see :func:`validate_counts`).

    Returns
    -------
    counts : scipy.sparse.csr_matrix, float32, shape [n_cells, n_genes]
        A copy of the counts without explicit zeros; the AnnData is left untouched.
    gene_names : pandas.Index, length n_genes
        ``raw.var_names`` for source "raw", else ``var_names``.
    source : str
        The source used ("X", "layers/counts" or "raw").

    Raises
    ------
    DataError
        If the requested source does not exist or its values are not valid counts.
    """
    if source not in COUNTS_SOURCES:
        raise DataError(f"Unknown counts source {source!r}; choose one of {COUNTS_SOURCES}.")
    found = _candidates(adata)
    converted: dict[str, sp.csr_matrix] = {}

    def csr_of(key: str) -> sp.csr_matrix:
        # Convert each candidate at most once: a dense X can be gigabytes.
        if key not in converted:
            converted[key] = _as_csr(found[key][0])
        return converted[key]

    if source == "auto":
        chosen = next(
            (
                k
                for k in ("layers/counts", "X", "raw")
                if k in found and (k == "layers/counts" or _looks_like_counts(csr_of(k)))
            ),
            "X",  # nothing looks like counts: validating X gives the most useful error
        )
    else:
        chosen = source
    if chosen not in found:
        raise DataError(
            f"Counts source {chosen!r} is not present in this AnnData "
            f"(present: {', '.join(found) or 'none'})."
        )
    genes = found[chosen][1]
    csr = csr_of(chosen)
    validate_counts(csr, genes, require_integer, cell_names=adata.obs_names)
    # Copy so that removing explicit zeros (which would count as "detected" in QC) and casting
    # never touches the caller's matrix. float32 holds whole numbers exactly up to 2**24.
    csr = sp.csr_matrix(csr, dtype=np.float32, copy=True)
    csr.sum_duplicates()
    csr.eliminate_zeros()
    return csr, pd.Index(genes.astype(str)), chosen
