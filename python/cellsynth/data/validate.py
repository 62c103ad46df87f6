"""Checks on counts and labels that fail early with a message a biologist can act on."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp

from cellsynth.errors import DataError

# How many offending names an error message lists before it says "... and N more".
_MAX_LISTED = 10

# One gene's count in one cell above this is a data error (UMI counts per cell are ~1e3-1e5).
MAX_PLAUSIBLE_COUNT = 1e9
# Classes smaller than this are warned about: too few cells to learn or to check.
MIN_CLASS_CELLS = 5


def _listing(names: Sequence[str], limit: int = _MAX_LISTED) -> str:
    """Join up to ``limit`` names, mentioning how many were left out."""
    shown = ", ".join(repr(str(n)) for n in names[:limit])
    if len(names) > limit:
        shown += f" ... and {len(names) - limit} more"
    return shown


def _flat_entries(matrix: np.ndarray | sp.spmatrix | sp.sparray):
    """Stored values in row-major order, and a function from a position to (cell, gene).

    Returns
    -------
    values : np.ndarray, shape [n_stored]
        All entries of a dense matrix, or the stored entries of a CSR matrix. Both are in
        row-major order, so the first bad position is the first bad cell.
    locate : callable
        Maps a position in ``values`` to its (cell index, gene index).
    """
    if sp.issparse(matrix):
        csr = matrix if matrix.format == "csr" else sp.csr_matrix(matrix)
        indptr, indices = csr.indptr, csr.indices

        def locate(pos: int) -> tuple[int, int]:
            return int(np.searchsorted(indptr, pos, side="right") - 1), int(indices[pos])

        return csr.data, locate
    n_genes = matrix.shape[1]
    return matrix.ravel(), lambda pos: divmod(int(pos), n_genes)


def validate_counts(
    matrix: np.ndarray | sp.spmatrix | sp.sparray,
    gene_names: Sequence[str] | pd.Index,
    require_integer: bool = True,
    *,
    cell_names: Sequence[str] | pd.Index | None = None,
) -> None:
    """Check that a matrix holds raw counts that cellsynth can use.

    Parameters
    ----------
    matrix : array or sparse matrix, shape [n_cells, n_genes]
        Counts, cells in rows.
    gene_names : sequence of str, length n_genes
        Gene names (``var_names``); must be unique.
    require_integer : bool
        Also require whole numbers (raw UMI/read counts). Switch off for ambient-corrected or
        otherwise non-integer counts.
    cell_names : sequence of str, length n_cells, optional
        Only used to name the first offending cell in error messages.

    Raises
    ------
    DataError
        If the matrix is empty, has duplicate gene names, NaN or infinite entries, negative
        entries, or (when ``require_integer``) non-integer entries. Each message says how many
        entries are affected and where the first one is.
    """
    if matrix.ndim != 2:
        raise DataError(
            f"Counts must be a 2-D cells x genes matrix, got {matrix.ndim} dimension(s)."
        )
    n_cells, n_genes = matrix.shape
    if n_cells == 0 or n_genes == 0:
        raise DataError(
            f"Counts are empty ({n_cells} cells x {n_genes} genes); need at least one of each."
        )
    if len(gene_names) != n_genes:
        raise DataError(f"Counts have {n_genes} genes (columns) but {len(gene_names)} gene names.")
    names = pd.Index(gene_names)
    if not names.is_unique:
        dups = names[names.duplicated()].unique()
        raise DataError(
            f"{len(dups)} gene name(s) occur more than once: {_listing(list(dups))}. "
            "Make them unique first (e.g. adata.var_names_make_unique())."
        )
    dtype = matrix.dtype
    if not (np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)):
        raise DataError(f"Counts must be numbers, got dtype {dtype}.")

    values, locate = _flat_entries(matrix)

    def where(mask: np.ndarray) -> str:
        pos = int(np.flatnonzero(mask)[0])
        cell, gene = locate(pos)
        cell_txt = f"cell {cell}" + (f" ({cell_names[cell]!r})" if cell_names is not None else "")
        return f"first at {cell_txt}, gene {names[gene]!r}: value {values[pos].item()!r}"

    if np.issubdtype(dtype, np.floating):
        bad = ~np.isfinite(values)
        if bad.any():
            n_nan = int(np.isnan(values).sum())
            raise DataError(
                f"Counts contain {int(bad.sum())} non-finite entries ({n_nan} NaN, "
                f"{int(bad.sum()) - n_nan} infinite); {where(bad)}. "
                "Raw counts are never NaN or inf."
            )
    bad = values < 0
    if bad.any():
        raise DataError(
            f"Counts contain {int(bad.sum())} negative entries; {where(bad)}. "
            "Raw counts are never negative: is this scaled or batch-corrected data?"
        )
    if require_integer and np.issubdtype(dtype, np.floating):
        bad = values != np.round(values)
        if bad.any():
            raise DataError(
                f"Counts contain {int(bad.sum())} non-integer entries; {where(bad)}. This looks "
                "like normalised data: pass raw counts (layers['counts'], .raw or X)."
            )
    huge = values > MAX_PLAUSIBLE_COUNT
    if huge.any():
        warnings.warn(
            f"Counts contain {int(huge.sum())} entries above {MAX_PLAUSIBLE_COUNT:.0e}; "
            f"{where(huge)}. No cell holds that many molecules of one gene: check the data.",
            UserWarning,
            stacklevel=2,
        )


def validate_labels(obs: pd.DataFrame, keys: Sequence[str]) -> None:
    """Check that label columns exist and have a usable class for every cell.

    Parameters
    ----------
    obs : pandas.DataFrame, shape [n_cells, n_columns]
        Cell annotations (``adata.obs``).
    keys : sequence of str
        Label columns to check; may be empty (unconditional model).

    Raises
    ------
    DataError
        If a column is missing (the message lists the available columns), a key is repeated,
        or a column has NaN / empty-string labels (the message gives the count and first cell).

    Warns
    -----
    UserWarning
        If a column has a single class (it carries no information), or so many classes that it
        looks continuous rather than categorical.
    """
    keys = [keys] if isinstance(keys, str) else list(keys)
    if len(set(keys)) != len(keys):
        raise DataError(f"Label keys must be distinct, got {keys}.")
    for key in keys:
        if key not in obs.columns:
            raise DataError(
                f"Label column {key!r} is not in obs. Available columns: "
                f"{_listing([str(c) for c in obs.columns], limit=50)}."
            )
        col = obs[key]
        # A copy: pandas with copy-on-write (3.x) hands out read-only arrays, updated below.
        missing = col.isna().to_numpy().copy()
        # Empty or blank strings say no more than NaN; check them on string-like columns.
        if col.dtype == object or isinstance(col.dtype, pd.CategoricalDtype | pd.StringDtype):
            text = col.astype(object).where(~missing, "").astype(str).str.strip()
            missing |= (text == "").to_numpy()
        if missing.any():
            first = obs.index[int(np.flatnonzero(missing)[0])]
            raise DataError(
                f"Label column {key!r} has {int(missing.sum())} missing (NaN or empty) label(s), "
                f"first at cell {first!r}. Fill them in or drop those cells."
            )
        n_classes = col.nunique()
        sizes = col.value_counts()
        rare = sizes[(sizes > 0) & (sizes < MIN_CLASS_CELLS)]
        if len(rare):
            warnings.warn(
                f"Label column {key!r} has {len(rare)} class(es) with fewer than "
                f"{MIN_CLASS_CELLS} cells ({', '.join(f'{k!r}: {v}' for k, v in rare.items())}); "
                "a model learns little about them and held-out checks of them are noise.",
                UserWarning,
                stacklevel=2,
            )
        if n_classes == 1:
            warnings.warn(
                f"Label column {key!r} has a single class ({col.iloc[0]!r}); "
                "it carries no information.",
                UserWarning,
                stacklevel=2,
            )
        elif n_classes > 50 and n_classes > len(col) // 2:
            warnings.warn(
                f"Label column {key!r} has {n_classes} classes for {len(col)} cells; "
                "is it a continuous value rather than a category?",
                UserWarning,
                stacklevel=2,
            )
