"""Gene metadata (var): computed like scanpy, kept in bundles, written into every output."""

from __future__ import annotations

import json
import shutil

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import cellsynth
from cellsynth.bundle.format import VAR_FILE
from cellsynth.bundle.load import load_bundle
from cellsynth.data import prepare
from cellsynth.data.gene_metadata import read_var, var_from_dict, var_to_dict, write_var
from cellsynth.errors import BundleError

sc = pytest.importorskip("scanpy")

COMPUTED = [
    "highly_variable",
    "highly_variable_rank",
    "gene_selection_score",
    "means",
    "mean_counts",
    "n_cells_by_counts",
    "pct_dropout_by_counts",
]


def test_prepare_var_matches_scanpy_on_the_training_cells(kang_prepared):
    var = kang_prepared.var
    assert list(var.index) == kang_prepared.genes and var.index.name == "gene"
    assert list(var.columns) == COMPUTED  # Kang's own var has no columns
    assert var["highly_variable"].all()
    # scanpy's numbers for the same training cells and genes.
    counts = ad.AnnData(kang_prepared.counts_train.copy())
    sc.pp.calculate_qc_metrics(counts, inplace=True, percent_top=None)
    for column in ("mean_counts", "n_cells_by_counts", "pct_dropout_by_counts"):
        np.testing.assert_allclose(var[column], counts.var[column], rtol=1e-5, err_msg=column)
    lognorm = ad.AnnData(sp.csr_matrix(kang_prepared.x_train))
    lognorm.uns["log1p"] = {"base": None}
    sc.pp.highly_variable_genes(lognorm, flavor="seurat", n_top_genes=10)
    np.testing.assert_allclose(var["means"], lognorm.var["means"], rtol=1e-4)
    # The rank orders the scores: rank 0 holds the highest score.
    ranked = var.sort_values("highly_variable_rank")["gene_selection_score"].to_numpy()
    assert np.all(np.diff(ranked) <= 0) and sorted(var["highly_variable_rank"]) == list(
        range(len(var))
    )


def test_the_inputs_own_columns_are_kept_and_win(make_toy):
    adata = make_toy(n_cells=200, n_genes=80)
    adata.var["gene_ids"] = [f"ENSG{j:011d}" for j in range(adata.n_vars)]
    adata.var["highly_variable"] = np.arange(adata.n_vars) % 2 == 0  # the user's own flags
    adata.var["chromosome"] = pd.Categorical(["1", "X"] * (adata.n_vars // 2))
    prepared = prepare(adata, ["cell_type"], n_top_genes=30, min_genes_per_cell=10)
    var = prepared.var
    picked = adata.var.loc[prepared.genes]
    assert list(var.columns[:3]) == ["gene_ids", "highly_variable", "chromosome"]
    assert list(var["gene_ids"]) == list(picked["gene_ids"])
    np.testing.assert_array_equal(var["highly_variable"], picked["highly_variable"])
    assert set(COMPUTED) - {"highly_variable"} <= set(var.columns)


def test_var_round_trips_through_json_with_its_dtypes(tmp_path):
    genes = ["a", "b", "c"]
    var = pd.DataFrame(
        {
            "flag": [True, False, True],
            "count": np.array([1, 2, 3], dtype=np.int64),
            "score": [0.5, np.nan, -np.inf],
            "ids": ["x", None, "z"],
            "chrom": pd.Categorical(["1", "2", "1"]),
        },
        index=pd.Index(genes, name="gene"),
    )
    write_var(var, tmp_path / "var.json")
    back = read_var(tmp_path / "var.json", genes)
    assert back["flag"].dtype == bool and back["count"].dtype == np.int64
    assert back["score"].iloc[0] == 0.5 and np.isnan(back["score"].iloc[1:]).all()
    # a string column with missing values comes back as a category (h5ad stores no None)
    assert isinstance(back["ids"].dtype, pd.CategoricalDtype)
    assert back["ids"].isna().tolist() == [False, True, False] and back["ids"].iloc[2] == "z"
    assert isinstance(back["chrom"].dtype, pd.CategoricalDtype)
    with pytest.raises(BundleError, match="other genes"):
        read_var(tmp_path / "var.json", ["a", "c", "b"])
    bad = var_to_dict(var)
    bad["columns"]["count"]["values"] = [1, 2]
    with pytest.raises(BundleError, match="one value per gene"):
        var_from_dict(bad, genes, "here")


def test_a_trained_bundle_keeps_var_and_generate_writes_it(tiny_bundle, tmp_path):
    b = load_bundle(tiny_bundle)
    assert (b.path / VAR_FILE).is_file()
    assert list(b.var.index) == b.genes and list(b.var.columns) == COMPUTED
    cells = cellsynth.generate(tiny_bundle, n_cells=8, steps=3, progress=False)
    pd.testing.assert_frame_equal(cells.var, b.var)
    out = tmp_path / "cells.h5ad"
    cellsynth.generate(tiny_bundle, n_cells=8, steps=3, out=out, progress=False)
    pd.testing.assert_frame_equal(ad.read_h5ad(out).var, b.var, check_index_type=False)
    # A gene table that does not belong to the bundle is refused on load, naming the file.
    copy = tmp_path / "copy"
    shutil.copytree(tiny_bundle, copy)
    table = json.loads((copy / VAR_FILE).read_text())
    table["genes"] = table["genes"][::-1]
    (copy / VAR_FILE).write_text(json.dumps(table))
    with pytest.raises(BundleError, match="var.json lists other genes"):
        load_bundle(copy)


def test_a_latent_bundle_takes_its_autoencoders_var(tiny_scdg_bundle):
    b = load_bundle(tiny_scdg_bundle)
    assert not (b.path / VAR_FILE).exists() and (b.path / "autoencoder" / VAR_FILE).is_file()
    assert list(b.var.index) == b.genes and "highly_variable_rank" in b.var.columns
    cells = cellsynth.generate(tiny_scdg_bundle, n_cells=4, steps=2, progress=False)
    pd.testing.assert_frame_equal(cells.var, b.var)


def test_awkward_input_columns_survive_into_a_written_h5ad(make_toy, tmp_path):
    # anndata cannot write a column named like the index ('gene') nor None in a string array
    from conftest import TINY_TRAINING

    from cellsynth.training.train_dit import train_dit_bundle

    adata = make_toy(n_cells=200, n_genes=60)
    adata.var["gene"] = [f"ENSG{j}" for j in range(adata.n_vars)]
    adata.var["note"] = pd.Series(["a", None] * 30, index=adata.var_names, dtype=object)
    adata.var["chrom"] = pd.Categorical(["1", np.nan] * 30)
    bundle = train_dit_bundle(
        adata, ["cell_type"], tmp_path / "b", n_top_genes=40, **{**TINY_TRAINING, "epochs": 1}
    )
    var = load_bundle(bundle).var
    assert {"gene_input", "note", "chrom"} <= set(var.columns) and "gene" not in var.columns
    assert isinstance(var["chrom"].dtype, pd.CategoricalDtype)
    out = tmp_path / "cells.h5ad"
    cellsynth.generate(bundle, n_cells=4, steps=2, out=out, progress=False)
    back = ad.read_h5ad(out).var
    assert list(back["gene_input"]) == list(var["gene_input"])
    assert back["note"].isna().sum() == var["note"].isna().sum() > 0


@pytest.mark.parametrize("name", ["kang-dit", "kang-scdg"])
def test_shipped_bundles_have_gene_metadata(name):
    var = load_bundle(name).var
    assert len(var) == 2000 and set(COMPUTED) <= set(var.columns)
    assert var["n_cells_by_counts"].min() > 0
