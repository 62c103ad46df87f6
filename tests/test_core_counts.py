"""The keyed NB / ZINB count sampler (csrc/counts.h, counts.cpp, cuda/counts.cu).

Exact agreement with a float64 pure-Python reference of the documented algorithm
(reference_counts.py); the distributions against scipy; the keying contract (a count depends on
(seed, global cell index, gene) only, never on the batch); every validation error; and, where a
CUDA device is present, the GPU kernel against the CPU.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import reference_counts as ref
from scipy import stats

from cellsynth import _core
from cellsynth.generation.counts import sample_counts

MAX_COUNT = 2**31 - 1


def _cuda_devices() -> int:
    try:
        return int(_core.cuda_device_count()) if _core.cuda_compiled else 0
    except Exception:  # noqa: BLE001
        return 0


HAS_CUDA = _cuda_devices() > 0


def random_inputs(rng: np.random.Generator, n: int, g: int, zero_inflated: bool):
    """mean log-uniform on [1e-3, 1e4] with exact zeros, theta on [0.05, 100] with infs."""
    mean = 10.0 ** rng.uniform(-3, 4, (n, g))
    mean[rng.random((n, g)) < 0.1] = 0.0
    theta = 10.0 ** rng.uniform(math.log10(0.05), 2, g)
    theta[rng.random(g) < 0.2] = np.inf
    zp = None
    if zero_inflated:
        zp = rng.uniform(0, 0.7, (n, g))
        zp[rng.random((n, g)) < 0.05] = 0.0
        zp[rng.random((n, g)) < 0.05] = 1.0
        zp = zp.astype(np.float32)
    return mean.astype(np.float32), theta.astype(np.float32), zp


# ------------------------------------------------------------------------------ the reference


@pytest.mark.parametrize(
    "case, seed, cell_offset, zero_inflated",
    [
        (0, 0, 0, False),
        (1, 1, 0, True),
        (2, 2**32 + 5, 12_345, False),  # the high key word
        (3, 2**64 - 1, 7, True),  # every key bit set
        (4, 987_654_321, 2**32 - 3, False),  # rows cross into the high cell word
        (5, 31_337, 2**40 + 11, True),
    ],
)
def test_counts_equal_the_reference(case, seed, cell_offset, zero_inflated) -> None:
    rng = np.random.default_rng(1000 + case)
    mean, theta, zp = random_inputs(rng, 12, 40, zero_inflated)
    got = sample_counts(mean, theta, seed, cell_offset, zp)
    want = ref.sample_counts(mean, theta, seed, cell_offset, zp)
    assert got.dtype == np.int32 and got.shape == mean.shape
    np.testing.assert_array_equal(got, want)
    assert (got >= 0).all()
    if zp is not None:
        assert (got[zp == 1.0] == 0).all()
    assert (got[mean == 0] == 0).all()


@pytest.mark.parametrize("zero_inflated", [False, True])
def test_counts_across_gene_tiles_equal_the_reference(zero_inflated) -> None:
    """The CPU loop takes the genes in tiles (first Philox blocks and zero decisions vectorised):
    a row longer than two tiles, with a ragged last one, is the reference too."""
    rng = np.random.default_rng(77 + zero_inflated)
    mean, theta, zp = random_inputs(rng, 3, 700, zero_inflated)
    mean[:, ::3] = (10.0 ** rng.uniform(-6, 0, (3, 234))).astype(np.float32)  # many fast zeros
    got = sample_counts(mean, theta, 2**33 + 9, 41, zp)
    np.testing.assert_array_equal(got, ref.sample_counts(mean, theta, 2**33 + 9, 41, zp))


def test_extreme_parameters_equal_the_reference() -> None:
    """Tiny and huge means and dispersions, and both caps (PTRS above 2^31 - 1; lambda >= 2^32)."""
    mean = np.array(
        [[1e-30, 1e-7, 9.999, 10.0, 10.001, 3e9, 1e10, 3e38, 5.0, 5.0, 1e4, 0.0]] * 3,
        dtype=np.float32,
    )
    theta = np.array(
        [np.inf, np.inf, np.inf, np.inf, np.inf, np.inf, np.inf, 1.0, 1e-3, 1e30, 0.05, 0.5],
        dtype=np.float32,
    )
    got = sample_counts(mean, theta, seed=77, cell_offset=5)
    np.testing.assert_array_equal(got, ref.sample_counts(mean, theta, 77, 5))
    assert (got[:, 5:8] == MAX_COUNT).all()  # Poisson(3e9) > 2^31 - 1; 1e10 and 3e38 capped
    assert (got[:, 0] == 0).all()


def test_small_means_shortcut_gives_the_full_searchs_counts() -> None:
    """Below 1 - mean the core returns 0 without computing p_0 (P(0) >= 1 - mean); the float64
    reference always runs the full search. Means down to 1e-12 (where 1 - mean and p_0 are a few
    ulps apart) and dispersions from 0.01 to 1e6 must give the same counts."""
    rng = np.random.default_rng(11)
    mean = (10.0 ** rng.uniform(-12, 0.5, (120, 400))).astype(np.float32)
    theta = (10.0 ** rng.uniform(-2, 6, 400)).astype(np.float32)
    got = sample_counts(mean, theta, seed=5, cell_offset=3)
    np.testing.assert_array_equal(got, ref.sample_counts(mean, theta, 5, 3))
    assert 0.5 < (got == 0).mean() < 0.99


def test_the_uniforms_are_open_and_exact() -> None:
    """The documented u = ((hi >> 6) * 2^26 + (lo >> 6) + 0.5) * 2^-52 at its extremes."""
    s = ref.Stream(0, 0, 0)
    s.words = (0, 0, 0xFFFFFFFF, 0xFFFFFFFF)
    s.j = 1
    assert s.next() == 1.0 - 2.0**-53  # the largest: not 1
    s.j = 0
    s.block = lambda b: (0, 0, 0, 0)
    assert s.next() == 2.0**-53  # the smallest: not 0


# ---------------------------------------------------------------------------- distributions

N_DRAWS = 200_000


def draws(mean: float, theta: float, seed: int, zero_prob: float | None = None) -> np.ndarray:
    m = np.full((200, N_DRAWS // 200), mean, dtype=np.float32)
    t = np.full(N_DRAWS // 200, theta, dtype=np.float32)
    zp = None if zero_prob is None else np.full(m.shape, zero_prob, dtype=np.float32)
    return sample_counts(m, t, seed, 0, zp).ravel().astype(np.int64)


def chi2_pvalue(x: np.ndarray, pmf, sf) -> float:
    """Chi-square goodness of fit over consecutive values merged to >= 20 expected a bin."""
    n = x.size
    top = int(max(x.max(), 1))
    p = pmf(np.arange(top + 1))
    p[-1] += sf(top)  # the last bin is ">= top"
    observed = np.bincount(x, minlength=top + 1).astype(np.float64)
    obs, exp = [], []
    o_acc = e_acc = 0.0
    for k in range(top + 1):
        o_acc += observed[k]
        e_acc += n * p[k]
        if e_acc >= 20.0:
            obs.append(o_acc)
            exp.append(e_acc)
            o_acc = e_acc = 0.0
    obs[-1] += o_acc  # a short last bin joins the one before
    exp[-1] += e_acc
    exp = np.asarray(exp) * (n / np.sum(exp))
    assert len(obs) >= 3
    return stats.chisquare(obs, exp).pvalue


def check_moments_and_fit(x: np.ndarray, dist) -> None:
    n = x.size
    mu, var, _, excess = (float(v) for v in dist.stats(moments="mvsk"))
    mu4 = (excess + 3.0) * var * var
    assert abs(x.mean() - mu) < 4 * math.sqrt(var / n), (x.mean(), mu)
    assert abs(x.var() - var) < 4 * math.sqrt((mu4 - var * var) / n), (x.var(), var)
    assert chi2_pvalue(x, dist.pmf, dist.sf) > 1e-4


@pytest.mark.parametrize(
    "mean, theta, seed",
    [
        (0.5, 0.3, 11),  # mean < 10: the NB pmf by inversion
        (3.0, 1.0, 12),
        (9.99, 0.05, 17),  # inversion with a long tail
        (9.99, 200.0, 18),  # inversion, nearly Poisson
        (20.0, 0.05, 13),  # Gamma (theta < 1: the boost) then Poisson; mostly zeros, a long tail
        (60.0, 5.0, 14),  # mostly PTRS
        (1000.0, 0.8, 15),
        (1e4, 100.0, 16),
    ],
)
def test_negative_binomial_distribution(mean, theta, seed) -> None:
    check_moments_and_fit(draws(mean, theta, seed), stats.nbinom(theta, theta / (theta + mean)))


@pytest.mark.parametrize("mean, seed", [(0.4, 21), (9.9, 22), (10.0, 23), (250.0, 24)])
def test_poisson_distribution(mean, seed) -> None:
    check_moments_and_fit(draws(mean, np.inf, seed), stats.poisson(mean))


def test_zero_inflation_distribution() -> None:
    pi, mean, theta = 0.3, 2.0, 1.5
    x = draws(mean, theta, 31, zero_prob=pi)
    nb = stats.nbinom(theta, theta / (theta + mean))
    p0 = pi + (1 - pi) * nb.pmf(0)
    assert abs((x == 0).mean() - p0) < 4 * math.sqrt(p0 * (1 - p0) / x.size)

    def pmf(k):
        return (1 - pi) * nb.pmf(k) + pi * (k == 0)

    assert chi2_pvalue(x, pmf, lambda k: (1 - pi) * nb.sf(k)) > 1e-4


def test_zero_inflation_only_zeroes_the_nb_draw() -> None:
    """u_0 is drawn whatever pi is, so a non-zeroed count is the count pi = 0 gives."""
    rng = np.random.default_rng(41)
    mean, theta, _ = random_inputs(rng, 50, 60, False)
    base = sample_counts(mean, theta, 8, zero_prob=np.zeros_like(mean))
    zp = rng.uniform(0, 1, mean.shape).astype(np.float32)
    inflated = sample_counts(mean, theta, 8, zero_prob=zp)
    kept = inflated != 0
    np.testing.assert_array_equal(inflated[kept], base[kept])
    assert (inflated[base == 0] == 0).all()
    assert (sample_counts(mean, theta, 8, zero_prob=np.ones_like(mean)) == 0).all()


# ---------------------------------------------------------------------------------- keying


def test_a_cells_counts_do_not_depend_on_the_batch() -> None:
    rng = np.random.default_rng(51)
    mean, theta, zp = random_inputs(rng, 100, 37, True)
    seed, base = 2**63 + 12345, 2**33 - 40
    whole = sample_counts(mean, theta, seed, base, zp)
    for a, b in ((0, 1), (1, 37), (37, 64), (64, 100), (99, 100), (10, 90)):
        part = sample_counts(mean[a:b], theta, seed, base + a, zp[a:b])
        np.testing.assert_array_equal(part, whole[a:b])
    # a row depends only on its own inputs: change every other row and it stays
    other = mean.copy()
    other[np.arange(100) != 42] *= 3.0
    np.testing.assert_array_equal(sample_counts(other, theta, seed, base, zp)[42], whole[42])
    # gene g's count does not depend on how many genes follow it
    np.testing.assert_array_equal(
        sample_counts(mean[:, :20], theta[:20], seed, base, zp[:, :20]), whole[:, :20]
    )
    # a different seed or offset gives different counts
    assert (sample_counts(mean, theta, seed + 1, base, zp) != whole).mean() > 0.3
    assert (sample_counts(mean, theta, seed, base + 1, zp) != whole).mean() > 0.3
    assert (sample_counts(mean, theta, seed ^ (1 << 40), base, zp) != whole).mean() > 0.3


def test_multithreaded_run_equals_row_by_row() -> None:
    rng = np.random.default_rng(61)
    mean, theta, _ = random_inputs(rng, 400, 300, False)  # > 4096 values: the OpenMP path
    whole = sample_counts(mean, theta, 3)
    rows = np.concatenate([sample_counts(mean[i : i + 1], theta, 3, i) for i in range(0, 400, 37)])
    np.testing.assert_array_equal(whole[::37], rows)


def test_stream_bit_and_empty_inputs() -> None:
    assert _core.COUNT_STREAM_BIT == 0x80000000
    assert sample_counts(np.zeros((0, 5)), np.ones(5), 1).shape == (0, 5)
    assert sample_counts(np.zeros((3, 0)), np.ones(0), 1).shape == (3, 0)
    # the wrapper takes array-likes of any float dtype
    got = sample_counts([[1.0, 2.0]], [np.inf, 3.0], np.uint64(9))
    np.testing.assert_array_equal(
        got, sample_counts(np.array([[1, 2]], np.float32), np.array([np.inf, 3], np.float32), 9)
    )


# ------------------------------------------------------------------------------- validation


def _args(n: int = 3, g: int = 4):
    mean = np.full((n, g), 2.0, np.float32)
    theta = np.full(g, 1.5, np.float32)
    out = np.zeros((n, g), np.int32)
    return mean, theta, out


def _set(a: np.ndarray, index, value) -> np.ndarray:
    a = a.copy()
    a[index] = value
    return a


M, T, OUT = _args()
Z = np.full(M.shape, 0.5, np.float32)
RO = OUT.copy()
RO.flags.writeable = False


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"mean": M.astype(np.float64)}, "mean must have dtype float32, got float64"),
        ({"mean": np.zeros((4, 3), np.float32).T}, "mean must be C-contiguous"),
        ({"mean": np.zeros(4, np.float32)}, "mean must be 2-D"),
        ({"mean": _set(M, (1, 2), -1.0)}, r"mean must be finite and >= 0, got -1 at \[1, 2\]"),
        ({"mean": _set(M, (2, 3), np.nan)}, r"mean must be finite and >= 0, got nan at \[2, 3\]"),
        ({"mean": _set(M, (0, 0), np.inf)}, "mean must be finite and >= 0, got inf"),
        ({"theta": T.astype(np.float64)}, "theta must have dtype float32"),
        ({"theta": T[None, :]}, "theta must be 1-D"),
        ({"theta": T[:3].copy()}, "theta has length 3, expected n_genes = 4"),
        ({"theta": np.zeros(8, np.float32)[::2]}, "theta must be C-contiguous"),
        (
            {"theta": _set(T, 1, 0.0)},
            r"theta must be > 0 \(or \+inf for Poisson\), got 0 at gene 1",
        ),
        ({"theta": _set(T, 2, -1.0)}, "theta must be > 0.*got -1 at gene 2"),
        ({"theta": _set(T, 3, np.nan)}, "theta must be > 0.*got nan at gene 3"),
        ({"zero_prob": Z.astype(np.float64)}, "zero_prob must have dtype float32"),
        ({"zero_prob": Z[:2].copy()}, r"zero_prob has shape \(2, 4\), expected \(3, 4\)"),
        ({"zero_prob": _set(Z, (0, 1), 1.5)}, r"zero_prob must lie in \[0, 1\], got 1.5"),
        ({"zero_prob": _set(Z, (1, 1), -0.25)}, r"zero_prob must lie in \[0, 1\]"),
        ({"zero_prob": _set(Z, (2, 0), np.nan)}, r"zero_prob must lie in \[0, 1\], got nan"),
        ({"out": OUT.astype(np.int64)}, "out must have dtype int32, got int64"),
        ({"out": OUT.astype(np.float32)}, "out must have dtype int32, got float32"),
        ({"out": np.zeros((4, 3), np.int32).T}, "out must be C-contiguous"),
        ({"out": np.zeros((3, 5), np.int32)}, r"out has shape \(3, 5\), expected \(3, 4\)"),
        ({"out": np.zeros(12, np.int32)}, "out must be 2-D"),
        ({"out": RO}, "out is read-only"),
        ({"seed": -1}, r"seed must be an integer in \[0, 2\^64\), got -1"),
        ({"seed": 2**64}, "seed must be an integer"),
        ({"seed": 1.5}, "seed must be an integer"),
        ({"seed": "1"}, "seed must be an integer"),
        ({"cell_offset": -1}, "cell_offset must be >= 0, got -1"),
    ],
)
def test_core_rejects_bad_arguments(kwargs, match) -> None:
    args = dict(mean=M, theta=T, out=OUT.copy(), seed=1, cell_offset=0, zero_prob=None)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        _core.sample_counts(**args)


@pytest.mark.parametrize("other", ["mean", "theta", "zero_prob"])
def test_out_must_not_alias_an_input(other) -> None:
    mean, theta, out = _args()
    buf = np.full(mean.size + 2, 0.5, np.float32)  # out (int32) over the input's float32 bytes
    args = {"mean": mean, "theta": theta, "zero_prob": None}
    if other == "theta":
        args["theta"] = buf[:4]
        out = buf[2:].view(np.int32).reshape(mean.shape)  # shares theta's last two genes
    else:
        args[other] = buf[: mean.size].reshape(mean.shape)
        out = buf[: mean.size].view(np.int32).reshape(mean.shape)
    with pytest.raises(ValueError, match=f"out and {other} overlap in memory"):
        _core.sample_counts(args["mean"], args["theta"], out, 1, zero_prob=args["zero_prob"])


def test_a_bad_value_leaves_out_untouched() -> None:
    mean, theta, out = _args(50, 100)
    mean[-1, -1] = np.nan
    out[:] = -7
    with pytest.raises(ValueError, match=r"mean .* at \[49, 99\]"):
        _core.sample_counts(mean, theta, out, 1)
    assert (out == -7).all()


def test_wrapper_raises_value_errors_naming_the_argument() -> None:
    with pytest.raises(ValueError, match="mean must be finite"):
        sample_counts([[1.0, -2.0]], [1.0, 1.0], 0)
    with pytest.raises(ValueError, match="theta has length 1"):
        sample_counts([[1.0, 2.0]], [1.0], 0)
    with pytest.raises(ValueError, match="mean must be 2-D"):
        sample_counts([1.0, 2.0], [1.0, 1.0], 0)
    with pytest.raises(ValueError, match="zero_prob must lie in"):
        sample_counts([[1.0, 2.0]], [1.0, 1.0], 0, zero_prob=[[0.5, 2.0]])
    with pytest.raises(ValueError, match="cell_offset"):
        sample_counts([[1.0, 2.0]], [1.0, 1.0], 0, cell_offset=-3)


# --------------------------------------------------------------------------------------- GPU


@pytest.mark.skipif(HAS_CUDA, reason="checks the error of machines without a CUDA device")
def test_cuda_sample_counts_without_a_device_raises() -> None:
    with pytest.raises(RuntimeError):
        _core.cuda_sample_counts(16, 16, 16, 1, 1, 0)


def _to_device(a: np.ndarray, dtype: str):
    d = _core.DeviceArray(a.shape, dtype)
    d.copy_from_host(a)
    return d


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA build and a CUDA device")
@pytest.mark.parametrize("zero_inflated", [False, True])
def test_cuda_sample_counts_equal_cpu(zero_inflated) -> None:
    rng = np.random.default_rng(71 + zero_inflated)
    mean, theta, zp = random_inputs(rng, 300, 257, zero_inflated)
    seed, offset = 2**63 + 5, 2**32 - 100
    want = sample_counts(mean, theta, seed, offset, zp)
    dm, dt = _to_device(mean, "float32"), _to_device(theta, "float32")
    dz = None if zp is None else _to_device(zp, "float32")
    do = _core.DeviceArray(mean.shape, "int32")
    _core.cuda_sample_counts(
        dm.data_ptr(), dt.data_ptr(), do.data_ptr(), *mean.shape, seed, offset,
        zero_prob=0 if dz is None else dz.data_ptr(),
    )  # fmt: skip
    np.testing.assert_array_equal(do.copy_to_host(), want)
    # device values cannot be validated: invalid ones come back as -1
    bad = mean.copy()
    bad[0, 0], bad[1, 1] = np.nan, -1.0
    dm.copy_from_host(bad)
    _core.cuda_sample_counts(dm.data_ptr(), dt.data_ptr(), do.data_ptr(), *mean.shape, seed, offset)
    got = do.copy_to_host()
    assert got[0, 0] == -1 and got[1, 1] == -1
    assert (got[2:] == sample_counts(mean[2:], theta, seed, offset + 2)).all()


def test_thread_count_is_settable_and_changes_no_value() -> None:
    rng = np.random.default_rng()
    mean = rng.uniform(0, 30, (64, 50)).astype(np.float32)
    theta = rng.uniform(0.1, 10, 50).astype(np.float32)
    before = _core.get_num_threads()
    try:
        _core.set_num_threads(1)
        assert _core.get_num_threads() == 1
        one = sample_counts(mean, theta, 3)
        _core.set_num_threads(2)
        np.testing.assert_array_equal(sample_counts(mean, theta, 3), one)
        with pytest.raises(ValueError, match="threads must be >= 1"):
            _core.set_num_threads(0)
    finally:
        _core.set_num_threads(before)
