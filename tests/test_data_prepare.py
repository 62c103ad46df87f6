"""Stratified split/subsample, prepare(), and the preprocessing record."""

from __future__ import annotations

import json
import warnings

import anndata as ad
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cellsynth.data import (
    PreprocessingRecord,
    extract_counts,
    log1p_normalize,
    prepare,
    qc_masks,
    stratified_split,
    stratified_subsample,
)
from cellsynth.errors import DataError, GeneMismatchError

# ------------------------------------------------------------------------------------ split


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 40), min_size=1, max_size=8),
    fraction=st.floats(0.0, 0.9),
    seed=st.integers(0, 2**16),
)
def test_split_invariants(sizes, fraction, seed):
    strata = np.repeat(np.arange(len(sizes)), sizes)
    strata = np.random.default_rng(seed).permutation(strata)
    train, test = stratified_split(strata, fraction, seed)
    n = strata.size
    assert train.dtype == test.dtype == np.int64
    assert np.all(np.diff(train) > 0) and np.all(np.diff(test) > 0)
    np.testing.assert_array_equal(np.sort(np.concatenate([train, test])), np.arange(n))
    for s, size in enumerate(sizes):
        if size >= 2:
            assert np.any(strata[train] == s)
    feasible = sum(size - 1 if size >= 2 else 1 for size in sizes)
    assert test.size == min(round(n * fraction), feasible)
    again = stratified_split(strata, fraction, seed)
    np.testing.assert_array_equal(again[1], test)


def test_split_keeps_joint_proportions():
    rng = np.random.default_rng(0)
    strata = np.column_stack([rng.integers(0, 4, 5000), rng.integers(0, 2, 5000)])
    train, test = stratified_split(strata, 0.2, seed=3)
    assert test.size == 1000
    joint = strata[:, 0] * 2 + strata[:, 1]
    share = np.bincount(joint[test], minlength=8) / np.bincount(joint, minlength=8)
    np.testing.assert_allclose(share, 0.2, atol=0.003)  # largest-remainder rounding only
    other = stratified_split(strata, 0.2, seed=4)[1]
    assert not np.array_equal(other, test)
    no_labels = stratified_split(np.zeros((10, 0), np.int64), 0.3, seed=0)
    assert no_labels[1].size == 3


def test_split_rejects_bad_fraction():
    with pytest.raises(ValueError, match="test_fraction"):
        stratified_split(np.zeros(5, np.int64), 1.0)


def test_subsample_keeps_proportions_and_every_class():
    strata = np.repeat([0, 1, 2, 3], [700, 250, 45, 5])
    keep = stratified_subsample(strata, 100, seed=1)
    assert keep.size == 100 and np.all(np.diff(keep) > 0)
    np.testing.assert_array_equal(np.bincount(strata[keep]), [70, 25, 4, 1])
    few = stratified_subsample(strata, 10, seed=1)
    assert set(strata[few]) == {0, 1, 2, 3}  # every class survives a small budget
    np.testing.assert_array_equal(few, stratified_subsample(strata, 10, seed=1))
    assert not np.array_equal(keep, stratified_subsample(strata, 100, seed=2))
    np.testing.assert_array_equal(stratified_subsample(strata, 5000, seed=0), np.arange(1000))
    assert stratified_subsample(strata, 2, seed=0).size == 2


# ---------------------------------------------------------------------------------- prepare


def test_prepare_on_kang_shapes_labels_and_no_negation(kang_small, kang_prepared):
    p = kang_prepared
    rec = p.record
    assert p.label_keys == ["cell_type", "stim"]
    assert p.x_train.dtype == p.x_test.dtype == np.float32
    assert p.x_train.shape == (rec.split.n_train, 2000) and p.x_test.shape[1] == 2000
    assert rec.split.n_train + rec.split.n_test == rec.n_cells_after_qc == kang_small.n_obs
    assert rec.split.n_test == round(0.2 * kang_small.n_obs)
    assert p.x_train.min() == 0.0  # log-normalised, not zero-negated
    assert p.vocabularies["stim"] == ["CTRL", "STIM"]
    assert p.vocabularies["cell_type"] == sorted(kang_small.obs["cell_type"].unique())
    assert p.y_train.dtype == np.int64 and p.y_train.shape == (rec.split.n_train, 2)
    # Codes, obs frames and the original annotations all agree, cell by cell.
    for j, key in enumerate(p.label_keys):
        vocab = np.array(p.vocabularies[key])
        np.testing.assert_array_equal(vocab[p.y_train[:, j]], p.obs_train[key].astype(str))
        original = kang_small.obs.loc[p.obs_test.index, key].astype(str)
        np.testing.assert_array_equal(vocab[p.y_test[:, j]], original)
    assert not set(p.obs_train.index) & set(p.obs_test.index)
    assert rec.library_size.quantiles_log["0.05"] < rec.library_size.mean_log
    assert rec.library_size.mean_log < rec.library_size.quantiles_log["0.95"]


