"""Noise schedules (betas, cumulative alphas) computed by the compiled core.

The names follow diffusers' scheduler configs, so a bundle's ``schedule`` block reads the same as a
``DDIMScheduler`` config: ``num_train_timesteps``, ``beta_start``, ``beta_end``, ``beta_schedule``,
``trained_betas``, ``rescale_betas_zero_snr``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from cellsynth import _core

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")


# The entries of a schedule (a bundle's "schedule" block, diffusers' scheduler config keys).
SCHEDULE_KEYS = (
    "num_train_timesteps",
    "beta_start",
    "beta_end",
    "beta_schedule",
    "trained_betas",
    "rescale_betas_zero_snr",
)


@dataclass(frozen=True)
class NoiseSchedule:
    """The forward-noising schedule of a DDPM.

    Attributes
    ----------
    num_train_timesteps : int
        T, the number of training timesteps.
    beta_start, beta_end : float
        End points for 'linear' and 'scaled_linear'.
    beta_schedule : str
        'linear', 'scaled_linear' or 'squaredcos_cap_v2'; ignored when ``trained_betas`` is given.
    trained_betas : tuple of float or None
        Explicit betas [T]; overrides the named schedule.
    rescale_betas_zero_snr : bool
        Rescale the betas to zero terminal SNR (Lin et al. 2023, Algorithm 1; diffusers'
        ``rescale_zero_terminal_snr``): ``sqrt(alphas_cumprod)`` is shifted and scaled so that its
        first value is kept and its last becomes 0 (the last beta becomes 1). A model trained on
        such a schedule sees pure noise at t = T - 1; it then needs 'v_prediction' or 'sample'
        (epsilon cannot recover x0 there).
    """

    num_train_timesteps: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02
    beta_schedule: str = "linear"
    trained_betas: tuple[float, ...] | None = field(default=None)
    rescale_betas_zero_snr: bool = False

    def __post_init__(self) -> None:
        if self.trained_betas is not None:
            betas = _core.validate_betas(np.asarray(self.trained_betas, dtype=np.float64))
            object.__setattr__(self, "trained_betas", tuple(float(b) for b in betas))
            object.__setattr__(self, "num_train_timesteps", len(betas))
        elif self.beta_schedule not in BETA_SCHEDULES:
            raise ValueError(
                f"unknown beta_schedule {self.beta_schedule!r}; expected one of {BETA_SCHEDULES}"
            )
        if not isinstance(self.rescale_betas_zero_snr, (bool, np.bool_)):
            raise ValueError(
                f"rescale_betas_zero_snr must be True or False, got {self.rescale_betas_zero_snr!r}"
            )
        object.__setattr__(self, "rescale_betas_zero_snr", bool(self.rescale_betas_zero_snr))
        # Validate the remaining parameters once, at construction.
        self.betas  # noqa: B018

    @property
    def betas(self) -> np.ndarray:
        """Betas, float64 [T] (after the zero-terminal-SNR rescaling when it is on)."""
        if self.trained_betas is not None:
            betas = np.asarray(self.trained_betas, dtype=np.float64)
        else:
            betas = _core.make_betas(
                self.beta_schedule, self.num_train_timesteps, self.beta_start, self.beta_end
            )
        if self.rescale_betas_zero_snr:
            betas = _core.rescale_zero_terminal_snr(betas)
        return betas

    @property
    def alphas_cumprod(self) -> np.ndarray:
        """Cumulative products of (1 - beta), float64 [T]."""
        return _core.alphas_cumprod(self.betas)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (the bundle's ``schedule`` block)."""
        d = asdict(self)
        d["trained_betas"] = list(self.trained_betas) if self.trained_betas is not None else None
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> NoiseSchedule:
        """Inverse of :meth:`to_dict`; unknown keys are an error, missing ones take defaults."""
        unknown = set(d) - set(SCHEDULE_KEYS)
        if unknown:
            raise ValueError(f"unknown schedule options: {sorted(unknown)}")
        tb = d.get("trained_betas")
        return cls(**{**d, "trained_betas": tuple(tb) if tb is not None else None})
