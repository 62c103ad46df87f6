"""Parity of cellsynth.scheduler with diffusers' DDIM, DDPM and DPM-Solver++ schedulers.

Whole trajectories: the same deterministic toy denoiser drives both samplers from the same x_T and
(where the sampler is stochastic) the same per-step noise; the two float32 trajectories must agree
step by step. diffusers is configured with ``clip_sample=False`` (its default clamps x0 to [-1, 1])
and our DDIM with ``bug_compatible_prev_timestep=True`` (diffusers' DDIM steps to ``t - T // S``),
so every spacing is comparable.

Tolerance (error relative to max(1, max |x|) at every step). diffusers computes betas and
alphas_cumprod in float32, we in float64, and that float32 schedule is least accurate at the two
ends: near t = 0, 1 - alpha-bar ~ 1e-4 is the difference of two float32 numbers near 1 (relative
error up to ~1e-3 for 'squaredcos_cap_v2', whose first beta is 4e-5), and near t = T, alpha-bar
~ 1e-5 multiplies x0 = (x - sqrt(1 - ab) eps) / sqrt(ab). Steps at t < 0.05 T or t >= 0.9 T get
``RTOL_END``, all others ``RTOL``. Measured: DDIM and DPM-Solver trajectories on 'linear' agree to
~1e-6 everywhere; the largest mid-schedule errors (~1.7e-5) are 'squaredcos_cap_v2' steps right
after t = T - 1, inheriting that step's error. The 1000-step DDPM trajectory runs the 'linear'
schedule only: its t < 0.05 T steps reach ~6e-5 (with 'squaredcos_cap_v2' diffusers' own
rounding there is ~3e-4), the rest ~6e-6.
"""

from __future__ import annotations

import numpy as np
import pytest
import reference_schedulers as ref
import torch
from diffusers import DDIMScheduler as HFDDIM
from diffusers import DDPMScheduler as HFDDPM
from diffusers import DPMSolverMultistepScheduler as HFDPM

from cellsynth.scheduler import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

# diffusers' DPM-Solver calls np.array on a tensor with copy=False (a NumPy 2 deprecation).
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

T = 1000
B, G = 4, 29
RTOL = 2e-5
RTOL_END = 1e-4
SCHEDULES = list(ref.SCHEDULE_CONFIGS)
W = torch.linspace(-1.0, 1.0, G)


def toy(x: torch.Tensor, t: int) -> torch.Tensor:
    """A fixed, smooth, time-dependent stand-in for a trained denoiser (float32 in and out)."""
    s = t / T
    return 0.5 * torch.tanh(x) * (1 + s) + 0.1 * W - 0.2 * s