def test_genes_are_chosen_on_training_cells_only(kang_small, kang_prepared):
    """The selected genes are scanpy's seurat HVGs of the training cells, not of all cells."""
    sc = pytest.importorskip("scanpy")
    counts, names, _ = extract_counts(kang_small)
    _, gene_mask = qc_masks(counts, 200, 3)
    lognorm = log1p_normalize(counts)[:, gene_mask]
    names = names[gene_mask]

    def hvg(cells) -> list[str]:
        ref = ad.AnnData(lognorm[cells].copy())
        ref.uns["log1p"] = {"base": None}
        sc.pp.highly_variable_genes(ref, flavor="seurat", n_top_genes=2000)
        return list(names[ref.var["highly_variable"].to_numpy()])

    train = kang_small.obs_names.get_indexer(kang_prepared.obs_train.index)
    assert kang_prepared.genes == hvg(train)
    assert kang_prepared.genes != hvg(slice(None))


def test_logistic_regression_on_prepared_kang(kang_prepared):
    """0.96 cell-type accuracy with these settings on all 13,576 cells (docs/data.md)."""
    linear_model = pytest.importorskip("sklearn.linear_model")
    p = kang_prepared
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning at the small max_iter
        clf = linear_model.LogisticRegression(max_iter=30).fit(p.x_train, p.y_train[:, 0])
    assert clf.score(p.x_test, p.y_test[:, 0]) >= 0.9


def test_transform_reproduces_training_matrices_exactly(kang_small, kang_prepared):
    p = kang_prepared
    x = p.record.transform(kang_small)
    assert x.dtype == np.float32 and x.shape == (kang_small.n_obs, 2000)
    np.testing.assert_array_equal(x[kang_small.obs_names.get_indexer(p.obs_train.index)], p.x_train)
    np.testing.assert_array_equal(x[kang_small.obs_names.get_indexer(p.obs_test.index)], p.x_test)


def test_transform_aligns_genes_by_name(kang_small, kang_prepared):
    rec = kang_prepared.record
    cells = kang_small[:50]
    expected = rec.transform(cells)
    shuffled = cells[:, np.random.default_rng(0).permutation(cells.n_vars)].copy()
    np.testing.assert_array_equal(rec.transform(shuffled), expected)


def test_transform_missing_genes_error_or_zero_fill(kang_small, kang_prepared):
    rec = kang_prepared.record
    cells = kang_small[:50]
    dropped = rec.genes[:25]
    partial = cells[:, ~cells.var_names.isin(dropped)].copy()
    with pytest.raises(GeneMismatchError) as err:
        rec.transform(partial)
    msg = str(err.value)
    assert msg.startswith("25 of the model's 2000 genes are missing")
    assert all(g in msg for g in dropped[:20]) and dropped[20] not in msg and "..." in msg
    with pytest.warns(UserWarning, match="25 of the model's 2000 genes.*filling them with zeros"):
        filled = rec.transform(partial, allow_missing_genes=True)
    idx = [rec.genes.index(g) for g in dropped]
    assert np.all(filled[:, idx] == 0)
    keep = np.setdiff1d(np.arange(2000), idx)
    # Library sizes come from the genes present, so the kept columns scale slightly.
    full = rec.transform(cells)
    np.testing.assert_allclose(filled[:, keep], full[:, keep], atol=0.05)


def test_record_json_round_trip(kang_prepared):
    rec = kang_prepared.record
    d = json.loads(json.dumps(rec.to_dict()))
    assert d["record_version"] == 1
    assert d["gene_selection"] == {
        "method": "seurat",
        "n_top_genes": 2000,
        "min_detection_rate": 0.05,
    }
    assert d["split"]["stratify"] == ["cell_type", "stim"]
    back = PreprocessingRecord.from_dict(d)
    assert back == rec
    assert back.to_dict() == rec.to_dict()


