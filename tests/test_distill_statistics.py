"""Distillation beyond the class mean: MMD, covariance, random features, class separation.

Each loss against a float64 reference written with loops in NumPy on fresh random inputs, its
gradient against finite differences, and each option through the distiller.
"""

from __future__ import annotations

import anndata
import numpy as np
import pytest
import torch

from cellsynth.errors import DataError
from cellsynth.training.distill import DistillConfig, Distiller, chunked_gradient
from cellsynth.training.distill_data import load_task
from cellsynth.training.distill_statistics import (
    MMD_BANDWIDTHS,
    RandomFeatures,
    covariance_loss,
    median_bandwidth,
    mmd_loss,
    separation_loss,
)
from cellsynth.training.train_autoencoder import train_autoencoder_bundle


def _reference_mmd(syn, labels, real) -> float:
    total = 0.0
    for c, r in enumerate(real):
        s = syn[labels == c]
        if len(s) == 0:
            continue
        dists = [np.sum((a - b) ** 2) for i, a in enumerate(r) for j, b in enumerate(r) if i != j]
        hs = [np.median(dists) * m for m in MMD_BANDWIDTHS]

        def k(u, v, hs=hs):
            return sum(np.exp(-np.sum((u - v) ** 2) / h) for h in hs)

        ss = np.mean([[k(a, b) for b in s] for a in s])
        rr = np.mean([[k(a, b) for b in r] for a in r])
        sr = np.mean([[k(a, b) for b in r] for a in s])
        total += ss + rr - 2 * sr
    return total


def test_mmd_matches_a_float64_reference() -> None:
    rng = np.random.default_rng()
    syn = rng.normal(size=(7, 5))
    labels = np.array([0, 0, 1, 1, 1, 2, 0])
    real = [rng.normal(loc=c, size=(int(rng.integers(4, 12)), 5)) for c in range(4)]  # class 3
    got = mmd_loss(  # has no synthetic cell: skipped
        torch.as_tensor(syn), torch.as_tensor(labels), [torch.as_tensor(r) for r in real]
    )
    assert float(got) == pytest.approx(_reference_mmd(syn, labels, real), rel=1e-10)
    # the median heuristic itself
    r = real[0]
    d = [np.sum((a - b) ** 2) for i, a in enumerate(r) for j, b in enumerate(r) if i != j]
    assert median_bandwidth(torch.as_tensor(r)) == pytest.approx(np.median(d), rel=1e-10)


def test_mmd_is_zero_for_the_same_cells_and_positive_otherwise() -> None:
    real = [torch.randn(6, 3, dtype=torch.float64), torch.randn(5, 3, dtype=torch.float64)]
    same = torch.cat(real)
    labels = torch.tensor([0] * 6 + [1] * 5)
    assert float(mmd_loss(same, labels, real)) == pytest.approx(0.0, abs=1e-12)
    assert float(mmd_loss(same + 0.5, labels, real)) > 1e-3


def test_covariance_loss_matches_numpy() -> None:
    rng = np.random.default_rng()
    syn = rng.normal(size=(9, 4))
    labels = np.array([0, 1, 1, 0, 2, 1, 0, 0, 1])
    targets = np.stack([np.cov(rng.normal(size=(20, 4)), rowvar=False) for _ in range(3)])
    expected = sum(
        np.sum((np.cov(syn[labels == c], rowvar=False, bias=True) - targets[c]) ** 2)
        for c in range(3)
    )
    got = covariance_loss(torch.as_tensor(syn), torch.as_tensor(labels), torch.as_tensor(targets))
    assert float(got) == pytest.approx(expected, rel=1e-10)
    # one synthetic cell per class: its covariance is zero, the term a constant
    one = torch.as_tensor(rng.normal(size=(3, 4)), dtype=torch.float64).requires_grad_(True)
    value = covariance_loss(one, torch.tensor([0, 1, 2]), torch.as_tensor(targets))
    assert float(value.detach()) == pytest.approx(float((torch.as_tensor(targets) ** 2).sum()))
    (grad,) = torch.autograd.grad(value, one)
    assert float(grad.abs().max()) == 0.0


def test_separation_matches_loops() -> None:
    rng = np.random.default_rng()
    cells = rng.normal(size=(6, 3))
    labels = np.array([0, 1, 0, 2, 1, 1])
    h = 1.7
    pairs = [
        np.exp(-np.sum((cells[i] - cells[j]) ** 2) / h)
        for i in range(6)
        for j in range(6)
        if labels[i] != labels[j]
    ]
    got = separation_loss(torch.as_tensor(cells), torch.as_tensor(labels), h)
    assert float(got) == pytest.approx(np.mean(pairs), rel=1e-10)
    assert float(separation_loss(torch.ones(3, 2), torch.zeros(3, dtype=torch.long), h)) == 0.0
    # cells of different classes further apart: lower
    far = torch.as_tensor(cells) * 3
    assert float(separation_loss(far, torch.as_tensor(labels), h)) < float(got)


def test_gradients_match_finite_differences() -> None:
    torch.manual_seed(7)
    syn = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 1, 0, 1, 1])
    real = [torch.randn(6, 3, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64) + 1]
    targets = torch.stack(
        [torch.eye(3, dtype=torch.float64), 2 * torch.eye(3, dtype=torch.float64)]
    )
    assert torch.autograd.gradcheck(lambda s: mmd_loss(s, labels, real), (syn,))
    assert torch.autograd.gradcheck(lambda s: covariance_loss(s, labels, targets), (syn,))
    assert torch.autograd.gradcheck(lambda s: separation_loss(s, labels, 2.0), (syn,))


