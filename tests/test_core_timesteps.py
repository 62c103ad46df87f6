"""The compiled timestep lists (csrc/timesteps.h) vs NumPy, the reference sampler and diffusers."""

from __future__ import annotations

import math

import numpy as np
import pytest
from reference_sampler import timesteps_for

from cellsynth import _core

SPACINGS = ("leading", "trailing", "linspace")
# (T, S) pairs: uneven ratios, S = 1, S = T, tiny T, T % S != 0, and ones where the float arange of
# 'trailing' overshoots to S + 1 values (1000, 61), (1000, 121), (1079, 25), (15, 13).
PAIRS = [
    (1, 1),
    (2, 1),
    (2, 2),
    (10, 3),
    (15, 13),
    (100, 7),
    (1000, 1),
    (1000, 7),
    (1000, 10),
    (1000, 50),
    (1000, 61),
    (1000, 121),
    (1000, 333),
    (1000, 999),
    (1000, 1000),
    (1079, 25),
    (4000, 17),
]


def random_pairs(n: int) -> list[tuple[int, int]]:
    rng = np.random.default_rng()
    out = []
    for _ in range(n):
        T = int(rng.integers(1, 5000))
        out.append((T, int(rng.integers(1, T + 1))))
    return out


def numpy_list(T: int, S: int, spacing: str, offset: int = 0) -> np.ndarray:
    """diffusers' DDIM / DDPM expressions, 'trailing' cut to its S first values."""
    if spacing == "leading":
        return (np.arange(0, S) * (T // S)).round()[::-1].astype(np.int64) + offset
    if spacing == "trailing":
        return (np.round(np.arange(T, 0, -T / S)).astype(np.int64) - 1)[:S]
    return np.linspace(0, T - 1, S).round()[::-1].astype(np.int64)


@pytest.mark.parametrize("spacing", SPACINGS)
def test_lists_equal_the_numpy_expressions(spacing: str) -> None:
    for T, S in PAIRS + random_pairs(200):
        got = _core.timesteps(T, S, spacing)
        assert got.dtype == np.int64 and got.shape == (S,)
        np.testing.assert_array_equal(got, numpy_list(T, S, spacing), err_msg=f"{T=} {S=}")
        assert (np.diff(got) < 0).all() and got.min() >= 0 and got.max() < T


@pytest.mark.parametrize("spacing", SPACINGS)
def test_lists_equal_the_reference_sampler(spacing: str) -> None:
    """training/sampler.timesteps_for is the oracle, except where 'trailing' overshoots (it raises
    there, the C++ keeps the S valid values)."""
    for T, S in PAIRS + random_pairs(100):
        offset = 1 if spacing == "leading" and T // S * (S - 1) + 1 < T else 0
        try:
            want = timesteps_for(T, S, spacing, offset)
        except ValueError:
            assert spacing == "trailing" and len(np.arange(T, 0, -T / S)) == S + 1
            continue
        np.testing.assert_array_equal(_core.timesteps(T, S, spacing, offset), want)


@pytest.mark.parametrize("spacing", SPACINGS)
def test_lists_equal_diffusers(spacing: str) -> None:
    diffusers = pytest.importorskip("diffusers")
    for T, S in PAIRS + random_pairs(30):
        for cls in (diffusers.DDIMScheduler, diffusers.DDPMScheduler):
            ref = cls(num_train_timesteps=T, timestep_spacing=spacing)
            ref.set_timesteps(S)
            want = ref.timesteps.numpy()[:S]  # diffusers' trailing overshoot: S + 1 values
            np.testing.assert_array_equal(_core.timesteps(T, S, spacing), want, err_msg=f"{T=}")


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("spacing", SPACINGS)
def test_dpmsolver_lists_equal_diffusers(spacing: str) -> None:
    diffusers = pytest.importorskip("diffusers")
    for T, S in PAIRS + random_pairs(30):
        offset = 1 if spacing == "leading" and T // (S + 1) * S + 1 < T else 0
        ref = diffusers.DPMSolverMultistepScheduler(
            num_train_timesteps=T, timestep_spacing=spacing, steps_offset=offset
        )
        ref.set_timesteps(S)
        want = ref.timesteps.numpy()[:S]
        got = _core.dpmsolver_timesteps(T, S, spacing, offset)
        np.testing.assert_array_equal(got, want, err_msg=f"{T=} {S=}")
        assert got.shape == (S,) and (np.diff(got) <= 0).all()


def test_quadratic_spacing() -> None:
    """int(linspace(0, sqrt(0.8 T), S) ** 2) made strictly increasing, reversed."""
    for T, S in PAIRS + random_pairs(200):
        got = _core.timesteps(T, S, "quadratic")
        q = (np.linspace(0, math.sqrt(T * 0.8), S) ** 2).astype(np.int64)
        for i in range(1, S):
            q[i] = max(q[i], q[i - 1] + 1)
        np.testing.assert_array_equal(got, q[::-1], err_msg=f"{T=} {S=}")
        assert got.shape == (S,) and (np.diff(got) < 0).all()
        assert got[-1] == 0 and got[0] <= max(int(0.8 * T), S - 1) and got[0] < T
        # the same list for DPM-Solver
        np.testing.assert_array_equal(_core.dpmsolver_timesteps(T, S, "quadratic"), got)
    # denser near t = 0: the gaps grow (up to rounding) where no bumping happened
    gaps = -np.diff(_core.timesteps(1000, 20, "quadratic"))[::-1]
    assert gaps[0] < gaps[-1] and (np.diff(gaps) >= -1).all()
    np.testing.assert_array_equal(_core.timesteps(1000, 5, "quadratic"), [800, 450, 200, 50, 0])


def test_steps_offset_applies_to_leading_only() -> None:
    np.testing.assert_array_equal(_core.timesteps(1000, 10, "leading", 1)[[0, -1]], [901, 1])
    for spacing in ("trailing", "linspace", "quadratic"):
        np.testing.assert_array_equal(
            _core.timesteps(1000, 10, spacing, 5), _core.timesteps(1000, 10, spacing, 0)
        )


@pytest.mark.parametrize(
    "args, message",
    [
        ((0, 1, "leading"), "num_train_timesteps must be between 1 and"),
        ((10, 0, "leading"), "num_inference_steps must be between 1 and num_train_timesteps=10"),
        ((10, 11, "trailing"), "num_inference_steps"),
        ((10, 5, "uniform"), "unknown timestep_spacing 'uniform'"),
        ((10, 5, "leading", 2), r"timestep 10 falls outside \[0, 10\) \(steps_offset=2\)"),
        ((10, 5, "leading", -1), "timestep -1 falls outside"),
    ],
)
def test_bad_requests_are_named(args, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _core.timesteps(*args)


def test_user_lists_are_validated() -> None:
    got = _core.validate_timesteps([999, 500, 3, 0], 1000)
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, [999, 500, 3, 0])
    np.testing.assert_array_equal(_core.validate_timesteps(np.array([7], np.int32), 8), [7])
    for bad, message in (
        ([], "empty"),
        ([5, 9, 1], r"strictly descending, but timesteps\[0\] = 5 and timesteps\[1\] = 9"),
        ([5, 5, 1], "strictly descending"),
        ([1000, 5], r"timesteps\[0\] = 1000 falls outside \[0, 1000\)"),
        ([5, -1], r"timesteps\[1\] = -1"),
        ([[5, 1]], "1-D"),
        ([5.5, 1.0], "integers"),
    ):
        with pytest.raises(ValueError, match=message):
            _core.validate_timesteps(bad, 1000)


def test_previous_timesteps_are_looked_up_in_the_list() -> None:
    rng = np.random.default_rng()
    for T, S in PAIRS + random_pairs(50):
        for spacing in SPACINGS + ("quadratic",):
            ts = _core.timesteps(T, S, spacing)
            prev = _core.previous_timesteps(ts, T)
            np.testing.assert_array_equal(prev, np.append(ts[1:], -1))
    custom = np.sort(rng.choice(1000, size=12, replace=False))[::-1].copy()
    np.testing.assert_array_equal(_core.previous_timesteps(custom, 1000), np.append(custom[1:], -1))


def test_bug_compatible_previous_timestep_is_diffusers_ddim() -> None:
    """prev = t - T // S, negative -> -1; it differs from the list for 'linspace' and for
    'trailing' when T % S != 0."""
    diffusers = pytest.importorskip("diffusers")
    for T, S, spacing in [(1000, 50, "linspace"), (1000, 7, "trailing"), (1000, 50, "leading")]:
        ts = _core.timesteps(T, S, spacing)
        prev = _core.previous_timesteps(ts, T, bug_compatible=True)
        np.testing.assert_array_equal(prev, np.maximum(ts - T // S, -1))
        ref = diffusers.DDIMScheduler(num_train_timesteps=T, timestep_spacing=spacing)
        ref.set_timesteps(S)
        # diffusers' own step rule, read from its code: prev_timestep = t - T // S
        want = np.array([int(t) - T // ref.num_inference_steps for t in ref.timesteps[:S]])
        np.testing.assert_array_equal(prev, np.maximum(want, -1))
        lookup = _core.previous_timesteps(ts, T)
        assert np.array_equal(prev, lookup) == (spacing == "leading")
