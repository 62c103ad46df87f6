"""Distillation: matching losses by hand, the chunked backward, frozen models, progress."""

from __future__ import annotations

import anndata
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cellsynth.cli.main import main
from cellsynth.errors import BundleError, DataError
from cellsynth.training.distill import (
    DistillConfig,
    Distiller,
    chunked_gradient,
    dc_loss,
    dc_trajectory_loss,
    distill,
    dm_loss,
    gradient_distance,
    head_gradients,
    kmeans_start,
    krr_loss,
)
from cellsynth.training.distill_data import load_task
from cellsynth.training.train_autoencoder import train_autoencoder_bundle
from cellsynth.training.train_scdg import train_scdg_bundle


@pytest.fixture(scope="module")
def scdg_bundle(tmp_path_factory, wu2020_adata):
    root = tmp_path_factory.mktemp("distill")
    ae = train_autoencoder_bundle(
        wu2020_adata, root / "ae", label_keys=["source"], likelihood="mse", config="tiny", epochs=5,
        n_top_genes=200, progress=False,
    )  # fmt: skip
    return train_scdg_bundle(
        ae, wu2020_adata, ["source"], root / "scdg", config="tiny", epochs=3, progress=False
    )


@pytest.fixture(scope="module")
def task(scdg_bundle, wu2020_adata):
    return load_task(scdg_bundle, wu2020_adata, "source")


def test_dm_loss_by_hand() -> None:
    f = torch.tensor([[1.0, 0.0], [3.0, 2.0], [0.0, 1.0]])
    labels = torch.tensor([0, 0, 1])
    real = torch.tensor([[1.0, 1.0], [0.0, 0.0], [5.0, 5.0]])  # class 2 has no synthetic cell
    # class 0: mean (2, 1) vs (1, 1) -> 1; class 1: (0, 1) vs (0, 0) -> 1; class 2 skipped
    assert float(dm_loss(f, labels, real)) == pytest.approx(2.0)


def test_head_gradients_match_autograd_and_a_hand_value() -> None:
    torch.manual_seed(0)
    f = torch.randn(5, 3, dtype=torch.float64)
    w = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(4, dtype=torch.float64, requires_grad=True)
    loss = F.cross_entropy(f @ w.T + b, torch.full((5,), 2))
    gw, gb = torch.autograd.grad(loss, [w, b])
    rows = head_gradients(f, 2, w.detach(), b.detach())
    np.testing.assert_allclose(rows[:, :3].numpy(), gw.numpy(), atol=1e-12)
    np.testing.assert_allclose(rows[:, 3].numpy(), gb.numpy(), atol=1e-12)
    # zero head on one cell f = (1, 2): p = (1/2, 1/2), label 0 -> p - y = (-1/2, 1/2)
    one = head_gradients(torch.tensor([[1.0, 2.0]]), 0, torch.zeros(2, 2), torch.zeros(2))
    np.testing.assert_allclose(one.numpy(), [[-0.5, -1.0, -0.5], [0.5, 1.0, 0.5]])


def test_gradient_distance_and_dc_loss_by_hand() -> None:
    a = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    b = torch.tensor([[2.0, 0.0], [1.0, 0.0]])
    # row 0: cos 1 -> 0; row 1: cos 0 -> 1
    assert float(gradient_distance(a, b)) == pytest.approx(1.0)
    # identical real and synthetic cells give identical gradients: distance 0
    f = torch.randn(6, 3)
    w, bias = torch.randn(2, 3), torch.zeros(2)
    labels = torch.tensor([0, 0, 0, 1, 1, 1])
    real = [f[:3], f[3:]]
    assert float(dc_loss(f, labels, real, w, bias)) == pytest.approx(0.0, abs=1e-6)
    expected = sum(
        float(
            gradient_distance(
                head_gradients(real[c], c, w, bias), head_gradients(f[[c * 3]], c, w, bias)
            )
        )
        for c in range(2)
    )
    got = float(dc_loss(f[[0, 3]], torch.tensor([0, 1]), real, w, bias))
    assert got == pytest.approx(expected) and got > 0


