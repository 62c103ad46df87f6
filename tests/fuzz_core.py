"""Fuzz every public entry point of the C++ core with hypothesis (run by test_core_fuzz.py).

Each call gets arguments drawn from the valid and the invalid: wrong dtypes, shapes and layouts,
aliased arrays, NaN / Inf / huge values, out-of-range options. A call must either return values
that make sense (finite coefficients, schedules and thresholds) or raise one of the errors the
bindings promise (ValueError, TypeError, OverflowError, IndexError). Anything else fails, and a
crash (a segfault, an abort) ends this process with a signal, which the calling test reports.

Run: python tests/fuzz_core.py EXAMPLES_PER_ENTRY [SEED]
"""

from __future__ import annotations

import math
import sys

import numpy as np
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from cellsynth import _core

EXPECTED = (ValueError, TypeError, OverflowError, IndexError)

FLOATS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(-2.0, 2.0),
    st.sampled_from([0.0, 1.0, -1.0, 0.5, 1e-300, 1e300, 0.999999, 1e-12]),
)
INTS = st.one_of(
    st.integers(-10, 2000),
    st.sampled_from([0, 1, -1, 2**31, 2**63 - 1, -(2**63), 2**64, 10**12, 2 * 10**9]),
)
DTYPES = st.sampled_from([np.float32, np.float64, np.float16, np.int64, np.int32, np.bool_])
NAMES = st.sampled_from(
    ["epsilon", "sample", "v_prediction", "leading", "trailing", "linspace", "quadratic",
     "linear", "scaled_linear", "squaredcos_cap_v2", "fixed_small", "fixed_large", "midpoint",
     "heun", "select", "bisection", "", "bogus"]
)  # fmt: skip


@st.composite
def arrays(draw, max_dims: int = 3, max_side: int = 6):
    dims = draw(st.integers(0, max_dims))
    shape = tuple(draw(st.integers(0, max_side)) for _ in range(dims))
    dtype = draw(DTYPES)
    values = draw(st.lists(FLOATS, min_size=1, max_size=8))
    n = int(np.prod(shape)) if shape else 1
    with np.errstate(all="ignore"):
        a = np.resize(np.array(values, dtype=np.float64), n).astype(dtype).reshape(shape)
    layout = draw(st.sampled_from(["c", "f", "strided", "readonly"]))
    if layout == "f":
        a = np.asfortranarray(a)
    elif layout == "strided" and a.ndim >= 1 and a.shape[-1] > 1:
        a = np.repeat(a, 2, axis=-1)[..., ::2]
    elif layout == "readonly":
        a.setflags(write=False)
    return a


@st.composite
def matrices(draw):
    """float32 [B, G] arrays, mostly valid, so calls get past the first checks."""
    if draw(st.booleans()):
        return draw(arrays())
    b, g = draw(st.integers(0, 5)), draw(st.integers(0, 7))
    values = draw(st.lists(FLOATS, min_size=1, max_size=8))
    with np.errstate(all="ignore"):
        return np.resize(np.array(values, dtype=np.float64), b * g).astype(np.float32).reshape(b, g)


def _finite(*values: float) -> None:
    assert all(math.isfinite(v) for v in values), values


def _coefficients_finite(k) -> None:
    _finite(k.sqrt_alpha_prod, k.sqrt_one_minus_alpha_prod, k.a, k.b, k.c, k.d, k.sigma)


def _call(fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs), None
    except EXPECTED as exc:
        return None, exc


