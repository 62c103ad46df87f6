"""DDPM forward-process math in torch: noising, training targets, and x0/epsilon recovery.

With ``ab = alphas_cumprod[t]`` (written alpha-bar_t):

* forward noising:    ``x_t = sqrt(ab) * x0 + sqrt(1 - ab) * eps``
* prediction targets: epsilon -> ``eps``; sample -> ``x0``;
  v_prediction -> ``v = sqrt(ab) * eps - sqrt(1 - ab) * x0``
* inverses, given x_t and the model output:
  epsilon: ``x0 = (x_t - sqrt(1 - ab) * eps) / sqrt(ab)``;
  sample:  ``eps = (x_t - sqrt(ab) * x0) / sqrt(1 - ab)``;
  v:       ``x0 = sqrt(ab) * x_t - sqrt(1 - ab) * v``, ``eps = sqrt(ab) * v + sqrt(1 - ab) * x_t``.

The per-timestep coefficients are computed in the dtype of ``alphas_cumprod`` (float64 is fine and
recommended) and then cast to the dtype of the data, so results have the data's dtype.
"""

from __future__ import annotations

import torch

from cellsynth.scheduler import PREDICTION_TYPES

__all__ = ["PREDICTION_TYPES", "add_noise", "predict_x0_and_eps", "training_target"]


def _check_prediction_type(prediction_type: str) -> None:
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(
            f"unknown prediction_type {prediction_type!r}; expected one of {PREDICTION_TYPES}"
        )


def _coefficients(
    alphas_cumprod: torch.Tensor, t: torch.Tensor, like: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``sqrt(ab_t)`` and ``sqrt(1 - ab_t)`` shaped [B, 1, ...] to broadcast against ``like``."""
    t = torch.as_tensor(t, device=alphas_cumprod.device).long()
    if t.ndim != 1 or t.shape[0] != like.shape[0]:
        raise ValueError(f"expected timesteps of shape [{like.shape[0]}], got {tuple(t.shape)}")
    ab = alphas_cumprod[t]  # [B], dtype of alphas_cumprod
    shape = (-1,) + (1,) * (like.ndim - 1)
    sqrt_ab = ab.sqrt().to(like.device, like.dtype).reshape(shape)  # [B, 1, ...]
    sqrt_1m_ab = (1 - ab).sqrt().to(like.device, like.dtype).reshape(shape)  # [B, 1, ...]
    return sqrt_ab, sqrt_1m_ab


def add_noise(
    x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor, alphas_cumprod: torch.Tensor
) -> torch.Tensor:
    """Sample q(x_t | x0): ``sqrt(ab_t) * x0 + sqrt(1 - ab_t) * noise``.

    Parameters
    ----------
    x0, noise : Tensor [B, ...]
        Clean data and standard normal noise.
    t : LongTensor [B]
        Timesteps in [0, T).
    alphas_cumprod : Tensor [T]
        Cumulative products of (1 - beta).

    Returns
    -------
    Tensor [B, ...] in the dtype of ``x0``.
    """
    sqrt_ab, sqrt_1m_ab = _coefficients(alphas_cumprod, t, x0)
    return sqrt_ab * x0 + sqrt_1m_ab * noise


def training_target(
    x0: torch.Tensor,
    noise: torch.Tensor,
    t: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    prediction_type: str,
) -> torch.Tensor:
    """What the network should output for ``prediction_type`` (see the module docstring).

    Parameters
    ----------
    x0, noise : Tensor [B, ...]
    t : LongTensor [B]
    alphas_cumprod : Tensor [T]
    prediction_type : {"epsilon", "sample", "v_prediction"}

    Returns
    -------
    Tensor [B, ...] in the dtype of ``x0``.
    """
    _check_prediction_type(prediction_type)
    if prediction_type == "epsilon":
        return noise.to(x0.dtype)
    if prediction_type == "sample":
        return x0
    sqrt_ab, sqrt_1m_ab = _coefficients(alphas_cumprod, t, x0)
    return sqrt_ab * noise - sqrt_1m_ab * x0


def predict_x0_and_eps(
    model_output: torch.Tensor,
    x_t: torch.Tensor,
    t: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    prediction_type: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Recover the predicted clean sample and noise from a model output at x_t.

    Parameters
    ----------
    model_output : Tensor [B, ...]
        Network output, interpreted according to ``prediction_type``.
    x_t : Tensor [B, ...]
        The noisy input the network saw.
    t : LongTensor [B]
    alphas_cumprod : Tensor [T]
    prediction_type : {"epsilon", "sample", "v_prediction"}

    Returns
    -------
    (x0, eps) : two Tensors [B, ...] in the dtype of ``x_t``.
    """
    _check_prediction_type(prediction_type)
    sqrt_ab, sqrt_1m_ab = _coefficients(alphas_cumprod, t, x_t)
    out = model_output.to(x_t.dtype)
    if prediction_type == "epsilon":
        eps = out
        x0 = (x_t - sqrt_1m_ab * eps) / sqrt_ab
    elif prediction_type == "sample":
        x0 = out
        eps = (x_t - sqrt_ab * x0) / sqrt_1m_ab
    else:
        x0 = sqrt_ab * x_t - sqrt_1m_ab * out
        eps = sqrt_ab * out + sqrt_1m_ab * x_t
    return x0, eps