def x_T(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((B, G)).astype(np.float32)


def hf_config(schedule: str) -> dict:
    cfg = dict(ref.SCHEDULE_CONFIGS[schedule])
    if "trained_betas" in cfg:
        cfg["trained_betas"] = np.asarray(cfg["trained_betas"], dtype=np.float32)
    return cfg


def assert_trajectories_match(ours: list, theirs: list, ts: np.ndarray) -> float:
    """Step-by-step agreement; returns the largest relative error seen."""
    worst = 0.0
    for i, (a, b) in enumerate(zip(ours, theirs, strict=True)):
        a = np.asarray(a, dtype=np.float64)
        b = b.double().numpy()
        assert np.isfinite(a).all() and np.isfinite(b).all(), f"step {i}"
        scale = max(1.0, float(np.abs(b).max()))
        err = float(np.abs(a - b).max()) / scale
        worst = max(worst, err)
        rtol = RTOL_END if ts[i] < 0.05 * T or ts[i] >= 0.9 * T else RTOL
        assert err <= rtol, f"step {i} (t={ts[i]}): relative error {err:.2e} > {rtol:.0e}"
    return worst


def noises(n: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((B, G)).astype(np.float32) for _ in range(n)]


# -------------------------------------------------------------------------------------------- DDIM


@pytest.mark.parametrize("steps", [7, 50])
@pytest.mark.parametrize("eta", [0.0, 1.0])
@pytest.mark.parametrize("prediction_type", ref.PREDICTION_TYPES)
@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("schedule", SCHEDULES)
def test_ddim_matches_diffusers(
    schedule: str, spacing: str, prediction_type: str, eta: float, steps: int
) -> None:
    hf = HFDDIM(
        **hf_config(schedule),
        clip_sample=False,
        prediction_type=prediction_type,
        timestep_spacing=spacing,
    )
    hf.set_timesteps(steps)
    ours = DDIMScheduler(
        **ref.SCHEDULE_CONFIGS[schedule],
        prediction_type=prediction_type,
        timestep_spacing=spacing,
        bug_compatible_prev_timestep=True,
    )
    ours.set_timesteps(steps)
    ts = ours.timesteps
    np.testing.assert_array_equal(ts, hf.timesteps.numpy())
    zs = noises(steps, 1)
    x, y = x_T(), torch.from_numpy(x_T())
    if hf.alphas_cumprod[int(ts[0])] == 0 and (prediction_type == "epsilon" or eta == 1.0):
        # Zero terminal SNR puts the first step at alpha-bar = 0, where diffusers gives inf/NaN:
        # epsilon prediction has no x0 there (cellsynth refuses, naming why), and with eta = 1
        # diffusers takes sqrt(1 - ab' - sigma^2) of a value rounding below 0 (cellsynth clamps).
        t0 = int(ts[0])
        if prediction_type == "epsilon":
            with pytest.raises(ValueError, match="epsilon"):
                ours.step(
                    toy(torch.from_numpy(x), t0).numpy(), t0, x, eta=eta, variance_noise=zs[0]
                )
        else:
            first = ours.step(
                toy(torch.from_numpy(x), t0).numpy(), t0, x, eta=eta, variance_noise=zs[0]
            )
            assert np.isfinite(first).all()
        return
    mine, theirs = [], []
    for i, t in enumerate(ts.tolist()):
        x = ours.step(toy(torch.from_numpy(x), t).numpy(), t, x, eta=eta, variance_noise=zs[i])
        y = hf.step(toy(y, t), t, y, eta=eta, variance_noise=torch.from_numpy(zs[i])).prev_sample
        mine.append(x)
        theirs.append(y)
    assert_trajectories_match(mine, theirs, ts)


@pytest.mark.parametrize("eta", [0.0, 1.0])
@pytest.mark.parametrize(
    "options",
    [
        dict(thresholding=True, dynamic_thresholding_ratio=0.9, sample_max_value=3.0),
        dict(clip_sample=True, clip_sample_range=1.5),
    ],
    ids=["dynamic-thresholding", "clip"],
)
def test_ddim_x0_thresholding_and_clipping_match_diffusers(options: dict, eta: float) -> None:
    """x0 post-processing, per cell. diffusers' _threshold_sample needs a channel axis, so its
    side runs on [B, G, 1] (the quantile is then over the G genes of a cell, as ours)."""
    steps = 10
    hf = HFDDIM(prediction_type="sample", **{"clip_sample": False, **options})
    hf.set_timesteps(steps)
    ours = DDIMScheduler(prediction_type="sample", bug_compatible_prev_timestep=True, **options)
    ours.set_timesteps(steps)
    ts = ours.timesteps
    zs = noises(steps, 4)
    x, y = x_T(), torch.from_numpy(x_T())[:, :, None]  # ours [B, G], theirs [B, G, 1]
    mine, theirs = [], []
    for i, t in enumerate(ts.tolist()):
        out = (4 * toy(torch.from_numpy(x), t)).numpy()  # x0 beyond [-1, 1]: the options act
        hf_out = 4 * toy(y[:, :, 0], t)[:, :, None]
        x = ours.step(out, t, x, eta=eta, variance_noise=zs[i])
        z = torch.from_numpy(zs[i])[:, :, None]
        y = hf.step(hf_out, t, y, eta=eta, variance_noise=z).prev_sample
        mine.append(x)
        theirs.append(y[:, :, 0])
    assert_trajectories_match(mine, theirs, ts)
    plain = DDIMScheduler(prediction_type="sample")
    plain.set_timesteps(steps)
    x0 = (4 * toy(torch.from_numpy(x_T()), int(ts[0]))).numpy()
    z0 = zs[0] if eta else None
    assert not np.allclose(plain.step(x0, int(ts[0]), x_T(), eta, z0), mine[0])  # option acted


# -------------------------------------------------------------------------------------------- DDPM


def diffusers_ddpm_noise(ts: np.ndarray, seed: int) -> list[np.ndarray | None]:
    """The noise diffusers' DDPMScheduler.step draws from a generator seeded ``seed``.

    It draws ``randn(shape)`` at every step with t > 0 (also on the last step when the list does
    not end at 0) and nothing at t = 0.
    """
    gen = torch.Generator().manual_seed(seed)
    return [
        torch.randn((B, G), generator=gen, dtype=torch.float32).numpy() if t > 0 else None
        for t in ts.tolist()
    ]


@pytest.mark.parametrize("variance_type", ["fixed_small", "fixed_large"])
@pytest.mark.parametrize("prediction_type", ref.PREDICTION_TYPES)
@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("schedule", SCHEDULES)
def test_ddpm_matches_diffusers(
    schedule: str, spacing: str, prediction_type: str, variance_type: str
) -> None:
    steps = 20
    hf = HFDDPM(
        **hf_config(schedule),
        clip_sample=False,
        prediction_type=prediction_type,
        timestep_spacing=spacing,
        variance_type=variance_type,
    )
    hf.set_timesteps(steps)
    ours = DDPMScheduler(
        **ref.SCHEDULE_CONFIGS[schedule],
        prediction_type=prediction_type,
        timestep_spacing=spacing,
        variance_type=variance_type,
    )
    ours.set_timesteps(steps)
    ts = ours.timesteps
    np.testing.assert_array_equal(ts, hf.timesteps.numpy())
    zs = diffusers_ddpm_noise(ts, seed=2)
    if prediction_type == "epsilon" and hf.alphas_cumprod[int(ts[0])] == 0:
        # Zero terminal SNR: epsilon prediction has no x0 at alpha-bar = 0; cellsynth says so.
        t0, x = int(ts[0]), x_T()
        with pytest.raises(ValueError, match="epsilon"):
            ours.step(toy(torch.from_numpy(x), t0).numpy(), t0, x, variance_noise=zs[0])
        return
    gen = torch.Generator().manual_seed(2)
    x, y = x_T(), torch.from_numpy(x_T())
    mine, theirs = [], []
    for i, t in enumerate(ts.tolist()):
        x = ours.step(toy(torch.from_numpy(x), t).numpy(), t, x, variance_noise=zs[i])
        y = hf.step(toy(y, t), t, y, generator=gen).prev_sample
        mine.append(x)
        theirs.append(y)
    assert_trajectories_match(mine, theirs, ts)


def test_full_ddpm_matches_diffusers() -> None:
    """Ancestral DDPM over all T = 1000 steps."""
    hf = HFDDPM(clip_sample=False)
    hf.set_timesteps(T)
    ours = DDPMScheduler()
    ours.set_timesteps(T)
    ts = ours.timesteps
    np.testing.assert_array_equal(ts, hf.timesteps.numpy())
    zs = diffusers_ddpm_noise(ts, seed=3)
    gen = torch.Generator().manual_seed(3)
    x, y = x_T(), torch.from_numpy(x_T())
    mine, theirs = [], []
    for i, t in enumerate(ts.tolist()):
        x = ours.step(toy(torch.from_numpy(x), t).numpy(), t, x, variance_noise=zs[i])
        y = hf.step(toy(y, t), t, y, generator=gen).prev_sample
        mine.append(x)
        theirs.append(y)
    assert_trajectories_match(mine, theirs, ts)


# ------------------------------------------------------------------------------------ DPM-Solver++


@pytest.mark.parametrize("lower_order_final", [True, False])
@pytest.mark.parametrize("steps", [2, 10, 20])
@pytest.mark.parametrize("prediction_type", ref.PREDICTION_TYPES)
@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("schedule", SCHEDULES)
def test_dpmsolver_matches_diffusers(
    schedule: str, spacing: str, prediction_type: str, steps: int, lower_order_final: bool
) -> None:
    ours = DPMSolverMultistepScheduler(
        **ref.SCHEDULE_CONFIGS[schedule],
        prediction_type=prediction_type,
        timestep_spacing=spacing,
        solver_order=2,
        lower_order_final=lower_order_final,
    )
    ours.set_timesteps(steps)
    ts = ours.timesteps
    hf = HFDPM(
        **hf_config(schedule),
        prediction_type=prediction_type,
        timestep_spacing=spacing,
        algorithm_type="dpmsolver++",
        solver_type="midpoint",
        solver_order=2,
        lower_order_final=lower_order_final,
    )
    # The same list on both sides (test_dpmsolver_timesteps checks the lists themselves).
    hf.set_timesteps(timesteps=ts.tolist())
    x, y = x_T(), torch.from_numpy(x_T())
    mine, theirs = [], []
    for t in ts.tolist():
        x = ours.step(toy(torch.from_numpy(x), t).numpy(), t, x)
        y = hf.step(toy(y, t), t, y).prev_sample
        mine.append(x)
        theirs.append(y)
    assert_trajectories_match(mine, theirs, ts)


@pytest.mark.parametrize("steps", [5, 10, 20, 25])
@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
def test_dpmsolver_timesteps(spacing: str, steps: int) -> None:
    ours = DPMSolverMultistepScheduler(timestep_spacing=spacing)
    ours.set_timesteps(steps)
    hf = HFDPM(timestep_spacing=spacing)
    hf.set_timesteps(steps)
    np.testing.assert_array_equal(ours.timesteps, hf.timesteps.numpy())
