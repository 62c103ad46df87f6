"""Downsampling strategies (random, reweight, geosketch), diversity indices and the CLI."""

from __future__ import annotations

import math
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from cellsynth.cli.main import main
from cellsynth.errors import DataError
from cellsynth.subsample import (
    STRATEGIES,
    diversity,
    geosketch_indices,
    gini_simpson_index,
    pca_features,
    random_indices,
    resolve_size,
    reweight_allocation,
    shannon_index,
    subsample,
    vendi_score,
)


def make_clustered(sizes=(700, 280, 20), n_genes: int = 100, seed: int = 0) -> ad.AnnData:
    """Poisson counts of well-separated clusters (each with 20 marker genes), cells shuffled.

    obs 'cell_type' is c0, c1, ... with the given sizes; the last cluster of the default is 2%.
    """
    rng = np.random.default_rng(seed)
    labels = np.repeat([f"c{i}" for i in range(len(sizes))], sizes)
    base = rng.gamma(1.0, 1.0, size=n_genes)
    programs = np.ones((len(sizes), n_genes))
    for i in range(len(sizes)):
        programs[i, i * 20 : (i + 1) * 20] = 8.0  # markers of cluster i
    rates = base * programs[[int(t[1:]) for t in labels]]  # [n_cells, n_genes]
    counts = rng.poisson(rates * rng.uniform(0.7, 1.3, size=(len(labels), 1))).astype(np.float32)
    counts[:, -1] += 1  # no cell with zero total
    perm = rng.permutation(len(labels))
    obs = pd.DataFrame(
        {"cell_type": pd.Categorical(labels[perm])},
        index=[f"cell{i}" for i in range(len(labels))],
    )
    var = pd.DataFrame(index=[f"G{j}" for j in range(n_genes)])
    return ad.AnnData(sp.csr_matrix(counts[perm]), obs=obs, var=var)


@pytest.fixture(scope="module")
def clustered() -> ad.AnnData:
    """1000 cells: c0 700, c1 280, c2 20 (a 2% population). Read-only."""
    return make_clustered()


@pytest.fixture(scope="module")
def unbalanced() -> ad.AnnData:
    """150 cells: c0 100, c1 40, c2 10, so a balanced 60 cannot take 20 of c2. Read-only."""
    return make_clustered(sizes=(100, 40, 10), seed=3)


# ------------------------------------------------------------------------------------- sizes


@pytest.mark.parametrize(
    "n_obs, fraction, expected",
    [(200, 0.25, 50), (10, 0.333, 3), (10, 0.35, 4), (7, 1.0, 7), (1000, 1e-6, 1), (3, 0.5, 2)],
)
def test_fraction_rounds_half_up_with_at_least_one_cell(n_obs, fraction, expected) -> None:
    assert resolve_size(n_obs, fraction=fraction) == expected


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize(
    "n, fraction, expected", [(37, None, 37), (None, 0.1, 15), (150, None, 150)]
)
def test_every_strategy_returns_exactly_the_requested_cells(
    unbalanced: ad.AnnData, strategy: str, n, fraction, expected
) -> None:
    out = subsample(unbalanced, strategy, n=n, fraction=fraction, label_key="cell_type", seed=4)
    assert out.n_obs == expected
    assert out.obs_names.is_unique
    idx = out.uns["cellsynth"]["source_indices"]
    assert np.all(np.diff(idx) > 0)  # sorted and distinct
    assert list(out.obs_names) == list(unbalanced.obs_names[idx])


# ------------------------------------------------------------------------------- composition


def test_reweight_gives_equal_counts_per_type(unbalanced: ad.AnnData) -> None:
    out = subsample(unbalanced, "reweight", n=24, label_key="cell_type", seed=0)
    assert out.obs["cell_type"].value_counts().to_dict() == {"c0": 8, "c1": 8, "c2": 8}


