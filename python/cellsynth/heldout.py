"""The real cells a bundle never saw: its held-out split, rebuilt from the preprocessing record.

A bundle records every preprocessing choice (QC thresholds, subsample, split seed and fraction, gene
selection), so running :func:`cellsynth.data.prepare` again with them on the same counts gives the
same split; the rebuilt gene list is checked against the bundle's to prove it.
"""

from __future__ import annotations

import anndata
import numpy as np
import pandas as pd

from cellsynth.bundle import Bundle
from cellsynth.errors import DataError


def held_out_cells(bundle: Bundle, adata: anndata.AnnData) -> tuple[np.ndarray, pd.DataFrame]:
    """Log-normalised expression float32 [n_test, G] and obs [n_test, K] of the held-out cells.

    Raises
    ------
    DataError
        If ``adata`` is not the data the bundle was trained on (the rebuilt genes differ).
    """
    from cellsynth.data import prepare

    record = bundle.preprocessing
    prepared = prepare(
        adata,
        bundle.labels.keys,
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
    if list(prepared.genes) != list(bundle.genes):
        raise DataError(
            f"these counts are not the data {bundle.path} was trained on: rebuilding its "
            "preprocessing selects other genes"
        )
    return prepared.x_test, prepared.obs_test
