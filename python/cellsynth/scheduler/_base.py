"""What the three schedulers share: the schedule, the config, the timestep list and the keyed noise.

The math of each scheduler lives in its own module (ddim.py, ddpm.py, dpmsolver.py) and in the
compiled core (csrc/step.h). The three follow one base rather than diffusers' single-file policy:
``set_timesteps`` and the option checks are written once here, and each scheduler adds only what
is its own (its coefficients, DDPM's custom-timesteps flag, DPM-Solver's sigmas and history).
Options: :mod:`.options`; where a step runs (NumPy, torch, device arrays): :mod:`.arrays`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np

from cellsynth import _core
from cellsynth.scheduler.arrays import is_device_array, is_tensor, loaded_torch, stream_handle
from cellsynth.scheduler.options import (
    INITIAL_NOISE_STEP,
    PREDICTION_TYPES,
    SchedulerConfig,
    as_timestep,
    check_bool,
    check_choice,
    check_float,
    check_int,
)
from cellsynth.scheduler.schedules import BETA_SCHEDULES, NoiseSchedule


class SchedulerBase:
    """Shared machinery; see :class:`~cellsynth.scheduler.DDIMScheduler` for the options.

    Subclasses define ``_config_names`` (constructor options, in order) and
    ``_diffusers_only`` (diffusers options of the same scheduler that cellsynth does not
    implement, with the default value it accepts for them in :meth:`from_config`).
    """

    order = 1
    init_noise_sigma = 1.0
    _config_names: tuple[str, ...] = ()
    _diffusers_only: dict[str, Any] = {}

    # --- construction helpers -------------------------------------------------------------

    def _init_schedule(
        self,
        num_train_timesteps: int,
        beta_start: float,
        beta_end: float,
        beta_schedule: str,
        trained_betas: Any,
        rescale_betas_zero_snr: bool,
    ) -> None:
        if trained_betas is None:
            check_int("num_train_timesteps", num_train_timesteps, 1)
            check_choice("beta_schedule", beta_schedule, BETA_SCHEDULES)
            tb = None
        else:
            tb = tuple(float(b) for b in np.asarray(trained_betas, dtype=np.float64).ravel())
        for name, v in (("beta_start", beta_start), ("beta_end", beta_end)):
            check_float(name, v)
        self.schedule = NoiseSchedule(
            num_train_timesteps=int(num_train_timesteps) if tb is None else len(tb),
            beta_start=float(beta_start),
            beta_end=float(beta_end),
            beta_schedule=beta_schedule,
            trained_betas=tb,
            rescale_betas_zero_snr=check_bool("rescale_betas_zero_snr", rescale_betas_zero_snr),
        )
        self.betas = self.schedule.betas  # float64 [T]
        self.alphas = 1.0 - self.betas  # float64 [T]
        self.alphas_cumprod = self.schedule.alphas_cumprod  # float64 [T]
        self.num_train_timesteps = self.schedule.num_train_timesteps

    def _init_x0_options(
        self,
        prediction_type: str,
        clip_sample: bool,
        clip_sample_range: float,
        thresholding: bool,
        dynamic_thresholding_ratio: float,
        sample_max_value: float,
    ) -> None:
        check_choice("prediction_type", prediction_type, PREDICTION_TYPES)
        check_bool("clip_sample", clip_sample)
        check_float("clip_sample_range", clip_sample_range, 0.0, low_open=True)
        check_bool("thresholding", thresholding)
        check_float("dynamic_thresholding_ratio", dynamic_thresholding_ratio, 0.0, 1.0)
        check_float("sample_max_value", sample_max_value, 0.0, low_open=True)

    def _init_extras(self, truncate_final: bool, truncate_threshold: float, seed: int) -> None:
        check_bool("truncate_final", truncate_final)
        check_float("truncate_threshold", truncate_threshold)
        check_int("seed", seed, 0, 2**64 - 1)

    def _store_config(self, values: Mapping[str, Any]) -> None:
        cfg = {}
        for name in self._config_names:
            v = values[name]
            if isinstance(v, np.ndarray):
                v = v.tolist()
            elif isinstance(v, tuple):
                v = list(v)
            cfg[name] = v
        self._config = SchedulerConfig(cfg)

    # --- diffusers-style config -----------------------------------------------------------

    @property
    def config(self) -> SchedulerConfig:
        """The constructor options (read-only; attribute access works too)."""
        return self._config

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | None = None, **kwargs: Any):
        """Build a scheduler from a config dict (ours or a diffusers scheduler's ``config``).

        Keys starting with '_' are metadata and ignored. Options of other schedulers are ignored
        (as diffusers does, so ``DPMSolverMultistepScheduler.from_config(ddim.config)`` works).
        Options diffusers has for this scheduler but cellsynth does not implement are accepted
        only at diffusers' default value; anything else raises a ValueError naming the option.
        """
        merged = {**(dict(config) if config is not None else {}), **kwargs}
        params: dict[str, Any] = {}
        ignored = []
        for key, value in merged.items():
            if key.startswith("_"):
                continue
            if key in cls._config_names:
                params[key] = value
            elif key in cls._diffusers_only:
                default = cls._diffusers_only[key]
                if not _same_value(value, default):
                    raise ValueError(
                        f"{key}={value!r} is not supported by cellsynth's {cls.__name__} "
                        f"(only the diffusers default {default!r})"
                    )
            else:
                ignored.append(key)
        unknown = sorted(set(ignored) - known_options())
        if unknown:
            warnings.warn(
                f"{cls.__name__}.from_config ignores unknown options {unknown}",
                UserWarning,
                stacklevel=2,
            )
        return cls(**params)

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self._config.items() if k != "trained_betas")
        return f"{type(self).__name__}({opts})"

    # --- diffusers compatibility ----------------------------------------------------------

    # How S timesteps are spread over T: fn(T, S, spacing, steps_offset) (DPM-Solver has its own).
    _spacing_fn = staticmethod(_core.timesteps)

    def set_timesteps(
        self, num_inference_steps: int | None = None, device: Any = None, timesteps: Any = None
    ) -> None:
        """Choose the timesteps: S of them by ``timestep_spacing``, or a custom list (and, for
        DPM-Solver, their noise levels; its history is cleared).

        Parameters
        ----------
        num_inference_steps : int, optional
            S, 1 <= S <= T.
        device : ignored
            Accepted for diffusers compatibility (timesteps are a NumPy array).
        timesteps : sequence of int, optional
            A strictly descending list within [0, T) (instead of ``num_inference_steps``).
        """
        ts = self._select_timesteps(num_inference_steps, timesteps, self._spacing_fn)
        self._adopt_timesteps(ts, custom=timesteps is not None)
        self.num_inference_steps = len(ts)

    def _adopt_timesteps(self, ts: np.ndarray, custom: bool) -> None:
        """Take ``ts`` as the timesteps (each scheduler precomputes what its steps need)."""
        raise NotImplementedError

    def _select_timesteps(
        self, num_inference_steps: int | None, timesteps: Any, spacing_fn
    ) -> np.ndarray:
        """The int64 timestep list of ``set_timesteps``: a validated custom list, or S of them.

        ``spacing_fn(T, S, spacing, steps_offset)`` builds the list.
        """
        T = self.num_train_timesteps
        if (num_inference_steps is None) == (timesteps is None):
            raise ValueError("pass exactly one of num_inference_steps and timesteps")
        if timesteps is not None:
            return _core.validate_timesteps(timesteps, T)
        S = check_int("num_inference_steps", num_inference_steps, 1, T)
        return spacing_fn(T, S, self._config["timestep_spacing"], self._config["steps_offset"])

    def scale_model_input(self, sample: Any, timestep: Any = None) -> Any:
        """The model input at ``timestep``: the sample itself (no scaling in these schedulers)."""
        return sample

    # --- noise ----------------------------------------------------------------------------

    @property
    def seed(self) -> int:
        return int(self._config["seed"])

    def init_noise(self, n_cells: int, n_genes: int, cell_offset: int = 0) -> np.ndarray:
        """The initial noise x_T, float32 [n_cells, n_genes] NumPy.

        Philox normals keyed by (seed, cell_offset + row, the reserved step 2^32 - 1, gene): a
        cell's x_T depends on its global index only, not on the batch it is drawn in.
        """
        n_cells = check_int("n_cells", n_cells, 0)
        n_genes = check_int("n_genes", n_genes, 0)
        out = np.empty((n_cells, n_genes), dtype=np.float32)
        _core.randn(out, self.seed, INITIAL_NOISE_STEP, check_int("cell_offset", cell_offset, 0))
        return out

    def init_noise_like(self, like: Any, cell_offset: int = 0) -> Any:
        """x_T shaped like ``like`` (a 2-D NumPy array, torch tensor or CUDA device array; same
        device for CUDA, drawn on the device array's ``stream``)."""
        cell_offset = check_int("cell_offset", cell_offset, 0)
        if is_device_array(like):
            shape = tuple(int(d) for d in like.shape)
            if len(shape) != 2:
                raise ValueError(f"like must be 2-D [n_cells, n_genes], got {shape}")
            if not _core.cuda_compiled:
                raise RuntimeError("cellsynth was built without CUDA: no device arrays")
            handle = stream_handle(getattr(like, "stream", 0))
            out = _core.DeviceArray(shape, "float32", int(like.device), stream=handle)
            _core.cuda_randn(
                out.data_ptr(),
                shape[0],
                shape[1],
                self.seed,
                INITIAL_NOISE_STEP,
                cell_offset,
                stream=handle,
                device=int(like.device),
            )
            return out
        if not is_tensor(like):
            n_cells, n_genes = np.shape(like)
            return self.init_noise(n_cells, n_genes, cell_offset)
        torch = loaded_torch()
        if like.ndim != 2:
            raise ValueError(f"like must be 2-D [n_cells, n_genes], got {tuple(like.shape)}")
        n_cells, n_genes = (int(s) for s in like.shape)
        if like.is_cuda and _core.cuda_compiled:
            out = torch.empty((n_cells, n_genes), dtype=torch.float32, device=like.device)
            _core.cuda_randn(
                out.data_ptr(),
                n_cells,
                n_genes,
                self.seed,
                INITIAL_NOISE_STEP,
                cell_offset,
                stream=torch.cuda.current_stream(like.device).cuda_stream,
                device=like.device.index if like.device.index is not None else 0,
            )
            return out
        x = torch.from_numpy(self.init_noise(n_cells, n_genes, cell_offset))
        return x.to(like.device)

    # --- helpers for step() ---------------------------------------------------------------

    def _step_options(self, step_index: int, cell_offset: Any, truncate: bool, **extra: Any):
        cfg = self._config
        return dict(
            prediction_type=cfg["prediction_type"],
            clip_sample=cfg["clip_sample"],
            clip_sample_range=cfg["clip_sample_range"],
            thresholding=cfg["thresholding"],
            dynamic_thresholding_ratio=cfg["dynamic_thresholding_ratio"],
            sample_max_value=cfg["sample_max_value"],
            seed=self.seed,
            step_index=step_index,
            cell_offset=_cell_offset(cell_offset),
            truncate=truncate,
            truncate_threshold=cfg["truncate_threshold"],
            **extra,
        )


def _cell_offset(cell_offset: Any) -> int:
    if isinstance(cell_offset, (bool, np.bool_)) or not isinstance(cell_offset, (int, np.integer)):
        raise ValueError(f"cell_offset must be an integer >= 0, got {cell_offset!r}")
    if cell_offset < 0:
        raise ValueError(f"cell_offset must be >= 0, got {cell_offset}")
    return int(cell_offset)


def _same_value(a: Any, b: Any) -> bool:
    if a is None or b is None:
        return a is b
    try:
        return bool(a == b) or (
            isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b)
        )
    except Exception:  # noqa: BLE001 - arrays and other odd values are simply "different"
        return False


def known_options() -> frozenset[str]:
    """Options any diffusers DDIM / DDPM / DPM-Solver config may carry: those of the three
    schedulers, each its own list (ignored silently when they do not apply to the scheduler being
    built, as diffusers does)."""
    from cellsynth.scheduler import SCHEDULERS  # the package imports this module

    return frozenset().union(
        *(set(c._config_names) | set(c._diffusers_only) for c in SCHEDULERS.values())
    )


class ListedTimestepsScheduler(SchedulerBase):
    """A scheduler whose previous timestep is looked up in its timestep list (DDIM, DDPM)."""

    _prev_timesteps: np.ndarray | None = None
    _index: dict[int, int] = {}

    def _adopt_timesteps(self, ts: np.ndarray, custom: bool) -> None:
        self._use_timesteps(ts)

    def _use_timesteps(self, ts: np.ndarray) -> None:
        """Adopt ``ts`` and precompute each step's previous timestep and position."""
        self.timesteps = ts
        self._prev_timesteps = _core.previous_timesteps(
            ts, self.num_train_timesteps, self._config["bug_compatible_prev_timestep"]
        )
        self._index = {int(t): i for i, t in enumerate(ts.tolist())}

    def index_for_timestep(self, timestep: Any) -> int:
        """Position of ``timestep`` in :attr:`timesteps`; a ValueError names it when absent."""
        if self._prev_timesteps is None:
            raise ValueError(
                "the number of inference steps is not set: call set_timesteps(...) before step()"
            )
        t = as_timestep(timestep)
        try:
            return self._index[t]
        except KeyError:
            raise ValueError(
                f"timestep {t} is not one of the {len(self.timesteps)} timesteps set by "
                "set_timesteps"
            ) from None

    def _alpha_prods(self, index: int) -> tuple[float, float]:
        """(alpha-bar at step ``index``'s timestep, at the one it lands on; the final one at -1)."""
        t = int(self.timesteps[index])
        prev = int(self._prev_timesteps[index])
        ab = float(self.alphas_cumprod[t])
        ab_prev = float(self.alphas_cumprod[prev]) if prev >= 0 else self.final_alpha_cumprod
        return ab, ab_prev

    def previous_timestep(self, timestep: Any) -> int:
        """The timestep the step from ``timestep`` lands on (-1: the clean end)."""
        return int(self._prev_timesteps[self.index_for_timestep(timestep)])


def refuse_generator(generator: Any) -> None:
    """``step(generator=...)``: diffusers' argument, refused (the noise is keyed by the seed)."""
    if generator is not None:
        raise ValueError(
            "generator is not supported: cellsynth draws counter-based noise keyed by the "
            "scheduler's seed (pass seed= to the constructor, or variance_noise=)"
        )
