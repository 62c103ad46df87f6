"""Learning-saturation study: budgets, the sets each strategy builds, saturation points, reports."""

from __future__ import annotations

import argparse
import json
import math

import numpy as np
import pytest
from conftest import make_toy_adata, train_toy_scdg

from cellsynth.errors import DataError
from cellsynth.files import write_h5ad
from cellsynth.training.classifiers import NetworkBudget
from cellsynth.training.distill_data import load_task
from cellsynth.training.saturation import (
    Budget,
    SetBuilder,
    Skipped,
    make_budgets,
    merge_curves,
    saturation_curve,
    saturation_points,
    set_diversity,
)
from cellsynth.training.saturation_report import write_report

LABEL = "cell_type"
SMALL = {"mlp": {"budget": NetworkBudget(min_steps=30, max_steps=30)}}


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """Separable toy counts (3 cell types, 300 cells) and a tiny SCDG bundle."""
    root = tmp_path_factory.mktemp("saturation")
    adata = make_toy_adata(n_cells=300, n_genes=80, seed=5)
    scdg = train_toy_scdg(adata, root, LABEL)
    task = load_task(scdg, adata, LABEL)
    return {"root": root, "adata": adata, "bundle": scdg, "task": task}


@pytest.fixture(scope="module")
def curve(toy):
    return saturation_curve(
        toy["bundle"], toy["adata"], LABEL, spcs=(1, 5), fractions=(0.5, 1.0),
        classifiers=("logreg", "mlp"), seeds=2, distill_settings={"iterations": 3},
        max_distill_spc=5, task=toy["task"], classifier_options=SMALL, progress=False,
    )  # fmt: skip


def test_budgets_are_sorted_and_sized() -> None:
    budgets = make_budgets(1000, 4, spcs=(10, 1), fractions=(0.05, 0.001, 1.0))
    assert [b.name for b in budgets] == ["SPC 1", "0.1%", "SPC 10", "5%", "100%"]
    assert [b.n_cells for b in budgets] == [4, 4, 40, 50, 1000]  # 0.1% is 1 cell: one per class
    assert budgets[0].spc == 1 and budgets[3].fraction == 0.05
    with pytest.raises(DataError, match="SPC 300"):
        make_budgets(1000, 4, spcs=(300,), fractions=())
    with pytest.raises(DataError, match=r"\(0, 1\]"):
        make_budgets(1000, 4, spcs=(), fractions=(1.5,))
    with pytest.raises(DataError, match="named twice"):
        make_budgets(1000, 4, spcs=(2, 2), fractions=())


def _point(acc: float) -> dict:
    return {"status": "ok", "n_cells": 0.0, "accuracy": {"logreg": {"mean": acc, "sd": 0.0}}}


def test_saturation_point_is_the_first_budget_within_95_percent() -> None:
    budgets = [Budget("a", 10), Budget("b", 20), Budget("c", 40), Budget("d", 80)]
    curves = {
        "rising": {"a": _point(0.5), "b": _point(0.93), "c": _point(0.96), "d": _point(0.98)},
        "flat": {"a": _point(0.9), "b": _point(0.8), "c": _point(0.9), "d": _point(0.9)},
        "gaps": {
            "a": {"status": "skipped"},
            "b": _point(0.6),
            "c": _point(0.7),
            "d": {"status": "skipped"},
        },
        "none": {n: {"status": "skipped"} for n in "abcd"},
    }
    for name, n in zip("abcd", (10, 20, 40, 80), strict=True):
        for c in curves.values():
            if c[name]["status"] == "ok":
                c[name]["n_cells"] = float(n)
    out = saturation_points(curves, budgets, ["logreg"])
    assert out["rising"]["logreg"] == {"best_accuracy": 0.98, "budget": "c", "n_cells": 40.0}
    assert out["flat"]["logreg"]["budget"] == "a"  # 0.9 >= 0.95 * 0.9 at once
    assert out["gaps"]["logreg"]["budget"] == "c"  # 0.6 < 0.95 * 0.7 = 0.665
    assert out["none"]["logreg"] is None


