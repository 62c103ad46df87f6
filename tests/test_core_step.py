"""The compiled fused step and its coefficients (csrc/step.h) against float64 NumPy.

Every test draws fresh random arrays and coefficients. The kernel computes in float32 from float32
inputs; the reference computes in float64 from the same float32 inputs, so they agree to float32
rounding of each term: the tolerance of a value is a few float32 ulps of the sum of the absolute
terms that produced it (the terms can cancel).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from cellsynth import _core

PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")
EPS32 = float(np.finfo(np.float32).eps)


# ------------------------------------------------------------------------------------- reference


def ref_x0_eps(m, x, sa, s1m, prediction_type):
    """(x0, eps, |x0| scale, |eps| scale) in float64 from float32 inputs."""
    m, x = m.astype(np.float64), x.astype(np.float64)
    if prediction_type == "epsilon":
        return (x - s1m * m) / sa, m, (np.abs(x) + s1m * np.abs(m)) / sa, np.abs(m)
    if prediction_type == "sample":
        return m, (x - sa * m) / s1m, np.abs(m), (np.abs(x) + sa * np.abs(m)) / s1m
    scale = sa * np.abs(x) + s1m * np.abs(m)
    return sa * x - s1m * m, sa * m + s1m * x, scale, sa * np.abs(m) + s1m * np.abs(x)


def torch_style_quantile(v: np.ndarray, q: float) -> np.ndarray:
    """Row quantiles of v [n, G] with linear interpolation as torch.quantile computes them for
    float32 input: the rank float32(q) * (G - 1) is rounded to float32 (at G = 200, q = 0.995 the
    weight is 0.00500488, not 0.005), then torch's lerp between the two order statistics."""
    srt = np.sort(np.asarray(v, dtype=np.float64), axis=1)
    rank = np.float32(q) * np.float32(v.shape[1] - 1)
    lo, hi = int(np.floor(rank)), int(np.ceil(rank))
    w, v0, v1 = float(rank) - lo, srt[:, lo], srt[:, hi]
    return v0 + w * (v1 - v0) if w < 0.5 else v1 - (v1 - v0) * (1 - w)


def ref_step(
    k,
    m,
    x,
    *,
    prediction_type="epsilon",
    clip_sample=False,
    clip_sample_range=1.0,
    thresholding=False,
    dynamic_thresholding_ratio=0.995,
    sample_max_value=1.0,
    use_clipped_model_output=False,
    history=None,
    noise=None,
):
    """(x_prev, x0, tolerance of x_prev, tolerance of x0) in float64: step.h's formula."""
    sa, s1m = k.sqrt_alpha_prod, k.sqrt_one_minus_alpha_prod
    x0, eps, x0_scale, eps_scale = ref_x0_eps(m, x, sa, s1m, prediction_type)
    xd = x.astype(np.float64)
    if thresholding:
        s = torch_style_quantile(np.abs(x0), dynamic_thresholding_ratio)
        s = np.minimum(np.maximum(s, 1.0), sample_max_value)[:, None]
        x0 = np.clip(x0, -s, s) / s
        x0_scale = x0_scale / s
    elif clip_sample:
        x0 = np.clip(x0, -clip_sample_range, clip_sample_range)
    if use_clipped_model_output and (thresholding or clip_sample):
        eps = (xd - sa * x0) / s1m
        eps_scale = (np.abs(xd) + sa * np.abs(x0)) / s1m
    h = np.zeros_like(xd) if history is None else history.astype(np.float64)
    z = np.zeros_like(xd) if noise is None else noise.astype(np.float64)
    out = k.a * x0 + k.b * eps + k.c * xd + k.d * h + k.sigma * z
    terms = (
        abs(k.a) * x0_scale
        + abs(k.b) * eps_scale
        + abs(k.c) * np.abs(xd)
        + abs(k.d) * np.abs(h)
        + k.sigma * np.abs(z)
    )
    return out, x0, 8 * EPS32 * terms + 1e-30, 8 * EPS32 * x0_scale + 1e-30


def random_coefficients(rng, *, b=True, c=True, d=True, sigma=True, sa_min=0.05):
    ab = float(rng.uniform(sa_min**2, 0.999))
    return _core.StepCoefficients(
        sqrt_alpha_prod=math.sqrt(ab),
        sqrt_one_minus_alpha_prod=math.sqrt(1 - ab),
        a=float(rng.uniform(-2, 2)),
        b=float(rng.uniform(-2, 2)) if b else 0.0,
        c=float(rng.uniform(-2, 2)) if c else 0.0,
        d=float(rng.uniform(-2, 2)) if d else 0.0,
        sigma=float(rng.uniform(0.01, 1.5)) if sigma else 0.0,
    )


