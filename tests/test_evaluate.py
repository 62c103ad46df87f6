"""``cellsynth evaluate`` end to end on real Kang cells: files, values, gene and label checks.

"Synthetic" cells here are real cells: a disjoint real subsample scores near the real-vs-real
floor, and a perturbed copy (per-gene scaled expression) far above it.
"""

from __future__ import annotations

import json
from pathlib import Path

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp

from cellsynth.cli.main import main
from cellsynth.data import log1p_normalize
from cellsynth.errors import DataError, GeneMismatchError
from cellsynth.evaluation.evaluate import evaluate
from cellsynth.evaluation.report import markdown_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
N_GENES = 800  # genes of the "real file"; the synthetic cells have the first N_SYN of them
N_SYN = 500


@pytest.fixture(scope="module")
def halves(kang_small: ad.AnnData) -> tuple[ad.AnnData, ad.AnnData]:
    """Two disjoint halves of kang_small on its N_GENES most expressed genes, raw counts."""
    data = kang_small[:, np.argsort(-kang_small.X.sum(axis=0).A1)[:N_GENES]].copy()
    return data[::2].copy(), data[1::2].copy()


def _as_cellsynth_output(counts: ad.AnnData, factor: np.ndarray | None = None) -> ad.AnnData:
    """Log-normalised (library size over all its genes) first N_SYN genes, marked as cellsynth's.

    ``factor`` [N_SYN] multiplies each gene's expression: the perturbed, far-from-real set.
    """
    x = log1p_normalize(counts.X).toarray()[:, :N_SYN]
    if factor is not None:
        x = x * factor
    out = ad.AnnData(
        sp.csr_matrix(x),
        obs=counts.obs[["cell_type", "stim"]].copy(),
        var=counts.var.iloc[:N_SYN].copy(),
    )
    out.uns["cellsynth"] = {"cellsynth_version": "test"}
    return out


@pytest.fixture(scope="module")
def near_report(halves, tmp_path_factory) -> tuple[dict, Path]:
    real, other = halves
    out = tmp_path_factory.mktemp("evaluate") / "near"
    return evaluate(real, _as_cellsynth_output(other), "cell_type", out, progress=False), out


def test_report_files_are_complete_and_strict(near_report) -> None:
    result, out = near_report
    names = {
        "metrics.json",
        "report.md",
        "pca.png",
        "gene_means.png",
        "gene_zero_fractions.png",
        "violins.png",
        "matrixplot.png",
    }
    assert names <= {p.name for p in out.iterdir()}
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary leftovers
    for name in names - {"metrics.json", "report.md"}:
        assert (out / name).read_bytes()[:8] == PNG_MAGIC, name
        assert (out / name).stat().st_size > 10_000, name  # a drawn figure, not an empty canvas

    def no_constants(token: str) -> None:
        raise ValueError(f"non-strict JSON constant {token}")

    saved = json.loads((out / "metrics.json").read_text(), parse_constant=no_constants)
    assert saved["metrics"].keys() == result["metrics"].keys()
    assert saved["evaluation"]["n_genes"] == N_SYN
    assert saved["evaluation"]["real_genes_dropped"] == N_GENES - N_SYN
    assert not saved["evaluation"]["held_out"]
    assert "cellsynth file" in saved["evaluation"]["synthetic"]["representation"]
    assert "counts from X" in saved["evaluation"]["real"]["representation"]

    report = (out / "report.md").read_text()
    assert "| metric | value | real-vs-real floor | ratio to floor | better |" in report
    assert "| `knn_auc` |" in report and "| `mmd2_rbf_pca` |" in report
    assert "## Per label: `cell_type`" in report and "| CD14+ Monocytes |" in report
    assert "may look better than on unseen cells" in report  # all real cells were used
    assert "![matrixplot.png](matrixplot.png)" in report


