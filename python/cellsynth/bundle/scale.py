"""Put real cells on the scale of a bundle's synthetic cells, in one call.

A bundle's output X is ``log1p(counts / library_size * target_sum)`` over the bundle's genes,
with the library size counted over *all* genes of the cell (the training data's convention), so
``expm1(X).sum(1)`` is well below ``target_sum``. Real cells normalised after keeping only those
genes would sit on another scale and separate from synthetic cells in any joint embedding; this
module applies the bundle's own normalisation to real counts instead.
"""

from __future__ import annotations

from typing import Any

import anndata
import numpy as np
import pandas as pd
import scipy.sparse as sp

from cellsynth.bundle.load import Bundle, load_bundle
from cellsynth.errors import GeneMismatchError

#: How X relates to counts, in the words every cellsynth output records.
NORMALISATION = "log1p(counts / library size over all genes of the cell * {target_sum:g})"


def normalize_like(real: Any, bundle: str | Bundle) -> anndata.AnnData:
    """Real cells on the scale of ``bundle``'s synthetic cells.

    Parameters
    ----------
    real : AnnData, .h5ad path or built-in data set name
        Raw counts (``layers['counts']``, X or ``.raw``) of any genes that include the bundle's.
    bundle : bundle path, shipped name or Bundle

    Returns
    -------
    AnnData [n_cells, G]
        The bundle's genes in its order; ``X`` = log1p(counts / total over all of the cell's
        genes * the bundle's target sum), CSR float32, as the bundle writes synthetic cells;
        ``layers['counts']`` the counts of those genes (int32); ``obs`` kept, with the library
        size in ``obs['library_size']``.

    Raises
    ------
    GeneMismatchError
        If genes of the bundle are missing from ``real`` (the first ones are named).
    """
    from cellsynth.data import datasets, extract_counts

    b = load_bundle(bundle, verify_weights=False)
    adata = real if isinstance(real, anndata.AnnData) else datasets.load(real)
    counts, genes, _ = extract_counts(adata, "auto")
    index = pd.Index(genes.astype(str))
    missing = [g for g in b.genes if g not in index]
    if missing:
        raise GeneMismatchError(
            f"{len(missing)} of the bundle's {len(b.genes)} genes are not in the real data, e.g. "
            f"{', '.join(missing[:5])}"
        )
    library = np.asarray(counts.sum(axis=1), dtype=np.float64).ravel()  # over every gene
    kept = sp.csr_matrix(counts[:, index.get_indexer(b.genes)], dtype=np.float64)
    scale = np.divide(b.preprocessing.target_sum, library, out=np.zeros_like(library),
                      where=library > 0)  # fmt: skip
    x = sp.diags(scale) @ kept
    x.data = np.log1p(x.data)
    obs = adata.obs.copy()
    obs["library_size"] = library.astype(np.float32)
    return anndata.AnnData(
        X=sp.csr_matrix(x, dtype=np.float32),
        obs=obs,
        var=b.var,
        layers={"counts": sp.csr_matrix(kept, dtype=np.int32)},
        uns={
            "cellsynth": {
                "command": "normalize_like",
                "bundle": str(b.path),
                "bundle_hash": b.hash,
                "normalisation": NORMALISATION.format(target_sum=b.preprocessing.target_sum),
            }
        },
    )