def arrays(rng, n, g, count=4, scale=1.0):
    return [(scale * rng.standard_normal((n, g))).astype(np.float32) for _ in range(count)]


def philox_noise(n, g, seed, step, cell_offset=0):
    z = np.empty((n, g), np.float32)
    _core.randn(z, seed, step, cell_offset)
    return z


# ------------------------------------------------------------------------------------- the kernel


@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
@pytest.mark.parametrize(
    "x0_mode", ["none", "clip", "clip+rederive", "threshold", "threshold+rederive"]
)
@pytest.mark.parametrize("shape", [(1, 1), (3, 37), (5, 4), (2, 1000)])
def test_step_matches_float64_reference(prediction_type: str, x0_mode: str, shape) -> None:
    rng = np.random.default_rng()
    n, g = shape
    for _trial in range(4):
        k = random_coefficients(rng)
        m, x, h, z = arrays(rng, n, g, scale=float(rng.choice([0.3, 1.0, 4.0])))
        opts = dict(prediction_type=prediction_type)
        if x0_mode.startswith("clip"):
            opts.update(clip_sample=True, clip_sample_range=float(rng.uniform(0.2, 3.0)))
        if x0_mode.startswith("threshold"):
            opts.update(
                thresholding=True,
                dynamic_thresholding_ratio=float(rng.choice([0.0, 0.5, 0.9, 0.995, 1.0])),
                sample_max_value=float(rng.uniform(0.5, 5.0)),
            )
        opts["use_clipped_model_output"] = x0_mode.endswith("rederive")
        want, want_x0, tol, x0_tol = ref_step(k, m, x, history=h, noise=z, **opts)
        hist = h.copy()
        out = np.empty_like(x)
        _core.step(m, x, out, k, history=hist, noise=z, **opts)
        np.testing.assert_array_less(np.abs(out - want), tol + 1e-6 * np.abs(want))
        # the history now holds this step's (clipped / thresholded) x0
        x0_tol = 8 * EPS32 * (np.abs(want_x0) + ref_x0_eps(m, x, 1, 1, "sample")[2]) + 1e-30
        if prediction_type != "sample" or x0_mode != "none":
            x0_tol = x0_tol + 8 * EPS32 * np.abs(x).max() / k.sqrt_alpha_prod * (
                1 + np.abs(m).max()
            )
        np.testing.assert_array_less(np.abs(hist - want_x0), x0_tol)


def test_clipping_keeps_eps_from_the_model_unless_asked() -> None:
    """diffusers' DDIM: eps is the model's; use_clipped_model_output re-derives it from x0."""
    rng = np.random.default_rng()
    k = _core.StepCoefficients(sqrt_alpha_prod=0.6, sqrt_one_minus_alpha_prod=0.8, a=0.9, b=0.43)
    m, x = arrays(rng, 4, 50, 2, scale=3.0)
    out1, out2 = np.empty_like(x), np.empty_like(x)
    _core.step(m, x, out1, k, clip_sample=True)
    _core.step(m, x, out2, k, clip_sample=True, use_clipped_model_output=True)
    x0 = np.clip((x.astype(np.float64) - 0.8 * m) / 0.6, -1, 1)
    np.testing.assert_allclose(out1, 0.9 * x0 + 0.43 * m, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out2, 0.9 * x0 + 0.43 * (x - 0.6 * x0) / 0.8, rtol=1e-5, atol=1e-5)


def test_thresholding_is_per_cell_and_takes_precedence_over_clipping() -> None:
    rng = np.random.default_rng()
    k = _core.StepCoefficients(sqrt_alpha_prod=1.0, sqrt_one_minus_alpha_prod=0.0, a=1.0)
    x0 = rng.standard_normal((6, 200)).astype(np.float32)
    x0[0] *= 10  # s > 1: scaled into [-1, 1]
    x0[1] *= 0.1  # s clamps to 1: plain clipping (nothing to do)
    out = np.empty_like(x0)
    _core.step(x0, x0, out, k, prediction_type="sample", thresholding=True, sample_max_value=4.0,
               clip_sample=True, clip_sample_range=0.01)  # fmt: skip
    s = np.clip(torch_style_quantile(np.abs(x0), 0.995), 1, 4)[:, None]
    np.testing.assert_allclose(out, np.clip(x0, -s, s) / s, rtol=2e-6, atol=1e-7)
    assert np.abs(out[1]).max() > 0.01  # clip_sample_range ignored
    # a nan in a cell makes that cell nan (torch.quantile), the others are untouched
    x0[2, 5] = np.nan
    _core.step(x0, x0, out, k, prediction_type="sample", thresholding=True, sample_max_value=4.0)
    assert np.isnan(out[2]).all() and np.isfinite(out[[0, 1, 3, 4, 5]]).all()


