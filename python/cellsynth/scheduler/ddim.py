"""DDIM (Song et al. 2021, "Denoising Diffusion Implicit Models"), diffusers' names and semantics.

Notation: ``ab_t = alphas_cumprod[t]``; the sampler visits the descending timesteps
``t_0 > t_1 > ... > t_{S-1}`` of :meth:`DDIMScheduler.set_timesteps`, and the previous timestep of
``t_i`` is ``t_{i+1}``, or -1 after the last step, where ``ab_prev`` is 1 (``set_alpha_to_one``)
or ``ab_0``. From the model output at (x_t, t)::

    epsilon:       x0 = (x_t - sqrt(1 - ab) out) / sqrt(ab) eps = out
    sample:        x0 = out                                 eps = (x_t - sqrt(ab) x0) / sqrt(1 - ab)
    v_prediction:  x0 = sqrt(ab) x_t - sqrt(1 - ab) out     eps = sqrt(ab) out + sqrt(1 - ab) x_t

x0 is optionally clipped to ``[-clip_sample_range, clip_sample_range]`` or dynamically thresholded
(Saharia et al. 2022; per cell), and then (eq. 12 and 16 of the paper, ``ab' = ab_prev``)::

    sigma  = eta * sqrt((1 - ab') / (1 - ab)) * sqrt(1 - ab / ab')
    x_prev = sqrt(ab') * x0 + sqrt(1 - ab' - sigma^2) * eps + sigma * z

``eta = 0`` is deterministic DDIM, ``eta = 1`` is ancestral DDPM on the same timesteps. ``z`` is
the counter-based Philox noise keyed by (seed, global cell index, step index, gene), or the
caller's ``variance_noise``. With ``truncate_final`` the last step also sets values below
``truncate_threshold`` to 0 (the inverse of zero-negation: silent genes live at negative values in
model space).

Differences from diffusers' ``DDIMScheduler``: ``clip_sample`` defaults to False (expression is not
bounded in [-1, 1]); the previous timestep is looked up in the list (diffusers computes
``t - T // S``, which is wrong for 'linspace' and for 'trailing' when T % S != 0;
``bug_compatible_prev_timestep=True`` reproduces it); ``timestep_spacing`` also takes 'quadratic';
``set_timesteps`` also takes a custom list; ``step`` returns the previous sample itself and draws
keyed noise instead of taking a ``generator``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from cellsynth import _core
from cellsynth.scheduler._base import ListedTimestepsScheduler, refuse_generator
from cellsynth.scheduler.arrays import run_step
from cellsynth.scheduler.options import TIMESTEP_SPACINGS, check_bool, check_choice, check_int

__all__ = ["DDIMScheduler"]


class DDIMScheduler(ListedTimestepsScheduler):
    """Denoising diffusion implicit models: deterministic (eta = 0) or stochastic sampling.

    Parameters
    ----------
    num_train_timesteps : int
        T, the number of training timesteps.
    beta_start, beta_end : float
        End points of 'linear' and 'scaled_linear' betas.
    beta_schedule : {'linear', 'scaled_linear', 'squaredcos_cap_v2'}
        The training noise schedule (ignored when ``trained_betas`` is given).
    trained_betas : array-like of float, optional
        Explicit betas [T].
    clip_sample : bool
        Clamp x0 to ``[-clip_sample_range, clip_sample_range]``. Default False (unlike diffusers).
    set_alpha_to_one : bool
        ``ab_prev`` after the last step: 1, or ``alphas_cumprod[0]`` when False.
    steps_offset : int
        Added to the 'leading' timesteps.
    prediction_type : {'epsilon', 'sample', 'v_prediction'}
        What the model outputs.
    thresholding : bool
        Dynamic thresholding of x0 (takes precedence over ``clip_sample``).
    dynamic_thresholding_ratio : float
        The quantile of |x0| (per cell) that sets the threshold s.
    clip_sample_range : float
        The clipping bound.
    sample_max_value : float
        Upper bound of s in dynamic thresholding.
    timestep_spacing : {'leading', 'trailing', 'linspace', 'quadratic'}
        How :meth:`set_timesteps` picks S of the T timesteps (see ``_core.timesteps``).
    rescale_betas_zero_snr : bool
        Rescale the betas to zero terminal SNR (Lin et al. 2023).
    bug_compatible_prev_timestep : bool
        Use diffusers' ``prev = t - T // S`` instead of the next timestep of the list.
    truncate_final : bool
        Zero-negation truncation fused into the last step.
    truncate_threshold : float
        Values below it become 0 on the last step (default 0: negatives).
    seed : int
        Key of the counter-based noise (0 <= seed < 2^64).
    """

    order = 1
    _config_names = (
        "num_train_timesteps",
        "beta_start",
        "beta_end",
        "beta_schedule",
        "trained_betas",
        "clip_sample",
        "set_alpha_to_one",
        "steps_offset",
        "prediction_type",
        "thresholding",
        "dynamic_thresholding_ratio",
        "clip_sample_range",
        "sample_max_value",
        "timestep_spacing",
        "rescale_betas_zero_snr",
        "bug_compatible_prev_timestep",
        "truncate_final",
        "truncate_threshold",
        "seed",
    )
    _diffusers_only: dict[str, Any] = {}

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: Any = None,
        clip_sample: bool = False,
        set_alpha_to_one: bool = True,
        steps_offset: int = 0,
        prediction_type: str = "epsilon",
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        clip_sample_range: float = 1.0,
        sample_max_value: float = 1.0,
        timestep_spacing: str = "leading",
        rescale_betas_zero_snr: bool = False,
        *,
        bug_compatible_prev_timestep: bool = False,
        truncate_final: bool = False,
        truncate_threshold: float = 0.0,
        seed: int = 0,
    ) -> None:
        self._init_schedule(
            num_train_timesteps,
            beta_start,
            beta_end,
            beta_schedule,
            trained_betas,
            rescale_betas_zero_snr,
        )
        self._init_x0_options(
            prediction_type,
            clip_sample,
            clip_sample_range,
            thresholding,
            dynamic_thresholding_ratio,
            sample_max_value,
        )
        check_bool("set_alpha_to_one", set_alpha_to_one)
        check_int("steps_offset", steps_offset)
        check_choice("timestep_spacing", timestep_spacing, TIMESTEP_SPACINGS)
        check_bool("bug_compatible_prev_timestep", bug_compatible_prev_timestep)
        self._init_extras(truncate_final, truncate_threshold, seed)
        values = dict(locals())
        values["num_train_timesteps"] = self.num_train_timesteps
        self._store_config(values)

        # ab_prev after the last step
        self.final_alpha_cumprod = 1.0 if set_alpha_to_one else float(self.alphas_cumprod[0])
        self.num_inference_steps: int | None = None
        self.timesteps = np.arange(self.num_train_timesteps, dtype=np.int64)[::-1].copy()

    # --- timesteps ------------------------------------------------------------------------

    # --- step -----------------------------------------------------------------------------

    def step(
        self,
        model_output: Any,
        timestep: Any,
        sample: Any,
        eta: float = 0.0,
        variance_noise: Any = None,
        *,
        use_clipped_model_output: bool = False,
        cell_offset: int = 0,
        out: Any = None,
        generator: Any = None,
    ) -> Any:
        """One DDIM step x_t -> x_prev (module docstring).

        Parameters
        ----------
        model_output : ndarray or Tensor [n_cells, n_genes] float32
            The model output at (sample, timestep).
        timestep : int
            The current timestep, one of :attr:`timesteps`.
        sample : ndarray or Tensor [n_cells, n_genes] float32
            x_t (C-contiguous; a CUDA tensor runs the CUDA kernel).
        eta : float
            Weight of the noise (0: deterministic DDIM, 1: DDPM).
        variance_noise : like sample, optional
            Standard normal noise to use instead of the keyed Philox noise.
        use_clipped_model_output : bool
            Re-derive eps from the clipped / thresholded x0 (as diffusers).
        cell_offset : int
            Global index of the first row (keys the noise; for chunked or sharded batches).
        out : like sample, optional
            Where to write x_prev (may be ``sample`` itself); a new array when None.
        generator : None
            Not supported: cellsynth's noise is keyed by ``seed`` (a ValueError if given).

        Returns
        -------
        x_prev, the same type as ``sample`` ([n_cells, n_genes] float32).
        """
        refuse_generator(generator)
        i = self.index_for_timestep(timestep)
        ab, ab_prev = self._alpha_prods(i)
        coefficients = _core.ddim_coefficients(ab, ab_prev, eta)
        last = i == len(self.timesteps) - 1
        options = self._step_options(
            i,
            cell_offset,
            bool(self._config["truncate_final"] and last),
            use_clipped_model_output=check_bool(
                "use_clipped_model_output", use_clipped_model_output
            ),
        )
        return run_step(
            coefficients,
            model_output,
            sample,
            out=out,
            variance_noise=variance_noise,
            options=options,
        )
