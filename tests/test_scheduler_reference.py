"""cellsynth.scheduler against the float64 NumPy reference (tests/reference_schedulers.py).

Every step is checked on fresh random float32 inputs rather than along one trajectory, so an error
in one step cannot hide in (or be blamed on) the steps before it. The facade works in float32, the
reference in float64 on the same float32 inputs, so they agree to float32 rounding: the tolerance is
``RTOL`` relative to the larger of 1 and the largest expected value (inputs are standard normal; for
epsilon prediction near t = T the x0 estimate is ~1/sqrt(alpha-bar) larger than the inputs and so
are the rounding errors of the terms that cancel in the update).
"""

from __future__ import annotations

import zlib

import numpy as np
import pytest
import reference_schedulers as ref

from cellsynth.scheduler import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

T = 1000
B, G = 5, 37  # 37 genes: not a multiple of any SIMD width, so vector tails are exercised
S = 10
RTOL = 1e-5
SPACINGS = ["leading", "trailing", "linspace", "quadratic", "custom"]
CUSTOM = [990, 901, 700, 512, 300, 299, 120, 33, 5, 0]  # a user list: uneven, adjacent 300/299
SCHEDULES = list(ref.SCHEDULE_CONFIGS)


def assert_close(actual, expected, rtol: float = RTOL, what: str = "") -> None:
    expected = np.asarray(expected, dtype=np.float64)
    scale = max(1.0, float(np.abs(expected).max()))
    np.testing.assert_allclose(
        np.asarray(actual, dtype=np.float64), expected, rtol=rtol, atol=rtol * scale, err_msg=what
    )


def rng_for(*key) -> np.random.Generator:
    """A generator seeded from a test's parameters (stable across processes, unlike hash())."""
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


def fresh(rng: np.random.Generator, n: int = 3, scale: float = 1.0) -> list[np.ndarray]:
    """``n`` fresh standard normal float32 [B, G] arrays."""
    return [(scale * rng.standard_normal((B, G))).astype(np.float32) for _ in range(n)]


def make(cls, schedule: str, spacing: str, steps: int = S, **kwargs):
    """A facade scheduler with ``set_timesteps`` done; 'custom' spacing passes :data:`CUSTOM`."""
    sched = cls(
        num_train_timesteps=T,
        **ref.SCHEDULE_CONFIGS[schedule],
        timestep_spacing="leading" if spacing == "custom" else spacing,
        **kwargs,
    )
    if spacing == "custom":
        sched.set_timesteps(timesteps=CUSTOM)
    else:
        sched.set_timesteps(steps)
    return sched


def ref_timesteps(spacing: str, steps: int = S) -> np.ndarray:
    return np.array(CUSTOM) if spacing == "custom" else ref.timesteps(T, steps, spacing)


def skip_undefined(ac: np.ndarray, t: int, prediction_type: str) -> bool:
    """Epsilon prediction at alpha-bar = 0 (zero terminal SNR, t = T - 1) has no x0: x0 = x / 0."""
    return prediction_type == "epsilon" and ac[t] == 0.0


# --------------------------------------------------------------------------------------- schedules


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_alphas_cumprod_match_reference(schedule: str) -> None:
    sched = DDIMScheduler(num_train_timesteps=T, **ref.SCHEDULE_CONFIGS[schedule])
    ac = ref.config_alphas_cumprod(ref.SCHEDULE_CONFIGS[schedule])
    assert sched.alphas_cumprod.dtype == np.float64 and sched.alphas_cumprod.shape == (T,)
    np.testing.assert_allclose(sched.alphas_cumprod, ac, rtol=1e-12, atol=1e-15)
    if schedule == "zero_snr":
        assert sched.alphas_cumprod[-1] == 0.0


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("T_, steps", [(1000, 1), (1000, 7), (1000, 50), (1000, 1000), (10, 3)])
def test_timesteps_are_diffusers_lists(spacing: str, T_: int, steps: int) -> None:
    for cls in (DDIMScheduler, DDPMScheduler):
        sched = cls(num_train_timesteps=T_, timestep_spacing=spacing)
        sched.set_timesteps(steps)
        assert sched.timesteps.dtype == np.int64
        np.testing.assert_array_equal(sched.timesteps, ref.timesteps(T_, steps, spacing))


