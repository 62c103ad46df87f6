"""The scRDiT paper metrics against direct, naive implementations of the published definitions."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import softmax
from scipy.stats import wasserstein_distance

from cellsynth.metrics import paper


def _naive_mmd_published(x: np.ndarray, y: np.ndarray) -> float:
    """The published MMD: materialise [N, N, d] differences, five kernels, biased means."""
    z = np.concatenate([x, y])
    n_all = len(z)
    l2 = ((z[None, :, :] - z[:, None, :]) ** 2).sum(2)  # [N, N]
    base = l2.sum() / (n_all**2 - n_all)
    base /= 2.0 ** (5 // 2)
    k = sum(np.exp(-l2 / (base * 2.0**i)) for i in range(5))
    n = len(x)
    xx, yy, xy = k[:n, :n], k[n:, n:], k[:n, n:]
    return float(xx.mean() + yy.mean() - 2.0 * xy.mean())


def _expression(rng: np.random.Generator, n: int, g: int, shift: float = 0.0) -> np.ndarray:
    """Sparse-ish log-expression-like data [n, g], ~70% zeros."""
    x = (rng.random((n, g)) < 0.3) * rng.gamma(2.0, 1.0 + shift, (n, g))
    return np.log1p(x)


def test_mmd_chunk_matches_published_equal_sizes() -> None:
    rng = np.random.default_rng(0)
    x, y = _expression(rng, 20, 6), _expression(rng, 20, 6, shift=0.5)
    # n == m: the published mean(XX + YY - XY - YX)
    assert paper.mmd_multikernel_chunk(x, y) == pytest.approx(_naive_mmd_published(x, y), abs=1e-8)


def test_mmd_chunk_matches_naive_unequal_sizes_and_blocks() -> None:
    rng = np.random.default_rng(1)
    x, y = _expression(rng, 23, 5), _expression(rng, 17, 5, shift=1.0)
    naive = _naive_mmd_published(x, y)
    for block in (1, 4, 7, 1024):  # bounded-memory blocks give the same value as one block
        assert paper.mmd_multikernel_chunk(x, y, block=block) == pytest.approx(naive, abs=1e-8)


def test_mmd_gene_chunks_average_naive_chunks() -> None:
    rng = np.random.default_rng(2)
    x, y = _expression(rng, 15, 25), _expression(rng, 12, 25, shift=0.3)
    # 25 genes in chunks of 10: chunks of 10, 10 and 5 genes, averaged with equal weight.
    naive = np.mean([_naive_mmd_published(x[:, g : g + 10], y[:, g : g + 10]) for g in (0, 10, 20)])
    got = paper.mmd_multikernel(x, y, gene_chunk=10, max_cells=None, block=4)
    assert got == pytest.approx(naive, abs=1e-8)
    # One chunk holding every gene is the plain published MMD.
    whole = paper.mmd_multikernel(x, y, gene_chunk=25, max_cells=None)
    assert whole == pytest.approx(_naive_mmd_published(x, y), abs=1e-8)


def test_mmd_identical_sets_and_constant_chunk_are_zero() -> None:
    rng = np.random.default_rng(3)
    x = _expression(rng, 30, 12)
    assert abs(paper.mmd_multikernel(x, x.copy(), gene_chunk=5)) < 1e-12
    zeros = np.zeros((10, 4))  # every distance 0: base 0, defined as MMD 0
    assert paper.mmd_multikernel(zeros, zeros) == 0.0


def test_mmd_grows_with_shift_and_subsampling_is_seeded() -> None:
    rng = np.random.default_rng(4)
    x, y0, y1 = _expression(rng, 80, 20), _expression(rng, 80, 20), _expression(rng, 80, 20, 2.0)
    assert paper.mmd_multikernel(x, y1) > 3 * paper.mmd_multikernel(x, y0)
    a = paper.mmd_multikernel(x, y1, max_cells=30, seed=5)
    assert a == paper.mmd_multikernel(x, y1, max_cells=30, seed=5)
    assert a != paper.mmd_multikernel(x, y1, max_cells=30, seed=6)


def test_mmd_float32_close_to_float64() -> None:
    rng = np.random.default_rng(5)
    x, y = _expression(rng, 60, 30), _expression(rng, 50, 30, 0.5)
    v64 = paper.mmd_multikernel(x, y, gene_chunk=10)
    v32 = paper.mmd_multikernel(x.astype(np.float32), y.astype(np.float32), gene_chunk=10)
    assert v32 == pytest.approx(v64, rel=1e-4)


def test_kernel_sum_matches_naive() -> None:
    rng = np.random.default_rng(6)
    a, b = rng.normal(size=(11, 3)), rng.normal(size=(9, 3))

    def fn(d):
        return np.exp(-d)

    d_ab = ((a[:, None] - b[None]) ** 2).sum(-1)
    d_aa = ((a[:, None] - a[None]) ** 2).sum(-1)
    assert paper.kernel_sum(a, b, fn, block=4) == pytest.approx(np.exp(-d_ab).sum(), abs=1e-10)
    assert paper.kernel_sum(a, None, fn, block=4) == pytest.approx(np.exp(-d_aa).sum(), abs=1e-10)


def test_kl_softmax_matches_naive_with_row_pairing() -> None:
    rng = np.random.default_rng(7)
    real, syn = _expression(rng, 13, 8), _expression(rng, 9, 8, shift=0.5)
    k = 9  # pairs the first min(n, m) rows
    p, q = softmax(real[:k], axis=1), softmax(syn[:k], axis=1)
    naive = float((p * np.log(p / q)).sum() / k)
    assert paper.kl_softmax(real, syn) == pytest.approx(naive, abs=1e-8)
    assert paper.kl_softmax(real, syn, chunk=2) == pytest.approx(naive, abs=1e-8)
    assert paper.kl_softmax(real, real.copy()) == pytest.approx(0.0, abs=1e-12)


def test_wasserstein_values_match_scipy_on_pooled_values() -> None:
    rng = np.random.default_rng(8)
    real, syn = _expression(rng, 20, 7), _expression(rng, 14, 7, shift=0.4)
    naive = wasserstein_distance(real.ravel(), syn.ravel())
    assert paper.wasserstein_values(real, syn) == pytest.approx(naive, abs=1e-8)
    neg = real - 0.5  # negative values and no exact zeros: the zero folding must not matter
    assert paper.wasserstein_values(neg, syn) == pytest.approx(
        wasserstein_distance(neg.ravel(), syn.ravel()), abs=1e-8
    )
    assert paper.wasserstein_values(real, real.copy()) == 0.0


def test_wasserstein_gene_means_match_scipy() -> None:
    rng = np.random.default_rng(9)
    real, syn = _expression(rng, 20, 7), _expression(rng, 14, 7, shift=0.4)
    naive = wasserstein_distance(real.mean(0), syn.mean(0))
    assert paper.wasserstein_gene_means(real, syn) == pytest.approx(naive, abs=1e-8)
    # Shifting every gene by c moves every mean by c: W1 = c.
    assert paper.wasserstein_gene_means(real, real + 0.25) == pytest.approx(0.25, abs=1e-12)


def test_paper_metrics_keys() -> None:
    rng = np.random.default_rng(10)
    out = paper.paper_metrics(_expression(rng, 10, 6), _expression(rng, 10, 6))
    assert set(out) == {
        "paper_kl_softmax",
        "paper_wasserstein_values",
        "paper_wasserstein_gene_means",
        "paper_mmd_multikernel",
    }
    assert all(np.isfinite(v) for v in out.values())