def test_kmeans_centroids_are_their_clusters_mean_expression(toy) -> None:
    from sklearn.cluster import KMeans

    task = toy["task"]
    builder = SetBuilder(task, toy["adata"], {}, 5)
    sizes = np.bincount(task.y_train)
    per_class = np.array([1, 4, sizes[2]])  # a mean, 4 clusters, every cell
    x, y = builder.kmeans(per_class, seed=3)
    assert np.bincount(y).tolist() == per_class.tolist()
    np.testing.assert_allclose(x[0], task.x_train[task.y_train == 0].mean(0), rtol=1e-5)
    idx = task.class_indices(1)
    km = KMeans(n_clusters=4, n_init=3, random_state=3).fit(builder.features[idx])
    want = np.stack([task.x_train[idx][km.labels_ == j].mean(0) for j in range(4)])
    np.testing.assert_allclose(x[y == 1], want, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(x[y == 2], task.x_train[task.y_train == 2])


def test_each_strategy_builds_its_budget(toy) -> None:
    task = toy["task"]
    builder = SetBuilder(task, toy["adata"], {"iterations": 2}, 4)
    spc3 = Budget("SPC 3", 9, spc=3)
    for strategy in ("random", "reweight", "geosketch", "kmeans", "distill"):
        x, y = builder.build(strategy, spc3, seed=1)
        assert x.shape == (9, len(task.genes)) and y.shape == (9,), strategy
        if strategy not in ("random", "geosketch"):  # these follow the data, not the classes
            assert np.bincount(y, minlength=3).tolist() == [3, 3, 3], strategy
    a, _ = builder.build("random", spc3, seed=1)
    b, _ = builder.build("random", spc3, seed=1)
    np.testing.assert_array_equal(a, b)  # seeded
    with pytest.raises(Skipped, match="max_distill_spc 4"):
        builder.build("distill", Budget("SPC 5", 15, spc=5), seed=0)
    with pytest.raises(Skipped, match="nothing to condense"):
        builder.build("distill", Budget("100%", len(task.y_train), fraction=1.0), seed=0)
    with pytest.raises(DataError, match="unknown strategy"):
        builder.build("median", spc3, seed=0)


def test_diversity_of_a_set(toy) -> None:
    task = toy["task"]
    builder = SetBuilder(task, toy["adata"], {}, 5)
    x, y = builder.kmeans(np.array([1, 1, 1]), seed=0)  # three class means, one of each
    d = set_diversity(builder, x, y)
    assert d["shannon"] == pytest.approx(math.log(3))
    assert d["gini_simpson"] == pytest.approx(2 / 3)
    assert 1.0 < d["vendi"] <= 3.0 + 1e-9  # three cells: at most three distinct directions
    same = set_diversity(builder, np.repeat(x[:1], 4, axis=0), np.zeros(4, dtype=np.int64))
    assert same["shannon"] == 0.0 and same["vendi"] == pytest.approx(1.0)


def test_curve_structure_and_shared_full_set(curve, toy) -> None:
    names = [b["name"] for b in curve["budgets"]]
    assert names == ["SPC 1", "SPC 5", "50%", "100%"]
    assert curve["strategies"] == ["random", "reweight", "geosketch", "kmeans", "distill"]
    n_train = curve["task"]["n_train"]
    for strategy in ("random", "reweight", "geosketch", "kmeans"):
        full = curve["curves"][strategy]["100%"]
        assert full["status"] == "ok" and full["n_cells"] == n_train
        for kind in ("logreg", "mlp"):  # one fit per classifier and seed, shared
            assert full["accuracy"][kind] == curve["curves"]["random"]["100%"]["accuracy"][kind]
        assert curve["curves"][strategy]["SPC 5"]["n_cells"] == 15
    dist = curve["curves"]["distill"]
    assert dist["SPC 1"]["status"] == "ok" and dist["SPC 5"]["status"] == "ok"
    assert dist["50%"]["status"] == "skipped" and "max_distill_spc" in dist["50%"]["reason"]
    assert dist["100%"]["status"] == "skipped"
    reweight = curve["curves"]["reweight"]["SPC 5"]["diversity"]["shannon"]
    assert reweight["mean"] == pytest.approx(math.log(3))  # equal classes
    for strategy, by_kind in curve["saturation"].items():
        for kind, sat in by_kind.items():
            point = curve["curves"][strategy][sat["budget"]]
            assert point["accuracy"][kind]["mean"] >= 0.95 * sat["best_accuracy"]
            best = max(
                p["accuracy"][kind]["mean"]
                for p in curve["curves"][strategy].values()
                if p["status"] == "ok"
            )
            assert sat["best_accuracy"] == best
    full_lr = curve["curves"]["random"]["100%"]["accuracy"]["logreg"]["mean"]
    assert full_lr > 0.9  # the toy classes are separable


def test_curve_refuses_bad_choices(toy) -> None:
    args = {"task": toy["task"], "progress": False}
    with pytest.raises(DataError, match="strategy"):
        saturation_curve(toy["bundle"], None, LABEL, strategies=["median"], **args)
    with pytest.raises(DataError, match="classifier"):
        saturation_curve(toy["bundle"], None, LABEL, classifiers=["svm"], **args)
    with pytest.raises(DataError, match="distillation setting"):
        saturation_curve(toy["bundle"], None, LABEL, distill_settings={"spc": 3}, **args)
    with pytest.raises(DataError, match="seeds"):
        saturation_curve(toy["bundle"], None, LABEL, seeds=0, **args)


def test_write_report(curve, tmp_path) -> None:
    files = write_report(curve, tmp_path / "out")
    back = json.loads((tmp_path / "out" / "curve.json").read_text())
    assert back["saturation"] == curve["saturation"]
    text = (tmp_path / "out" / "curve.md").read_text()
    assert "| distill | 100% | - | skipped: the whole training set" in text
    assert "Saturation point" in text and "| kmeans |" in text
    assert (tmp_path / "out" / "curve.png").read_bytes()[:4] == b"\x89PNG"
    assert set(files) == {"curve.json", "curve.md", "curve.png"}


def test_merge_replaces_only_the_re_measured_strategy(curve, toy, tmp_path) -> None:
    again = saturation_curve(
        toy["bundle"], toy["adata"], LABEL, spcs=(1, 5), fractions=(0.5, 1.0),
        strategies=("distill",), classifiers=("logreg", "mlp"), seeds=2,
        distill_settings={"iterations": 6}, max_distill_spc=5, task=toy["task"],
        classifier_options=SMALL, progress=False,
    )  # fmt: skip
    old = {**curve, "date": "2026-12-03"}
    merged = merge_curves(old, {**again, "date": "2026-12-04"})
    assert merged["strategies"] == list(curve["strategies"])
    assert merged["curves"]["random"] == curve["curves"]["random"]
    assert merged["curves"]["distill"] == again["curves"]["distill"]
    assert merged["measured"]["random"]["date"] == "2026-12-03"
    assert merged["measured"]["distill"]["date"] == "2026-12-04"
    assert merged["distill_settings"]["iterations"] == 6
    budgets = [Budget(**b) for b in curve["budgets"]]
    assert merged["saturation"] == saturation_points(
        merged["curves"], budgets, curve["classifiers"]
    )
    assert merged["seconds"] == curve["seconds"]  # the header stays the first run's
    assert merged["measured"]["distill"]["distill_settings"]["iterations"] == 6  # effective ...
    assert merged["measured"]["distill"]["distill_settings"]["match"] == "lr"  # ... defaults too
    write_report(merged, tmp_path / "merged")
    text = (tmp_path / "merged" / "curve.md").read_text()
    assert "Measured by separate runs" in text and "- distill: 2026-12-04" in text
    # A second merge keeps the first one's record of the other strategies.
    twice = merge_curves(merged, {**again, "date": "2026-12-05"})
    assert twice["measured"]["random"]["date"] == "2026-12-03"
    assert twice["measured"]["distill"]["date"] == "2026-12-05"
    with pytest.raises(DataError, match="different seeds"):
        merge_curves(curve, {**again, "seeds": [0]})
    with pytest.raises(DataError, match="different tasks"):
        merge_curves(curve, {**again, "task": {**again["task"], "n_train": 1}})
    with pytest.raises(DataError, match="different tasks"):
        merge_curves(curve, {**again, "task": {**again["task"], "bundle_hash": "0" * 12}})
    with pytest.raises(DataError, match="max_distill_spc"):
        merge_curves(curve, {**again, "max_distill_spc": 10})
    # The bundle is known by its hash: a report merges from another checkout's path.
    moved = merge_curves(curve, {**again, "task": {**again["task"], "bundle": "/elsewhere"}})
    assert moved["curves"]["distill"] == again["curves"]["distill"]


def _cli(argv: list[str]) -> argparse.Namespace:
    from cellsynth.cli.main import build_parser

    return build_parser().parse_args(argv)


def test_cli_curve_writes_the_study(toy, tmp_path, capsys) -> None:
    data = tmp_path / "toy.h5ad"
    write_h5ad(toy["adata"], data)
    args = _cli(
        ["distill-eval", "--curve", "--bundle", str(toy["bundle"]), "--data", str(data),
         "--label", LABEL, "--spc", "1,2", "--fractions", "1", "--strategies", "reweight,kmeans",
         "--classifiers", "logreg", "--seeds", "1", "--out", str(tmp_path / "out")]
    )  # fmt: skip
    args.run(args)
    out = capsys.readouterr().out
    assert "saturation point" in out and "curve.png" in out
    back = json.loads((tmp_path / "out" / "curve.json").read_text())
    assert back["strategies"] == ["reweight", "kmeans"]
    assert [b["name"] for b in back["budgets"]] == ["SPC 1", "SPC 2", "100%"]
    assert back["seeds"] == [0]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--synthetic", "s.h5ad", "--spc", "1"], "--spc only with --curve"),
        (["--curve"], "exactly one of --synthetic and --bundle"),
        (["--curve", "--bundle", "b", "--synthetic", "s"], "exactly one of"),
        (["--curve", "--bundle", "b", "--baselines", "random"], "--baselines only without"),
        ([], "--synthetic is required"),
    ],
)
def test_cli_mode_errors_are_one_line(extra, message, tmp_path, capsys) -> None:
    args = _cli(["distill-eval", "--data", "d", "--label", "x", "--out", str(tmp_path), *extra])
    with pytest.raises(SystemExit) as exit_info:
        args.run(args)
    assert exit_info.value.code == 1
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_cli_strategies_match_the_library() -> None:
    from cellsynth.cli import distill_eval as cli
    from cellsynth.training import saturation

    assert cli.STRATEGIES == saturation.STRATEGIES
    assert cli.CURVE_SPC == ",".join(map(str, saturation.DEFAULT_SPC))
    assert [float(f) for f in cli.CURVE_FRACTIONS.split(",")] == list(saturation.DEFAULT_FRACTIONS)