@pytest.mark.parametrize("method", ["select", "bisection"])
def test_dynamic_threshold_order_statistics(method: str) -> None:
    """Both algorithms (CPU: selection; CUDA: bisection on float bit patterns, run here serially)
    give torch.quantile's linear interpolation, clamped to [1, sample_max_value]."""
    rng = np.random.default_rng()
    cases = [
        np.abs(rng.standard_normal(n) * rng.choice([0.1, 3.0, 1e4], n)).astype(np.float32)
        for n in (1, 2, 3, 37, 1000, 2001)
    ]
    cases += [
        np.zeros(10, np.float32),
        np.full(9, 2.5, np.float32),  # all ties
        np.array([0, 0, 0, 5, 5, 5, 7, 7], np.float32),  # ties across the interpolation pair
        np.array([1e-45, 3e-39, 2.0, np.inf, 4.0], np.float32),  # subnormals and inf
        rng.integers(0, 4, 500).astype(np.float32) * 1.5,
    ]
    for a in cases:
        for ratio in (0.0, 0.3, 0.5, 0.9, 0.995, 1.0):
            smv = float(rng.uniform(1.0, 1e5))
            got = _core.dynamic_threshold(a, ratio, smv, method)
            # torch.quantile: rank = float32(ratio) * (n - 1) in float32
            rank = np.float32(ratio) * np.float32(len(a) - 1)
            srt = np.sort(a.astype(np.float64))
            lo, hi = int(np.floor(rank)), int(np.ceil(rank))
            w, v0, v1 = float(rank) - lo, srt[lo], srt[hi]
            with np.errstate(invalid="ignore"):  # torch's lerp: inf - inf = nan, as torch gives
                q = v0 + w * (v1 - v0) if w < 0.5 else v1 - (v1 - v0) * (1 - w)
            want = min(max(q, 1.0), smv)
            if math.isnan(want):
                assert math.isnan(got)
                continue
            assert got == pytest.approx(want, rel=2e-7), (a[:8], ratio)
            assert got == _core.dynamic_threshold(a, ratio, smv, "select")  # bit for bit
    assert math.isnan(_core.dynamic_threshold(np.array([1, np.nan], np.float32), 0.5, 2, method))


@pytest.mark.parametrize("quantile", [0.1, 0.5, 0.9])
def test_truncation_zeroes_exactly_what_lies_below_the_threshold(quantile: float) -> None:
    rng = np.random.default_rng()
    k = random_coefficients(rng, d=False)
    m, x, z = arrays(rng, 6, 45, 3)
    plain, cut = np.empty_like(x), np.empty_like(x)
    _core.step(m, x, plain, k, noise=z)
    # A threshold inside the values' range (random coefficients can put them all on one side
    # of a fixed one), midway between two of them so no value equals it.
    values = np.unique(plain)
    i = min(int(quantile * len(values)), len(values) - 2)
    threshold = float((values[i] + values[i + 1]) / 2)
    _core.step(m, x, cut, k, noise=z, truncate=True, truncate_threshold=threshold)
    np.testing.assert_array_equal(cut, np.where(plain < threshold, np.float32(0), plain))
    assert (plain < threshold).any() and (plain >= threshold).any()


def test_in_place_equals_out_of_place_and_inputs_are_untouched() -> None:
    rng = np.random.default_rng()
    for prediction_type in PREDICTION_TYPES:
        k = random_coefficients(rng)
        m, x, h = arrays(rng, 7, 33, 3)
        m0, x0 = m.copy(), x.copy()
        h1, h2 = h.copy(), h.copy()
        out = np.empty_like(x)
        opts = dict(prediction_type=prediction_type, seed=3, step_index=4, cell_offset=10)
        _core.step(m, x, out, k, history=h1, **opts)
        np.testing.assert_array_equal(m, m0)
        np.testing.assert_array_equal(x, x0)
        _core.step(m, x, x, k, history=h2, **opts)  # out = sample
        np.testing.assert_array_equal(x, out)
        np.testing.assert_array_equal(h1, h2)