def test_reweight_takes_all_of_a_small_type_and_shares_the_rest(unbalanced: ad.AnnData) -> None:
    # Share 20 each; c2 has only 10, so its 10 unused cells go 5 + 5 to c0 and c1.
    out = subsample(unbalanced, "reweight", n=60, label_key="cell_type", seed=0)
    assert out.obs["cell_type"].value_counts().to_dict() == {"c0": 25, "c1": 25, "c2": 10}
    # 61 does not divide evenly: the odd cell goes to the largest type.
    out = subsample(unbalanced, "reweight", n=61, label_key="cell_type", seed=0)
    assert out.obs["cell_type"].value_counts().to_dict() == {"c0": 26, "c1": 25, "c2": 10}


@pytest.mark.parametrize(
    "sizes, n, expected",
    [
        ({"a": 5, "b": 5, "c": 5}, 15, {"a": 5, "b": 5, "c": 5}),
        ({"a": 2, "b": 10, "c": 50, "d": 50}, 40, {"a": 2, "b": 10, "c": 14, "d": 14}),
        # the remainder goes to the larger type first, ties by name
        ({"a": 2, "b": 10, "c": 50, "d": 60}, 41, {"a": 2, "b": 10, "c": 14, "d": 15}),
        ({"a": 2, "b": 10, "c": 50, "d": 50}, 41, {"a": 2, "b": 10, "c": 15, "d": 14}),
        # water-filling in two rounds: a (3) first, then b (12 < 45 // 3 = 15)
        ({"a": 3, "b": 12, "c": 40, "d": 40}, 48, {"a": 3, "b": 12, "c": 17, "d": 16}),
        ({"a": 100, "b": 1}, 3, {"a": 2, "b": 1}),
        ({"a": 100, "b": 100}, 1, {"a": 1, "b": 0}),
    ],
)
def test_reweight_allocation_by_hand(sizes, n, expected) -> None:
    assert reweight_allocation(sizes, n) == expected


def test_reweight_on_kang_takes_rare_types_whole(kang_small: ad.AnnData) -> None:
    sizes = kang_small.obs["cell_type"].value_counts()
    got = subsample(kang_small, "reweight", n=1200, label_key="cell_type", seed=0)
    got = got.obs["cell_type"].value_counts().reindex(sizes.index)
    assert got.sum() == 1200
    whole = got == sizes  # types given all their cells
    # DC (~100 of 3000) is below the first 150-cell share; after it, NK and T are below the next.
    assert whole["DC"] and whole.sum() >= 2
    rest = got[~whole]
    assert rest.max() - rest.min() <= 1  # the others are equal up to the odd cell
    assert sizes[whole].max() <= rest.min()  # no type was cut below a smaller one kept whole


# ------------------------------------------------------------------------------- determinism


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_same_seed_same_cells_other_seed_other_cells(clustered: ad.AnnData, strategy: str) -> None:
    def cells(seed: int) -> list[str]:
        return list(
            subsample(clustered, strategy, n=50, label_key="cell_type", seed=seed).obs_names
        )

    assert cells(7) == cells(7)
    assert cells(7) != cells(8)


def test_geosketch_leaves_numpys_global_random_state_alone(clustered: ad.AnnData) -> None:
    np.random.seed(123)
    expected = np.random.random_sample(3)
    np.random.seed(123)
    geosketch_indices(pca_features(clustered, n_components=10), 30, seed=5)
    np.testing.assert_array_equal(np.random.random_sample(3), expected)


def test_geosketch_keeps_a_rare_cluster_that_random_misses(clustered: ad.AnnData) -> None:
    features = pca_features(clustered)
    rare = (clustered.obs["cell_type"] == "c2").to_numpy()  # 20 of 1000 cells
    sketched = [int(rare[geosketch_indices(features, 50, s)].sum()) for s in range(5)]
    uniform = [int(rare[random_indices(clustered.n_obs, 50, s)].sum()) for s in range(5)]
    # Uniform sampling expects 1 rare cell in 50 and finds none 36% of the time.
    assert min(sketched) >= 3
    assert sum(sketched) >= 2 * sum(uniform)


