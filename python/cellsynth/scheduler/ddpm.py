"""DDPM ancestral sampling (Ho et al. 2020), diffusers' names and semantics.

Notation: ``ab_t = alphas_cumprod[t]``; the sampler visits the descending timesteps of
:meth:`DDPMScheduler.set_timesteps` (all T of them by default, or a strided sub-sequence), the
previous timestep of ``t_i`` is ``t_{i+1}`` (-1 after the last, where ``ab_prev = 1``). With x0
derived from the model output as in DDIM (prediction_type; optional clipping / dynamic
thresholding) and, on the strided chain, ``alpha = ab / ab'``, ``beta = 1 - alpha`` (eq. 6-7)::

    mean   = sqrt(ab') * beta / (1 - ab) * x0 + sqrt(alpha) * (1 - ab') / (1 - ab) * x_t
    var    = (1 - ab') / (1 - ab) * beta   ('fixed_small', beta-tilde)  or  beta  ('fixed_large')
    x_prev = mean + sqrt(var) * z          (z only where t > 0, as diffusers)

Given the same z this equals DDIM with eta = 1 ('fixed_small'). ``z`` is the Philox noise keyed by
(seed, global cell index, step index, gene), or the caller's ``variance_noise``.

Differences from diffusers' ``DDPMScheduler``: ``clip_sample`` defaults to False; only the
'fixed_small' and 'fixed_large' variances; ``timestep_spacing`` also takes 'quadratic'; a
``set_alpha_to_one`` option (default True, diffusers' behaviour); ``step`` takes
``variance_noise`` and returns the previous sample itself; diffusers clamps 'fixed_small' at 1e-20,
which adds 1e-10 * z on a last step with t > 0: we add nothing there.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from cellsynth import _core
from cellsynth.scheduler._base import ListedTimestepsScheduler, refuse_generator
from cellsynth.scheduler.arrays import run_step
from cellsynth.scheduler.options import TIMESTEP_SPACINGS, check_bool, check_choice, check_int

__all__ = ["DDPMScheduler"]

VARIANCE_TYPES = ("fixed_small", "fixed_large")


class DDPMScheduler(ListedTimestepsScheduler):
    """Denoising diffusion probabilistic models: ancestral sampling on T or S timesteps.

    Parameters
    ----------
    num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas
        The training schedule (see :class:`~cellsynth.scheduler.DDIMScheduler`).
    variance_type : {'fixed_small', 'fixed_large'}
        Posterior variance beta-tilde, or beta.
    clip_sample, prediction_type, thresholding, dynamic_thresholding_ratio, clip_sample_range,
    sample_max_value, timestep_spacing, steps_offset, rescale_betas_zero_snr
        As :class:`~cellsynth.scheduler.DDIMScheduler` (``clip_sample`` defaults to False).
    set_alpha_to_one : bool
        ``ab_prev`` after the last step: 1 (diffusers), or ``alphas_cumprod[0]`` when False.
    bug_compatible_prev_timestep, truncate_final, truncate_threshold, seed
        As :class:`~cellsynth.scheduler.DDIMScheduler` (diffusers' DDPM looks the previous
        timestep up in the list already; the switch exists for symmetry).
    """

    order = 1
    _config_names = (
        "num_train_timesteps",
        "beta_start",
        "beta_end",
        "beta_schedule",
        "trained_betas",
        "variance_type",
        "clip_sample",
        "prediction_type",
        "thresholding",
        "dynamic_thresholding_ratio",
        "clip_sample_range",
        "sample_max_value",
        "timestep_spacing",
        "steps_offset",
        "rescale_betas_zero_snr",
        "set_alpha_to_one",
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
        variance_type: str = "fixed_small",
        clip_sample: bool = False,
        prediction_type: str = "epsilon",
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        clip_sample_range: float = 1.0,
        sample_max_value: float = 1.0,
        timestep_spacing: str = "leading",
        steps_offset: int = 0,
        rescale_betas_zero_snr: bool = False,
        *,
        set_alpha_to_one: bool = True,
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
        check_choice("variance_type", variance_type, VARIANCE_TYPES)
        self._init_x0_options(
            prediction_type,
            clip_sample,
            clip_sample_range,
            thresholding,
            dynamic_thresholding_ratio,
            sample_max_value,
        )
        check_choice("timestep_spacing", timestep_spacing, TIMESTEP_SPACINGS)
        check_int("steps_offset", steps_offset)
        check_bool("set_alpha_to_one", set_alpha_to_one)
        check_bool("bug_compatible_prev_timestep", bug_compatible_prev_timestep)
        self._init_extras(truncate_final, truncate_threshold, seed)
        values = dict(locals())
        values["num_train_timesteps"] = self.num_train_timesteps
        self._store_config(values)

        self.variance_type = variance_type
        self.final_alpha_cumprod = 1.0 if set_alpha_to_one else float(self.alphas_cumprod[0])
        # Without set_timesteps, DDPM runs the full chain T-1, ..., 0 (as diffusers).
        self._use_timesteps(np.arange(self.num_train_timesteps, dtype=np.int64)[::-1].copy())
        self.num_inference_steps: int | None = None
        self.custom_timesteps = False

    # --- timesteps ------------------------------------------------------------------------

    def _adopt_timesteps(self, ts: np.ndarray, custom: bool) -> None:
        self.custom_timesteps = custom  # diffusers' flag: a custom list was given
        self._use_timesteps(ts)

    # --- step -----------------------------------------------------------------------------

    def step(
        self,
        model_output: Any,
        timestep: Any,
        sample: Any,
        variance_noise: Any = None,
        *,
        cell_offset: int = 0,
        out: Any = None,
        generator: Any = None,
    ) -> Any:
        """One ancestral DDPM step x_t -> x_prev (module docstring).

        Parameters
        ----------
        model_output : ndarray or Tensor [n_cells, n_genes] float32
            The model output at (sample, timestep).
        timestep : int
            The current timestep, one of :attr:`timesteps`.
        sample : ndarray or Tensor [n_cells, n_genes] float32
            x_t (C-contiguous; a CUDA tensor runs the CUDA kernel).
        variance_noise : like sample, optional
            Standard normal noise to use instead of the keyed Philox noise.
        cell_offset : int
            Global index of the first row (keys the noise).
        out : like sample, optional
            Where to write x_prev (may be ``sample`` itself); a new array when None.
        generator : None
            Not supported: the noise is keyed by ``seed`` (a ValueError if given).

        Returns
        -------
        x_prev, the same type as ``sample``.
        """
        refuse_generator(generator)
        i = self.index_for_timestep(timestep)
        ab, ab_prev = self._alpha_prods(i)
        t = int(self.timesteps[i])
        coefficients = _core.ddpm_coefficients(ab, ab_prev, t, self.variance_type)
        last = i == len(self.timesteps) - 1
        options = self._step_options(i, cell_offset, bool(self._config["truncate_final"] and last))
        return run_step(
            coefficients,
            model_output,
            sample,
            out=out,
            variance_noise=variance_noise,
            options=options,
        )
