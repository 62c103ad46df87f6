"""Sound metrics and compute_metrics: naive implementations and cases with known answers."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy.spatial.distance import pdist

from cellsynth.metrics import METRICS, compute_metrics, fit_pca, sound

# --------------------------------------------------------------------------------------------
# MMD


def _naive_mmd2_unbiased(x: np.ndarray, y: np.ndarray, sigma2: float) -> float:
    def k(a, b):
        return np.exp(-((a - b) ** 2).sum() / (2 * sigma2))

    n, m = len(x), len(y)
    kxx = sum(k(x[i], x[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    kyy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    kxy = sum(k(x[i], y[j]) for i in range(n) for j in range(m)) / (n * m)
    return kxx + kyy - 2 * kxy


def test_mmd2_unbiased_matches_double_loop() -> None:
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(7, 3)), rng.normal(0.5, 1.0, size=(9, 3))
    sigma2 = float(np.median(pdist(np.concatenate([x, y]), "sqeuclidean")))
    assert sound.median_bandwidth(x, y) == pytest.approx(sigma2, abs=1e-12)
    naive = _naive_mmd2_unbiased(x, y, sigma2)
    assert sound.mmd2_unbiased(x, y) == pytest.approx(naive, abs=1e-8)
    for block in (1, 3):  # blockwise sums are the same sums
        assert sound.mmd2_unbiased(x, y, 0.7, block=block) == pytest.approx(
            _naive_mmd2_unbiased(x, y, 0.7), abs=1e-8
        )


def test_mmd2_unbiased_zero_in_expectation_and_positive_for_shift() -> None:
    rng = np.random.default_rng(1)
    same = [
        sound.mmd2_unbiased(rng.normal(size=(60, 4)), rng.normal(size=(60, 4)), 4.0)
        for _ in range(20)
    ]
    # Unbiased: same-distribution values scatter around 0, both signs.
    assert abs(np.mean(same)) < 3 * np.std(same) / np.sqrt(len(same))
    assert min(same) < 0 < max(same)
    shifted = sound.mmd2_unbiased(rng.normal(size=(60, 4)), rng.normal(1.0, 1, (60, 4)), 4.0)
    assert shifted > max(same)


# --------------------------------------------------------------------------------------------
# Wasserstein


def test_w2_exact_matches_brute_force_permutations() -> None:
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(5, 3)), rng.normal(1.0, 2.0, size=(5, 3))
    # Equal uniform weights: an optimal coupling is a permutation (Birkhoff).
    cost = ((x[:, None] - y[None]) ** 2).sum(-1)
    best = min(cost[range(5), list(p)].mean() for p in itertools.permutations(range(5)))
    assert sound.wasserstein2_exact(x, y) == pytest.approx(np.sqrt(best), abs=1e-8)


def test_w2_exact_matches_1d_closed_form() -> None:
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(50, 1)), rng.exponential(size=(50, 1))
    closed = np.sqrt(np.mean((np.sort(x[:, 0]) - np.sort(y[:, 0])) ** 2))  # quantile coupling
    assert sound.wasserstein2_exact(x, y) == pytest.approx(closed, abs=1e-8)
    # Sliced W2 in 1-D: every direction is +-1, so it is the same closed form.
    assert sound.sliced_wasserstein2(x, y, n_projections=5) == pytest.approx(closed, abs=1e-8)


def test_w2_of_shifted_sets() -> None:
    rng = np.random.default_rng(4)
    mu = np.array([3.0, -1.0, 2.0, 0.0])
    x = rng.normal(size=(300, 4))
    # A translated copy: the identity coupling is optimal and W2 = |mu| exactly.
    assert sound.wasserstein2_exact(x, x + mu) == pytest.approx(np.linalg.norm(mu), abs=1e-8)
    assert sound.wasserstein2_exact(x, x.copy()) == pytest.approx(0.0, abs=1e-8)
    # Independent samples of N(0, I) and N(mu, I): close to |mu| (plus sampling noise).
    y = rng.normal(size=(300, 4)) + mu
    assert sound.wasserstein2_exact(x, y) == pytest.approx(np.linalg.norm(mu), rel=0.1)
    # Sliced: each direction theta sees a shift theta.mu, so SW2^2 = E (theta.mu)^2 = |mu|^2 / d.
    sw = sound.sliced_wasserstein2(x, x + mu, n_projections=2000, seed=0)
    assert sw == pytest.approx(np.linalg.norm(mu) / 2.0, rel=0.05)


def test_w2_subsampling_cap_is_seeded() -> None:
    rng = np.random.default_rng(5)
    x, y = rng.normal(size=(80, 2)), rng.normal(size=(90, 2))
    a = sound.wasserstein2_exact(x, y, max_cells=40, seed=1)
    assert a == sound.wasserstein2_exact(x, y, max_cells=40, seed=1)
    assert a != sound.wasserstein2_exact(x, y, max_cells=None)


# --------------------------------------------------------------------------------------------
# Per-gene statistics


def test_gene_stat_agreement_matches_naive() -> None:
    rng = np.random.default_rng(6)
    real = (rng.random((40, 12)) < 0.4) * rng.gamma(2.0, 1.0, (40, 12))
    syn = (rng.random((30, 12)) < 0.5) * rng.gamma(2.0, 1.2, (30, 12))
    real[:, 3] = 0.0  # a silent gene: no CV, left out of the CV comparison only
    out = sound.gene_stat_agreement(real, syn)
    naive = {
        "mean": (real.mean(0), syn.mean(0)),
        "var": (real.var(0), syn.var(0)),
        "zero_fraction": ((real == 0).mean(0), (syn == 0).mean(0)),
    }
    keep = np.arange(12) != 3
    naive["cv"] = tuple(
        s[keep]
        for s in (
            real.std(0) / np.where(real.mean(0) > 0, real.mean(0), 1),
            syn.std(0) / syn.mean(0),
        )
    )
    for stat, (a, b) in naive.items():
        assert out[f"gene_{stat}_pearson"] == pytest.approx(np.corrcoef(a, b)[0, 1], abs=1e-8)
        assert out[f"gene_{stat}_rmse"] == pytest.approx(np.sqrt(np.mean((a - b) ** 2)), abs=1e-8)
    small = sound.gene_stats(real, chunk=5)  # chunking over genes changes nothing
    assert np.allclose(small["var"], real.var(0), atol=1e-12, rtol=0)


def test_gene_stat_agreement_identical_sets() -> None:
    rng = np.random.default_rng(7)
    x = (rng.random((30, 10)) < 0.5) * rng.gamma(2.0, 1.0, (30, 10))
    out = sound.gene_stat_agreement(x, x.copy())
    for stat in ("mean", "var", "zero_fraction", "cv"):
        assert out[f"gene_{stat}_pearson"] == pytest.approx(1.0, abs=1e-12)
        assert out[f"gene_{stat}_rmse"] == 0.0


# --------------------------------------------------------------------------------------------
# kNN two-sample classifier


def test_auc_mann_whitney_matches_pair_count() -> None:
    rng = np.random.default_rng(8)
    scores = rng.integers(0, 5, 40) / 4.0  # many ties
    labels = rng.random(40) < 0.4
    pos, neg = scores[labels], scores[~labels]
    naive = np.mean([(p > q) + 0.5 * (p == q) for p in pos for q in neg])
    assert sound.auc_mann_whitney(scores, labels) == pytest.approx(naive, abs=1e-12)


def test_knn_indices_match_sorting() -> None:
    rng = np.random.default_rng(9)
    train, query = rng.normal(size=(50, 3)), rng.normal(size=(12, 3))
    got = sound._knn_indices(query, train, 4, block=5)
    d = ((query[:, None] - train[None]) ** 2).sum(-1)
    assert np.array_equal(np.sort(got, 1), np.sort(np.argsort(d, 1)[:, :4], 1))


def test_knn_auc_chance_and_separation() -> None:
    rng = np.random.default_rng(10)
    x = rng.normal(size=(300, 5))
    same = sound.knn_auc(x, rng.normal(size=(400, 5)), seed=0)
    assert abs(same - 0.5) < 0.07
    y = rng.normal(size=(300, 5)) + 6.0
    far = sound.knn_auc(x, y, seed=0)
    assert far > 0.99
    assert sound.knn_auc(x, y, seed=0) == far  # seeded
    assert np.isnan(sound.knn_auc(x[:5], x[:5], k=10))  # training folds smaller than k


# --------------------------------------------------------------------------------------------
# PCA


def test_randomized_pca_matches_exact_subspace() -> None:
    rng = np.random.default_rng(11)
    latent = rng.normal(size=(200, 5)) * np.array([10, 8, 6, 4, 3])
    x = latent @ rng.normal(size=(5, 60)) + 0.1 * rng.normal(size=(200, 60))
    mean_e, comps_e = fit_pca(x, 5)
    mean_r, comps_r = sound.fit_pca_randomized(x, 5, seed=0)
    assert np.allclose(mean_e, mean_r)
    # Same subspace: the singular values of the cross-product are all ~1.
    s = np.linalg.svd(comps_e @ comps_r.T, compute_uv=False)
    assert np.allclose(s, 1.0, atol=1e-8)
    pe, pr = sound.project(x, mean_e, comps_e), sound.project(x, mean_r, comps_r)
    assert np.allclose(pdist(pe), pdist(pr), atol=1e-6)


# --------------------------------------------------------------------------------------------
# compute_metrics


def _cells(rng: np.random.Generator, n_per: dict[str, int], shift: float = 0.0):
    """Three-type clustered log-expression-like cells [n, 30] with labels [n]."""
    centres = {c: np.where(np.arange(30) // 10 == k, 2.0, 0.2) for k, c in enumerate("abc")}
    xs, labels = [], []
    for c, n in n_per.items():
        x = centres[c] + shift + rng.normal(0, 0.5, (n, 30))
        xs.append(np.clip(x, 0, None) * (rng.random((n, 30)) < 0.6))
        labels += [c] * n
    return np.concatenate(xs).astype(np.float32), np.array(labels)


_SMALL = dict(
    n_components=5,
    paper_max_cells=100,
    w2_max_cells=100,
    sliced_projections=50,
    knn_max_cells=200,
    gene_chunk=10,
    min_cells=20,
)


def test_compute_metrics_structure_and_floor() -> None:
    rng = np.random.default_rng(12)
    real, r_lab = _cells(rng, {"a": 150, "b": 150, "c": 60})
    syn, s_lab = _cells(rng, {"a": 100, "b": 100, "c": 5}, shift=1.0)
    out = compute_metrics(real, syn, {"type": r_lab}, {"type": s_lab}, label_key="type", **_SMALL)
    assert set(out["metrics"]) == set(METRICS)
    n_fit = min(360 // 3, 2000)
    assert out["n_pca"] == n_fit and out["n_compared"] == min((360 - n_fit) // 2, 205)
    for name, vf in out["metrics"].items():
        assert set(vf) == {"value", "floor"} and np.isfinite(vf["value"]), name
    m = out["metrics"]
    # A shifted generator is farther from real cells than real cells are from each other.
    for name in (
        "paper_mmd_multikernel",
        "mmd2_rbf_pca",
        "w2_pca",
        "sliced_w2_pca",
        "gene_mean_rmse",
    ):
        assert m[name]["value"] > m[name]["floor"], name
    assert m["knn_auc"]["value"] > m["knn_auc"]["floor"] + 0.05
    assert abs(m["knn_auc"]["floor"] - 0.5) < 0.1
    by = out["by_label"]["type"]
    assert set(by["classes"]) == {"a", "b"} and set(by["skipped"]) == {"c"}
    assert "too few cells" in by["skipped"]["c"]
    cls = by["classes"]["a"]
    assert cls["n_real"] == 150 and cls["n_synthetic"] == 100 and cls["n_compared"] >= 20
    assert set(cls["metrics"]) == set(METRICS)
    # Seeded: the same call gives the same numbers.
    again = compute_metrics(real, syn, r_lab, s_lab, label_key="type", **_SMALL)
    assert again["metrics"] == out["metrics"]
    assert again["by_label"]["type"]["classes"]["a"] == cls


def test_compute_metrics_same_distribution_sits_on_floor() -> None:
    rng = np.random.default_rng(13)
    real, _ = _cells(rng, {"a": 200, "b": 200, "c": 200})
    syn, _ = _cells(rng, {"a": 100, "b": 100, "c": 100})
    m = compute_metrics(real, syn, **_SMALL)["metrics"]
    assert abs(m["knn_auc"]["value"] - 0.5) < 0.1
    assert abs(m["mmd2_rbf_pca"]["value"]) < 0.01
    for name in ("paper_mmd_multikernel", "w2_pca", "sliced_w2_pca", "gene_mean_rmse"):
        assert m[name]["value"] < 2.0 * m[name]["floor"], name


def test_compute_metrics_rejects_bad_input() -> None:
    rng = np.random.default_rng(14)
    real, lab = _cells(rng, {"a": 30})
    with pytest.raises(ValueError, match="genes"):
        compute_metrics(real, real[:, :10])
    with pytest.raises(ValueError, match="both"):
        compute_metrics(real, real, real_labels=lab)
    with pytest.raises(ValueError, match="missing"):
        compute_metrics(real, real, {"type": lab}, {"type": lab}, label_key="tissue")


# ---------------------------------------------------------------------------------------------
# structure metrics and the benchmark's options of compute_metrics


_LOADINGS = np.random.default_rng(7).normal(size=(2, 12))  # fixed: the same structure per call


def _correlated_cells(rng: np.random.Generator, n: int):
    """Two classes with their own means; within a class, 12 genes load on two latent factors
    with fixed, varied loadings, so gene pairs have all kinds of correlations."""
    labels = rng.integers(0, 2, n).astype(str)
    means = np.where(labels[:, None] == "1", 3.0, 1.0)
    x = means + rng.normal(size=(n, 2)) @ _LOADINGS + 0.5 * rng.normal(size=(n, 12))
    return x.astype(np.float32), labels


def test_correlation_agreement_of_structure_and_of_none() -> None:
    from cellsynth.metrics import structure

    rng = np.random.default_rng()
    real, r_lab = _correlated_cells(rng, 600)
    same, s_lab = _correlated_cells(rng, 600)
    genes = structure.top_variable_genes(real, 12)
    good = structure.correlation_agreement(real, same, r_lab, s_lab, genes)["value"]
    # Independent genes with the right class means and variances: no within-class structure.
    sd = same.std(axis=0)
    indep = np.where(s_lab[:, None] == "1", 3.0, 1.0) + sd * rng.normal(size=same.shape)
    bad = structure.correlation_agreement(real, indep, r_lab, s_lab, genes)["value"]
    # Over 200 seeds: good >= 0.986, |bad| <= 0.31 (0.3 failed about once in 200 runs).
    assert good > 0.9 and abs(bad) < 0.5


def test_correlation_agreement_by_hand_and_small_classes() -> None:
    from cellsynth.metrics import structure

    rng = np.random.default_rng()
    a, b = rng.normal(size=(50, 4)), rng.normal(size=(70, 4))
    ca, cb = np.corrcoef(a, rowvar=False), np.corrcoef(b, rowvar=False)
    iu = np.triu_indices(4, 1)
    expected = np.corrcoef(ca[iu], cb[iu])[0, 1]
    got = structure.correlation_agreement(a, b, None, None, np.arange(4))
    assert got["value"] == pytest.approx(expected, abs=1e-10)
    few = structure.correlation_agreement(a, b, np.array(["x"] * 50), np.array(["x"] * 70),
                                          np.arange(4), min_cells=60)  # fmt: skip
    assert np.isnan(few["value"]) and few["skipped"] == ["x"]


def test_top_variable_genes_skips_constant_ones() -> None:
    from cellsynth.metrics import structure

    x = np.array([[0, 1, 5, 2], [0, 3, 5, 2], [0, 9, 5, 0]], dtype=float)
    assert list(structure.top_variable_genes(x, 3)) == [1, 3]


def test_label_transfer_accuracy() -> None:
    from cellsynth.metrics import structure

    rng = np.random.default_rng()
    real, r_lab = _correlated_cells(rng, 400)
    syn, s_lab = _correlated_cells(rng, 400)
    assert structure.label_transfer_accuracy(syn, s_lab, real, r_lab) > 0.9
    swapped = np.where(s_lab == "1", "0", "1")  # labels on the wrong cells
    assert structure.label_transfer_accuracy(syn, swapped, real, r_lab) < 0.1
    assert np.isnan(structure.label_transfer_accuracy(syn, np.zeros(400), real, r_lab))


def test_compute_metrics_with_external_floor_and_pca() -> None:
    rng = np.random.default_rng(21)
    real, r_lab = _cells(rng, {"a": 120, "b": 120, "c": 60})
    floor, f_lab = _cells(rng, {"a": 120, "b": 120, "c": 60})
    pca, _ = _cells(rng, {"a": 100, "b": 100, "c": 100})
    syn, s_lab = _cells(rng, {"a": 120, "b": 120, "c": 60}, shift=0.8)
    opts = dict(_SMALL, families=("distribution", "genes", "structure"), mmd_bandwidth="floor")
    out = compute_metrics(real, syn, {"t": r_lab}, {"t": s_lab}, floor_real=floor,
                          floor_labels={"t": f_lab}, pca_real=pca, class_metrics=("knn_auc",),
                          **opts)  # fmt: skip
    m = out["metrics"]
    assert out["n_compared"] == 300 and out["n_pca"] == 300
    assert not any(k.startswith("paper_") for k in m) and "corr_agreement" in m
    assert m["knn_auc"]["value"] > m["knn_auc"]["floor"] + 0.2
    assert abs(m["knn_auc"]["floor"] - 0.5) < 0.1
    assert set(out["label_transfer"]) == {"t"} and out["label_transfer"]["t"]["floor"] > 0.9
    cls = out["by_label"]["t"]["classes"]["a"]["metrics"]
    assert set(cls) == {"knn_auc"}
    # The floor, the kernel and the reference cells do not depend on the synthetic cells.
    other = compute_metrics(real, syn[::-1] + 0.5, {"t": r_lab}, {"t": s_lab[::-1]},
                            floor_real=floor, floor_labels={"t": f_lab}, pca_real=pca,
                            **opts)  # fmt: skip
    for name in ("knn_auc", "mmd2_rbf_pca", "w2_pca", "corr_agreement"):
        assert other["metrics"][name]["floor"] == m[name]["floor"], name
    with pytest.raises(ValueError, match="floor_labels"):
        compute_metrics(real, syn, {"t": r_lab}, {"t": s_lab}, floor_real=floor, **opts)
    with pytest.raises(ValueError, match="families"):
        compute_metrics(real, syn, families=("nope",))
    with pytest.raises(ValueError, match="genes"):
        compute_metrics(real, syn, floor_real=floor[:, :5])