@pytest.mark.parametrize("generator", ["scdg", "decoder", "none"])
@pytest.mark.parametrize("match", ["dm", "dc", "krr"])
def test_chunked_backward_equals_plain_autograd(task, generator, match) -> None:
    run = Distiller(task, DistillConfig(spc=4, match=match, generator=generator, seed=3))
    noise = run.noise()
    loss_fn = run.loss_fn()
    params = run.params.double().float()  # a copy
    value, grad = chunked_gradient(run.gen, params, run.cond, noise, loss_fn, chunk_size=5)
    p = params.clone().requires_grad_(True)
    plain = loss_fn(run.gen(p, run.cond, noise))
    plain.backward()
    assert value == pytest.approx(float(plain.detach()), rel=1e-6)
    # KRR solves with a small ridge (condition number ~1e3): the float32 round-off of a decoder
    # run on 5 rows instead of 8 is amplified, so it is compared relative to the largest entry.
    atol = 1e-4 * float(grad.abs().max()) if match == "krr" else 1e-7
    np.testing.assert_allclose(grad.numpy(), p.grad.numpy(), rtol=1e-4, atol=atol)
    assert grad.abs().sum() > 0


def test_krr_loss_matches_a_float64_reference() -> None:
    rng = np.random.default_rng(11)
    syn, real = rng.random((7, 20)) * 3, rng.random((40, 20)) * 3
    ys, yr = rng.integers(0, 3, 7), rng.integers(0, 3, 40)
    ridge = 0.05
    # Reference: ridge regression with the kernel a.b / s + 1, s the synthetic mean squared norm.
    s = (syn**2).sum(1).mean()
    k_ss, k_rs = syn @ syn.T / s + 1, real @ syn.T / s + 1
    onehot = np.eye(3)
    alpha = np.linalg.solve(k_ss + ridge * np.eye(7), onehot[ys] - 1 / 3)
    want = (((k_rs @ alpha) - (onehot[yr] - 1 / 3)) ** 2).sum(1).mean()
    got = krr_loss(
        torch.as_tensor(syn), torch.as_tensor(ys), torch.as_tensor(real), torch.as_tensor(yr),
        3, ridge,
    )  # fmt: skip
    assert float(got) == pytest.approx(want, rel=1e-10)
    # The same predictor as scikit-learn's KernelRidge on the precomputed kernel.
    from sklearn.kernel_ridge import KernelRidge

    kr = KernelRidge(alpha=ridge, kernel="precomputed").fit(k_ss, onehot[ys] - 1 / 3)
    np.testing.assert_allclose(kr.predict(k_rs), k_rs @ alpha, rtol=1e-8, atol=1e-10)


def test_krr_lowers_its_loss_and_refuses_a_bad_ridge(task) -> None:
    run = Distiller(task, DistillConfig(spc=2, match="krr", generator="none", iterations=40))
    history = run.run(progress=False)
    assert history[-1] < 0.9 * history[0]
    with pytest.raises(DataError, match="ridge"):
        DistillConfig(match="krr", ridge=0.0)


def test_models_stay_frozen(task) -> None:
    run = Distiller(task, DistillConfig(spc=2, match="dc", generator="scdg", iterations=5))
    before = {k: v.clone() for k, v in run.gen.ae.state_dict().items()}
    scdg_before = {k: v.clone() for k, v in run.gen.scdg.state_dict().items()}
    run.run(progress=False)
    for k, v in run.gen.ae.state_dict().items():
        assert torch.equal(v, before[k]), k  # BatchNorm running stats included
    for k, v in run.gen.scdg.state_dict().items():
        assert torch.equal(v, scdg_before[k]), k
    assert not run.gen.ae.training and not run.gen.scdg.training
    assert all(not p.requires_grad for p in run.gen.ae.parameters())


@pytest.mark.parametrize("generator", ["scdg", "decoder"])
def test_distillation_lowers_the_loss_and_beats_random_codes(task, generator) -> None:
    # From random cells (the paper's start), far from the class means: the 0.8 factor below was
    # set for it; a k-means start begins near its targets (checked after).
    config = DistillConfig(spc=3, match="dm", generator=generator, iterations=60, init="random")
    run = Distiller(task, config)
    start = run.matching_loss()
    random_codes = torch.randn(run.params.shape, generator=torch.Generator().manual_seed(9))
    random_codes *= run.params.norm(dim=1, keepdim=True) / random_codes.norm(dim=1, keepdim=True)
    history = run.run(progress=False)
    end = run.matching_loss()
    assert end < 0.8 * start
    assert end < run.matching_loss(random_codes)
    assert history[-1] < history[0]
    kmeans = Distiller(task, DistillConfig(spc=3, match="dm", generator=generator, iterations=60))
    before = kmeans.matching_loss()
    kmeans.run(progress=False)
    assert kmeans.matching_loss() < before