def test_philox_noise_is_keyed_by_seed_cell_and_step() -> None:
    rng = np.random.default_rng()
    n, g = 9, 23
    k = random_coefficients(rng, b=False, c=False, d=False)
    k0 = _core.StepCoefficients(
        sqrt_alpha_prod=k.sqrt_alpha_prod, sqrt_one_minus_alpha_prod=k.sqrt_one_minus_alpha_prod,
        a=k.a, sigma=k.sigma,
    )  # fmt: skip
    m, x = arrays(rng, n, g, 2)
    seed, step, offset = int(rng.integers(0, 2**64, dtype=np.uint64)), 17, 2**32 - 4
    got = np.empty_like(x)
    _core.step(m, x, got, k0, seed=seed, step_index=step, cell_offset=offset)
    z = philox_noise(n, g, seed, step, offset)
    want = np.empty_like(x)
    _core.step(m, x, want, k0, noise=z)
    np.testing.assert_array_equal(got, want)
    # rows of a bigger batch, stepped with their own offset, are the same cells
    part = np.empty((4, g), np.float32)
    _core.step(m[5:], x[5:], part, k0, seed=seed, step_index=step, cell_offset=offset + 5)
    np.testing.assert_array_equal(part, got[5:])
    # another step index, another noise
    other = np.empty_like(x)
    _core.step(m, x, other, k0, seed=seed, step_index=step + 1, cell_offset=offset)
    assert not np.array_equal(other, got)


def test_unused_inputs_are_not_read() -> None:
    """sigma = 0: the noise is not read; d = 0: the history is only written."""
    rng = np.random.default_rng()
    k = random_coefficients(rng, d=False, sigma=False)
    m, x = arrays(rng, 4, 19, 2)
    nan = np.full_like(x, np.nan)
    hist = nan.copy()
    out = np.empty_like(x)
    _core.step(m, x, out, k, noise=nan, history=hist)
    assert np.isfinite(out).all() and np.isfinite(hist).all()


def test_large_batches_use_threads_with_identical_results() -> None:
    rng = np.random.default_rng()
    k = random_coefficients(rng)
    m, x, h = arrays(rng, 600, 301, 3)  # > 65536 values: the OpenMP path
    out, h_big = np.empty_like(x), h.copy()
    _core.step(m, x, out, k, history=h_big, seed=1, step_index=2, thresholding=True)
    for r in (0, 299, 599):
        row, h_row = np.empty((1, 301), np.float32), h[r : r + 1].copy()
        _core.step(m[r : r + 1], x[r : r + 1], row, k, history=h_row, seed=1, step_index=2,
                   cell_offset=r, thresholding=True)  # fmt: skip
        np.testing.assert_array_equal(row[0], out[r])
        np.testing.assert_array_equal(h_row[0], h_big[r])


def test_empty_batches_are_fine() -> None:
    k = _core.ddim_coefficients(0.5, 0.7, 1.0)
    for shape in ((0, 5), (3, 0)):
        e = np.empty(shape, np.float32)
        _core.step(e, e.copy(), e, k)


# ------------------------------------------------------------------------------------- coefficients


def test_ddim_coefficients() -> None:
    rng = np.random.default_rng()
    for _ in range(200):
        ab_prev = float(rng.uniform(1e-4, 1.0))
        ab = float(rng.uniform(0, ab_prev))
        eta = float(rng.choice([0.0, 0.3, 1.0, 2.0]))
        k = _core.ddim_coefficients(ab, ab_prev, eta)
        var = (1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev)
        sigma = eta * math.sqrt(var)
        assert k.sigma == pytest.approx(sigma, rel=1e-12, abs=1e-300)
        assert k.a == pytest.approx(math.sqrt(ab_prev), rel=1e-14)
        assert k.b == pytest.approx(
            math.sqrt(max(0.0, 1 - ab_prev - sigma**2)), rel=1e-9, abs=1e-12
        )
        assert k.c == k.d == 0
        assert k.sqrt_alpha_prod == pytest.approx(math.sqrt(ab), rel=1e-14)
        assert k.sqrt_one_minus_alpha_prod == pytest.approx(math.sqrt(1 - ab), rel=1e-14)
    assert _core.ddim_coefficients(0.3, 1.0, 1.0).sigma == 0  # the step to the clean end
    for eta in (-0.1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="eta"):
            _core.ddim_coefficients(0.3, 0.5, eta)
    with pytest.raises(ValueError, match="alpha_prod_t must lie in"):
        _core.ddim_coefficients(1.0, 1.0, 0.0)
    with pytest.raises(ValueError, match="alpha_prod_t_prev must lie in"):
        _core.ddim_coefficients(0.3, 0.0, 0.0)


