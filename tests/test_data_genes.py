"""Gene selection: seurat parity with scanpy, variance, and the guarded CV of scRDiT."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp

from cellsynth.data import extract_counts, log1p_normalize, qc_masks, select_genes
from cellsynth.data.genes import seurat_dispersion
from cellsynth.errors import DataError

sc = pytest.importorskip("scanpy")


def _qc_lognorm(adata: ad.AnnData) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """Counts and log-normalised values of the genes passing default QC."""
    counts, _, _ = extract_counts(adata)
    _, gene_mask = qc_masks(counts, 200, 3)
    counts = counts[:, gene_mask]
    return counts, log1p_normalize(counts)


@pytest.fixture(scope="module")
def kang_matrices(kang_small):
    return _qc_lognorm(kang_small)


def _scanpy_hvg(lognorm: sp.csr_matrix, n_top: int) -> ad.AnnData:
    ref = ad.AnnData(lognorm.copy())
    ref.uns["log1p"] = {"base": None}
    sc.pp.highly_variable_genes(ref, flavor="seurat", n_top_genes=n_top)
    return ref


def test_seurat_selects_the_same_genes_as_scanpy_on_kang(kang_matrices):
    counts, lognorm = kang_matrices
    ours = select_genes(counts, lognorm, "seurat", 2000)
    ref = _scanpy_hvg(lognorm, 2000)
    assert ours.dtype == np.int64 and ours.size == 2000
    assert np.all(np.diff(ours) > 0)
    np.testing.assert_array_equal(ours, np.flatnonzero(ref.var["highly_variable"]))
    # The scores themselves agree to float32 round-off (sums are taken in another order).
    theirs = ref.var["dispersions_norm"].to_numpy()
    mine = seurat_dispersion(lognorm)
    np.testing.assert_array_equal(np.isnan(mine), np.isnan(theirs))
    finite = ~np.isnan(theirs)
    np.testing.assert_allclose(mine[finite], theirs[finite], atol=1e-5)


def test_seurat_matches_scanpy_on_a_tiny_data_set(wu2020_adata):
    counts, lognorm = _qc_lognorm(wu2020_adata)
    ours = select_genes(counts, lognorm, "seurat", 500)
    ref = _scanpy_hvg(lognorm, 500)
    np.testing.assert_array_equal(ours, np.flatnonzero(ref.var["highly_variable"]))


def test_variance_picks_top_variance_of_lognorm(kang_matrices):
    counts, lognorm = kang_matrices
    counts, lognorm = counts[:, :3000], lognorm[:, :3000]
    ours = select_genes(counts, lognorm, "variance", 300)
    var = lognorm.toarray().astype(np.float64).var(axis=0)
    np.testing.assert_array_equal(ours, np.sort(np.argsort(-var, kind="stable")[:300]))


def test_cv_guard_avoids_nearly_empty_genes(kang_matrices):
    counts, lognorm = kang_matrices
    detection = np.bincount(counts.indices, minlength=counts.shape[1]) / counts.shape[0]
    unguarded = select_genes(counts, lognorm, "cv", 2000, min_detection_rate=0.0)
    guarded = select_genes(counts, lognorm, "cv", 2000, min_detection_rate=0.01)
    # docs/data.md: unguarded CV picks the rarest genes; the chosen matrix is >99.5% zeros.
    assert 1 - detection[unguarded].mean() > 0.995
    assert detection[guarded].min() >= 0.01
    assert 1 - detection[guarded].mean() < 1 - detection[unguarded].mean() - 0.01
    seurat = select_genes(counts, lognorm, "seurat", 2000)
    assert detection[seurat].mean() > detection[guarded].mean()


def test_too_few_eligible_genes_is_an_error_with_numbers(make_toy):
    counts = make_toy(n_cells=50, n_genes=30).X
    lognorm = log1p_normalize(counts)
    with pytest.raises(DataError, match=r"Only \d+ of 30 genes are eligible.*n_top_genes=31"):
        select_genes(counts, lognorm, "seurat", 31)
    with pytest.raises(DataError, match="min_detection_rate"):
        select_genes(counts, lognorm, "cv", 10, min_detection_rate=0.99)
    with pytest.raises(ValueError, match="Unknown gene selection method"):
        select_genes(counts, lognorm, "pca", 10)


def test_ties_give_exactly_n_genes_in_column_order(make_toy):
    base = make_toy(n_cells=40, n_genes=10).X.toarray()
    counts = sp.csr_matrix(np.hstack([base, base, base]))  # every score occurs three times
    lognorm = log1p_normalize(counts)
    for method in ("variance", "cv", "seurat"):
        chosen = select_genes(counts, lognorm, method, 4)
        assert chosen.size == 4
    var_pick = select_genes(counts, lognorm, "variance", 3)
    assert np.unique(var_pick % 10).size == 1  # the three copies of the top gene