@pytest.mark.parametrize("cls", [DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler])
@pytest.mark.parametrize("T_, steps", [(1000, 61), (1000, 121), (1079, 25), (15, 13)])
def test_trailing_gives_S_steps_where_diffusers_gives_S_plus_1(cls, T_: int, steps: int) -> None:
    """np.arange(T, 0, -T / S) overshoots to S + 1 values for these (T, S); diffusers then steps
    through a final t = -1. The list must hold the S valid timesteps, the last one >= 0."""
    assert len(np.arange(T_, 0, -T_ / steps)) == steps + 1  # the upstream overshoot
    sched = cls(num_train_timesteps=T_, timestep_spacing="trailing")
    sched.set_timesteps(steps)
    assert sched.timesteps.shape == (steps,) and sched.timesteps[-1] >= 0
    np.testing.assert_array_equal(sched.timesteps, ref.timesteps(T_, steps, "trailing"))


def test_steps_offset_shifts_leading_timesteps() -> None:
    sched = DDIMScheduler(steps_offset=1, timestep_spacing="leading")
    sched.set_timesteps(10)
    np.testing.assert_array_equal(sched.timesteps, ref.timesteps(T, 10, "leading", 1))
    assert sched.timesteps[0] == 901 and sched.timesteps[-1] == 1


# -------------------------------------------------------------------------------------------- DDIM


@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("prediction_type", ref.PREDICTION_TYPES)
@pytest.mark.parametrize("spacing", SPACINGS)
@pytest.mark.parametrize("schedule", SCHEDULES)
def test_ddim_step_matches_reference(
    schedule: str, spacing: str, prediction_type: str, eta: float
) -> None:
    rng = rng_for(schedule, spacing, prediction_type, eta)
    sched = make(DDIMScheduler, schedule, spacing, prediction_type=prediction_type)
    ac = ref.config_alphas_cumprod(ref.SCHEDULE_CONFIGS[schedule])
    ts = ref_timesteps(spacing)
    np.testing.assert_array_equal(sched.timesteps, ts)
    for i, t in enumerate(ts.tolist()):
        if skip_undefined(ac, t, prediction_type):
            continue
        out, x, z = fresh(rng)
        got = sched.step(out, t, x, eta=eta, variance_noise=z)
        assert isinstance(got, np.ndarray) and got.dtype == np.float32 and got.shape == (B, G)
        ab_prev = ref.alpha_prev(ac, ref.prev_timestep(ts, i, T))
        want = ref.ddim_step(out, x, float(ac[t]), ab_prev, eta, z, prediction_type)
        assert_close(got, want, what=f"step {i} (t={t})")


@pytest.mark.parametrize("spacing", ["linspace", "trailing"])
def test_ddim_bug_compatible_prev_timestep(spacing: str) -> None:
    """With the switch on, prev = t - T // S (diffusers); off, the list lookup. They differ here."""
    rng = np.random.default_rng(3)
    steps = 7  # 1000 % 7 != 0
    ts = ref.timesteps(T, steps, spacing)
    ac = ref.config_alphas_cumprod(ref.SCHEDULE_CONFIGS["linear"])
    for bug in (False, True):
        sched = DDIMScheduler(timestep_spacing=spacing, bug_compatible_prev_timestep=bug)
        sched.set_timesteps(steps)
        for i, t in enumerate(ts.tolist()):
            out, x, _ = fresh(rng)
            got = sched.step(out, t, x)
            prev = ref.prev_timestep(ts, i, T, bug_compatible=bug)
            want = ref.ddim_step(out, x, float(ac[t]), ref.alpha_prev(ac, prev))
            assert_close(got, want, what=f"bug={bug} step {i}")
    lookup = [ref.prev_timestep(ts, i, T) for i in range(steps)]
    buggy = [ref.prev_timestep(ts, i, T, bug_compatible=True) for i in range(steps)]
    assert lookup != buggy


