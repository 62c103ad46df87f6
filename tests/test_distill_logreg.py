"""The bilevel logistic-regression objective: the inner fit against scikit-learn, the Hessian
product against autograd, the implicit gradient against finite differences (float64), and the
distillation it drives."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

from cellsynth.errors import DataError
from cellsynth.training.distill import DistillConfig, Distiller
from cellsynth.training.distill_logreg import LogisticRegressionFit


def _problem(seed: int, n_classes: int, n: int = 9, genes: int = 6, m: int = 40):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, genes, generator=g, dtype=torch.float64) * 2
    y = torch.arange(n) % n_classes
    real = torch.rand(m, genes, generator=g, dtype=torch.float64) * 2
    real_y = torch.randint(0, n_classes, (m,), generator=g)
    return x, y, real, real_y


@pytest.mark.parametrize("n_classes", [2, 3, 4])
@pytest.mark.parametrize("C", [0.3, 1.0])
def test_fit_is_scikit_learns_logistic_regression(n_classes: int, C: float) -> None:
    seed = int(np.random.default_rng().integers(1 << 30))  # fresh inputs each run
    x, y, real, _ = _problem(seed, n_classes)
    fit = LogisticRegressionFit(n_classes, C=C)
    w, b = fit.fit(x, y)
    ref = LogisticRegression(C=C, tol=1e-12, max_iter=100_000).fit(x.numpy(), y.numpy())
    got = (real @ w.T + b).softmax(1).numpy()
    np.testing.assert_allclose(got, ref.predict_proba(real.numpy()), atol=1e-5, err_msg=str(seed))


def test_hessian_product_is_autograds() -> None:
    x, y, _, _ = _problem(3, 3)
    fit = LogisticRegressionFit(3)
    w, b = fit.fit(x, y)
    v_w, v_b = torch.randn_like(w), torch.randn_like(b)
    wr, br = w.clone().requires_grad_(True), b.clone().requires_grad_(True)
    g_w, g_b = torch.autograd.grad(fit.objective(x, y, wr, br), [wr, br], create_graph=True)
    h_w, h_b = torch.autograd.grad((g_w * v_w).sum() + (g_b * v_b).sum(), [wr, br])
    got_w, got_b = fit.hessian_product(x, v_w, v_b)
    torch.testing.assert_close(got_w, h_w)
    torch.testing.assert_close(got_b, h_b, atol=1e-7, rtol=1e-6)  # + the tiny bias ridge


def test_fit_is_stationary_and_warm_starts() -> None:
    x, y, _, _ = _problem(5, 3)
    fit = LogisticRegressionFit(3)
    w, b = fit.fit(x, y)
    g_w, g_b = fit.gradient(x, torch.nn.functional.one_hot(y, 3).double(), w, b)
    assert float(g_w.abs().max()) < 1e-7 and float(g_b.abs().max()) < 1e-7
    moved = x + 0.05 * torch.rand(x.shape, generator=torch.Generator().manual_seed(1))
    w2, b2 = fit.fit(moved, y)  # warm-started from the previous fit
    fresh = LogisticRegressionFit(3)
    w3, b3 = fresh.fit(moved, y)
    assert float((w2 - w).abs().max()) > 1e-4  # the fit followed the move ...
    torch.testing.assert_close(w2, w3, atol=1e-6, rtol=0)  # ... to the same optimum
    torch.testing.assert_close(b2, b3, atol=1e-6, rtol=0)
    assert fit.record()["fits"] == 2 and fit.record()["unconverged"] == 0


def test_a_fit_stopped_early_is_counted() -> None:
    x, y, _, _ = _problem(6, 3)
    fit = LogisticRegressionFit(3, max_iter=1)
    fit.fit(x, y)
    record = fit.record()
    assert record["unconverged"] == 1 and record["worst_gradient"] > record["tolerance"]


@pytest.mark.parametrize("n_classes", [2, 3])
def test_implicit_gradient_matches_finite_differences(n_classes: int) -> None:
    seed = int(np.random.default_rng().integers(1 << 30))
    x, y, real, real_y = _problem(seed, n_classes)
    syn = x.clone().requires_grad_(True)
    loss = LogisticRegressionFit(n_classes).loss(syn, y, real, real_y)
    (grad,) = torch.autograd.grad(loss, syn)

    def value(cells: torch.Tensor) -> float:  # a fresh, tightly converged fit each time
        return float(LogisticRegressionFit(n_classes, tol=1e-12).loss(cells, y, real, real_y))

    eps = 1e-5
    numeric = torch.zeros_like(x)
    for i in range(x.shape[0]):
        for j in range(x.shape[1]):
            step = torch.zeros_like(x)
            step[i, j] = eps
            numeric[i, j] = (value(x + step) - value(x - step)) / (2 * eps)
    assert float(loss.detach()) == pytest.approx(value(x), rel=1e-8)
    scale = float(numeric.abs().max())
    assert scale > 1e-4  # the check can fail
    torch.testing.assert_close(grad, numeric, atol=1e-3 * scale, rtol=0, msg=str(seed))


def test_bad_inner_settings_are_named() -> None:
    with pytest.raises(ValueError, match="at least 2 classes"):
        LogisticRegressionFit(1)
    with pytest.raises(ValueError, match="C must be positive"):
        LogisticRegressionFit(3, C=0.0)
    with pytest.raises(DataError, match="logreg_c"):
        DistillConfig(logreg_c=0.0)
    with pytest.raises(DataError, match="anchor"):
        DistillConfig(anchor=-1.0)
    with pytest.raises(DataError, match="lr_cells"):
        DistillConfig(lr_cells=0)


@pytest.fixture(scope="module")
def task(tmp_path_factory, wu2020_adata):
    from cellsynth.training.distill_data import load_task
    from cellsynth.training.train_autoencoder import train_autoencoder_bundle

    ae = train_autoencoder_bundle(
        wu2020_adata, tmp_path_factory.mktemp("lr") / "ae", label_keys=["source"],
        likelihood="mse", config="tiny", epochs=2, n_top_genes=100, progress=False,
    )  # fmt: skip
    return load_task(ae, wu2020_adata, "source")


def _train_accuracy(task, cells: np.ndarray, labels: np.ndarray) -> float:
    model = LogisticRegression(C=1.0, max_iter=5000).fit(cells, labels)
    return float((model.predict(task.x_train) == task.y_train).mean())


def test_lr_distillation_lowers_its_loss_and_fits_the_training_cells(task) -> None:
    config = DistillConfig(spc=2, iterations=40, anchor=0.0)
    assert config.match == "lr" and config.generator == "none"  # the default
    run = Distiller(task, config)
    start = run.cells()
    labels = run.labels.numpy()
    history = run.run(progress=False)
    assert history[-1] < 0.9 * history[0]
    # what it optimises, checked by scikit-learn itself: the set's model fits real cells better
    assert _train_accuracy(task, run.cells(), labels) >= _train_accuracy(task, start, labels)


def test_anchor_keeps_cells_near_their_start(task) -> None:
    moved = []
    for anchor in (0.0, 1.0):
        run = Distiller(task, DistillConfig(spc=2, iterations=30, anchor=anchor))
        start = run.cells()
        run.run(progress=False)
        moved.append(float(((run.cells() - start) ** 2).sum(1).mean()))
    assert moved[1] < 0.5 * moved[0]


def test_lr_cells_draws_a_subset_when_the_data_is_larger(task, monkeypatch) -> None:
    run = Distiller(task, DistillConfig(spc=1, iterations=2, lr_cells=25))
    seen = []
    real_loss = run.logreg.loss

    def spy(cells, labels, real, real_labels):
        seen.append(len(real))
        return real_loss(cells, labels, real, real_labels)

    monkeypatch.setattr(run.logreg, "loss", spy)
    history = run.run(progress=False)
    assert len(history) == 2 and all(np.isfinite(history))
    assert seen == [25, 25] and len(task.y_train) > 25
    everything = Distiller(task, DistillConfig(spc=1, iterations=1))
    monkeypatch.setattr(everything.logreg, "loss", spy)
    everything.run(progress=False)
    assert seen[-1] == len(task.y_train)


def test_distilled_set_records_whether_the_inner_fits_converged(task, wu2020_adata) -> None:
    from cellsynth.training.distill import distill

    out = distill(task.bundle, wu2020_adata, "source", 1, iterations=3, progress=False, task=task)
    record = out.uns["cellsynth"]["lr_fit"]
    assert record["fits"] == 3 and record["unconverged"] == 0