def test_kmeans_start_covers_each_class_with_its_clusters(task) -> None:
    from sklearn.cluster import KMeans

    centroids, nearest, members = kmeans_start(task, 3, seed=4)
    assert centroids.shape == (3 * len(task.classes), len(task.genes)) == (len(members), 200)
    for c in range(len(task.classes)):
        idx = task.class_indices(c)
        rows = slice(3 * c, 3 * c + 3)
        ref = KMeans(n_clusters=3, n_init=3, random_state=4).fit(task.x_train[idx])
        np.testing.assert_allclose(centroids[rows], ref.cluster_centers_, rtol=1e-5, atol=1e-6)
        # the clusters partition the class, and each named cell lies in its own cluster
        mine = members[rows]
        assert sorted(np.concatenate(mine)) == sorted(idx)
        assert all(n in m for n, m in zip(nearest[rows], mine, strict=True))
    run = Distiller(task, DistillConfig(spc=3, init="kmeans", iterations=1, seed=4))
    with torch.no_grad():
        feats = run.gen.ae.encode(torch.as_tensor(task.x_train))
    expected = torch.stack([feats[m].mean(0) for m in members])
    torch.testing.assert_close(run.dm_targets, expected)  # each cell's target: its own cluster
    np.testing.assert_array_equal(run.init_idx, nearest)


def test_distill_output(scdg_bundle, wu2020_adata, task) -> None:
    out = distill(scdg_bundle, wu2020_adata, "source", 2, iterations=3, progress=False, task=task)
    assert out.shape == (6, 200) and list(out.var_names) == task.genes
    assert out.obs["source"].value_counts().to_dict() == {"Blood": 2, "NAT": 2, "Tumor": 2}
    x = out.X.toarray()  # CSR like every cellsynth output
    assert (x >= 0).all() and np.isfinite(x).all()
    assert set(out.obs["init_cell"]) <= set(task.cell_names)
    info = out.uns["cellsynth"]
    # the defaults: the bilevel logistic regression directly in expression space
    assert info["spc"] == 2 and info["match"] == "lr" and info["generator"] == "none"
    assert len(info["loss_history"]) == 3
    again = distill(scdg_bundle, wu2020_adata, "source", 2, iterations=3, progress=False, task=task)
    np.testing.assert_array_equal(out.X.toarray(), again.X.toarray())  # seeded


def test_bad_input_is_named(scdg_bundle, wu2020_adata, tiny_bundle) -> None:
    with pytest.raises(DataError, match="'no_such_label' not found"):
        load_task(scdg_bundle, wu2020_adata, "no_such_label")
    task = load_task(scdg_bundle, wu2020_adata, "source")
    smallest = min(np.bincount(task.y_train))
    with pytest.raises(DataError, match="larger than class"):
        distill(scdg_bundle, wu2020_adata, "source", smallest + 1, progress=False, task=task)
    with pytest.raises(BundleError, match="has no autoencoder"):
        load_task(tiny_bundle, wu2020_adata, "source")
    with pytest.raises(DataError, match="--match"):
        DistillConfig(match="kl")
    ae = load_task(scdg_bundle, wu2020_adata, "source").bundle.autoencoder
    with pytest.raises(DataError, match="needs an SCDG bundle"):
        distill(ae.path, wu2020_adata, "source", 1, generator="scdg", progress=False)


def test_cli_distill_writes_h5ad(scdg_bundle, tmp_path, capsys, monkeypatch, wu2020_adata) -> None:
    path = tmp_path / "wu.h5ad"
    wu2020_adata.write_h5ad(path)
    out = tmp_path / "distilled.h5ad"
    code = main(
        ["distill", str(scdg_bundle), "--data", str(path), "--label", "source", "--spc", "1",
         "--match", "dc", "--dc-steps", "2", "--iterations", "3", "--out", str(out)]
    )  # fmt: skip
    assert code == 0, capsys.readouterr().err
    result = anndata.read_h5ad(out)
    assert result.n_obs == 3 and result.uns["cellsynth"]["match"] == "dc"
    assert result.uns["cellsynth"]["dc_steps"] == 2
    code = main(
        ["distill", str(scdg_bundle), "--data", str(path), "--label", "nope", "--spc", "1",
         "--out", str(tmp_path / "x.h5ad")]
    )  # fmt: skip
    err = capsys.readouterr().err
    assert code == 1 and "nope" in err and "Traceback" not in err
    assert not (tmp_path / "x.h5ad").exists()


