"""QC masks, normalisation (bit-identical to scanpy) and zero-negation."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp

from cellsynth.data import (
    extract_counts,
    inverse_zero_negate,
    log1p_normalize,
    normalize_total,
    qc_masks,
    zero_negate,
)
from cellsynth.errors import DataError

sc = pytest.importorskip("scanpy")


def _scanpy_lognorm(counts: sp.csr_matrix, target_sum: float) -> sp.csr_matrix:
    ref = ad.AnnData(counts.copy())
    sc.pp.normalize_total(ref, target_sum=target_sum)
    sc.pp.log1p(ref)
    return ref.X


def test_log1p_normalize_matches_scanpy_on_kang(kang_small):
    counts, _, _ = extract_counts(kang_small)
    ours = log1p_normalize(counts, 1e4)
    ref = _scanpy_lognorm(counts, 1e4)
    assert ours.dtype == np.float32 and isinstance(ours, sp.csr_matrix)
    np.testing.assert_array_equal(ours.indptr, ref.indptr)
    np.testing.assert_array_equal(ours.indices, ref.indices)
    np.testing.assert_array_equal(ours.data, ref.data)  # bit for bit
    assert counts.data.max() > 1  # the input was left as counts


@pytest.mark.parametrize("target_sum", [1e4, 1e6, 137.5])
def test_normalize_total_matches_scanpy_and_sums_to_target(make_toy, target_sum):
    counts = make_toy().X
    ours = normalize_total(counts, target_sum)
    ref = ad.AnnData(counts.copy())
    sc.pp.normalize_total(ref, target_sum=target_sum)
    np.testing.assert_array_equal(ours.toarray(), ref.X.toarray())
    np.testing.assert_allclose(np.asarray(ours.sum(axis=1)).ravel(), target_sum, rtol=1e-5)
    np.testing.assert_array_equal(log1p_normalize(counts, target_sum).data, np.log1p(ours.data))


def test_zero_total_cells_are_an_error(make_toy):
    counts = make_toy().X.toarray()
    counts[[3, 7]] = 0
    with pytest.raises(DataError, match=r"2 cell\(s\) have zero total counts \(first: cell 3\)"):
        normalize_total(sp.csr_matrix(counts))
    with pytest.raises(ValueError, match="positive"):
        normalize_total(sp.csr_matrix(counts), 0)


def test_qc_masks_match_scanpy_filters(kang_small):
    counts, _, _ = extract_counts(kang_small)
    # Thresholds that bite on this subsample (Kang itself has >= 500 genes per cell).
    cell_mask, gene_mask = qc_masks(counts, 700, 10)
    ref = ad.AnnData(counts.copy())
    ref.obs["i"] = np.arange(ref.n_obs)
    ref.var["j"] = np.arange(ref.n_vars)
    sc.pp.filter_cells(ref, min_genes=700)
    sc.pp.filter_genes(ref, min_cells=10)
    np.testing.assert_array_equal(np.flatnonzero(cell_mask), ref.obs["i"])
    np.testing.assert_array_equal(np.flatnonzero(gene_mask), ref.var["j"])
    assert 0 < cell_mask.sum() < counts.shape[0] and 0 < gene_mask.sum() < counts.shape[1]


def test_qc_defaults_on_full_kang(kang_adata):
    counts, _, _ = extract_counts(kang_adata)
    cell_mask, gene_mask = qc_masks(counts, 200, 3)
    assert cell_mask.all()  # Kang was filtered upstream at 500 genes per cell
    assert (~gene_mask).sum() == 216


def test_qc_ignores_explicit_zeros():
    counts = sp.csr_matrix(
        (np.array([0.0, 1.0, 2.0], np.float32), np.array([0, 1, 1]), np.array([0, 2, 3])), (2, 2)
    )
    cell_mask, gene_mask = qc_masks(counts, 2, 1)
    assert not cell_mask.any()
    cell_mask, gene_mask = qc_masks(counts, 1, 2)
    np.testing.assert_array_equal(gene_mask, [False, True])


def test_zero_negation_round_trip():
    x = np.array([[0.0, 1.5, 0.0], [2.0, 0.0, 0.25]], dtype=np.float32)
    neg = zero_negate(x)
    np.testing.assert_array_equal(neg, [[-10, 1.5, -10], [2, -10, 0.25]])
    assert neg.dtype == np.float32 and x[0, 0] == 0  # input untouched
    np.testing.assert_array_equal(inverse_zero_negate(neg), x)
    # Generated values near zero but negative are truncated, positives kept.
    noisy = np.array([[-0.2, 1.8, -9.7], [2.3, -0.0, 0.55]], dtype=np.float32)
    np.testing.assert_array_equal(inverse_zero_negate(noisy), np.maximum(noisy, 0))
    np.testing.assert_array_equal(
        inverse_zero_negate(noisy, threshold=1.0), np.where(noisy < 1.0, 0, noisy)
    )
    np.testing.assert_array_equal(zero_negate(x, value=-1.0).min(), -1.0)


def test_zero_negation_rejects_bad_values():
    x = np.ones((2, 2), np.float32)
    for value in (0.0, 3.0, float("nan"), -float("inf")):
        with pytest.raises(ValueError, match="negative"):
            zero_negate(x, value)
    with pytest.raises(ValueError, match="already zero-negated"):
        zero_negate(zero_negate(np.eye(2, dtype=np.float32)))
    with pytest.raises(ValueError, match="finite"):
        inverse_zero_negate(x, threshold=float("nan"))


def test_renormalize_log1p_puts_any_library_on_the_genes_own_scale() -> None:
    from cellsynth.data import renormalize_log1p

    rng = np.random.default_rng()
    counts = rng.poisson(rng.gamma(0.5, 3.0, (40, 25))).astype(np.float64)
    counts[3] = 0.0  # an empty cell stays empty
    totals = counts.sum(1, keepdims=True)
    expected = np.log1p(np.divide(counts * 1e4, totals, out=np.zeros_like(counts),
                                  where=totals > 0))  # fmt: skip
    np.testing.assert_allclose(renormalize_log1p(np.log1p(counts)), expected, rtol=1e-5)
    # Log-normalised by any other library size (e.g. all genes of the data): the same result.
    other = np.log1p(counts / (totals + rng.uniform(10, 5000, (40, 1))) * 1e4)
    np.testing.assert_allclose(renormalize_log1p(sp.csr_matrix(other)), expected, rtol=1e-4,
                               atol=1e-5)  # fmt: skip
    assert (renormalize_log1p(np.log1p(counts))[3] == 0).all()
    # float32 sparse input (what prepare writes) is computed in float64 all the same
    np.testing.assert_allclose(renormalize_log1p(sp.csr_matrix(np.log1p(counts), dtype=np.float32)),
                               expected, rtol=1e-5, atol=1e-5)  # fmt: skip
    # zero-negated entries (below 0) count as not expressed
    negated = np.where(counts > 0, np.log1p(counts), -1.0)
    np.testing.assert_allclose(renormalize_log1p(negated), expected, rtol=1e-5)
