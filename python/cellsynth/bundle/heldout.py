"""The real cells a bundle never saw: its held-out split, rebuilt from the preprocessing record.

A bundle records every preprocessing choice (QC thresholds, subsample, split seed and fraction, gene
selection), so running :func:`cellsynth.data.prepare` again with them on the same counts gives the
same split; the rebuilt gene list is checked against the bundle's to prove it.
"""

from __future__ import annotations

from typing import Any

import anndata
import numpy as np
import pandas as pd

from cellsynth.bundle.load import Bundle
from cellsynth.errors import DataError


def prepare_like(record: Any, adata: anndata.AnnData, where: str = "the bundle") -> Any:
    """Re-run :func:`cellsynth.data.prepare` with every choice of a preprocessing record.

    On the counts a bundle was trained on this rebuilds its exact train/test split (stratified on
    ``record.split.stratify``) and genes; the gene list is checked to prove it.

    Raises
    ------
    DataError
        If ``adata`` is not the data ``where`` was trained on (the rebuilt genes differ).
    """
    from cellsynth.data import prepare

    prepared = prepare(
        adata,
        list(record.split.stratify),
        gene_selection=record.gene_selection.method,
        n_top_genes=record.gene_selection.n_top_genes,
        min_detection_rate=record.gene_selection.min_detection_rate,
        min_genes_per_cell=record.min_genes_per_cell,
        min_cells_per_gene=record.min_cells_per_gene,
        target_sum=record.target_sum,
        zero_value=record.zero_value,
        test_fraction=record.split.test_fraction,
        seed=record.split.seed,
        max_cells=record.max_cells,
    )
    if list(prepared.genes) != list(record.genes):
        raise DataError(
            f"these counts are not the data {where} was trained on: rebuilding its "
            "preprocessing selects other genes"
        )
    return prepared


def obs_labels(adata: anndata.AnnData, cells: pd.Index, keys: list[str]) -> pd.DataFrame:
    """The ``keys`` columns of ``adata.obs`` for the named cells, as strings.

    Raises
    ------
    DataError
        If a key is not an obs column (the message lists the columns there are).
    """
    missing = [k for k in keys if k not in adata.obs.columns]
    if missing:
        raise DataError(
            f"label column(s) {missing} not found in obs; available: {list(adata.obs.columns)}"
        )
    if not adata.obs_names.is_unique:
        raise DataError("cell names (obs_names) are not unique; call adata.obs_names_make_unique()")
    return adata.obs.loc[cells, keys].astype(str)


def held_out_cells(bundle: Bundle, adata: anndata.AnnData) -> tuple[np.ndarray, pd.DataFrame]:
    """Log-normalised expression float32 [n_test, G] and obs [n_test, K] of the held-out cells.

    Raises
    ------
    DataError
        If ``adata`` is not the data the bundle was trained on (the rebuilt genes differ).
    """
    prepared = prepare_like(bundle.preprocessing, adata, str(bundle.path))
    obs = prepared.obs_test
    keys = bundle.labels.keys
    if list(obs.columns) != list(keys):
        obs = obs_labels(adata, obs.index, keys).astype("category")
    return prepared.x_test, obs
