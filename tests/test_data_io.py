"""extract_counts (finding counts in X / layers / raw) and read_h5ad."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp

from cellsynth.data import extract_counts, log1p_normalize, read_h5ad
from cellsynth.errors import DataError


def test_dense_and_sparse_x_give_the_same_csr(make_toy):
    dense = make_toy(dense=True)
    x_dense, genes_dense, src_dense = extract_counts(dense)
    x_sparse, genes_sparse, src_sparse = extract_counts(make_toy(dense=False))
    for x in (x_dense, x_sparse):
        assert isinstance(x, sp.csr_matrix) and x.dtype == np.float32
    assert src_dense == src_sparse == "X"
    assert (x_dense != x_sparse).nnz == 0
    np.testing.assert_array_equal(x_dense.toarray(), dense.X)
    assert list(genes_dense) == list(genes_sparse) == list(dense.var_names)


def test_integer_dtype_and_sparse_array_are_accepted(make_toy):
    adata = make_toy()
    adata.X = sp.csr_array(adata.X.astype(np.int32))
    x, _, _ = extract_counts(adata)
    assert x.dtype == np.float32 and isinstance(x, sp.csr_matrix)
    np.testing.assert_array_equal(x.toarray(), adata.X.toarray())


def test_auto_prefers_counts_layer(make_toy):
    adata = make_toy()
    counts = adata.X.copy()
    adata.X = log1p_normalize(counts)
    adata.layers["counts"] = counts * 2
    x, _, source = extract_counts(adata)
    assert source == "layers/counts"
    assert (x != counts * 2).nnz == 0


def test_auto_falls_back_to_raw_with_its_own_genes(make_toy):
    adata = make_toy()
    adata.raw = adata
    subset = adata[:, :20].copy()  # raw keeps all 60 genes, X only 20
    subset.X = log1p_normalize(subset.X)
    x, genes, source = extract_counts(subset)
    assert source == "raw"
    assert x.shape == (adata.n_obs, 60)
    assert list(genes) == list(adata.var_names)


def test_auto_without_counts_explains_what_is_in_x(make_toy):
    adata = make_toy()
    adata.X = log1p_normalize(adata.X)
    with pytest.raises(DataError, match="non-integer entries.*normalised"):
        extract_counts(adata)
    # Accepting non-integer values makes X usable again.
    x, _, source = extract_counts(adata, require_integer=False)
    assert source == "X" and x.nnz == adata.X.nnz


def test_explicit_source_that_is_absent(make_toy):
    with pytest.raises(DataError, match=r"'raw' is not present.*present: X"):
        extract_counts(make_toy(), "raw")
    with pytest.raises(DataError, match="Unknown counts source"):
        extract_counts(make_toy(), "obsm")


def test_input_is_not_modified_and_explicit_zeros_dropped(make_toy):
    adata = make_toy()
    x = adata.X.tocsr()
    x.data[:5] = 0.0  # explicit zeros, which must not count as detected genes
    adata.X = x
    before = adata.X.data.copy()
    out, _, _ = extract_counts(adata)
    assert out.nnz == x.nnz - 5
    np.testing.assert_array_equal(adata.X.data, before)
    assert out.data is not adata.X.data


def test_bad_values_in_layer_are_reported(make_toy):
    adata = make_toy()
    bad = adata.X.copy()
    bad.data[3] = -1
    adata.layers["counts"] = bad
    with pytest.raises(DataError, match="1 negative entries"):
        extract_counts(adata)


def test_read_h5ad_dense_becomes_csr(tmp_path, make_toy):
    adata = make_toy(dense=True)
    adata.raw = adata
    path = tmp_path / "toy.h5ad"
    adata.write_h5ad(path)
    back = read_h5ad(path)
    assert isinstance(back.X, sp.csr_matrix) and back.X.dtype == np.float32
    assert isinstance(back.raw.X, sp.csr_matrix)
    np.testing.assert_array_equal(back.X.toarray(), adata.X)
    assert back.obs.equals(adata.obs)

    sparse = make_toy()
    sparse.write_h5ad(tmp_path / "sparse.h5ad")
    assert (read_h5ad(tmp_path / "sparse.h5ad").X != sparse.X).nnz == 0


def test_read_h5ad_missing_or_corrupt(tmp_path):
    with pytest.raises(DataError, match="No .h5ad file at '.*nowhere.h5ad'"):
        read_h5ad(tmp_path / "nowhere.h5ad")
    junk = tmp_path / "junk.h5ad"
    junk.write_bytes(b"not an hdf5 file")
    with pytest.raises(DataError, match="Cannot read '.*junk.h5ad' as an .h5ad file"):
        read_h5ad(junk)


def test_kang_counts_are_in_x(kang_small: ad.AnnData):
    x, genes, source = extract_counts(kang_small)
    assert source == "X"
    assert x.shape == (kang_small.n_obs, 14053) and len(genes) == 14053
    # The Seurat metadata agrees with the counts: nCount_RNA is the library size.
    np.testing.assert_array_equal(np.asarray(x.sum(axis=1)).ravel(), kang_small.obs["nCount_RNA"])


def test_float16_matrices_are_read_as_float32(tmp_path) -> None:
    counts = np.random.default_rng(0).poisson(2.0, size=(20, 8)).astype(np.float16)
    a = ad.AnnData(X=counts)
    a.raw = a.copy()
    a.write_h5ad(tmp_path / "half.h5ad")
    got = read_h5ad(tmp_path / "half.h5ad")
    assert sp.issparse(got.X) and got.X.dtype == np.float32
    np.testing.assert_array_equal(got.X.toarray(), counts.astype(np.float32))
    assert got.raw.X.dtype == np.float32
