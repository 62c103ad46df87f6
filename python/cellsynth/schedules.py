"""Noise schedules (betas, cumulative alphas) computed by the compiled core.

The names follow diffusers' scheduler configs, so a bundle's ``schedule`` block reads the same as a
``DDIMScheduler`` config: ``num_train_timesteps``, ``beta_start``, ``beta_end``, ``beta_schedule``,
``trained_betas``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from cellsynth import _core

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")


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
    """

    num_train_timesteps: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02
    beta_schedule: str = "linear"
    trained_betas: tuple[float, ...] | None = field(default=None)

    def __post_init__(self) -> None:
        if self.trained_betas is not None:
            betas = _core.validate_betas(np.asarray(self.trained_betas, dtype=np.float64))
            object.__setattr__(self, "trained_betas", tuple(float(b) for b in betas))
            object.__setattr__(self, "num_train_timesteps", len(betas))
        elif self.beta_schedule not in BETA_SCHEDULES:
            raise ValueError(
                f"unknown beta_schedule {self.beta_schedule!r}; expected one of {BETA_SCHEDULES}"
            )
        # Validate the remaining parameters once, at construction.
        self.betas  # noqa: B018

    @property
    def betas(self) -> np.ndarray:
        """Betas, float64 [T]."""
        if self.trained_betas is not None:
            return np.asarray(self.trained_betas, dtype=np.float64)
        return _core.make_betas(
            self.beta_schedule, self.num_train_timesteps, self.beta_start, self.beta_end
        )

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
        """Inverse of :meth:`to_dict`; unknown keys are an error."""
        known = {"num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas"}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown schedule options: {sorted(unknown)}")
        tb = d.get("trained_betas")
        return cls(**{**d, "trained_betas": tuple(tb) if tb is not None else None})