@pytest.mark.parametrize("prediction_type", ref.PREDICTION_TYPES)
def test_ddim_set_alpha_to_one_false_ends_at_alpha_bar_0(prediction_type: str) -> None:
    rng = np.random.default_rng(4)
    sched = DDIMScheduler(set_alpha_to_one=False, prediction_type=prediction_type)
    sched.set_timesteps(S)
    ac = ref.config_alphas_cumprod(ref.SCHEDULE_CONFIGS["linear"])
    t = int(sched.timesteps[-1])
    out, x, z = fresh(rng)
    got = sched.step(out, t, x, eta=1.0, variance_noise=z)
    want = ref.ddim_step(out, x, float(ac[t]), float(ac[0]), 1.0, z, prediction_type)
    assert_close(got, want)


@pytest.mark.parametrize("eta", [0.0, 1.0])
@pytest.mark.parametrize(
    "options",
    [
        dict(clip_sample=True, clip_sample_range=2.0),
        dict(thresholding=True, dynamic_thresholding_ratio=0.9, sample_max_value=3.0),
        dict(thresholding=True, clip_sample=True),  # thresholding takes precedence
    ],
    ids=["clip", "threshold", "threshold+clip"],
)
def test_ddim_x0_clipping_and_dynamic_thresholding(options: dict, eta: float) -> None:
    rng = np.random.default_rng(5)
    sched = DDIMScheduler(prediction_type="sample", **options)
    sched.set_timesteps(S)
    ac = ref.config_alphas_cumprod(ref.SCHEDULE_CONFIGS["linear"])
    ts = ref.timesteps(T, S, "leading")
    active = 0
    for i, t in enumerate(ts.tolist()):
        out, x, z = fresh(rng, scale=2.5)  # x0 = out, often beyond the clip range
        got = sched.step(out, t, x, eta=eta, variance_noise=z)
        ab_prev = ref.alpha_prev(ac, ref.prev_timestep(ts, i, T))
        want = ref.ddim_step(out, x, float(ac[t]), ab_prev, eta, z, "sample", **options)
        plain = ref.ddim_step(out, x, float(ac[t]), ab_prev, eta, z, "sample")
        active += not np.allclose(want, plain)
        # torch.quantile and the facade may pick the quantile with different float32 rounding
        assert_close(got, want, what=f"step {i}")
    assert active == len(ts)  # the option changed every step


def test_clip_sample_defaults_off() -> None:
    """Expression is not bounded in [-1, 1]: x0 must pass through unclipped by default."""
    sched = DDIMScheduler(prediction_type="sample")
    sched.set_timesteps(S)
    x0 = np.full((B, G), 7.5, dtype=np.float32)
    x = np.zeros((B, G), dtype=np.float32)
    got = sched.step(x0, int(sched.timesteps[-1]), x)
    np.testing.assert_allclose(got, x0, rtol=1e-6)


# -------------------------------------------------------------------------------------------- DDPM