def test_real_subsample_scores_near_its_floor(near_report) -> None:
    m = near_report[0]["metrics"]
    assert abs(m["knn_auc"]["value"] - 0.5) < 0.08
    assert m["gene_mean_pearson"]["value"] > 0.99
    assert m["sliced_w2_pca"]["value"] < 1.3 * m["sliced_w2_pca"]["floor"]
    classes = near_report[0]["by_label"]["cell_type"]["classes"]
    assert "CD14+ Monocytes" in classes and "CD4+ T cells" in classes


def test_perturbed_copy_scores_far_above_its_floor(halves) -> None:
    real, other = halves
    factor = np.random.default_rng(0).lognormal(0.0, 0.5, N_SYN)
    m = evaluate(real, _as_cellsynth_output(other, factor), progress=False)["metrics"]
    assert m["knn_auc"]["value"] > 0.95
    assert m["mmd2_rbf_pca"]["value"] > 20 * max(m["mmd2_rbf_pca"]["floor"], 1e-4)
    assert m["sliced_w2_pca"]["value"] > 3 * m["sliced_w2_pca"]["floor"]
    assert "by_label" not in m


def test_missing_genes_are_named(halves) -> None:
    real, other = halves
    syn = _as_cellsynth_output(other)
    syn.var_names = [f"NOTAGENE{i}" if i < 25 else g for i, g in enumerate(syn.var_names)]
    with pytest.raises(GeneMismatchError, match=r"25 of the 500 synthetic genes .*NOTAGENE0, "):
        evaluate(real, syn, progress=False)


@pytest.mark.parametrize("who", ["real", "synthetic"])
def test_missing_label_column_names_the_file(halves, who: str) -> None:
    real, other = halves
    syn = _as_cellsynth_output(other)
    target = real.copy() if who == "real" else syn
    del target.obs["cell_type"]
    args = (target, syn) if who == "real" else (real, target)
    with pytest.raises(DataError, match=f"the {who} data .* no obs column 'cell_type'"):
        evaluate(*args, label_key="cell_type", progress=False)


def test_unseen_synthetic_label_is_listed(halves) -> None:
    real, other = halves
    syn = _as_cellsynth_output(other)
    syn.obs["cell_type"] = syn.obs["cell_type"].cat.add_categories(["Alien"])
    syn.obs.iloc[:3, syn.obs.columns.get_loc("cell_type")] = "Alien"
    with pytest.raises(DataError, match="do not occur in the real data: Alien"):
        evaluate(real, syn, label_key="cell_type", progress=False)


def test_markdown_survives_nan_metrics(near_report) -> None:
    result = json.loads(json.dumps(near_report[0], default=str))
    result["metrics"]["gene_cv_pearson"] = {"value": float("nan"), "floor": None}
    assert "| `gene_cv_pearson` | n/a | n/a | n/a | higher |" in markdown_report(result)


