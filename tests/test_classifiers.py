"""Distillation judges: logistic regression equals scikit-learn's; the networks learn, repeat."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cellsynth.errors import DataError
from cellsynth.training.classifiers import (
    CLASSIFIERS,
    GeneTokenTransformer,
    LogisticRegression,
    NetworkBudget,
    fit_predict,
    make_classifier,
)


def overlapping_problem(n_classes: int, seed: int = 0, n: int = 90, g: int = 12):
    """Gaussian classes that overlap: the optimum is unique and far from separable."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % n_classes
    centres = rng.normal(0.0, 1.0, size=(n_classes, g))
    x = centres[y] + rng.normal(0.0, 1.5, size=(n, g))
    return x.astype(np.float32), y.astype(np.int64)


def separable_problem(per_class: int, n_test: int = 30, seed: int = 0, g: int = 130):
    """Expression-like blobs: class c expresses gene block c at ~3 and everything else at ~0.3."""
    rng = np.random.default_rng(seed)
    C, block = 3, g // 3

    def draw(m: int) -> tuple[np.ndarray, np.ndarray]:
        y = np.repeat(np.arange(C), m)
        x = rng.exponential(0.3, size=(C * m, g))
        for c in range(C):
            x[y == c, c * block : (c + 1) * block] += rng.normal(3.0, 0.5, size=(m, block))
        return np.clip(x, 0, None).astype(np.float32), y.astype(np.int64)

    return (*draw(per_class), *draw(n_test))


@pytest.mark.parametrize("n_classes", [2, 3])
def test_logreg_equals_scikit_learn(n_classes: int) -> None:
    sklearn = pytest.importorskip("sklearn.linear_model")
    x, y = overlapping_problem(n_classes)
    x_test, _ = overlapping_problem(n_classes, seed=1)
    ours = LogisticRegression(n_classes, tol=1e-9).fit(x, y)
    x, x_test = x.astype(np.float64), x_test.astype(np.float64)  # scikit-learn keeps float32
    ref = sklearn.LogisticRegression(C=1.0, tol=1e-10, max_iter=10_000).fit(x, y)
    np.testing.assert_allclose(ours.predict_proba(x_test), ref.predict_proba(x_test), atol=2e-5)
    np.testing.assert_allclose(ours.coef_, ref.coef_, atol=2e-5)
    np.testing.assert_allclose(ours.intercept_, ref.intercept_, atol=2e-5)
    np.testing.assert_array_equal(ours.predict(x_test), ref.predict(x_test))
    # other regularisation strengths too
    ours = LogisticRegression(n_classes, C=0.05, tol=1e-9).fit(x, y)
    ref = sklearn.LogisticRegression(C=0.05, tol=1e-10, max_iter=10_000).fit(x, y)
    np.testing.assert_allclose(ours.predict_proba(x_test), ref.predict_proba(x_test), atol=2e-5)


def test_logreg_sparse_and_dense_paths_agree() -> None:
    sklearn = pytest.importorskip("sklearn.linear_model")
    x, y, x_test, _ = separable_problem(5)
    x = np.where(x > 3.0, x, 0.0)  # ~84% zeros: the sparse path
    assert np.count_nonzero(x) < 0.3 * x.size
    ours = LogisticRegression(3, tol=1e-9).fit(x, y)
    ref = sklearn.LogisticRegression(tol=1e-10, max_iter=10_000).fit(x.astype(np.float64), y)
    x_test = x_test.astype(np.float64)
    np.testing.assert_allclose(ours.predict_proba(x_test), ref.predict_proba(x_test), atol=2e-5)
    dense = LogisticRegression(3, tol=1e-9).fit(x + 1.0, y)  # no zeros: the dense path
    # float64 for scikit-learn: given float32 it solves in float32, converging only to ~5e-4
    x1 = (x + 1.0).astype(np.float64)
    ref = sklearn.LogisticRegression(tol=1e-10, max_iter=10_000).fit(x1, y)
    np.testing.assert_allclose(dense.predict_proba(x_test), ref.predict_proba(x_test), atol=2e-5)


def test_logreg_models_only_the_classes_it_saw() -> None:
    x, y = overlapping_problem(3)
    y = np.array([0, 2, 3])[y]  # class 1 of 4 never seen
    clf = LogisticRegression(4).fit(x, y)
    p = clf.predict_proba(x)
    assert p.shape == (len(x), 4)
    np.testing.assert_allclose(p.sum(axis=1), 1.0)
    assert (p[:, 1] == 0).all() and set(clf.predict(x)) <= {0, 2, 3}
    one = LogisticRegression(3).fit(x[:5], np.full(5, 2))  # a single class: always it
    assert (one.predict(x) == 2).all()


@pytest.mark.parametrize("kind", CLASSIFIERS)
def test_each_classifier_is_perfect_on_a_tiny_separable_problem(kind: str) -> None:
    x, y, x_test, y_test = separable_problem(per_class=2)  # 6 training cells, 130 genes
    pred = fit_predict(kind, x, y, x_test, n_classes=3, seed=0)
    assert pred.dtype == np.int64 and pred.shape == (90,)
    assert (pred == y_test).mean() == 1.0


@pytest.mark.parametrize("kind", ["mlp", "transformer"])
def test_networks_are_deterministic_under_a_seed(kind: str) -> None:
    x, y, x_test, _ = separable_problem(per_class=3)
    before = torch.random.get_rng_state()
    a = make_classifier(kind, 3, seed=7).fit(x, y).predict_proba(x_test)
    b = make_classifier(kind, 3, seed=7).fit(x, y).predict_proba(x_test)
    c = make_classifier(kind, 3, seed=8).fit(x, y).predict_proba(x_test)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert torch.equal(torch.random.get_rng_state(), before)  # the caller's RNG is untouched
    np.testing.assert_allclose(a.sum(axis=1), 1.0, rtol=1e-5)


def test_minibatch_training_and_budget() -> None:
    budget = NetworkBudget(batch_size=16, min_steps=20, epochs=3, max_steps=50)
    assert budget.steps(8) == 20  # tiny: full batch, min_steps
    assert budget.steps(160) == 30  # 3 epochs of 10 batches
    assert budget.steps(10_000) == 50  # capped
    x, y, x_test, y_test = separable_problem(per_class=40)
    clf = make_classifier("mlp", 3, seed=0, budget=budget).fit(x, y)
    assert clf.steps_ == 24  # 3 epochs of ceil(120 / 16) = 8 batches
    assert (clf.predict(x_test) == y_test).mean() == 1.0


def test_transformer_tokens_pad_the_last_group() -> None:
    net = GeneTokenTransformer(n_genes=130, n_classes=4, genes_per_token=50)
    assert (net.n_tokens, net.pad) == (3, 20)
    assert net(torch.zeros(5, 130)).shape == (5, 4)


def test_bad_inputs_are_clear_errors() -> None:
    x, y = overlapping_problem(3)
    with pytest.raises(DataError, match="unknown classifier 'svm'"):
        make_classifier("svm", 3)
    with pytest.raises(DataError, match="at least 2 classes"):
        make_classifier("logreg", 1)
    bad = x.copy()
    bad[0, 0] = np.nan
    with pytest.raises(DataError, match="NaN"):
        make_classifier("mlp", 3).fit(bad, y)
    with pytest.raises(DataError, match="labels must be in"):
        make_classifier("logreg", 2).fit(x, y)
    with pytest.raises(DataError, match="labels"):
        make_classifier("logreg", 3).fit(x, y[:-1])