@pytest.mark.parametrize("variance_type", ["fixed_small", "fixed_large"])
@pytest.mark.parametrize("prediction_type", ref.PREDICTION_TYPES)
@pytest.mark.parametrize("spacing", SPACINGS)
@pytest.mark.parametrize("schedule", SCHEDULES)
def test_ddpm_step_matches_reference(
    schedule: str, spacing: str, prediction_type: str, variance_type: str
) -> None:
    rng = rng_for(schedule, spacing, prediction_type, variance_type)
    sched = make(
        DDPMScheduler,
        schedule,
        spacing,
        prediction_type=prediction_type,
        variance_type=variance_type,
    )
    ac = ref.config_alphas_cumprod(ref.SCHEDULE_CONFIGS[schedule])
    ts = ref_timesteps(spacing)
    np.testing.assert_array_equal(sched.timesteps, ts)
    for i, t in enumerate(ts.tolist()):
        if skip_undefined(ac, t, prediction_type):
            continue
        out, x, z = fresh(rng)
        got = sched.step(out, t, x, variance_noise=z)
        prev = ref.prev_timestep(ts, i, T)
        # Noise is added iff t > 0, as diffusers does (so 'fixed_large' adds beta-variance noise on
        # a last step that does not end at t = 0; 'fixed_small' has variance 0 there).
        want = ref.ddpm_step(
            out,
            x,
            float(ac[t]),
            ref.alpha_prev(ac, prev),
            z,
            prediction_type,
            variance_type,
            add_noise=t > 0,
        )
        assert_close(got, want, what=f"step {i} (t={t})")


def test_ddpm_full_schedule_steps_one_by_one() -> None:
    sched = DDPMScheduler()
    sched.set_timesteps(T)
    np.testing.assert_array_equal(sched.timesteps, np.arange(T)[::-1])
    ac = ref.config_alphas_cumprod(ref.SCHEDULE_CONFIGS["linear"])
    rng = np.random.default_rng(6)
    for i in (0, 1, 500, 998, 999):
        t = T - 1 - i
        out, x, z = fresh(rng)
        got = sched.step(out, t, x, variance_noise=z)
        want = ref.ddpm_step(out, x, ac[t], ref.alpha_prev(ac, t - 1), z, add_noise=t > 0)
        assert_close(got, want, what=f"t={t}")


# ------------------------------------------------------------------------------------ DPM-Solver++


@pytest.mark.parametrize("lower_order_final", [True, False])
@pytest.mark.parametrize("prediction_type", ref.PREDICTION_TYPES)
@pytest.mark.parametrize(
    "spacing, steps",
    [(s, n) for s in SPACINGS if s != "custom" for n in (1, 2, 5, 20)] + [("custom", len(CUSTOM))],
)
@pytest.mark.parametrize("schedule", SCHEDULES)
def test_dpmsolver_2m_matches_reference(
    schedule: str, spacing: str, prediction_type: str, steps: int, lower_order_final: bool
) -> None:
    rng = rng_for(schedule, spacing, prediction_type, steps)
    sched = make(
        DPMSolverMultistepScheduler,
        schedule,
        spacing,
        steps,
        prediction_type=prediction_type,
        solver_order=2,
        lower_order_final=lower_order_final,
    )
    ts = np.asarray(sched.timesteps)
    ac = ref.config_alphas_cumprod(ref.SCHEDULE_CONFIGS[schedule])
    if schedule == "zero_snr":
        ac = ac.copy()
        ac[-1] = np.asarray(sched.alphas_cumprod)[-1]  # diffusers clamps it to 2**-24 for DPM
    oracle = ref.DPMSolverPP2M(ac, ts, prediction_type, 2, lower_order_final)
    x = fresh(rng, 1)[0]
    for i, t in enumerate(ts.tolist()):
        out = fresh(rng, 1)[0]
        got = sched.step(out, t, x)
        want = oracle.step(i, out, x)
        assert_close(got, want, what=f"step {i} (t={t})")
        x = np.asarray(got, dtype=np.float32)  # both continue from the same float32 state


def test_dpmsolver_restarts_after_set_timesteps() -> None:
    """set_timesteps clears the multistep history: a second run equals the first."""
    rng = np.random.default_rng(8)
    sched = DPMSolverMultistepScheduler()
    outs = fresh(rng, 6)
    runs = []
    for _ in range(2):
        sched.set_timesteps(5)
        x = outs[5]
        for i, t in enumerate(sched.timesteps.tolist()):
            x = sched.step(outs[i], t, x)
        runs.append(x)
    np.testing.assert_array_equal(runs[0], runs[1])