def test_output_keeps_obs_var_and_records_provenance(
    unbalanced: ad.AnnData, tmp_path: Path
) -> None:
    data = unbalanced.copy()
    data.obs["score"] = np.arange(data.n_obs, dtype=float)
    data.var["symbol"] = [f"sym{j}" for j in range(data.n_vars)]
    out = subsample(data, "geosketch", fraction=0.2, seed=1, n_components=10)
    idx = out.uns["cellsynth"]["source_indices"]
    np.testing.assert_array_equal(out.obs["score"].to_numpy(), idx.astype(float))
    pd.testing.assert_frame_equal(out.var, data.var)
    np.testing.assert_array_equal(out.X.toarray(), data.X[idx].toarray())
    rec = out.uns["cellsynth"]
    assert rec["strategy"] == "geosketch" and rec["seed"] == 1 and rec["fraction"] == 0.2
    assert rec["n_cells"] == 30 and rec["n_source_cells"] == 150 and rec["n_components"] == 10
    assert "label_key" not in rec  # None is not stored (h5ad cannot hold it)
    out.write_h5ad(tmp_path / "sub.h5ad")  # the provenance is writable
    # the input is untouched
    assert data.n_obs == 150 and "cellsynth" not in data.uns


# --------------------------------------------------------------------------------- diversity


def test_shannon_and_gini_simpson_by_hand() -> None:
    labels = ["a", "a", "b", "c"]  # p = 1/2, 1/4, 1/4
    assert shannon_index(labels) == pytest.approx(1.5 * math.log(2), abs=1e-12)
    assert gini_simpson_index(labels) == pytest.approx(1 - (0.25 + 2 * 0.0625), abs=1e-12)
    assert shannon_index(["x"] * 5) == 0.0 and gini_simpson_index(["x"] * 5) == 0.0
    four = np.repeat(["a", "b", "c", "d"], 3)
    assert shannon_index(four) == pytest.approx(math.log(4), abs=1e-12)
    assert gini_simpson_index(four) == pytest.approx(0.75, abs=1e-12)


def test_vendi_cosine_matches_the_vendi_score_package() -> None:
    vendi = pytest.importorskip("vendi_score.vendi")
    x = np.random.default_rng(0).normal(size=(80, 6))
    ours, method = vendi_score(x, "cosine", "primal")
    assert method == "primal"
    with pytest.warns(DeprecationWarning):  # vendi-score 0.0.3 touches scipy.sparse.csr
        ref = vendi.score_X(x, normalize=True)
    assert ours == pytest.approx(ref, abs=1e-10)
    assert 1.0 < ours <= 6.0  # cosine Vendi is bounded by the dimension


def test_vendi_dual_agrees_with_primal() -> None:
    vendi = pytest.importorskip("vendi_score.vendi")
    rng = np.random.default_rng(1)
    for n, d in [(50, 5), (300, 20), (30, 40)]:
        x = rng.normal(size=(n, d)) + rng.normal(size=d)  # off-centre, so directions are skewed
        primal, _ = vendi_score(x, method="primal")
        dual, method = vendi_score(x, method="dual")
        assert method == "dual"
        assert dual == pytest.approx(primal, abs=1e-8)
        assert dual == pytest.approx(vendi.score_dual(x, normalize=True), abs=1e-8)


def test_vendi_known_cases_and_auto_form() -> None:
    same = np.tile([[1.0, 2.0, 3.0]], (10, 1))
    orthogonal = np.eye(7) * 3.0
    for method in ("primal", "dual"):
        assert vendi_score(same, method=method)[0] == pytest.approx(1.0, abs=1e-10)
        assert vendi_score(orthogonal, method=method)[0] == pytest.approx(7.0, abs=1e-10)
    two = np.repeat(np.eye(2), [4, 4], axis=0)  # two groups of identical cells
    assert vendi_score(two, method="primal")[0] == pytest.approx(2.0, abs=1e-10)
    many = np.random.default_rng(0).normal(size=(1001, 4))
    assert vendi_score(many)[1] == "dual" and vendi_score(many[:1000])[1] == "primal"


def test_vendi_rbf_matches_the_package_on_the_median_heuristic_kernel() -> None:
    vendi = pytest.importorskip("vendi_score.vendi")
    x = np.random.default_rng(2).normal(size=(40, 3))
    d2 = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    h = np.median(d2[np.triu_indices(40, 1)])
    with pytest.warns(DeprecationWarning):
        ref = vendi.score_K(np.exp(-d2 / h))
    assert vendi_score(x, "rbf")[0] == pytest.approx(ref, abs=1e-10)
    with pytest.raises(DataError, match="cosine kernel only"):
        vendi_score(x, "rbf", "dual")


