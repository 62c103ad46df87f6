"""The ``var`` table of the model genes: the training data's own gene metadata plus what cellsynth
measured on the training cells, kept in a bundle and written into every output's ``var``.

Columns, in this order:

- every column of the input ``var`` (gene ids, a user's own ``highly_variable`` ...), as given;
- computed on the training cells (after QC, before the split's held-out cells are seen), with
  the names scanpy gives them: ``highly_variable`` (True: the model genes are the selected
  ones), ``highly_variable_rank`` (0 = highest score), ``gene_selection_score`` (the selection
  method's score, e.g. Seurat's normalised dispersion), ``means`` (log1p of the mean normalised
  expression, as ``scanpy.pp.highly_variable_genes(flavor="seurat")`` writes it),
  ``mean_counts``, ``n_cells_by_counts`` and ``pct_dropout_by_counts`` (as
  ``scanpy.pp.calculate_qc_metrics`` writes them).

Where the input already has a column of one of these names, the input's column is kept: it is
the user's metadata and says what they meant by it. An input column named ``gene`` or ``_index``
(which anndata cannot write beside this index) is kept as ``gene_input`` / ``_index_input``.

On disk (``var.json`` of a bundle): the gene order and each column's dtype and values, so bool,
integer, float and string columns come back as they were; other dtypes are written as strings.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from cellsynth.errors import BundleError

VAR_FORMAT = "cellsynth-var"
VAR_FORMAT_VERSION = 1
INDEX_NAME = "gene"
RESERVED_NAMES = (INDEX_NAME, "_index")  # column names anndata cannot write beside this index


def gene_metadata(
    input_var: pd.DataFrame,
    counts_train: sp.csr_matrix,
    lognorm_train: sp.csr_matrix | np.ndarray,
    scores: np.ndarray,
) -> pd.DataFrame:
    """The ``var`` table of the model genes.

    Parameters
    ----------
    input_var : DataFrame, shape [G, *]
        The input's ``var`` rows of the model genes, in model order (index: gene names).
    counts_train : scipy.sparse.csr_matrix, shape [n_train, G]
        Raw counts of the training cells for the model genes.
    lognorm_train : sparse or dense, float32, shape [n_train, G]
        Their log-normalised expression.
    scores : np.ndarray, float64, shape [G]
        The gene selection score of each model gene.

    Returns
    -------
    DataFrame, shape [G, *], index named ``gene``
    """
    n_train, n_genes = counts_train.shape
    counts = sp.csr_matrix(counts_train)
    detected = np.bincount(counts.indices[counts.data > 0], minlength=n_genes)
    total = np.asarray(counts.sum(axis=0, dtype=np.float64)).ravel()
    expm1_mean = (
        np.asarray(sp.csr_matrix(lognorm_train).expm1().mean(axis=0, dtype=np.float64)).ravel()
        if sp.issparse(lognorm_train)
        else np.expm1(np.asarray(lognorm_train, dtype=np.float64)).mean(axis=0)
    )
    # Rank by score among the model genes: stable on the negated score, ties in gene order.
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    rank = np.empty(n_genes, dtype=np.int64)
    rank[order] = np.arange(n_genes)
    computed = {
        "highly_variable": np.ones(n_genes, dtype=bool),
        "highly_variable_rank": rank,
        "gene_selection_score": np.asarray(scores, dtype=np.float64),
        "means": np.log1p(expm1_mean),
        "mean_counts": total / max(n_train, 1),
        "n_cells_by_counts": detected.astype(np.int64),
        "pct_dropout_by_counts": 100.0 * (1.0 - detected / max(n_train, 1)),
    }
    var = pd.DataFrame(index=pd.Index([str(g) for g in input_var.index], name=INDEX_NAME))
    for name in input_var.columns:
        # anndata refuses a column named like the index ('gene') or its reserved '_index'.
        target = f"{name}_input" if str(name) in RESERVED_NAMES else str(name)
        var[target] = input_var[name].array  # .array keeps categorical / nullable dtypes
    for name, values in computed.items():
        if name not in var.columns:
            var[name] = values
    return var


def empty_var(genes: list[str]) -> pd.DataFrame:
    """A ``var`` with the genes and no columns (a bundle trained before gene metadata was kept)."""
    return pd.DataFrame(index=pd.Index(list(genes), dtype=object, name=INDEX_NAME))


def _column(values: pd.Series) -> dict[str, Any]:
    """One column as {dtype, values}; bool / int / float keep their type, the rest is text."""
    if pd.api.types.is_bool_dtype(values):
        return {"dtype": "bool", "values": [bool(v) for v in values]}
    if pd.api.types.is_integer_dtype(values):
        return {"dtype": "int64", "values": [int(v) for v in values]}
    if pd.api.types.is_float_dtype(values):
        # JSON has no NaN: write null and read it back as NaN.
        return {
            "dtype": "float64",
            "values": [None if not math.isfinite(float(v)) else float(v) for v in values],
        }
    if isinstance(values.dtype, pd.CategoricalDtype):
        return {"dtype": "category", "values": [None if pd.isna(v) else str(v) for v in values]}
    return {"dtype": "str", "values": [None if pd.isna(v) else str(v) for v in values]}


def var_to_dict(var: pd.DataFrame) -> dict[str, Any]:
    """A JSON-serialisable form of a ``var`` table (see the module docstring)."""
    return {
        "format": VAR_FORMAT,
        "format_version": VAR_FORMAT_VERSION,
        "genes": [str(g) for g in var.index],
        "columns": {str(name): _column(var[name]) for name in var.columns},
    }


def var_from_dict(d: Any, genes: list[str], where: str) -> pd.DataFrame:
    """Rebuild a ``var`` table; ``genes`` must be its gene order, or BundleError names ``where``."""
    if not isinstance(d, dict) or d.get("format") != VAR_FORMAT:
        raise BundleError(f"{where} is not a cellsynth gene table")
    if d.get("format_version") != VAR_FORMAT_VERSION:
        raise BundleError(
            f"{where}: gene table version {d.get('format_version')!r} is not {VAR_FORMAT_VERSION}"
        )
    if list(d.get("genes", [])) != list(genes):
        raise BundleError(f"{where} lists other genes than the bundle's config.json")
    var = empty_var(genes)
    columns = d.get("columns")
    if not isinstance(columns, dict):
        raise BundleError(f"{where} has no 'columns' table")
    for name, column in columns.items():
        values = column.get("values") if isinstance(column, dict) else None
        if not isinstance(values, list) or len(values) != len(genes):
            raise BundleError(f"{where}: column {name!r} does not hold one value per gene")
        dtype = column.get("dtype")
        if dtype == "bool":
            var[name] = np.asarray(values, dtype=bool)
        elif dtype == "int64":
            var[name] = np.asarray(values, dtype=np.int64)
        elif dtype == "float64":
            var[name] = np.asarray([np.nan if v is None else v for v in values], dtype=np.float64)
        elif dtype == "category":
            var[name] = pd.Categorical(values)
        elif dtype == "str" and any(v is None for v in values):
            var[name] = pd.Categorical(values)  # h5ad cannot store None in a string array
        elif dtype == "str":
            var[name] = pd.array(values, dtype=object)
        else:
            raise BundleError(f"{where}: column {name!r} has unknown dtype {dtype!r}")
    return var


def write_var(var: pd.DataFrame, path: Path) -> None:
    """Write a ``var`` table as JSON (see :func:`var_to_dict`)."""
    Path(path).write_text(json.dumps(var_to_dict(var), separators=(",", ":")) + "\n")


def read_var(path: Path, genes: list[str]) -> pd.DataFrame:
    """Read a table written by :func:`write_var`; its genes must be ``genes``, in that order."""
    try:
        d = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{path} is not readable JSON ({exc})") from exc
    return var_from_dict(d, genes, str(path))