def test_network_term_through_the_distiller(scdg_bundle, wu2020_adata, task) -> None:
    options = dict(network_weight=0.3, networks="mlp", unroll_steps=2, network_cells=32)
    run = Distiller(task, DistillConfig(spc=2, seed=1, **options))
    loss_fn = run.loss_fn()  # this iteration's networks and real cells, drawn once
    value, grad = chunked_gradient(run.gen, run.params, run.cond, run.noise(), loss_fn, 4)
    p = run.params.clone().requires_grad_(True)
    plain = loss_fn(run.gen(p, run.cond, None))  # the same draws: a function of the cells
    plain.backward()
    assert value == pytest.approx(float(plain.detach()), rel=1e-6)
    np.testing.assert_allclose(grad.numpy(), p.grad.numpy(), rtol=1e-4, atol=1e-7)
    alone = Distiller(task, DistillConfig(spc=2, seed=1))
    value_alone, grad_alone = chunked_gradient(
        alone.gen, alone.params, alone.cond, alone.noise(), alone.loss_fn(), 4
    )
    assert value > value_alone  # the term is a cross-entropy, added with a positive weight
    assert not np.allclose(grad.numpy(), grad_alone.numpy())
    out = distill(scdg_bundle, wu2020_adata, "source", 2, iterations=2, progress=False,
                  task=task, **options)  # fmt: skip
    info = out.uns["cellsynth"]
    assert info["network_weight"] == 0.3 and info["networks"] == "mlp"
    assert len(info["network_loss_history"]) == 2
    again = distill(scdg_bundle, wu2020_adata, "source", 2, iterations=2, progress=False,
                    task=task, **options)  # fmt: skip
    np.testing.assert_array_equal(out.X.toarray(), again.X.toarray())  # seeded
    assert (
        "network_loss_history"
        not in distill(
            scdg_bundle, wu2020_adata, "source", 2, iterations=1, progress=False, task=task
        ).uns["cellsynth"]
    )


def test_cli_distill_with_networks(scdg_bundle, tmp_path, capsys, wu2020_adata) -> None:
    path = tmp_path / "wu.h5ad"
    wu2020_adata.write_h5ad(path)
    out = tmp_path / "distilled.h5ad"
    args = ["distill", str(scdg_bundle), "--data", str(path), "--label", "source", "--spc", "1",
            "--iterations", "2", "--network-weight", "0.3", "--networks", "transformer",
            "--out", str(out)]  # fmt: skip
    assert main(args) == 0, capsys.readouterr().err
    info = anndata.read_h5ad(out).uns["cellsynth"]
    assert info["networks"] == "transformer" and info["network_weight"] == 0.3
    bad = args[:-3] + ["cnn", "--out", str(tmp_path / "x.h5ad")]
    assert main(bad) == 1
    err = capsys.readouterr().err
    assert "networks must name some of" in err and "Traceback" not in err
    assert not (tmp_path / "x.h5ad").exists()
    no_weight = args[:-6] + ["--networks", "mlp", "--out", str(tmp_path / "y.h5ad")]
    assert main(no_weight) == 1
    err = capsys.readouterr().err
    assert "--networks needs --network-weight" in err and "Traceback" not in err
    assert not (tmp_path / "y.h5ad").exists()


def test_dc_trajectory_matches_a_head_trained_by_autograd() -> None:
    rng = np.random.default_rng()
    syn = torch.as_tensor(rng.normal(size=(6, 4)), dtype=torch.float64)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    real = [torch.as_tensor(rng.normal(loc=c, size=(5, 4)), dtype=torch.float64) for c in range(3)]
    w = torch.as_tensor(rng.normal(size=(3, 4)), dtype=torch.float64)
    b = torch.zeros(3, dtype=torch.float64)
    one = dc_trajectory_loss(syn, labels, real, w, b, steps=1, head_lr=0.3)
    assert float(one) == pytest.approx(float(dc_loss(syn, labels, real, w, b)), rel=1e-12)
    # reference: the head trained by plain gradient descent on torch's cross-entropy
    heads, head_w, head_b = [], w.clone(), b.clone()
    for _ in range(3):
        heads.append((head_w, head_b))
        hw, hb = head_w.clone().requires_grad_(True), head_b.clone().requires_grad_(True)
        gw, gb = torch.autograd.grad(F.cross_entropy(syn @ hw.T + hb, labels), [hw, hb])
        head_w, head_b = head_w - 0.3 * gw, head_b - 0.3 * gb
    cells = syn.clone().requires_grad_(True)
    got = dc_trajectory_loss(cells, labels, real, w, b, steps=3, head_lr=0.3)
    x = syn.clone().requires_grad_(True)
    expected = sum(dc_loss(x, labels, real, hw, hb) for hw, hb in heads)
    assert float(got.detach()) == pytest.approx(float(expected.detach()), rel=1e-10)
    # the heads' steps see the cells detached: the gradient is that of the fixed heads
    (g_got,) = torch.autograd.grad(got, cells)
    (g_expected,) = torch.autograd.grad(expected, x)
    np.testing.assert_allclose(g_got.numpy(), g_expected.numpy(), rtol=1e-10, atol=1e-12)
