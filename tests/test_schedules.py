"""The compiled noise schedules against a float64 NumPy reference and diffusers."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cellsynth import NoiseSchedule, _core


def reference_betas(schedule: str, T: int, beta_start: float, beta_end: float) -> np.ndarray:
    """Direct float64 transcription of the formulas diffusers documents."""
    if schedule == "linear":
        return np.linspace(beta_start, beta_end, T, dtype=np.float64)
    if schedule == "scaled_linear":
        return np.linspace(beta_start**0.5, beta_end**0.5, T, dtype=np.float64) ** 2
    if schedule == "squaredcos_cap_v2":

        def alpha_bar(t: float) -> float:
            return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

        return np.array(
            [min(1 - alpha_bar((i + 1) / T) / alpha_bar(i / T), 0.999) for i in range(T)]
        )
    raise AssertionError(schedule)


@pytest.mark.parametrize("schedule", ["linear", "scaled_linear", "squaredcos_cap_v2"])
@pytest.mark.parametrize("T", [1, 2, 10, 1000, 4000])
def test_betas_match_float64_reference(schedule: str, T: int) -> None:
    rng = np.random.default_rng()
    beta_start = float(rng.uniform(1e-5, 1e-3))
    beta_end = float(rng.uniform(5e-3, 5e-2))
    got = _core.make_betas(schedule, T, beta_start, beta_end)
    want = reference_betas(schedule, T, beta_start, beta_end)
    assert got.dtype == np.float64 and got.shape == (T,)
    # 1 - a/b loses a few ulps where a ~ b, hence 1e-12 and not machine epsilon.
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=0)


@settings(max_examples=50, deadline=None)
@given(
    betas=st.lists(st.floats(1e-6, 0.999, allow_nan=False), min_size=1, max_size=300),
)
def test_alphas_cumprod_matches_numpy(betas: list[float]) -> None:
    b = np.asarray(betas)
    np.testing.assert_allclose(_core.alphas_cumprod(b), np.cumprod(1.0 - b), rtol=1e-12)


@pytest.mark.parametrize("schedule", ["linear", "scaled_linear", "squaredcos_cap_v2"])
def test_schedule_matches_diffusers(schedule: str) -> None:
    diffusers = pytest.importorskip("diffusers")
    ref = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule=schedule)
    ours = NoiseSchedule(beta_schedule=schedule)
    # diffusers builds its betas in float32, so agreement is to float32 rounding.
    np.testing.assert_allclose(ours.betas, ref.betas.double().numpy(), rtol=2e-6)
    np.testing.assert_allclose(ours.alphas_cumprod, ref.alphas_cumprod.double().numpy(), rtol=1e-4)


def test_default_schedule_is_the_papers() -> None:
    s = NoiseSchedule()
    assert s.num_train_timesteps == 1000
    assert s.betas[0] == pytest.approx(1e-4) and s.betas[-1] == pytest.approx(0.02)
    # Final signal level of the linear DDPM schedule, ~4.04e-5 (Ho et al. 2020).
    assert s.alphas_cumprod[-1] == pytest.approx(4.0358e-5, rel=1e-3)


def test_trained_betas_override_the_name() -> None:
    s = NoiseSchedule(trained_betas=(0.1, 0.2, 0.3), beta_schedule="linear")
    assert s.num_train_timesteps == 3
    np.testing.assert_allclose(s.alphas_cumprod, [0.9, 0.72, 0.504])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(beta_schedule="cosine"), "unknown beta_schedule"),
        (dict(num_train_timesteps=0), "num_train_timesteps must be between 1 and"),
        (dict(beta_start=0.0), "must lie in \\(0, 1\\)"),
        (dict(beta_end=1.5), "must lie in \\(0, 1\\)"),
        (dict(trained_betas=(0.1, float("nan"))), "trained_betas\\[1\\]"),
        (dict(trained_betas=(0.1, 1.0)), "outside \\(0, 1\\)"),
        (dict(trained_betas=()), "empty"),
    ],
)
def test_bad_schedules_are_named(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        NoiseSchedule(**kwargs)


def test_round_trip_through_dict() -> None:
    s = NoiseSchedule(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    assert NoiseSchedule.from_dict(s.to_dict()) == s
    with pytest.raises(ValueError, match="unknown schedule options"):
        NoiseSchedule.from_dict({**s.to_dict(), "clip": True})


def test_core_rejects_two_dimensional_betas() -> None:
    with pytest.raises(ValueError, match="must be 1-D"):
        _core.alphas_cumprod(np.ones((2, 2)) * 0.1)


def test_cuda_queries_never_fail_without_a_device() -> None:
    # The CI machines have nvcc but no GPU: the module must import and report zero devices.
    n = _core.cuda_device_count()
    assert isinstance(_core.cuda_compiled, bool)
    assert n >= 0
    if n == 0:
        assert _core.cuda_device_name(0) == ""