def test_ddpm_coefficients_and_ddim_eta_1_identity() -> None:
    rng = np.random.default_rng()
    for _ in range(200):
        ab_prev = float(rng.uniform(1e-3, 1.0))
        ab = float(rng.uniform(1e-4, ab_prev * 0.999))
        t = int(rng.integers(0, 3))
        alpha, beta = ab / ab_prev, 1 - ab / ab_prev
        small = _core.ddpm_coefficients(ab, ab_prev, t, "fixed_small")
        large = _core.ddpm_coefficients(ab, ab_prev, t, "fixed_large")
        for k in (small, large):
            assert k.a == pytest.approx(math.sqrt(ab_prev) * beta / (1 - ab), rel=1e-12)
            assert k.c == pytest.approx(math.sqrt(alpha) * (1 - ab_prev) / (1 - ab), rel=1e-12)
            assert k.b == k.d == 0
        want_small = math.sqrt((1 - ab_prev) / (1 - ab) * beta) if t > 0 else 0.0
        assert small.sigma == pytest.approx(want_small, rel=1e-12)
        assert large.sigma == pytest.approx(math.sqrt(beta) if t > 0 else 0.0, rel=1e-12)
        # DDIM with eta = 1: a' x0 + b' eps with eps = (x - sqrt(ab) x0) / sqrt(1 - ab)
        d = _core.ddim_coefficients(ab, ab_prev, 1.0)
        s, s1 = math.sqrt(ab), math.sqrt(1 - ab)
        assert d.a - d.b * s / s1 == pytest.approx(small.a, rel=1e-8, abs=1e-12)
        assert d.b / s1 == pytest.approx(small.c, rel=1e-8, abs=1e-12)
        if t > 0:
            assert d.sigma == pytest.approx(small.sigma, rel=1e-12)
    with pytest.raises(ValueError, match="variance_type 'learned'"):
        _core.ddpm_coefficients(0.3, 0.5, 1, "learned")


def diffusers_dpm_update(sig_s1, sig_s0, sig_t, x, m0, m1, order, solver_type):
    """diffusers' dpmsolver++ first / second order update, transcribed in float64."""

    def alpha_sigma(s):
        a = 1 / math.sqrt(s * s + 1)
        return a, s * a

    a_t, s_t = alpha_sigma(sig_t)
    a_0, s_0 = alpha_sigma(sig_s0)
    lam_t, lam_0 = math.log(a_t) - math.log(s_t), math.log(a_0) - math.log(s_0)
    h = lam_t - lam_0
    if order == 1:
        return (s_t / s_0) * x - (a_t * (math.exp(-h) - 1.0)) * m0
    a_1, s_1 = alpha_sigma(sig_s1)
    lam_1 = math.log(a_1) - math.log(s_1)
    r0 = (lam_0 - lam_1) / h
    D0, D1 = m0, (1.0 / r0) * (m0 - m1)
    if solver_type == "midpoint":
        return (
            (s_t / s_0) * x
            - (a_t * (math.exp(-h) - 1.0)) * D0
            - 0.5 * (a_t * (math.exp(-h) - 1.0)) * D1
        )
    return (
        (s_t / s_0) * x
        - (a_t * (math.exp(-h) - 1.0)) * D0
        + (a_t * ((math.exp(-h) - 1.0) / h + 1.0)) * D1
    )


@pytest.mark.parametrize("solver_type", ["midpoint", "heun"])
def test_dpmsolver_coefficients_reproduce_diffusers_update(solver_type: str) -> None:
    rng = np.random.default_rng()
    for _ in range(200):
        sig = np.sort(rng.uniform(0.01, 80.0, 3))[::-1]  # s1 > s0 > t: noise decreases
        x, m0, m1 = rng.standard_normal(3)
        for order in (1, 2):
            k = _core.dpmsolver_coefficients(sig[0], sig[1], sig[2], order, solver_type)
            got = k.a * m0 + k.c * x + k.d * m1
            want = diffusers_dpm_update(sig[0], sig[1], sig[2], x, m0, m1, order, solver_type)
            scale = abs(k.a * m0) + abs(k.c * x) + abs(k.d * m1)
            assert got == pytest.approx(want, rel=1e-9, abs=1e-10 * scale)
            assert k.b == 0 and k.sigma == 0
            assert k.sqrt_alpha_prod == pytest.approx(1 / math.sqrt(sig[1] ** 2 + 1), rel=1e-14)
            assert k.sqrt_one_minus_alpha_prod == pytest.approx(
                sig[1] / math.sqrt(sig[1] ** 2 + 1), rel=1e-14
            )
    # the final step to sigma = 0 lands on x0
    k = _core.dpmsolver_coefficients(3.0, 1.0, 0.0, 1)
    assert (k.a, k.c, k.d) == (1.0, 0.0, 0.0)
    # repeated timesteps (diffusers divides by zero): the identity, or first order
    k = _core.dpmsolver_coefficients(2.0, 1.0, 1.0, 2)
    assert (k.a, k.c, k.d) == (0.0, 1.0, 0.0)
    k2, k1 = (
        _core.dpmsolver_coefficients(1.0, 1.0, 0.5, 2),
        _core.dpmsolver_coefficients(0, 1.0, 0.5, 1),
    )
    assert (k2.a, k2.c, k2.d) == (k1.a, k1.c, k1.d)
    with pytest.raises(ValueError, match="order must be 1 or 2"):
        _core.dpmsolver_coefficients(2.0, 1.0, 0.5, 3)
    with pytest.raises(ValueError, match="solver_type"):
        _core.dpmsolver_coefficients(2.0, 1.0, 0.5, 2, "bh2")


