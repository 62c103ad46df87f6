"""DDPM math in torch against float64 NumPy formulas, and target/inverse round trips."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from cellsynth import NoiseSchedule
from cellsynth.training.diffusion import (
    PREDICTION_TYPES,
    add_noise,
    predict_x0_and_eps,
    training_target,
)

AC = NoiseSchedule().alphas_cumprod  # float64 [1000], linear 1e-4..0.02


def random_batch(seed: int, batch: int = 16, genes: int = 7):
    rng = np.random.default_rng(seed)
    x0 = rng.normal(size=(batch, genes)) * 3 - 2
    noise = rng.normal(size=(batch, genes))
    t = rng.integers(0, len(AC), size=batch)
    t[:2] = [0, len(AC) - 1]  # always cover both ends
    return x0, noise, t


def np_reference(x0, noise, t, kind):
    """The formulas, written out in float64 NumPy."""
    ab = AC[t][:, None]
    x_t = np.sqrt(ab) * x0 + np.sqrt(1 - ab) * noise
    target = {
        "epsilon": noise,
        "sample": x0,
        "v_prediction": np.sqrt(ab) * noise - np.sqrt(1 - ab) * x0,
    }[kind]
    return x_t, target


@pytest.mark.parametrize("kind", PREDICTION_TYPES)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_against_numpy_float64(kind, seed):
    x0, noise, t = random_batch(seed)
    ac = torch.from_numpy(AC)
    x_t_ref, target_ref = np_reference(x0, noise, t, kind)
    X0, N, Tt = torch.from_numpy(x0), torch.from_numpy(noise), torch.from_numpy(t)
    x_t = add_noise(X0, N, Tt, ac)
    target = training_target(X0, N, Tt, ac, kind)
    assert x_t.dtype == torch.float64
    np.testing.assert_allclose(x_t.numpy(), x_t_ref, rtol=1e-14, atol=1e-14)
    np.testing.assert_allclose(target.numpy(), target_ref, rtol=1e-14, atol=1e-14)
    # the inverse recovers (x0, eps) from the ideal output at x_t
    x0_hat, eps_hat = predict_x0_and_eps(target, x_t, Tt, ac, kind)
    np.testing.assert_allclose(x0_hat.numpy(), x0, atol=1e-9)
    np.testing.assert_allclose(eps_hat.numpy(), noise, atol=1e-9)


@pytest.mark.parametrize("kind", PREDICTION_TYPES)
def test_float32_data_with_float64_schedule(kind):
    x0, noise, t = random_batch(3, batch=64, genes=50)
    X0, N = torch.from_numpy(x0).float(), torch.from_numpy(noise).float()
    Tt = torch.from_numpy(t)
    ac = torch.from_numpy(AC)
    x_t = add_noise(X0, N, Tt, ac)
    target = training_target(X0, N, Tt, ac, kind)
    assert x_t.dtype == target.dtype == torch.float32
    x_t_ref, target_ref = np_reference(x0, noise, t, kind)
    np.testing.assert_allclose(x_t.numpy(), x_t_ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(target.numpy(), target_ref, rtol=1e-5, atol=1e-5)
    x0_hat, eps_hat = predict_x0_and_eps(target, x_t, Tt, ac, kind)
    assert x0_hat.dtype == eps_hat.dtype == torch.float32
    # float32 rounding of x_t is amplified by 1/sqrt(ab) (<= 160) in x0 and 1/sqrt(1-ab) in eps
    np.testing.assert_allclose(x0_hat.numpy(), x0, atol=2e-3)
    np.testing.assert_allclose(eps_hat.numpy(), noise, atol=2e-3)


@settings(max_examples=60, deadline=None)
@given(
    kind=st.sampled_from(PREDICTION_TYPES),
    t=st.integers(0, 999),
    x0=st.floats(-12, 12),
    eps=st.floats(-5, 5),
)
def test_round_trip_property(kind, t, x0, eps):
    """(x0, eps) -> (x_t, target) -> (x0, eps) for any timestep and values (float64)."""
    ac = torch.from_numpy(AC)
    X0 = torch.tensor([[x0]], dtype=torch.float64)
    E = torch.tensor([[eps]], dtype=torch.float64)
    tt = torch.tensor([t])
    x_t = add_noise(X0, E, tt, ac)
    x0_hat, eps_hat = predict_x0_and_eps(training_target(X0, E, tt, ac, kind), x_t, tt, ac, kind)
    assert abs(x0_hat.item() - x0) < 1e-9 and abs(eps_hat.item() - eps) < 1e-9


def test_model_output_in_other_dtype_and_3d_data():
    ac = torch.from_numpy(AC)
    x_t = torch.randn(4, 3, 5)
    out = torch.randn(4, 3, 5).to(torch.bfloat16)
    t = torch.tensor([0, 10, 500, 999])
    x0, eps = predict_x0_and_eps(out, x_t, t, ac, "epsilon")
    assert x0.dtype == torch.float32 and x0.shape == (4, 3, 5)
    ab = ac[t].float().reshape(4, 1, 1)
    assert torch.allclose(x0, (x_t - (1 - ab).sqrt() * out.float()) / ab.sqrt(), atol=1e-5)


def test_errors():
    ac = torch.from_numpy(AC)
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="prediction_type"):
        training_target(x, x, torch.tensor([0, 1]), ac, "eps")
    with pytest.raises(ValueError, match="prediction_type"):
        predict_x0_and_eps(x, x, torch.tensor([0, 1]), ac, "x0")
    with pytest.raises(ValueError, match=r"timesteps of shape \[2\]"):
        add_noise(x, x, torch.tensor([0, 1, 2]), ac)
