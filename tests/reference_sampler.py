"""Reference DDIM / DDPM samplers in plain PyTorch (the correctness oracle for the C++ scheduler).

Notation: ``ab_t = alphas_cumprod[t]``; the sampler visits a descending sub-sequence of training
timesteps ``t_0 > t_1 > ... > t_{S-1}`` (see :func:`timesteps_for`). The previous timestep of
``t_i`` is ``t_{i+1}``, looked up in that list (not ``t - T // S`` as diffusers' DDIMScheduler
computes it, which is wrong for 'linspace' and for 'trailing' when T % S != 0); after the last
step it is -1, where ``ab_prev = 1`` if ``set_alpha_to_one`` else ``alphas_cumprod[0]``.

From the model output at (x_t, t) both samplers first form the predicted clean sample x0 and noise
eps (:func:`~cellsynth.training.diffusion.predict_x0_and_eps`). Then, with ``ab = ab_t`` and
``ab' = ab_prev``:

DDIM (Song et al. 2021, eq. 12)::

    sigma  = eta * sqrt((1 - ab') / (1 - ab)) * sqrt(1 - ab / ab')
    x_prev = sqrt(ab') * x0 + sqrt(1 - ab' - sigma^2) * eps + sigma * z

DDPM (Ho et al. 2020, eq. 6-7, on the strided schedule ``alpha = ab / ab'``, ``beta = 1 - alpha``)::

    mean   = sqrt(ab') * beta / (1 - ab) * x0 + sqrt(alpha) * (1 - ab') / (1 - ab) * x_t
    var    = (1 - ab') / (1 - ab) * beta          # 'fixed_small' (beta-tilde)
    x_prev = mean + sqrt(var) * z                 # no noise drawn where var == 0

DDIM with eta = 1 and DDPM are the same process (given the same z), which the tests check.
``z`` is standard normal noise from ``noise_fn(step_index, shape)`` or ``generator``.

All schedule coefficients are Python floats computed in float64 from the NumPy ``alphas_cumprod``;
the state x keeps the dtype of ``initial_noise`` (float32 by default; pass float64 noise for a
float64 oracle run) and the model is fed x cast to its own parameter dtype.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from cellsynth.training.diffusion import PREDICTION_TYPES, predict_x0_and_eps

__all__ = [
    "SCHEDULERS",
    "TIMESTEP_SPACINGS",
    "ddim_sigma",
    "ddim_step",
    "ddpm_step",
    "ddpm_variance",
    "previous_alpha_cumprod",
    "sample",
    "timesteps_for",
]

SCHEDULERS = ("ddim", "ddpm")
TIMESTEP_SPACINGS = ("leading", "trailing", "linspace")

NoiseFn = Callable[[int, tuple[int, ...]], torch.Tensor]


def timesteps_for(
    num_train_timesteps: int, steps: int, spacing: str = "leading", steps_offset: int = 0
) -> np.ndarray:
    """The descending timesteps a sampler visits, exactly as diffusers' ``set_timesteps``.

    Parameters
    ----------
    num_train_timesteps : int
        T.
    steps : int
        S, the number of sampling steps, 1 <= S <= T.
    spacing : {"leading", "trailing", "linspace"}
        leading:  ``arange(S) * (T // S) + steps_offset``, reversed;
        trailing: ``round(arange(T, 0, -T / S)) - 1``;
        linspace: ``round(linspace(0, T - 1, S))``, reversed.
    steps_offset : int
        Added to the 'leading' timesteps only (as in diffusers).

    Returns
    -------
    ndarray [S] int64, descending.
    """
    T, S = int(num_train_timesteps), int(steps)
    if T < 1:
        raise ValueError(f"num_train_timesteps must be >= 1, got {num_train_timesteps}")
    if not 1 <= S <= T:
        raise ValueError(f"steps must be between 1 and num_train_timesteps={T}, got {steps}")
    if spacing == "leading":
        ts = (np.arange(0, S) * (T // S)).round()[::-1].astype(np.int64) + int(steps_offset)
    elif spacing == "trailing":
        ts = np.round(np.arange(T, 0, -T / S)).astype(np.int64) - 1
    elif spacing == "linspace":
        ts = np.linspace(0, T - 1, S).round()[::-1].astype(np.int64)
    else:
        raise ValueError(
            f"unknown timestep spacing {spacing!r}; expected one of {TIMESTEP_SPACINGS}"
        )
    if ts.min() < 0 or ts.max() >= T:
        raise ValueError(
            f"timesteps {ts.min()}..{ts.max()} fall outside [0, {T}) (steps_offset={steps_offset})"
        )
    return np.ascontiguousarray(ts)


def previous_alpha_cumprod(
    alphas_cumprod: np.ndarray, timesteps: np.ndarray, index: int, set_alpha_to_one: bool = True
) -> float:
    """``ab_prev`` for step ``index``: ``alphas_cumprod[timesteps[index + 1]]``, or the final value.

    After the last step (index = S - 1) the previous timestep is -1 and ``ab_prev`` is 1 when
    ``set_alpha_to_one`` else ``alphas_cumprod[0]``.
    """
    if index + 1 < len(timesteps):
        return float(alphas_cumprod[timesteps[index + 1]])
    return 1.0 if set_alpha_to_one else float(alphas_cumprod[0])


def ddim_sigma(ab: float, ab_prev: float, eta: float) -> float:
    """DDIM noise scale ``eta * sqrt((1 - ab') / (1 - ab)) * sqrt(1 - ab / ab')``."""
    return eta * math.sqrt((1.0 - ab_prev) / (1.0 - ab)) * math.sqrt(1.0 - ab / ab_prev)


def ddpm_variance(ab: float, ab_prev: float) -> float:
    """DDPM 'fixed_small' posterior variance ``(1 - ab') / (1 - ab) * (1 - ab / ab')``."""
    return (1.0 - ab_prev) / (1.0 - ab) * (1.0 - ab / ab_prev)


def ddim_step(
    x0: torch.Tensor,
    eps: torch.Tensor,
    ab: float,
    ab_prev: float,
    eta: float = 0.0,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """One DDIM update ``x_t -> x_prev`` from the predicted x0 and eps (module docstring).

    ``noise`` (standard normal, like x0) is required when ``eta > 0``.
    """
    sigma = ddim_sigma(ab, ab_prev, eta)
    direction = math.sqrt(max(0.0, 1.0 - ab_prev - sigma**2))
    x_prev = math.sqrt(ab_prev) * x0 + direction * eps
    if sigma > 0:
        if noise is None:
            raise ValueError("ddim_step with eta > 0 needs noise")
        x_prev = x_prev + sigma * noise
    return x_prev


def ddpm_step(
    x0: torch.Tensor,
    x_t: torch.Tensor,
    ab: float,
    ab_prev: float,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """One ancestral DDPM update: posterior mean of q(x_prev | x_t, x0) plus beta-tilde noise.

    ``noise`` (standard normal) is required unless the posterior variance is 0.
    """
    alpha = ab / ab_prev  # strided single-step alpha
    beta = 1.0 - alpha
    coef_x0 = math.sqrt(ab_prev) * beta / (1.0 - ab)
    coef_xt = math.sqrt(alpha) * (1.0 - ab_prev) / (1.0 - ab)
    variance = (1.0 - ab_prev) / (1.0 - ab) * beta  # = ddpm_variance(ab, ab_prev)
    x_prev = coef_x0 * x0 + coef_xt * x_t
    if variance > 0:
        if noise is None:
            raise ValueError("ddpm_step needs noise where the posterior variance is > 0")
        x_prev = x_prev + math.sqrt(variance) * noise
    return x_prev


def _model_dtype(model: nn.Module, default: torch.dtype) -> torch.dtype:
    for p in model.parameters():
        if p.dtype.is_floating_point:
            return p.dtype
    return default


def _model_device(model: nn.Module, labels: torch.Tensor) -> torch.device:
    for p in model.parameters():
        return p.device
    return labels.device


@torch.no_grad()
def sample(
    model: nn.Module,
    alphas_cumprod: np.ndarray,
    labels: torch.Tensor,
    *,
    steps: int = 50,
    scheduler: str = "ddim",
    eta: float = 0.0,
    guidance_scale: float = 1.0,
    prediction_type: str = "epsilon",
    timestep_spacing: str = "leading",
    steps_offset: int = 0,
    set_alpha_to_one: bool = True,
    generator: torch.Generator | None = None,
    initial_noise: torch.Tensor | None = None,
    noise_fn: NoiseFn | None = None,
    truncate: bool = True,
    progress: bool = False,
) -> torch.Tensor:
    """Generate cells by reverse diffusion from pure noise.

    Parameters
    ----------
    model : nn.Module
        Denoiser ``model(x [B, G], t LongTensor [B], labels LongTensor [B, K]) -> [B, G]`` with
        attributes ``n_genes`` and ``null_labels(batch_size, device)`` (a :class:`DiT`); called in
        eval mode (its mode is restored afterwards).
    alphas_cumprod : ndarray [T]
        The training schedule's cumulative alphas (float64).
    labels : LongTensor [B, K]
        Conditions of the B cells to generate (K = 0 for an unconditional model).
    steps : int
        Number of denoising steps S (S = T with ``scheduler="ddpm"`` is the full DDPM).
    scheduler : {"ddim", "ddpm"}
        Update rule (module docstring).
    eta : float
        DDIM stochasticity (0 = deterministic DDIM, 1 = DDPM); only for "ddim".
    guidance_scale : float
        Classifier-free guidance g: ``uncond + g * (cond - uncond)``; 1 = plain conditional.
    prediction_type : {"epsilon", "sample", "v_prediction"}
        What the model outputs.
    timestep_spacing, steps_offset : see :func:`timesteps_for`.
    set_alpha_to_one : bool
        ``ab_prev`` after the last step: 1, or ``alphas_cumprod[0]`` when False.
    generator : torch.Generator, optional
        Source of the initial noise and the per-step noise (drawn on the generator's device).
    initial_noise : Tensor [B, G], optional
        x_T; its dtype sets the working dtype. Drawn from ``generator`` (float32) when None.
    noise_fn : callable, optional
        ``noise_fn(step_index, shape) -> Tensor`` supplying the standard normal noise z of step
        ``step_index`` (called only for steps that add noise); overrides ``generator`` for them.
    truncate : bool
        Set negative values to 0 at the end (the inverse of zero-negation: silent genes live at
        -10 in model space).
    progress : bool
        Show a tqdm bar over the steps.

    Returns
    -------
    Tensor [B, G] on the model's device, in the working dtype.
    """
    if scheduler not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {scheduler!r}; expected one of {SCHEDULERS}")
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(
            f"unknown prediction_type {prediction_type!r}; expected one of {PREDICTION_TYPES}"
        )
    if eta < 0:
        raise ValueError(f"eta must be >= 0, got {eta}")
    if scheduler == "ddpm" and eta != 0:
        raise ValueError("eta applies to scheduler='ddim' only (DDPM is always fully stochastic)")
    ac = np.asarray(alphas_cumprod, dtype=np.float64)
    if ac.ndim != 1 or ac.size == 0 or not np.all((ac > 0) & (ac <= 1)):
        raise ValueError("alphas_cumprod must be a non-empty 1-D array of values in (0, 1]")
    if labels.ndim != 2:
        raise ValueError(
            f"labels must have shape [batch, label columns], got {tuple(labels.shape)}"
        )
    B, K = labels.shape
    guided = guidance_scale != 1.0
    if guided and K == 0:
        raise ValueError("classifier-free guidance needs a class-conditional model (K > 0 labels)")
    timesteps = timesteps_for(len(ac), steps, timestep_spacing, steps_offset)

    device = _model_device(model, labels)
    model_dtype = _model_dtype(model, torch.float32)
    labels = labels.to(device=device, dtype=torch.long)
    G = int(model.n_genes)

    def draw(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        gen_device = generator.device if generator is not None else device
        z = torch.randn(shape, generator=generator, device=gen_device, dtype=dtype)
        return z.to(device)

    if initial_noise is None:
        x = draw((B, G), torch.float32)  # [B, G]
    else:
        if tuple(initial_noise.shape) != (B, G):
            raise ValueError(
                f"initial_noise must have shape {(B, G)}, got {tuple(initial_noise.shape)}"
            )
        x = initial_noise.to(device).clone()  # [B, G]
    if guided:
        labels_in = torch.cat([labels, model.null_labels(B, device=device)])  # [2B, K]
    else:
        labels_in = labels  # [B, K]
    # [T] for predict_x0_and_eps: float64 on the model's device (MPS has no float64: CPU there)
    ac_torch = torch.from_numpy(ac).to(device if device.type != "mps" else "cpu")

    was_training = model.training
    model.eval()
    iterator = enumerate(timesteps.tolist())
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(iterator, total=len(timesteps), desc=f"{scheduler} sampling", unit="step")
    try:
        for i, t in iterator:
            t_batch = torch.full((B,), t, dtype=torch.long, device=device)  # [B]
            if guided:
                x_in = torch.cat([x, x]).to(model_dtype)  # [2B, G]
                out = model(x_in, torch.cat([t_batch, t_batch]), labels_in)  # [2B, G]
                cond, uncond = out.to(x.dtype).chunk(2)  # each [B, G]
                out = uncond + guidance_scale * (cond - uncond)  # [B, G]
            else:
                out = model(x.to(model_dtype), t_batch, labels_in).to(x.dtype)  # [B, G]
            x0, eps = predict_x0_and_eps(out, x, t_batch, ac_torch, prediction_type)
            ab = float(ac[t])
            ab_prev = previous_alpha_cumprod(ac, timesteps, i, set_alpha_to_one)
            if scheduler == "ddim":
                needs_noise = ddim_sigma(ab, ab_prev, eta) > 0
            else:
                needs_noise = ddpm_variance(ab, ab_prev) > 0
            z = None
            if needs_noise:
                z = noise_fn(i, (B, G)) if noise_fn is not None else draw((B, G), x.dtype)
                z = z.to(device=device, dtype=x.dtype)  # [B, G]
            if scheduler == "ddim":
                x = ddim_step(x0, eps, ab, ab_prev, eta, z)  # [B, G]
            else:
                x = ddpm_step(x0, x, ab, ab_prev, z)  # [B, G]
    finally:
        model.train(was_training)
    if truncate:
        x = x.clamp_min(0)  # [B, G]
    return x