def test_dpmsolver_first_order_is_ddim() -> None:
    """DPM-Solver++(1) is DDIM with eta = 0 (Lu et al. 2022)."""
    rng = np.random.default_rng()
    for _ in range(50):
        ab_prev = float(rng.uniform(0.01, 0.99))
        ab = float(rng.uniform(0.001, ab_prev))
        k = _core.dpmsolver_coefficients(
            0.0, math.sqrt((1 - ab) / ab), math.sqrt((1 - ab_prev) / ab_prev), 1
        )
        d = _core.ddim_coefficients(ab, ab_prev, 0.0)
        s, s1 = math.sqrt(ab), math.sqrt(1 - ab)
        # DDIM: a x0 + b (x - s x0) / s1
        assert k.a == pytest.approx(d.a - d.b * s / s1, rel=1e-9)
        assert k.c == pytest.approx(d.b / s1, rel=1e-9)


def test_rescale_zero_terminal_snr() -> None:
    rng = np.random.default_rng()
    for T in (2, 10, 1000):
        betas = np.sort(rng.uniform(1e-4, 0.05, T))
        got = _core.rescale_zero_terminal_snr(betas)
        s = np.sqrt(np.cumprod(1 - betas))
        s = (s - s[-1]) * s[0] / (s[0] - s[-1])
        ab = s**2
        want = 1 - np.concatenate([ab[:1], ab[1:] / ab[:-1]])
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-15)
        assert got[-1] == 1.0
        ac = _core.alphas_cumprod(got)
        assert ac[-1] == 0.0 and ac[0] == pytest.approx(1 - betas[0], rel=1e-12)
    torch = pytest.importorskip("torch")
    ddim = pytest.importorskip("diffusers.schedulers.scheduling_ddim")
    b = np.linspace(1e-4, 0.02, 1000)
    want = ddim.rescale_zero_terminal_snr(torch.from_numpy(b)).numpy()
    np.testing.assert_allclose(_core.rescale_zero_terminal_snr(b), want, rtol=1e-12, atol=1e-15)
    with pytest.raises(ValueError, match="at least 2"):
        _core.rescale_zero_terminal_snr(np.array([0.1]))


def test_noise_schedule_option() -> None:
    from cellsynth import NoiseSchedule

    s = NoiseSchedule(beta_schedule="scaled_linear", rescale_betas_zero_snr=True)
    assert s.alphas_cumprod[-1] == 0.0 and s.betas[-1] == 1.0
    assert NoiseSchedule.from_dict(s.to_dict()) == s
    assert s.to_dict()["rescale_betas_zero_snr"] is True
    # dicts written before the option existed still load
    old = {k: v for k, v in NoiseSchedule().to_dict().items() if k != "rescale_betas_zero_snr"}
    assert NoiseSchedule.from_dict(old) == NoiseSchedule()
    with pytest.raises(ValueError, match="rescale_betas_zero_snr"):
        NoiseSchedule(rescale_betas_zero_snr="yes")


# ------------------------------------------------------------------------------------- bad input


def good(n: int = 3, g: int = 8) -> dict:
    rng = np.random.default_rng()
    m, x, h, z = arrays(rng, n, g)
    return dict(model_output=m, sample=x, out=np.empty_like(x), history=h, noise=z)


K = _core.ddim_coefficients(0.5, 0.7, 1.0)


def call(**over) -> None:
    args = {**good(), **over}
    _core.step(
        args.pop("model_output"), args.pop("sample"), args.pop("out"), args.pop("k", K), **args
    )


def test_good_call_works() -> None:
    call()


def f32(*shape: int) -> np.ndarray:
    return np.zeros(shape, np.float32)