def test_diversity_of_a_selection(unbalanced: ad.AnnData) -> None:
    whole = diversity(unbalanced, "cell_type")
    balanced = diversity(
        subsample(unbalanced, "reweight", n=30, label_key="cell_type"), "cell_type"
    )
    assert balanced["shannon"] == pytest.approx(math.log(3), abs=1e-12)
    assert balanced["gini_simpson"] == pytest.approx(2 / 3, abs=1e-12)
    p = np.array([100, 40, 10]) / 150
    assert whole["shannon"] == pytest.approx(-(p * np.log(p)).sum(), abs=1e-12)
    assert whole["n_types"] == 3 and whole["n_cells"] == 150
    assert whole["vendi_method"] == "primal" and whole["vendi"] > 1
    # a matrix is used as features as given
    feats = pca_features(unbalanced, n_components=10)
    d = diversity(feats, labels=unbalanced.obs["cell_type"].to_numpy())
    assert d["shannon"] == whole["shannon"] and 1 < d["vendi"] <= 10


# ---------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(strategy="kmeans", n=5), "Unknown subsampling strategy 'kmeans'"),
        (dict(strategy="random", n=5, fraction=0.5), "exactly one of n"),
        (dict(strategy="random"), "exactly one of n"),
        (dict(strategy="random", n=151), "from a data set of 150 cells"),
        (dict(strategy="random", n=0), "at least 1"),
        (dict(strategy="random", fraction=0.0), r"fraction must be in \(0, 1\]"),
        (dict(strategy="random", fraction=1.5), r"fraction must be in \(0, 1\]"),
        (dict(strategy="reweight", n=5), "needs a label column"),
        (dict(strategy="reweight", n=5, label_key="tissue"), "'tissue' is not in obs"),
        (dict(strategy="random", n=5, seed=-1), "seed"),
    ],
)
def test_bad_requests_raise_data_errors(unbalanced: ad.AnnData, kwargs, message) -> None:
    with pytest.raises(DataError, match=message):
        subsample(unbalanced, **kwargs)


@pytest.mark.parametrize("bad, message", [(np.nan, "non-finite"), (-1.0, "negative")])
def test_geosketch_and_diversity_reject_bad_counts(
    unbalanced: ad.AnnData, bad: float, message: str
) -> None:
    data = unbalanced.copy()
    dense = data.X.toarray()
    dense[3, 5] = bad
    data.X = sp.csr_matrix(dense)
    with pytest.raises(DataError, match=message):
        subsample(data, "geosketch", n=10)
    with pytest.raises(DataError, match=message):
        diversity(data)
    # strategies that need no expression still work
    assert subsample(data, "random", n=10).n_obs == 10


# ------------------------------------------------------------------------------------- CLI


