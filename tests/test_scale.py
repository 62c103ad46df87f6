"""normalize_like: real cells on the scale of a bundle's synthetic cells, against a direct
computation from the raw counts."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest

import cellsynth
from cellsynth.errors import GeneMismatchError


def test_real_cells_get_the_bundles_normalisation(kang_small: ad.AnnData) -> None:
    real = kang_small[:200].copy()
    got = cellsynth.normalize_like(real, "kang-dit")
    genes = cellsynth.load_bundle("kang-dit").genes
    assert list(got.var_names) == genes and got.n_obs == 200
    counts = real.X.toarray().astype(np.float64)  # kang ships raw counts in X
    library = counts.sum(1)  # over every gene of the cell, not only the bundle's
    cols = [list(real.var_names).index(g) for g in genes]
    want = np.log1p(counts[:, cols] / library[:, None] * 1e4)
    np.testing.assert_allclose(got.X.toarray(), want, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(got.layers["counts"].toarray(), counts[:, cols])
    np.testing.assert_allclose(got.obs["library_size"], library, rtol=1e-6)
    assert np.median(np.expm1(got.X.toarray()).sum(1)) < 1e4  # the modelled genes' share
    assert got.uns["cellsynth"]["command"] == "normalize_like"


def test_missing_genes_are_named(kang_small: ad.AnnData) -> None:
    real = kang_small[:20, 100:].copy()
    with pytest.raises(GeneMismatchError, match="of the bundle's 2000 genes are not in"):
        cellsynth.normalize_like(real, "kang-dit")