SC = _core.StepCoefficients
BAD = [
    (dict(model_output=np.zeros((3, 8))), "model_output must have dtype float32, got float64"),
    (dict(sample=np.zeros((3, 8), np.float16)), "sample must have dtype float32, got float16"),
    (dict(out=np.zeros((3, 8), ">f4")), "out must have dtype float32"),
    (dict(noise=np.zeros((3, 8), np.int32)), "variance_noise must have dtype float32"),
    (dict(history=np.zeros((3, 8))), "history must have dtype float32"),
    (dict(model_output=f32(8, 3).T), "model_output must be C-contiguous"),
    (dict(sample=f32(3, 16)[:, ::2]), "sample must be C-contiguous"),
    (dict(model_output=f32(3, 9)), r"model_output has shape \(3, 9\), expected \(3, 8\)"),
    (dict(out=f32(2, 8)), "out has shape"),
    (dict(noise=f32(3, 7)), "variance_noise has shape"),
    (dict(history=f32(4, 8)), "history has shape"),
    (dict(sample=f32(24)), "sample must be 2-D"),
    (dict(prediction_type="noise"), "unknown prediction_type 'noise'"),
    (dict(cell_offset=-1), "cell_offset must be >= 0"),
    (dict(step_index=2**32), "step_index"),
    (dict(clip_sample=True, clip_sample_range=0.0), "clip_sample_range"),
    (dict(thresholding=True, dynamic_thresholding_ratio=1.5), "dynamic_thresholding_ratio"),
    (dict(thresholding=True, sample_max_value=0.0), "sample_max_value"),
    (dict(truncate=True, truncate_threshold=float("nan")), "truncate_threshold"),
    (dict(k=SC(a=float("nan"))), "finite"),
    (dict(k=SC(sigma=-1.0)), "sigma"),
    (dict(k=SC(sqrt_alpha_prod=0.0, sqrt_one_minus_alpha_prod=1.0)), "zero terminal SNR"),
    (dict(k=SC(d=1.0), history=None), "history buffer"),
]


@pytest.mark.parametrize("over, message", BAD)
def test_bad_inputs_are_named(over: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call(**over)


def test_non_arrays_are_a_type_error() -> None:
    with pytest.raises(TypeError, match="model_output must be a numpy.ndarray, got list"):
        call(model_output=[[0.0] * 8] * 3)


def test_read_only_out_and_history_are_refused() -> None:
    for name in ("out", "history"):
        args = good()
        args[name].flags.writeable = False
        with pytest.raises(ValueError, match=f"{name} is read-only"):
            call(**args)
    args = good()  # read-only inputs are fine
    for name in ("model_output", "sample", "noise"):
        args[name].flags.writeable = False
    call(**args)


def test_aliased_arrays_are_refused() -> None:
    args = good()
    buf = np.zeros((6, 8), np.float32)
    cases = [
        (dict(out=args["model_output"]), "out and model_output overlap"),
        (dict(out=args["noise"]), "out and variance_noise overlap"),
        (dict(out=args["history"]), "out and history overlap"),
        (dict(sample=buf[:3], out=buf[1:4]), "out and sample overlap"),  # partial overlap
        (dict(history=args["sample"]), "history and sample overlap"),
        (dict(history=args["model_output"]), "history and model_output overlap"),
        (dict(history=args["noise"]), "history and variance_noise overlap"),
    ]
    for over, message in cases:
        with pytest.raises(ValueError, match=message):
            call(**{**args, **over})
    # exactly in place is allowed, and inputs may share memory with each other
    call(**{**args, "out": args["sample"]})
    call(**{**args, "model_output": args["sample"], "noise": args["sample"]})


# ------------------------------------------------------------------------------------- CUDA vs CPU


def _cuda_torch():
    if not _core.cuda_compiled or _core.cuda_device_count() == 0:
        pytest.skip("needs a CUDA build and a CUDA device")
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs torch with CUDA")
    return torch


def _cuda_step(torch, m, x, k, history=None, noise=None, out=None, **opts):
    """The CUDA kernel on device copies of NumPy inputs; returns (out, history) as NumPy."""
    dm, dx = torch.from_numpy(m).cuda(), torch.from_numpy(x).cuda()
    dout = torch.empty_like(dx) if out is None else out
    dh = None if history is None else torch.from_numpy(history).cuda()
    dz = None if noise is None else torch.from_numpy(noise).cuda()
    _core.cuda_step(
        dm.data_ptr(), dx.data_ptr(), dout.data_ptr(), x.shape[0], x.shape[1], k,
        history=0 if dh is None else dh.data_ptr(), noise=0 if dz is None else dz.data_ptr(),
        stream=torch.cuda.current_stream().cuda_stream, device=torch.cuda.current_device(), **opts,
    )  # fmt: skip
    torch.cuda.synchronize()
    return dout.cpu().numpy(), None if dh is None else dh.cpu().numpy()


@pytest.mark.gpu
@pytest.mark.parametrize("shape", [(3, 37), (64, 2000), (5, 13001)])
def test_cuda_randn_equals_cpu(shape) -> None:
    torch = _cuda_torch()
    n, g = shape
    seed, step, offset = 2**40 + 7, 5, 2**32 - 3
    d = torch.empty((n, g), dtype=torch.float32, device="cuda")
    _core.cuda_randn(d.data_ptr(), n, g, seed, step, offset,
                     stream=torch.cuda.current_stream().cuda_stream)  # fmt: skip
    torch.cuda.synchronize()
    np.testing.assert_allclose(
        d.cpu().numpy(), philox_noise(n, g, seed, step, offset), rtol=1e-6, atol=1e-6
    )


@pytest.mark.gpu
@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
@pytest.mark.parametrize("mode", ["plain", "clip", "threshold", "history+philox", "noise+truncate"])
@pytest.mark.parametrize("shape", [(3, 37), (64, 2000), (2, 12000), (4, 13001)])
def test_cuda_step_equals_cpu(prediction_type: str, mode: str, shape) -> None:
    torch = _cuda_torch()
    rng = np.random.default_rng()
    n, g = shape
    k = random_coefficients(rng, d="history" in mode, sigma="philox" in mode or "noise" in mode)
    m, x, h, z = arrays(rng, n, g, scale=3.0)
    opts = dict(prediction_type=prediction_type, seed=11, step_index=3, cell_offset=17)
    if mode == "clip":
        opts.update(clip_sample=True, clip_sample_range=1.5, use_clipped_model_output=True)
    if mode == "threshold":
        opts.update(thresholding=True, dynamic_thresholding_ratio=0.9, sample_max_value=3.0)
    if "truncate" in mode:
        opts.update(truncate=True, truncate_threshold=0.1)
    hist = h.copy() if "history" in mode else None
    noise = z if "noise" in mode else None
    want = np.empty_like(x)
    _core.step(m, x, want, k, history=hist, noise=noise, **opts)
    got, got_h = _cuda_step(torch, m, x, k, history=h.copy() if hist is not None else None,
                            noise=noise, **opts)  # fmt: skip
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6 * max(1.0, np.abs(want).max()))
    if hist is not None:
        np.testing.assert_allclose(got_h, hist, rtol=1e-6, atol=1e-6)