@pytest.fixture(scope="module")
def unbalanced_file(unbalanced: ad.AnnData, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("subsample") / "cells.h5ad"
    unbalanced.write_h5ad(path)
    return path


def test_cli_reweight_end_to_end(
    unbalanced_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "balanced.h5ad"
    args = ["subsample", str(unbalanced_file), "--strategy", "reweight", "--n", "60"]
    assert main([*args, "--label", "cell_type", "--seed", "3", "--out", str(out)]) == 0
    got = ad.read_h5ad(out)
    assert got.obs["cell_type"].value_counts().to_dict() == {"c0": 25, "c1": 25, "c2": 10}
    assert got.uns["cellsynth"]["strategy"] == "reweight"
    assert got.uns["cellsynth"]["seed"] == 3
    text = capsys.readouterr().out
    assert "selected 60 of 150 cells by reweight" in text
    assert "c2       10  ( 16.7%)  of 10" in text
    p = np.array([25, 25, 10]) / 60
    assert f"Shannon {-(p * np.log(p)).sum():.3f}" in text  # 1.012 for the selection
    assert "Vendi" in text and "Gini-Simpson 0.625" in text  # 1 - (25^2*2 + 10^2)/60^2


def test_cli_geosketch_fraction_is_deterministic(unbalanced_file: Path, tmp_path: Path) -> None:
    outs = []
    for name in ("a", "b"):
        out = tmp_path / f"{name}.h5ad"
        args = ["subsample", str(unbalanced_file), "--strategy", "geosketch"]
        assert main([*args, "--fraction", "0.2", "--out", str(out)]) == 0
        outs.append(list(ad.read_h5ad(out).obs_names))
    assert len(outs[0]) == 30 and outs[0] == outs[1]


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--strategy", "kmeans", "--n", "5"], "Unknown --strategy 'kmeans'"),
        (["--strategy", "random", "--n", "5", "--fraction", "0.1"], "exactly one of --n"),
        (["--strategy", "random"], "exactly one of --n"),
        (["--strategy", "random", "--n", "500"], "Cannot select 500 cells"),
        (["--strategy", "random", "--fraction", "2"], "fraction must be in"),
        (["--strategy", "reweight", "--n", "5"], "needs --label"),
        (["--strategy", "reweight", "--n", "5", "--label", "tissue"], "'tissue' is not in obs"),
    ],
)
def test_cli_bad_input_is_one_line_error(
    unbalanced_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture, extra, message
) -> None:
    out = tmp_path / "out.h5ad"
    assert main(["subsample", str(unbalanced_file), *extra, "--out", str(out)]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    # stage lines ("cellsynth: reading ... ...") may come first; the error is one line
    errors = [line for line in lines if not line.endswith(" ...")]
    assert len(errors) == 1 and message in errors[0] and "Traceback" not in "".join(lines)
    assert not out.exists()


def test_cli_usage_errors_are_one_line(
    unbalanced_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    args = ["subsample", str(unbalanced_file), "--strategy", "random", "--n", "five"]
    with pytest.raises(SystemExit) as exc:
        main([*args, "--out", str(tmp_path / "out.h5ad")])
    assert exc.value.code == 1
    err = capsys.readouterr().err.strip()
    assert "argument --n: invalid int value: 'five'" in err and "\n" not in err


def test_cli_rejects_negative_counts_and_unknown_data(
    unbalanced: ad.AnnData, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    data = unbalanced.copy()
    data.X = sp.csr_matrix(data.X.toarray() - 1.0)
    path = tmp_path / "neg.h5ad"
    data.write_h5ad(path)
    out = tmp_path / "out.h5ad"
    assert (
        main(["subsample", str(path), "--strategy", "random", "--n", "5", "--out", str(out)]) == 1
    )
    assert "negative" in capsys.readouterr().err and not out.exists()
    args = ["subsample", "nonsense", "--strategy", "random", "--n", "5", "--out", str(out)]
    assert main(args) == 1
    assert "neither a built-in data set" in capsys.readouterr().err


def test_random_and_reweight_need_neither_optional_package(tmp_path) -> None:
    """`pip install .[data]` without [subsample]: random and reweight work (the Vendi score takes
    its exact dual form), geosketch names the package it needs."""
    import subprocess
    import sys

    from conftest import make_toy_adata

    make_toy_adata(n_cells=200, n_genes=40).write_h5ad(tmp_path / "toy.h5ad")
    block = "import sys; sys.modules['vendi_score'] = None; sys.modules['geosketch'] = None; "
    run = "from cellsynth.cli.main import main; sys.exit(main(sys.argv[1:]))"

    def cli(*args):
        cmd = [sys.executable, "-c", block + run, "subsample", str(tmp_path / "toy.h5ad"), *args]
        return subprocess.run(cmd, capture_output=True, text=True)

    for strategy in ("random", "reweight"):
        done = cli("--strategy", strategy, "--n", "50", "--label", "cell_type",
                   "--out", str(tmp_path / f"{strategy}.h5ad"))  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert "Vendi" in done.stdout
    done = cli("--strategy", "geosketch", "--n", "50", "--out", str(tmp_path / "g.h5ad"))
    assert done.returncode == 1 and "needs the geosketch package" in done.stderr
