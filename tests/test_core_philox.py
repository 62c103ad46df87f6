"""The compiled Philox4x32-10 generator and its normals (csrc/philox.h).

Known-answer vectors from Random123 (kat_vectors, philox4x32_10); an independent NumPy transcription
of the generator for random counters and keys; the statistics of the normals; and the keying
contract: a value depends on (seed, global cell index, step, gene) only, never on the batch.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from cellsynth import _core

M32 = np.uint64(0xFFFFFFFF)


def np_philox(ctr: np.ndarray, key: np.ndarray) -> np.ndarray:
    """Philox4x32-10 on uint64 arrays holding uint32 values: ctr [..., 4], key [..., 2]."""
    c = [ctr[..., i].astype(np.uint64) for i in range(4)]
    k = [key[..., 0].astype(np.uint64), key[..., 1].astype(np.uint64)]
    for r in range(10):
        if r:
            k = [(k[0] + np.uint64(0x9E3779B9)) & M32, (k[1] + np.uint64(0xBB67AE85)) & M32]
        p0 = np.uint64(0xD2511F53) * c[0]
        p1 = np.uint64(0xCD9E8D57) * c[2]
        c = [
            (p1 >> np.uint64(32)) ^ c[1] ^ k[0],
            p1 & M32,
            (p0 >> np.uint64(32)) ^ c[3] ^ k[1],
            p0 & M32,
        ]
    return np.stack(c, axis=-1)


def np_normals(seed: int, cells: np.ndarray, step: int, n_genes: int) -> np.ndarray:
    """float64 Box-Muller of the documented uniforms: [len(cells), n_genes]."""
    cells = np.asarray(cells, dtype=np.uint64)
    groups = np.arange((n_genes + 3) // 4, dtype=np.uint64)
    C, Gr = np.meshgrid(cells, groups, indexing="ij")
    ctr = np.stack([Gr, np.full_like(Gr, step), C & M32, C >> np.uint64(32)], axis=-1)
    key = np.broadcast_to(
        np.array([seed & 0xFFFFFFFF, seed >> 32], dtype=np.uint64), ctr.shape[:-1] + (2,)
    )
    r = np_philox(ctr, key)  # [cells, groups, 4]
    u = ((r >> np.uint64(9)).astype(np.float64) + 0.5) * 2.0**-23  # (0, 1), exact
    out = np.empty(r.shape, dtype=np.float64)
    for p in range(2):
        rad = np.sqrt(-2.0 * np.log(u[..., 2 * p]))
        th = 2.0 * np.pi * u[..., 2 * p + 1]
        out[..., 2 * p] = rad * np.cos(th)
        out[..., 2 * p + 1] = rad * np.sin(th)
    return out.reshape(len(cells), -1)[:, :n_genes]


def randn(n_cells: int, n_genes: int, seed: int, step: int, cell_offset: int = 0) -> np.ndarray:
    out = np.empty((n_cells, n_genes), dtype=np.float32)
    _core.randn(out, seed, step, cell_offset)
    return out


# ------------------------------------------------------------------------------------- generator


@pytest.mark.parametrize(
    "counter, key, want",
    [
        ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
        ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
        (
            (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344),
            (0xA4093822, 0x299F31D0),
            (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1),
        ),
    ],
)
def test_random123_known_answers(counter, key, want) -> None:
    assert _core.philox4x32_10(list(counter), list(key)) == want


def test_matches_an_independent_transcription_on_random_inputs() -> None:
    rng = np.random.default_rng()
    ctr = rng.integers(0, 2**32, size=(64, 4), dtype=np.uint64)
    key = rng.integers(0, 2**32, size=(64, 2), dtype=np.uint64)
    want = np_philox(ctr, key)
    for i in range(len(ctr)):
        got = _core.philox4x32_10(ctr[i].tolist(), key[i].tolist())
        assert got == tuple(int(v) for v in want[i])


def test_counter_and_key_words_must_be_uint32() -> None:
    with pytest.raises(TypeError):
        _core.philox4x32_10([2**32, 0, 0, 0], [0, 0])
    with pytest.raises(TypeError):
        _core.philox4x32_10([0, 0, 0], [0, 0])


# ------------------------------------------------------------------------------------- normals


@pytest.mark.parametrize("n_genes", [1, 3, 4, 5, 37, 256])
def test_normals_are_the_documented_box_muller(n_genes: int) -> None:
    rng = np.random.default_rng()
    seed = int(rng.integers(0, 2**63)) * 2 + 1  # both key words in use
    step = int(rng.integers(0, 2**32))
    offset = int(rng.integers(0, 2**40))
    got = randn(7, n_genes, seed, step, offset)
    want = np_normals(seed, offset + np.arange(7, dtype=np.uint64), step, n_genes)
    # float32 log / sqrt / sin / cos against float64: a few float32 ulps of the radius (<= 5.8)
    np.testing.assert_allclose(got, want, rtol=0, atol=5e-6)


def test_reserved_initial_noise_step_is_the_top_counter_value() -> None:
    assert _core.INITIAL_NOISE_STEP == 2**32 - 1
    a = randn(3, 16, 5, _core.INITIAL_NOISE_STEP)
    np.testing.assert_allclose(a, np_normals(5, np.arange(3), 2**32 - 1, 16), atol=5e-6)
    assert not np.array_equal(a, randn(3, 16, 5, 0))


def test_statistics_of_the_normals() -> None:
    z = randn(2000, 1000, seed=20240607, step=3).astype(np.float64).ravel()
    n = z.size
    assert abs(z.mean()) < 5 / math.sqrt(n)
    assert abs(z.var() - 1) < 5 * math.sqrt(2 / n)
    assert abs(stats.skew(z)) < 5 * math.sqrt(6 / n)
    assert abs(stats.kurtosis(z)) < 5 * math.sqrt(24 / n)
    for k, p in ((1, 0.3173105), (2, 0.0455003), (3, 0.0026998), (4, 6.334e-5)):
        frac = (np.abs(z) > k).mean()
        assert abs(frac - p) < 5 * math.sqrt(p * (1 - p) / n) + 1e-7, k
    # The uniforms are odd multiples of 2^-24: |z| <= sqrt(-2 ln 2^-24) ~ 5.77, never inf / nan
    assert np.isfinite(z).all() and np.abs(z).max() <= math.sqrt(-2 * math.log(2.0**-24)) + 1e-5
    # Kolmogorov-Smirnov against N(0, 1) on a subsample (the full 2M is too sensitive to the
    # deliberate 5.77-sigma tail cut only at p ~ 1e-8, fine either way)
    assert stats.kstest(z[:200_000], "norm").pvalue > 1e-4


def test_values_are_uncorrelated_across_genes_cells_steps_and_seeds() -> None:
    a = randn(500, 400, seed=1, step=0).astype(np.float64)
    for x, y in (
        (a[:, :-1], a[:, 1:]),  # neighbouring genes (inside and across Philox groups)
        (a[:, 0::4], a[:, 1::4]),  # the two halves of one Box-Muller pair
        (a[:, 0::4], a[:, 2::4]),  # the two pairs of one Philox call
        (a[:-1], a[1:]),  # neighbouring cells
        (a, randn(500, 400, seed=1, step=1)),  # next step
        (a, randn(500, 400, seed=2, step=0)),  # next seed
        (a, randn(500, 400, seed=1 + 2**32, step=0)),  # the high key word
        (a, randn(500, 400, seed=1, step=0, cell_offset=2**32)),  # the high cell word
    ):
        r = np.corrcoef(np.ravel(x), np.ravel(y))[0, 1]
        assert abs(r) < 5 / math.sqrt(np.size(x)), r
    # and |z| (Box-Muller pairs share a radius: their squares must still be uncorrelated)
    r2 = np.corrcoef(a[:, 0::4].ravel() ** 2, a[:, 1::4].ravel() ** 2)[0, 1]
    assert abs(r2) < 5 / math.sqrt(a[:, 0::4].size)


def test_a_cells_noise_does_not_depend_on_the_batch() -> None:
    rng = np.random.default_rng()
    seed, step, G = int(rng.integers(0, 2**64, dtype=np.uint64)), int(rng.integers(0, 1000)), 41
    base = int(rng.integers(0, 2**40))
    whole = randn(100, G, seed, step, base)
    for cut in (1, 37, 64, 99):
        parts = np.concatenate(
            [randn(cut, G, seed, step, base), randn(100 - cut, G, seed, step, base + cut)]
        )
        np.testing.assert_array_equal(whole, parts)
    # one cell alone, anywhere
    np.testing.assert_array_equal(randn(1, G, seed, step, base + 73)[0], whole[73])
    # more genes only appends: gene g's value does not depend on n_genes
    np.testing.assert_array_equal(randn(5, 200, seed, step, base)[:, :G], whole[:5])


def test_multithreaded_fill_equals_row_by_row() -> None:
    big = randn(700, 333, seed=9, step=2)  # > 65536 values: the OpenMP path
    rows = np.concatenate([randn(1, 333, 9, 2, i) for i in range(0, 700, 50)])
    np.testing.assert_array_equal(big[::50], rows)


def test_randn_rejects_bad_arrays_and_counters() -> None:
    with pytest.raises(ValueError, match="out must have dtype float32, got float64"):
        _core.randn(np.empty((2, 3)), 0, 0)
    with pytest.raises(ValueError, match="out must be C-contiguous"):
        _core.randn(np.empty((3, 2), np.float32).T, 0, 0)
    ro = np.empty((2, 3), np.float32)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="out is read-only"):
        _core.randn(ro, 0, 0)
    with pytest.raises(ValueError, match="step"):
        _core.randn(np.empty((2, 3), np.float32), 0, 2**32)
    with pytest.raises(ValueError, match="cell_offset"):
        _core.randn(np.empty((2, 3), np.float32), 0, 0, -1)
    with pytest.raises(TypeError, match="numpy.ndarray"):
        _core.randn([[0.0]], 0, 0)