def test_cli_end_to_end_and_one_line_errors(halves, tmp_path: Path, capsys) -> None:
    real, other = halves
    real.write_h5ad(tmp_path / "real.h5ad")
    other[:, :N_SYN].copy().write_h5ad(tmp_path / "syn.h5ad")  # raw counts, normalised by the rule
    out = tmp_path / "report"
    argv = [
        "evaluate",
        "--real",
        str(tmp_path / "real.h5ad"),
        "--synthetic",
        str(tmp_path / "syn.h5ad"),
        "--out",
        str(out),
    ]
    assert main([*argv, "--label", "stim"]) == 0
    printed = capsys.readouterr().out
    assert "knn_auc" in printed and f"report:   {out / 'report.md'}" in printed
    saved = json.loads((out / "metrics.json").read_text())
    assert "counts from X" in saved["evaluation"]["synthetic"]["representation"]
    assert set(saved["by_label"]["stim"]["classes"]) == {"CTRL", "STIM"}

    assert main([*argv, "--label", "stim"]) == 1  # the report is kept
    assert "pass --overwrite" in capsys.readouterr().err
    argv.append("--overwrite")
    assert main([*argv, "--label", "no_such_column"]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after the progress bar
    assert err.startswith("cellsynth: error: the real data") and "no_such_column" in err
    assert (
        main(
            [
                "evaluate",
                "--real",
                str(tmp_path / "nothing.h5ad"),
                "--synthetic",
                str(tmp_path / "syn.h5ad"),
                "--out",
                str(out),
                "--overwrite",
            ]
        )
        == 1
    )
    assert "neither a built-in data set" in capsys.readouterr().err


def test_kang_dit_cells_are_compared_with_its_held_out_cells(kang_adata: ad.AnnData) -> None:
    import cellsynth

    syn = cellsynth.generate(
        "kang-dit",
        n_cells=240,
        scheduler="dpmsolver++",
        steps=20,
        engine="onnxruntime",
        threads=1,
        progress=False,
    )
    result = evaluate(kang_adata, syn, "cell_type", progress=False)
    ev = result["evaluation"]
    assert ev["held_out"] and "held-out cells of bundle kang-dit" in ev["real"]["representation"]
    match = ev["label_match"]  # its test split, not all 13,576 cells, in the synthetic mix
    assert match["real_cells_before"] == 2715 and match["keys"] == ["cell_type", "stim"]
    assert result["n_real"] == result["n_synthetic"] == match["cells_per_side"] <= 240
    assert "never saw them" in ev["cells_note"]
    m = result["metrics"]
    # 400 cells measured knn AUC 0.62 (floor 0.53), r(gene means) 0.995 (floor 0.996).
    assert m["knn_auc"]["value"] < 0.8 and m["gene_mean_pearson"]["value"] > 0.97


def test_cells_without_a_label_are_refused_not_a_class_nan(halves) -> None:
    real, other = halves
    syn = _as_cellsynth_output(other)
    syn.obs["cell_type"] = syn.obs["cell_type"].astype(object)
    syn.obs.iloc[:3, syn.obs.columns.get_loc("cell_type")] = np.nan
    with pytest.raises(DataError, match=r"3 cell\(s\) without a 'cell_type' label \(NaN\)"):
        evaluate(real, syn, label_key="cell_type", progress=False)


def test_a_subsample_is_read_as_counts_not_as_generated_cells(halves) -> None:
    from cellsynth.subsample import subsample

    real, other = halves
    picked = subsample(other, "random", n=200, seed=0)  # uns['cellsynth'], command 'subsample'
    assert picked.uns["cellsynth"]["command"] == "subsample"
    result = evaluate(real, picked, label_key="cell_type", progress=False)
    assert "counts from" in result["evaluation"]["synthetic"]["representation"]


def test_like_with_like_removes_the_label_mix_from_the_score(halves) -> None:
    # Synthetic cells: real CD14+ Monocytes of the other half. Against every real cell the kNN test
    # sees the label mix (one type against eight); matched, both sides hold CD14+ Monocytes only.
    real, other = halves
    one_type = other[other.obs["cell_type"] == "CD14+ Monocytes"].copy()
    syn = _as_cellsynth_output(one_type)
    matched = evaluate(real, syn, "cell_type", progress=False)
    every = evaluate(real, syn, "cell_type", progress=False, match_labels=False)
    match = matched["evaluation"]["label_match"]
    assert match["keys"] == ["cell_type"] and match["combinations"] == 1
    n_real_mono = int((real.obs["cell_type"] == "CD14+ Monocytes").sum())
    assert match["cells_per_side"] == min(n_real_mono, one_type.n_obs)
    assert every["evaluation"]["label_match"] is None
    # measured: 0.82 against every cell, near the floor when matched
    auc_every, auc_matched = (r["metrics"]["knn_auc"]["value"] for r in (every, matched))
    assert auc_every > 0.75 and auc_matched < 0.65 and auc_matched < auc_every - 0.15
    assert any(n.startswith("Compared like with like") for n in matched["evaluation"]["notes"])


def test_without_a_shared_label_column_every_cell_is_compared_and_said(halves) -> None:
    real, other = halves
    result = evaluate(real, _as_cellsynth_output(other), progress=False)
    assert result["evaluation"]["label_match"] is None
    assert any(n.startswith("Label mix not matched") for n in result["evaluation"]["notes"])