@pytest.mark.gpu
def test_cuda_step_misaligned_and_in_place() -> None:
    """A view that starts 1 float into its buffer takes the scalar (non-float4) path; out = sample
    updates in place."""
    torch = _cuda_torch()
    rng = np.random.default_rng()
    k = random_coefficients(rng, d=False)
    m, x = arrays(rng, 8, 64, 2)
    want = np.empty_like(x)
    _core.step(m, x, want, k, seed=2, step_index=1)
    buf = torch.zeros(8 * 64 + 1, device="cuda")
    dx = buf[1:].view(8, 64)
    dx.copy_(torch.from_numpy(x))
    dm = torch.from_numpy(m).cuda()
    _core.cuda_step(dm.data_ptr(), dx.data_ptr(), dx.data_ptr(), 8, 64, k, seed=2, step_index=1,
                    stream=torch.cuda.current_stream().cuda_stream)  # fmt: skip
    torch.cuda.synchronize()
    np.testing.assert_allclose(dx.cpu().numpy(), want, rtol=1e-6, atol=1e-6)


@pytest.mark.gpu
def test_facade_runs_cuda_tensors_like_numpy() -> None:
    torch = _cuda_torch()
    from cellsynth.scheduler import DDIMScheduler, DPMSolverMultistepScheduler

    rng = np.random.default_rng()
    for cls, kw in ((DDIMScheduler, {"eta": 0.7}), (DPMSolverMultistepScheduler, {})):
        a, b = cls(seed=4, truncate_final=True), cls(seed=4, truncate_final=True)
        a.set_timesteps(8)
        b.set_timesteps(8)
        x = a.init_noise(16, 50)
        y = b.init_noise_like(torch.empty(16, 50, device="cuda"))
        np.testing.assert_allclose(y.cpu().numpy(), x, rtol=1e-6, atol=1e-6)
        for t in a.timesteps.tolist():
            out = rng.standard_normal(x.shape).astype(np.float32)
            x = a.step(out, t, x, **kw)
            y = b.step(torch.from_numpy(out).cuda(), t, y, **kw)
            assert y.is_cuda
        np.testing.assert_allclose(y.cpu().numpy(), x, rtol=1e-5, atol=1e-5)