def test_random_features_are_seeded_and_linear_relu_linear() -> None:
    a = RandomFeatures(10, torch.Generator().manual_seed(3), hidden=8, out=4)
    b = RandomFeatures(10, torch.Generator().manual_seed(3), hidden=8, out=4)
    g = torch.Generator().manual_seed(3)
    first, second = RandomFeatures(10, g, 8, 4), RandomFeatures(10, g, 8, 4)
    x = torch.randn(5, 10, dtype=torch.float64)
    np.testing.assert_array_equal(a(x).numpy(), b(x).numpy())
    assert not torch.equal(first.w1, second.w1)  # the generator moves on: a fresh network
    w1, b1, w2, b2 = (t.double().numpy() for t in (a.w1, a.b1, a.w2, a.b2))
    expected = np.maximum(x.numpy() @ w1.T + b1, 0) @ w2.T + b2
    np.testing.assert_allclose(a(x).numpy(), expected, rtol=1e-12)
    assert a(x).shape == (5, 4) and float(a.w1.abs().max()) <= 1 / np.sqrt(10)


@pytest.fixture(scope="module")
def task(tmp_path_factory, wu2020_adata):
    root = tmp_path_factory.mktemp("statistics")
    ae = train_autoencoder_bundle(
        wu2020_adata, root / "ae", label_keys=["source"], likelihood="mse", config="tiny", epochs=5,
        n_top_genes=200, progress=False,
    )  # fmt: skip
    return load_task(ae, wu2020_adata, "source")


@pytest.mark.parametrize(
    "options",
    [
        {"match": "mmd"},
        {"match": "mmd", "features": "random"},
        {"match": "dm", "features": "random"},
        {"match": "dm", "covariance": 1.0},
        {"match": "dm", "features": "random", "covariance": 1.0, "init": "random"},
        {"match": "lr", "separation": 0.5},
        {"match": "dc", "dc_steps": 4},
    ],
)
def test_options_through_the_distiller(task, options) -> None:
    config = DistillConfig(spc=3, generator="none", seed=2, iterations=30, **options)
    run = Distiller(task, config)
    # the chunked backward equals plain autograd with the option on (same draws: same seed)
    loss_fn = run.loss_fn()
    value, grad = chunked_gradient(run.gen, run.params, run.cond, None, loss_fn, chunk_size=2)
    p = run.params.clone().requires_grad_(True)
    plain = loss_fn(run.gen(p, run.cond, None))
    plain.backward()
    assert value == pytest.approx(float(plain.detach()), rel=1e-6)
    np.testing.assert_allclose(grad.numpy(), p.grad.numpy(), rtol=1e-4, atol=1e-7)
    assert grad.abs().sum() > 0
    # reproducible from the seed, and the set moves
    cells = []
    for _ in range(2):
        r = Distiller(task, config)
        r.run(progress=False)
        cells.append(r.cells())
    np.testing.assert_array_equal(cells[0], cells[1])
    start = Distiller(task, config).cells()
    assert np.abs(cells[0] - start).max() > 1e-4


def test_separation_adds_its_term(task) -> None:
    base = Distiller(task, DistillConfig(spc=2, seed=1))
    sep = Distiller(task, DistillConfig(spc=2, seed=1, separation=0.5))
    cells = base.gen(base.params, base.cond, None)
    term = separation_loss(cells, sep.labels, sep.separation_bandwidth)
    assert float(sep.loss_fn()(cells)) == pytest.approx(
        float(base.loss_fn()(cells) + 0.5 * term), rel=1e-6
    )
    assert float(term) > 0


@pytest.mark.parametrize(
    "options, words",
    [
        ({"features": "learned"}, "features must be one of"),
        ({"features": "random", "match": "lr"}, "features apply to --match dm or mmd only"),
        ({"covariance": 1.0, "match": "mmd"}, "covariance term applies to --match dm only"),
        ({"covariance": -1.0, "match": "dm"}, "covariance must be 0 or more"),
        ({"separation": float("nan")}, "separation must be 0 or more"),
        ({"dc_steps": 2}, "dc_steps applies to --match dc only"),
        ({"match": "dc", "dc_head_lr": 0.0}, "dc_head_lr must be positive"),
    ],
)
def test_bad_options_are_named(options, words) -> None:
    with pytest.raises(DataError, match=words):
        DistillConfig(**options)


def test_cli_takes_the_options(task, tmp_path, capsys, wu2020_adata) -> None:
    from cellsynth.cli.main import main

    path = tmp_path / "wu.h5ad"
    wu2020_adata.write_h5ad(path)
    out = tmp_path / "distilled.h5ad"
    code = main(
        ["distill", str(task.bundle.path), "--data", str(path), "--label", "source", "--spc",
         "2", "--match", "dm", "--features", "random", "--covariance", "0.5", "--separation",
         "0.1", "--iterations", "2", "--out", str(out)]
    )  # fmt: skip
    assert code == 0, capsys.readouterr().err
    record = anndata.read_h5ad(out).uns["cellsynth"]
    assert (record["match"], record["features"]) == ("dm", "random")
    assert (record["covariance"], record["separation"]) == (0.5, 0.1)
    code = main(
        ["distill", str(task.bundle.path), "--data", str(path), "--label", "source", "--spc",
         "2", "--features", "random", "--out", str(tmp_path / "x.h5ad")]
    )  # fmt: skip
    err = capsys.readouterr().err
    assert code == 1 and "features apply to --match dm or mmd only" in err
    assert "Traceback" not in err and not (tmp_path / "x.h5ad").exists()
