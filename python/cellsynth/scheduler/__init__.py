"""Diffusion samplers with diffusers' names and semantics, computed by the compiled core.

Three schedulers, one file each (the math is in each module's docstring):

* :class:`DDIMScheduler` (``ddim.py``): DDIM with eta; deterministic at eta = 0.
* :class:`DDPMScheduler` (``ddpm.py``): ancestral DDPM, 'fixed_small' or 'fixed_large' variance.
* :class:`DPMSolverMultistepScheduler` (``dpmsolver.py``): DPM-Solver++(2M) for 10-20 steps.

Each ``step`` is one fused pass over memory in C++ (CPU, OpenMP over cells) or CUDA: derive x0 and
eps from the model output, clip or threshold x0 if asked, update, add counter-based Philox noise
keyed by (seed, global cell index, step index, gene), and on the last step optionally truncate
negatives to zero (``truncate_final``). NumPy arrays and CPU torch tensors are used without copies;
CUDA tensors run the CUDA kernel on the current stream.

Typical use (``model`` maps (x_t [B, G], t) to its output)::

    sched = scheduler_for_bundle(bundle, "dpmsolver++", truncate_final=True, seed=0)
    sched.set_timesteps(20)
    x = sched.init_noise(n_cells, n_genes)
    for t in sched.timesteps:
        x = sched.step(model(x, t), t, x)
"""

from __future__ import annotations

from typing import Any

from cellsynth.scheduler.ddim import DDIMScheduler
from cellsynth.scheduler.ddpm import DDPMScheduler
from cellsynth.scheduler.dpmsolver import DPMSolverMultistepScheduler
from cellsynth.scheduler.options import PREDICTION_TYPES, TIMESTEP_SPACINGS, SchedulerConfig
from cellsynth.scheduler.schedules import SCHEDULE_KEYS

__all__ = [
    "DDIMScheduler",
    "DDPMScheduler",
    "DPMSolverMultistepScheduler",
    "PREDICTION_TYPES",
    "SCHEDULERS",
    "SCHEDULER_NAMES",
    "SchedulerConfig",
    "TIMESTEP_SPACINGS",
    "scheduler_for_bundle",
    "scheduler_from_schedule",
]

SCHEDULERS = {
    "ddim": DDIMScheduler,
    "ddpm": DDPMScheduler,
    "dpmsolver++": DPMSolverMultistepScheduler,
}
SCHEDULER_NAMES = tuple(SCHEDULERS)  # what --scheduler accepts everywhere


def scheduler_from_schedule(
    schedule: Any, name: str = "ddim", prediction_type: str = "epsilon", **options: Any
):
    """A scheduler for a :class:`~cellsynth.scheduler.schedules.NoiseSchedule`.

    Parameters
    ----------
    schedule : NoiseSchedule
        The training schedule (fixes T, the betas and the zero-SNR rescaling).
    name : {'ddim', 'ddpm', 'dpmsolver++'}
        Which scheduler.
    prediction_type : {'epsilon', 'sample', 'v_prediction'}
        What the model outputs.
    **options
        Any other constructor option of that scheduler (``timestep_spacing``, ``eta`` is a step
        argument, ``truncate_final``, ``seed``, ...). Options that would change the training
        schedule are an error.
    """
    if name not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {name!r}; expected one of {tuple(SCHEDULERS)}")
    fixed = sorted(k for k in options if k in SCHEDULE_KEYS)
    if fixed:
        raise ValueError(
            f"{fixed} are fixed by the model's training schedule and cannot be changed here"
        )
    d = schedule.to_dict()
    params = {k: d.get(k) for k in SCHEDULE_KEYS if k in d}
    return SCHEDULERS[name](**params, prediction_type=prediction_type, **options)


def scheduler_for_bundle(bundle: Any, name: str = "ddim", **options: Any):
    """The scheduler ``name`` for a model bundle: its training schedule and prediction type.

    Parameters
    ----------
    bundle : Bundle
        A loaded bundle (``bundle.schedule``, ``bundle.prediction_type``).
    name : {'ddim', 'ddpm', 'dpmsolver++'}
        Which scheduler.
    **options
        Other constructor options (``timestep_spacing``, ``truncate_final``, ``seed``, ...).
    """
    if "prediction_type" in options and options["prediction_type"] != bundle.prediction_type:
        raise ValueError(
            f"prediction_type is fixed by the model ({bundle.prediction_type!r}), got "
            f"{options['prediction_type']!r}"
        )
    options.pop("prediction_type", None)
    return scheduler_from_schedule(
        bundle.schedule, name, prediction_type=bundle.prediction_type, **options
    )
