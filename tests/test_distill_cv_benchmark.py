"""benchmarks/distillation_cv.py: its folds partition the pooled cells, stratified, disjoint.

The cross-validated distillation benchmark is only a fairer measure than the one split if every
cell is tested exactly once, never trained on in the same fold, and each fold keeps the classes'
proportions; these tests check the folds (the accuracies are measured, never asserted).
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import numpy as np
import pytest

from cellsynth.training.distill_data import Task

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def cv():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        return importlib.import_module("distillation_cv")
    finally:
        sys.path.remove(str(BENCHMARKS))


def _task(rng: np.random.Generator, sizes: list[int], n_test: int) -> Task:
    y = np.concatenate([np.full(n, c) for c, n in enumerate(sizes)]).astype(np.int64)
    rng.shuffle(y)
    x = rng.normal(size=(len(y), 7)).astype(np.float32)
    x[:, 0] = np.arange(len(y))  # each cell's identity, to follow it through the folds
    return Task(
        bundle=None, label="kind", classes=[f"c{c}" for c in range(len(sizes))],
        genes=[f"g{i}" for i in range(7)], x_train=x[n_test:], x_test=x[:n_test],
        y_train=y[n_test:], y_test=y[:n_test],
        cond_train=rng.integers(0, 3, size=(len(y) - n_test, 2)),
        cell_names=np.array([f"cell{i}" for i in range(n_test, len(y))], dtype=object),
    )  # fmt: skip


def test_folds_partition_the_pooled_cells(cv) -> None:
    rng = np.random.default_rng(11)
    sizes = [int(v) for v in rng.integers(10, 60, size=4)]
    task = _task(rng, sizes, n_test=int(rng.integers(20, 40)))
    folds = cv.fold_tasks(task, 5, seed=int(rng.integers(1000)))
    assert len(folds) == 5
    n = sum(sizes)
    tested = np.concatenate([f.x_test[:, 0] for f in folds]).astype(int)
    assert sorted(tested.tolist()) == list(range(n))  # every cell tested exactly once
    for f in folds:
        train_ids, test_ids = f.x_train[:, 0].astype(int), f.x_test[:, 0].astype(int)
        assert not set(train_ids) & set(test_ids)
        assert len(train_ids) + len(test_ids) == n
        # labels and names follow their cells
        pooled_y = np.concatenate([task.y_test, task.y_train])  # x[:, 0] order: test first
        np.testing.assert_array_equal(f.y_train, pooled_y[train_ids])
        np.testing.assert_array_equal(f.y_test, pooled_y[test_ids])
        for cell, name in zip(train_ids, f.cell_names, strict=True):
            assert name == (f"cell{cell}" if cell >= len(task.y_test) else f"heldout-{cell}")
        # stratified: each class's test count is its size / 5, rounded either way
        counts = np.bincount(f.y_test, minlength=len(sizes))
        assert np.all(np.abs(counts - np.array(sizes) / 5) < 1)
        assert f.cond_train.shape == (len(train_ids), 2) and not f.cond_train.any()
        assert f.classes == task.classes and f.label == task.label


def test_folds_are_seeded(cv) -> None:
    task = _task(np.random.default_rng(2), [20, 30, 25], n_test=15)
    a = [f.x_test[:, 0] for f in cv.fold_tasks(task, 3, seed=4)]
    b = [f.x_test[:, 0] for f in cv.fold_tasks(task, 3, seed=4)]
    c = [f.x_test[:, 0] for f in cv.fold_tasks(task, 3, seed=5)]
    assert all(np.array_equal(u, v) for u, v in zip(a, b, strict=True))
    assert not all(np.array_equal(u, v) for u, v in zip(a, c, strict=True))


def test_too_small_a_class_is_named(cv) -> None:
    task = _task(np.random.default_rng(3), [20, 4], n_test=5)
    with pytest.raises(ValueError, match="smallest class has 4 cells, fewer than 5 folds"):
        cv.fold_tasks(task, 5)


def test_summary_and_report_survive_the_json(cv) -> None:
    """The fold-by-fold goal is computed per fold, and the report reads the written JSON."""
    import json

    acc = {  # fold -> method -> LR accuracy, SPC 1
        0: {"distilled": 0.95, "class_mean": 0.93, "kmeans": 0.94, "full": 0.96},
        1: {"distilled": 0.90, "class_mean": 0.92, "kmeans": 0.91, "full": 0.90},
    }
    folds = [
        {"n_train": 80, "n_test": 20,
         "spc": {"1": {"rows": {m: {"logreg": v} for m, v in acc[k].items()},
                       "distill_seconds": 1.0 + k}}}
        for k in (0, 1)
    ]  # fmt: skip
    tasks = [{"label": "kind", "classes": ["a", "b"], "folds": folds}]
    (row,) = cv.summarise(tasks, [1], ["logreg"])
    assert row["margin"]["values"] == pytest.approx([0.01, -0.02])
    assert row["folds_meeting_goal"] == 1  # +0.01 meets the goal, -0.02 does not
    assert row["rows"]["distilled"]["logreg"]["mean"] == pytest.approx(0.925)
    assert row["distilled_minus_full"]["mean"] == pytest.approx(-0.005)
    settings = {"folds": 2, "fold_seed": 0, "data": "toy", "bundle": "b", "threads": 1,
                "seeds": 1, "classifiers": ["logreg"], "spc": [1]}  # fmt: skip
    res = {"date": "2026-12-04", "machine": {"cpu": "cpu", "cores": 2}, "settings": settings,
           "tasks": tasks, "summary": [row]}  # fmt: skip
    text = cv.markdown(json.loads(json.dumps(res)))
    assert "met in 1 of 2 folds" in text and "| kind | 1 | **distilled** | 0.925 ± 0.035 |" in text
