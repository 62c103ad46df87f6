"""distill-eval: same-budget baselines, known accuracies, reports, clear errors."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
from conftest import make_toy_adata, train_toy_scdg

from cellsynth.errors import BundleError, DataError, GeneMismatchError
from cellsynth.files import write_h5ad
from cellsynth.training.classifiers import NetworkBudget, fit_predict
from cellsynth.training.distill import distill
from cellsynth.training.distill_data import load_task
from cellsynth.training.distill_eval import (
    BASELINES,
    evaluate_distilled,
    kmeans_centroids,
    macro_f1,
    write_report,
)

LABEL = "cell_type"
SMALL = {  # short network budgets: the wiring is under test here, not the networks
    "mlp": {"budget": NetworkBudget(min_steps=40, max_steps=40)},
    "transformer": {"budget": NetworkBudget(batch_size=128, min_steps=20, max_steps=20)},
}


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """Separable toy counts (3 cell types, 300 cells), a tiny SCDG bundle and a distilled set."""
    root = tmp_path_factory.mktemp("distill_eval")
    adata = make_toy_adata(n_cells=300, n_genes=80, seed=3)
    scdg = train_toy_scdg(adata, root, LABEL)
    syn = distill(scdg, adata, LABEL, 2, iterations=5, progress=False)
    write_h5ad(syn, root / "syn.h5ad")
    task = load_task(scdg, adata, LABEL)
    return {"root": root, "adata": adata, "bundle": scdg, "syn": syn, "task": task}


@pytest.fixture(scope="module")
def result(toy):
    return evaluate_distilled(
        toy["root"] / "syn.h5ad", toy["adata"], LABEL, seeds=2, classifiers=("logreg", "mlp"),
        iterations=3, progress=False, classifier_options=SMALL,
    )  # fmt: skip


def test_macro_f1_matches_scikit_learn() -> None:
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    y, p = rng.integers(0, 4, 50), rng.integers(0, 5, 50)  # class 4 only predicted
    assert macro_f1(y, p) == pytest.approx(metrics.f1_score(y, p, average="macro"))
    assert macro_f1(y, y) == 1.0


def test_kmeans_finds_separated_clusters_and_is_seeded() -> None:
    rng = np.random.default_rng(0)
    centres = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    x = np.concatenate([c + rng.normal(0, 0.1, size=(20, 2)) for c in centres])
    found = kmeans_centroids(x, 3, seed=1)
    order = np.lexsort(found.T[::-1])
    expected = np.stack([x[i * 20 : (i + 1) * 20].mean(0) for i in range(3)])
    np.testing.assert_allclose(found[order], expected[np.lexsort(expected.T[::-1])], atol=1e-5)
    np.testing.assert_array_equal(kmeans_centroids(x, 3, seed=1), found)
    np.testing.assert_allclose(kmeans_centroids(x, 1), x.mean(0, keepdims=True), rtol=1e-6)
    assert kmeans_centroids(x, 60, seed=0).shape == (60, 2)  # one cell per cluster
    with pytest.raises(DataError, match="cannot make 61 centroids from 60 cells"):
        kmeans_centroids(x, 61)


def test_report_structure_budgets_and_full_is_best(result, toy) -> None:
    task = toy["task"]
    assert result["methods"] == ["distilled", *BASELINES]
    assert result["classifiers"] == ["logreg", "mlp"]
    assert result["spc"] == 2 and result["seeds"] == [0, 1]
    assert result["cells_per_class"] == {c: 2 for c in task.classes}
    n_cells = {m: r["n_cells"] for m, r in result["results"].items()}
    assert n_cells["class_mean"] == 3 and n_cells["full"] == len(task.y_train)
    for m in ("distilled", "random", "kmeans", "geosketch", "reweight", "dm_data", "dc_data"):
        assert n_cells[m] == 6, m
    assert n_cells["decoder"] == 6 and n_cells["scdd"] == 6  # scDD's DM through SCDG
    for method, r in result["results"].items():
        for s in r["classifiers"].values():
            runs = 1 if method == "full" else 2
            assert s["runs"] == runs and len(s["accuracy"]["values"]) == runs
            assert 0.0 <= s["accuracy"]["mean"] <= 1.0 and s["accuracy"]["sd"] >= 0.0
            assert 0.0 <= s["macro_f1"]["mean"] <= 1.0
            if runs == 2:
                v = s["accuracy"]["values"]
                assert s["accuracy"]["sd"] == pytest.approx(np.std(v, ddof=1))
    # logistic regression on a fixed set is fitted once: equal values, sd 0
    assert result["results"]["class_mean"]["classifiers"]["logreg"]["accuracy"]["sd"] == 0.0
    # the toy cell types are separable: the whole training set is (near) perfect and the best
    acc = {m: r["classifiers"]["logreg"]["accuracy"]["mean"] for m, r in result["results"].items()}
    assert acc["full"] >= 0.95
    assert acc["full"] >= max(acc.values()) - 0.02
    assert acc["class_mean"] >= 0.9  # and so are the class means


def test_known_accuracies_are_reproduced(result, toy) -> None:
    """The distilled and class-mean rows equal a direct fit on those cells."""
    task, syn = toy["task"], toy["syn"]
    C = len(task.classes)
    y_syn = syn.obs[LABEL].cat.codes.to_numpy()
    pred = fit_predict("logreg", syn.X, y_syn, task.x_test, C)
    row = result["results"]["distilled"]["classifiers"]["logreg"]
    assert row["accuracy"]["values"] == [float(np.mean(pred == task.y_test))] * 2
    means = np.stack([task.x_train[task.class_indices(c)].mean(0) for c in range(C)])
    pred = fit_predict("logreg", means, np.arange(C), task.x_test, C)
    row = result["results"]["class_mean"]["classifiers"]["logreg"]
    assert row["accuracy"]["mean"] == pytest.approx(np.mean(pred == task.y_test))
    assert row["macro_f1"]["mean"] == pytest.approx(macro_f1(task.y_test, pred))
    sklearn = pytest.importorskip("sklearn.linear_model")
    ref = sklearn.LogisticRegression().fit(means.astype(np.float64), np.arange(C))
    assert row["accuracy"]["mean"] == pytest.approx(
        np.mean(ref.predict(task.x_test.astype(np.float64)) == task.y_test)
    )


def test_write_report(result, tmp_path) -> None:
    files = write_report(result, tmp_path / "out")
    assert set(files) == {"report.json", "report.md", "accuracy.png"}

    def no_nan(token: str) -> None:
        raise AssertionError(f"non-strict JSON constant {token}")

    back = json.loads((tmp_path / "out" / "report.json").read_text(), parse_constant=no_nan)
    assert back["methods"] == result["methods"]
    md = (tmp_path / "out" / "report.md").read_text()
    assert "| method | cells | LR acc | MLP acc | LR macro F1 | MLP macro F1 |" in md
    rows = [line for line in md.splitlines() if line.startswith("|")]
    assert len(rows) == 2 + len(result["methods"])  # header, rule, one row per method
    full = result["results"]["full"]["classifiers"]["logreg"]["accuracy"]
    assert f"| full | {result['task']['n_train']} | {full['mean']:.3f} ± 0.000 |" in md
    assert (tmp_path / "out" / "accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_genes_in_another_order_are_aligned(toy) -> None:
    syn = toy["syn"]
    shuffled = syn[:, syn.var_names[::-1]].copy()
    kwargs = dict(seeds=1, classifiers=["logreg"], baselines=[], progress=False)
    a = evaluate_distilled(syn, None, LABEL, task=toy["task"], **kwargs)
    b = evaluate_distilled(shuffled, None, LABEL, task=toy["task"], **kwargs)
    for r in (a, b):
        for m in r["results"].values():
            for s in m["classifiers"].values():
                s.pop("seconds")  # the only thing that may differ
    assert a["results"] == b["results"]


def test_bad_inputs_are_clear_errors(toy, tmp_path) -> None:
    syn, adata, task = toy["syn"], toy["adata"], toy["task"]
    path = toy["root"] / "syn.h5ad"
    fast = dict(seeds=1, classifiers=["logreg"], baselines=["class_mean"], progress=False)
    with pytest.raises(DataError, match="distilled for label 'cell_type', not 'batch'"):
        evaluate_distilled(path, adata, "batch", **fast)
    bare = syn.copy()
    bare.uns.clear()
    with pytest.raises(DataError, match="no distillation record"):
        evaluate_distilled(bare, adata, LABEL, **fast)
    with pytest.raises(GeneMismatchError, match="1 missing"):
        evaluate_distilled(syn[:, 1:].copy(), adata, LABEL, task=task, **fast)
    other = syn.copy()
    other.obs[LABEL] = other.obs[LABEL].cat.rename_categories({"alpha": "omega"})
    with pytest.raises(DataError, match="'omega'.* not among the training classes"):
        evaluate_distilled(other, adata, LABEL, task=task, **fast)
    changed = syn.copy()
    changed.uns["cellsynth"]["bundle_hash"] = "0" * 64
    with pytest.raises(BundleError, match="not the one the synthetic set was distilled with"):
        evaluate_distilled(changed, adata, LABEL, **fast)
    gone = syn.copy()
    gone.uns["cellsynth"]["bundle"] = str(tmp_path / "deleted-bundle")
    with pytest.raises(BundleError, match="distilled with the bundle .*cannot be opened"):
        evaluate_distilled(gone, adata, LABEL, **fast)
    with pytest.raises(DataError, match="unknown classifier"):
        evaluate_distilled(syn, adata, LABEL, classifiers=["svm"], task=task)
    with pytest.raises(DataError, match=r"unknown baseline\(s\) \['median'\]"):
        evaluate_distilled(syn, adata, LABEL, baselines=["median"], task=task)
    with pytest.raises(DataError, match="seeds"):
        evaluate_distilled(syn, adata, LABEL, seeds=0, task=task)
    with pytest.raises(FileNotFoundError, match="not found"):
        evaluate_distilled(tmp_path / "missing.h5ad", adata, LABEL)


def test_cli_writes_the_report(toy, tmp_path, capsys) -> None:
    from cellsynth.cli import distill_eval

    parser = argparse.ArgumentParser()
    distill_eval.add_parser(parser.add_subparsers())
    data = tmp_path / "toy.h5ad"
    write_h5ad(toy["adata"], data)
    args = parser.parse_args(
        ["distill-eval", "--synthetic", str(toy["root"] / "syn.h5ad"), "--data", str(data),
         "--label", LABEL, "--seeds", "2", "--classifiers", "logreg",
         "--baselines", "class_mean,full", "--out", str(tmp_path / "out")]
    )  # fmt: skip
    args.run(args)
    out = capsys.readouterr().out
    assert "class_mean" in out and "report.md" in out
    back = json.loads((tmp_path / "out" / "report.json").read_text())
    assert back["methods"] == ["distilled", "class_mean", "full"]
    assert back["classifiers"] == ["logreg"]
    args = parser.parse_args(
        ["distill-eval", "--synthetic", str(toy["root"] / "syn.h5ad"), "--data", str(data),
         "--label", LABEL, "--classifiers", "logreg,svm", "--out", str(tmp_path / "x")]
    )  # fmt: skip
    with pytest.raises(DataError, match="unknown classifier"):
        args.run(args)


def test_cli_choices_match_the_library() -> None:
    """The CLI keeps its own copies of the names so that parsing needs no torch; they must agree."""
    from cellsynth.cli import distill_eval as cli
    from cellsynth.training import classifiers, distill_eval

    assert cli.BASELINES == distill_eval.BASELINES
    assert cli.CLASSIFIERS == classifiers.CLASSIFIERS


def test_scdd_baseline_needs_an_scdg_bundle(toy) -> None:
    ae = toy["task"].bundle.autoencoder.path
    syn = distill(ae, toy["adata"], LABEL, 1, iterations=2, progress=False)  # lr, expression
    common = dict(seeds=1, classifiers=("logreg",), iterations=1, progress=False)
    with pytest.raises(DataError, match="baseline scdd distils through SCDG"):
        evaluate_distilled(syn, toy["adata"], LABEL, baselines=["scdd"], **common)
    result = evaluate_distilled(syn, toy["adata"], LABEL, **common)  # the default list
    assert result["methods"] == ["distilled", *(b for b in BASELINES if b != "scdd")]


def test_distillation_baselines_leave_cellsynths_additions_out(toy, monkeypatch) -> None:
    """A set made with the networks' term, random features and the separation term: its
    data-level DM / DC and scDD baselines take its other settings but none of those (they are
    the published methods); the decoder baseline keeps all but the networks' term."""
    import cellsynth.training.distill as distill_module
    from cellsynth.training.distill_eval import _Baselines

    task = toy["task"]
    record = {"spc": 1, "iterations": 3, "anchor": 0.05, "network_weight": 0.3,
              "networks": "transformer", "match": "mmd", "features": "random",
              "covariance": 0.0, "separation": 0.2, "dc_steps": 10}  # fmt: skip
    seen = {}

    def fake(*args, **kwargs):
        seen.update(kwargs)
        raise RuntimeError("stop here")

    monkeypatch.setattr(distill_module, "distill", fake)
    builder = _Baselines(task, toy["adata"], np.ones(len(task.classes)), record, None, False)
    for name in ("dm_data", "scdd"):
        seen.clear()
        with pytest.raises(RuntimeError, match="stop here"):
            builder.build(name, seed=0)
        assert seen["network_weight"] == 0.0 and seen["anchor"] == 0.05
        assert seen["iterations"] == 3
        assert seen["features"] == "encoder" and seen["separation"] == 0.0
        assert seen["dc_steps"] == 1  # else DM refuses a DC-only setting
    seen.clear()
    with pytest.raises(RuntimeError, match="stop here"):  # the set's objective through a decoder
        builder.build("decoder", seed=0)
    assert seen["match"] == "mmd" and seen["features"] == "random" and seen["separation"] == 0.2
    assert seen["network_weight"] == 0.0 and seen["dc_steps"] == 10