def test_record_rejects_unknown_version_and_bad_keys(kang_prepared):
    d = kang_prepared.record.to_dict()
    with pytest.raises(DataError, match="record_version 2"):
        PreprocessingRecord.from_dict({**d, "record_version": 2})
    with pytest.raises(DataError, match="record_version None"):
        PreprocessingRecord.from_dict({k: v for k, v in d.items() if k != "record_version"})
    with pytest.raises(DataError, match="lacks key.*genes"):
        PreprocessingRecord.from_dict({k: v for k, v in d.items() if k != "genes"})
    with pytest.raises(DataError, match="unknown key.*colour"):
        PreprocessingRecord.from_dict({**d, "colour": "blue"})
    with pytest.raises(DataError, match="'split' lacks key.*seed"):
        split = {k: v for k, v in d["split"].items() if k != "seed"}
        PreprocessingRecord.from_dict({**d, "split": split})
    with pytest.raises(DataError, match="unique"):
        PreprocessingRecord.from_dict({**d, "genes": ["A", "A"]})


def test_prepare_three_labels_on_wu2020(wu2020_adata):
    keys = ["cluster_orig", "source", "patient"]
    p = prepare(wu2020_adata, keys, n_top_genes=500)
    rec = p.record
    # 4 of the 200 cells have fewer than 200 detected genes.
    assert rec.n_cells_input == 200 and rec.n_cells_after_qc == 196
    assert p.y_train.shape == (rec.split.n_train, 3) and rec.split.n_test == round(0.2 * 196)
    joint_train = set(map(tuple, p.y_train))
    all_codes = np.vstack([p.y_train, p.y_test])
    combos, counts = np.unique(all_codes, axis=0, return_counts=True)
    for combo in combos[counts >= 2]:
        assert tuple(combo) in joint_train
    assert {k: len(v) for k, v in p.vocabularies.items()} == {
        "cluster_orig": 16,
        "source": 3,
        "patient": 14,
    }


def test_prepare_unconditional_and_subsampled(make_toy):
    adata = make_toy(n_cells=200, n_genes=80)
    p = prepare(adata, [], n_top_genes=20, min_genes_per_cell=5, max_cells=100, seed=7)
    assert p.y_train.shape == (80, 0) and p.y_test.shape == (20, 0)
    assert p.vocabularies == {} and p.obs_train.shape == (80, 0)
    assert p.record.max_cells == 100 and p.record.n_cells_input == 200
    q = prepare(adata, [], n_top_genes=20, min_genes_per_cell=5, max_cells=100, seed=7)
    np.testing.assert_array_equal(p.x_train, q.x_train)
    r = prepare(adata, ["cell_type"], n_top_genes=20, min_genes_per_cell=5, max_cells=100)
    shares = r.obs_train["cell_type"].value_counts(normalize=True).sort_index()
    expected = adata.obs["cell_type"].value_counts(normalize=True).sort_index()
    np.testing.assert_allclose(shares, expected, atol=0.03)


def test_prepare_bad_inputs(make_toy):
    adata = make_toy()
    with pytest.raises(DataError, match="'tissue' is not in obs"):
        prepare(adata, ["tissue"])
    bad = adata.copy()
    bad.obs["cell_type"] = bad.obs["cell_type"].astype(object)
    bad.obs.iloc[4, 0] = np.nan
    with pytest.raises(DataError, match="'cell_type' has 1 missing"):
        prepare(bad, ["cell_type"])
    neg = adata.copy()
    neg.X.data[0] = -3
    with pytest.raises(DataError, match="negative"):
        prepare(neg, ["cell_type"])
    with pytest.raises(DataError, match="QC removed every cell"):
        prepare(adata, ["cell_type"], min_genes_per_cell=10_000)
    with pytest.raises(DataError, match="Only .* genes are eligible"):
        prepare(adata, ["cell_type"], n_top_genes=500, min_genes_per_cell=5)
    with pytest.raises(ValueError, match="zero_value"):
        prepare(adata, ["cell_type"], zero_value=0.0)
    with pytest.raises(ValueError, match="gene_selection"):
        prepare(adata, ["cell_type"], gene_selection="hvg")