def fuzz(examples: int, rng_seed: int) -> None:
    run = settings(
        max_examples=examples,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
        derandomize=False,
    )

    @run
    @seed(rng_seed)
    @given(FLOATS, FLOATS, FLOATS)
    def ddim(a, b, eta):
        k, _ = _call(_core.ddim_coefficients, a, b, eta)
        if k is not None:
            _coefficients_finite(k)

    @run
    @seed(rng_seed)
    @given(FLOATS, FLOATS, INTS, NAMES)
    def ddpm(a, b, t, variance):
        k, _ = _call(_core.ddpm_coefficients, a, b, t, variance)
        if k is not None:
            _coefficients_finite(k)

    @run
    @seed(rng_seed)
    @given(FLOATS, FLOATS, FLOATS, INTS, NAMES)
    def dpmsolver(s1, s0, t, order, kind):
        k, _ = _call(_core.dpmsolver_coefficients, s1, s0, t, order, kind)
        if k is not None:
            _coefficients_finite(k)

    @run
    @seed(rng_seed)
    @given(NAMES, INTS, FLOATS, FLOATS)
    def betas(schedule, T, start, end):
        b, _ = _call(_core.make_betas, schedule, T, start, end)
        if b is not None:
            assert b.shape == (T,) and np.isfinite(b).all()

    @run
    @seed(rng_seed)
    @given(arrays(max_dims=2, max_side=40))
    def beta_arrays(b):
        for fn in (_core.validate_betas, _core.rescale_zero_terminal_snr, _core.alphas_cumprod):
            out, _ = _call(fn, b)
            if out is not None:
                assert np.isfinite(out).all(), (fn.__name__, b, out)

    @run
    @seed(rng_seed)
    @given(INTS, INTS, NAMES, INTS)
    def timesteps(T, S, spacing, offset):
        for fn in (_core.timesteps, _core.dpmsolver_timesteps):
            ts, _ = _call(fn, T, S, spacing, offset)
            if ts is not None:
                assert len(ts) and ((ts >= 0) & (ts < T)).all(), (fn.__name__, T, S, ts)

    @run
    @seed(rng_seed)
    @given(arrays(max_dims=2, max_side=8), INTS, st.booleans())
    def timestep_lists(ts, T, bug):
        _call(_core.validate_timesteps, ts, T)
        prev, _ = _call(_core.previous_timesteps, ts, T, bug)
        if prev is not None:
            assert prev.shape == np.asarray(ts).shape

    @run
    @seed(rng_seed)
    @given(arrays(max_dims=2, max_side=20), FLOATS, FLOATS, NAMES)
    def threshold(a, ratio, smv, method):
        s, _ = _call(_core.dynamic_threshold, a, ratio, smv, method)
        if s is not None and not np.isnan(np.asarray(a, dtype=np.float64)).any():
            _finite(s)

    @run
    @seed(rng_seed)
    @given(matrices(), INTS, INTS, INTS)
    def randn(out, key, step, offset):
        _call(_core.randn, out, key, step, offset)

    @run
    @seed(rng_seed)
    @given(st.lists(INTS, min_size=0, max_size=5), st.lists(INTS, min_size=0, max_size=3))
    def philox(counter, key):
        _call(_core.philox4x32_10, counter, key)

    @run
    @seed(rng_seed)
    @given(
        matrices(), matrices(), matrices(), st.one_of(INTS, matrices()), INTS,
        st.one_of(st.none(), matrices()), st.integers(0, 3),
    )  # fmt: skip
    def counts(mean, theta, out, key, offset, zero_prob, alias):
        if alias == 1:
            out = mean
        elif alias == 2:
            theta = mean
        elif alias == 3 and np.ndim(mean) == 2:  # well-formed shapes, values as drawn
            out = np.zeros(np.shape(mean), np.int32)
            theta = np.resize(np.ravel(theta).astype(np.float32), np.shape(mean)[1])
        _call(_core.sample_counts, mean, theta, out, key, offset, zero_prob)

    @run
    @seed(rng_seed)
    @given(
        matrices(), matrices(), matrices(), st.integers(0, 3), FLOATS, FLOATS, FLOATS, NAMES,
        st.booleans(), FLOATS, st.booleans(), FLOATS, FLOATS, INTS, INTS, INTS,
    )  # fmt: skip
    def step(mo, x, out, alias, a, b, sigma, pred, clip, clip_range, thr, ratio, smv, key, t, off):
        if alias == 1:
            out = x
        elif alias == 2:
            out = mo
        k, _ = _call(_core.StepCoefficients, a=a, b=b, sigma=sigma, sqrt_alpha_prod=ratio)
        if k is None:
            return
        _call(
            _core.step, mo, x, out, k, prediction_type=pred, clip_sample=clip,
            clip_sample_range=clip_range, thresholding=thr, dynamic_thresholding_ratio=ratio,
            sample_max_value=smv,
        )  # fmt: skip
        _call(
            _core.step, mo, x, out, k, prediction_type="epsilon", seed=key, step_index=t,
            cell_offset=off, truncate=clip, truncate_threshold=clip_range,
            history=mo if thr else None, noise=x if alias == 3 else None,
        )  # fmt: skip

    @run
    @seed(rng_seed)
    @given(INTS)
    def threads(n):
        before = _core.get_num_threads()
        _call(_core.set_num_threads, n)
        _core.set_num_threads(before)

    tests = [ddim, ddpm, dpmsolver, betas, beta_arrays, timesteps, timestep_lists, threshold,
             randn, philox, counts, step, threads]  # fmt: skip
    for test in tests:
        test()
        print(f"{test.__name__}: {examples} calls", flush=True)


if __name__ == "__main__":
    fuzz(int(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 0)
