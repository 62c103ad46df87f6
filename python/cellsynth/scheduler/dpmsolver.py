"""DPM-Solver++ multistep (Lu et al. 2022), diffusers' ``DPMSolverMultistepScheduler`` semantics.

A deterministic ODE solver in data (x0) space that reaches DDIM-50..100 quality in 10-20 steps.
Noise levels are diffusers' ``sigma_t = sqrt((1 - ab_t) / ab_t)`` at the chosen timesteps plus a
final 0 (``final_sigmas_type='zero'``) or ``sigma(0)`` ('sigma_min'); for each level
``alpha = 1 / sqrt(1 + sigma^2)``, ``s = sigma * alpha`` and ``lambda = log(alpha / s)``. Step i
goes from level i (s0) to level i + 1 (t) with ``h = lambda_t - lambda_s0``; x0 comes from the
model output as in DDIM (with ``alpha``, ``s`` in place of ``sqrt(ab)``, ``sqrt(1 - ab)``) and is
optionally thresholded::

    first order:   x_t = (s_t / s_s0) x - alpha_t (e^-h - 1) x0
    second order:  D1  = (x0 - x0_prev) / r0,   r0 = (lambda_s0 - lambda_s1) / h
                   midpoint: x_t = (s_t / s_s0) x - alpha_t (e^-h - 1) (x0 + D1 / 2)
                   heun:     x_t = (s_t / s_s0) x - alpha_t (e^-h - 1) x0
                                   + alpha_t ((e^-h - 1) / h + 1) D1

The first step is first order (there is no x0_prev yet), as is the last one when it lands on
sigma = 0 (or ``euler_at_final``, or ``lower_order_final`` with fewer than 15 steps). x0_prev is a
per-value history buffer the fused step reads and rewrites, so the scheduler is stateful like
diffusers': call :meth:`set_timesteps` before each batch (it clears the history) and step through
the timesteps in order.

The timesteps follow diffusers' ``set_timesteps``: 'linspace' (the default) spaces S + 1 points over
[0, T - 1] and drops the last, 'leading' / 'trailing' likewise (see ``_core.dpmsolver_timesteps``),
'quadratic' is the DDIM paper's; a custom list is allowed. With ``rescale_betas_zero_snr``
``alphas_cumprod[-1]`` is set to 2^-24 (as diffusers) so that sigma stays finite.

Supported: ``algorithm_type='dpmsolver++'``, ``solver_order`` 1 or 2, ``solver_type`` 'midpoint' or
'heun', no Karras / exponential / beta / Lu / flow sigmas. cellsynth extras: ``clip_sample``
(default False), ``truncate_final``, ``truncate_threshold``, ``seed`` (unused: no noise).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from cellsynth import _core
from cellsynth.scheduler._base import SchedulerBase
from cellsynth.scheduler.arrays import run_step, same_kind, zeros_like
from cellsynth.scheduler.options import (
    TIMESTEP_SPACINGS,
    as_timestep,
    check_bool,
    check_choice,
    check_int,
)

__all__ = ["DPMSolverMultistepScheduler"]


class DPMSolverMultistepScheduler(SchedulerBase):
    """DPM-Solver++(2M): a fast deterministic multistep solver.

    Parameters
    ----------
    num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas
        The training schedule (see :class:`~cellsynth.scheduler.DDIMScheduler`).
    solver_order : {1, 2}
        1 is DPM-Solver++(1S) (= DDIM with eta = 0 on the same timesteps), 2 is 2M.
    prediction_type, thresholding, dynamic_thresholding_ratio, sample_max_value
        As :class:`~cellsynth.scheduler.DDIMScheduler`.
    algorithm_type : {'dpmsolver++'}
        The only one implemented.
    solver_type : {'midpoint', 'heun'}
        The second-order update.
    lower_order_final : bool
        First order on the last step when there are fewer than 15 steps.
    euler_at_final : bool
        First order on the last step always.
    final_sigmas_type : {'zero', 'sigma_min'}
        The noise level after the last step: 0 (lands on x0) or sigma at t = 0.
    timestep_spacing : {'linspace', 'leading', 'trailing', 'quadratic'}
        diffusers' DPM-Solver timesteps (default 'linspace').
    steps_offset : int
        Added to the 'leading' timesteps.
    rescale_betas_zero_snr : bool
        Zero-terminal-SNR betas (``alphas_cumprod[-1]`` becomes 2^-24).
    clip_sample, clip_sample_range : bool, float
        Clamp x0 (cellsynth extra; default off).
    truncate_final, truncate_threshold : bool, float
        Zero-negation truncation fused into the last step.
    seed : int
        Kept for a uniform interface (init_noise uses it; the solver adds no noise).
    """

    _config_names = (
        "num_train_timesteps",
        "beta_start",
        "beta_end",
        "beta_schedule",
        "trained_betas",
        "solver_order",
        "prediction_type",
        "thresholding",
        "dynamic_thresholding_ratio",
        "sample_max_value",
        "algorithm_type",
        "solver_type",
        "lower_order_final",
        "euler_at_final",
        "final_sigmas_type",
        "timestep_spacing",
        "steps_offset",
        "rescale_betas_zero_snr",
        "clip_sample",
        "clip_sample_range",
        "truncate_final",
        "truncate_threshold",
        "seed",
    )
    # diffusers options not implemented here: accepted by from_config at their default only.
    _diffusers_only: dict[str, Any] = {
        "use_karras_sigmas": False,
        "use_exponential_sigmas": False,
        "use_beta_sigmas": False,
        "use_lu_lambdas": False,
        "use_flow_sigmas": False,
        "flow_shift": 1.0,
        "lambda_min_clipped": -float("inf"),
        "variance_type": None,
        "use_dynamic_shifting": False,
        "time_shift_type": "exponential",
    }

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: Any = None,
        solver_order: int = 2,
        prediction_type: str = "epsilon",
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        sample_max_value: float = 1.0,
        algorithm_type: str = "dpmsolver++",
        solver_type: str = "midpoint",
        lower_order_final: bool = True,
        euler_at_final: bool = False,
        final_sigmas_type: str = "zero",
        timestep_spacing: str = "linspace",
        steps_offset: int = 0,
        rescale_betas_zero_snr: bool = False,
        *,
        clip_sample: bool = False,
        clip_sample_range: float = 1.0,
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
        if rescale_betas_zero_snr:
            # As diffusers: keep the last noise level finite (sigma = sqrt((1 - ab) / ab)).
            self.alphas_cumprod = self.alphas_cumprod.copy()
            self.alphas_cumprod[-1] = 2.0**-24
        check_int("solver_order", solver_order, 1, 2)
        self._init_x0_options(
            prediction_type,
            clip_sample,
            clip_sample_range,
            thresholding,
            dynamic_thresholding_ratio,
            sample_max_value,
        )
        check_choice("algorithm_type", algorithm_type, ("dpmsolver++",))
        check_choice("solver_type", solver_type, ("midpoint", "heun"))
        check_bool("lower_order_final", lower_order_final)
        check_bool("euler_at_final", euler_at_final)
        check_choice("final_sigmas_type", final_sigmas_type, ("zero", "sigma_min"))
        check_choice("timestep_spacing", timestep_spacing, TIMESTEP_SPACINGS)
        check_int("steps_offset", steps_offset)
        self._init_extras(truncate_final, truncate_threshold, seed)
        values = dict(locals())
        values["num_train_timesteps"] = self.num_train_timesteps
        self._store_config(values)

        self.order = int(solver_order)
        ac = self.alphas_cumprod
        self._all_sigmas = np.sqrt((1.0 - ac) / ac)  # float64 [T]
        self.num_inference_steps: int | None = None
        self.timesteps = np.arange(self.num_train_timesteps, dtype=np.int64)[::-1].copy()
        self.sigmas: np.ndarray | None = None
        self._reset_state()

    def _reset_state(self) -> None:
        self.lower_order_nums = 0
        self._step_index: int | None = None
        self._history: Any = None

    def use_history_buffer(self, buffer: Any) -> None:
        """Keep the second-order history in ``buffer`` (same shape, type and device as the batch).

        A CUDA-graph capture must not allocate, so the TensorRT backend hands in a buffer it owns.
        """
        self._history = buffer

    @property
    def step_index(self) -> int | None:
        """The index of the next step in :attr:`timesteps` (None before the first step)."""
        return self._step_index

    # --- timesteps ------------------------------------------------------------------------

    _spacing_fn = staticmethod(_core.dpmsolver_timesteps)  # diffusers' DPM-Solver lists

    def _adopt_timesteps(self, ts: np.ndarray, custom: bool) -> None:
        """The timesteps and their noise levels; the solver's history is cleared."""
        if self._config["final_sigmas_type"] == "zero":
            last = 0.0
        else:
            last = float(np.sqrt((1.0 - self.alphas_cumprod[0]) / self.alphas_cumprod[0]))
        self.timesteps = ts
        self.sigmas = np.concatenate([self._all_sigmas[ts], [last]])  # float64 [S + 1]
        self._reset_state()

    def index_for_timestep(self, timestep: Any) -> int:
        """Where the first step starts: 0 for ``timesteps[0]``, else diffusers' rule (the position
        of ``timestep``, the second one when it repeats, the last step when absent).

        diffusers applies its rule to ``timesteps[0]`` too, which skips a step (and runs past the
        end) when the list starts with a repeated timestep (e.g. 'leading' with S = T).
        """
        t = as_timestep(timestep)
        if not 0 <= t < self.num_train_timesteps:  # diffusers' rule is for in-range timesteps
            raise ValueError(
                f"timestep {t} is outside the training timesteps 0..{self.num_train_timesteps - 1}"
            )
        if len(self.timesteps) and t == int(self.timesteps[0]):
            return 0
        where = np.flatnonzero(self.timesteps == t)
        if len(where) == 0:
            return len(self.timesteps) - 1
        return int(where[1] if len(where) > 1 else where[0])

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
        """One multistep DPM-Solver++ step (module docstring); steps must come in order.

        Parameters
        ----------
        model_output : ndarray or Tensor [n_cells, n_genes] float32
            The model output at (sample, timestep).
        timestep : int
            The current timestep (locates the first step; later steps follow the counter).
        sample : ndarray or Tensor [n_cells, n_genes] float32
            x_t (C-contiguous; a CUDA tensor runs the CUDA kernel).
        variance_noise : ignored
            Accepted for diffusers compatibility (the solver is deterministic).
        cell_offset : int
            Global index of the first row (validated; no noise is drawn).
        out : like sample, optional
            Where to write x_prev (may be ``sample`` itself); a new array when None.
        generator : ignored
            Accepted for diffusers compatibility.

        Returns
        -------
        x_prev, the same type as ``sample``.
        """
        if self.num_inference_steps is None or self.sigmas is None:
            raise ValueError(
                "the number of inference steps is not set: call set_timesteps(...) before step()"
            )
        if self._step_index is None:
            self._step_index = self.index_for_timestep(timestep)
        i = self._step_index
        S = len(self.timesteps)
        if i >= S:
            raise ValueError(
                f"all {S} steps are done: call set_timesteps(...) again before the next batch"
            )
        cfg = self._config
        order2 = cfg["solver_order"] == 2
        lower_order_final = i == S - 1 and (
            cfg["euler_at_final"]
            or (cfg["lower_order_final"] and S < 15)
            or cfg["final_sigmas_type"] == "zero"
        )
        order = 1 if (not order2 or self.lower_order_nums < 1 or lower_order_final) else 2
        sigma_s1 = float(self.sigmas[i - 1]) if order == 2 else 0.0
        coefficients = _core.dpmsolver_coefficients(
            sigma_s1, float(self.sigmas[i]), float(self.sigmas[i + 1]), order, cfg["solver_type"]
        )
        history = None
        if order2:
            if self._history is None or not same_kind(self._history, sample):
                if order == 2:
                    raise ValueError(
                        "the batch changed shape, type or device between steps: call "
                        "set_timesteps(...) before each batch"
                    )
                self._history = zeros_like(sample)
            history = self._history
        options = self._step_options(0, cell_offset, bool(cfg["truncate_final"] and i == S - 1))
        result = run_step(
            coefficients, model_output, sample, out=out, history=history, options=options
        )
        if self.lower_order_nums < cfg["solver_order"]:
            self.lower_order_nums += 1
        self._step_index = i + 1
        return result
