"""DDPM training loop for the DiT: AdamW, warmup + cosine LR, EMA, exact checkpoint resume.

One call to :func:`train` fits a denoiser on an expression matrix that is already in model space
(normalised, log1p, zero-negated by the caller). Each step draws a batch from a shuffled order,
timesteps ``t ~ U{0..T-1}`` and Gaussian noise, builds ``x_t = sqrt(ab_t) x0 + sqrt(1-ab_t) eps``
and minimises the MSE between the model output and the target of ``prediction_type``.

Reproducibility: every random draw comes from two explicitly seeded generators (one on the CPU for
the epoch shuffles, one on the training device for timesteps, noise and label dropout), so the same
seed on the same CPU gives bit-identical weights. A checkpoint written after an epoch holds the
model, optimiser, LR scheduler, EMA, counters and every RNG state (stored as tensors and plain
numbers so ``torch.load(weights_only=True)`` can read it); resuming from it reproduces the
uninterrupted run bit for bit. Two exceptions: a time-budgeted run (its length depends on the
machine's speed), and extending a run that ended inside an epoch (by max_steps or its budget):
the extension starts a fresh epoch order where the run stopped.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import random
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cellsynth.files import interrupts_deferred
from cellsynth.training.device import autocast, resolve_device, resolve_mixed_precision
from cellsynth.training.diffusion import PREDICTION_TYPES, add_noise, training_target
from cellsynth.training.ema import EMA

__all__ = [
    "CHECKPOINT_NAME",
    "TrainConfig",
    "TrainResult",
    "load_checkpoint",
    "lr_factor",
    "train",
]

CHECKPOINT_NAME = "checkpoint.pt"
CHECKPOINT_FORMAT = 1

# TrainConfig fields that must equal the checkpoint's for a resume to make sense. The others
# (epochs, max_steps, time_budget_s, validate_every, device, mixed_precision, progress,
# checkpoint_every_epochs) may change: a longer run extends it, with the cosine LR schedule
# recomputed over the new total.
_RESUME_MUST_MATCH = (
    "batch_size",
    "learning_rate",
    "weight_decay",
    "warmup_steps",
    "grad_clip_norm",
    "ema_decay",
    "ema_warmup",
    "prediction_type",
    "seed",
)


@dataclass
class TrainConfig:
    """Hyper-parameters of :func:`train`.

    Attributes
    ----------
    epochs : int or None
        Passes over the data; None: no bound by epochs (then ``max_steps`` or
        ``time_budget_s`` must end the run).
    batch_size : int
        Cells per optimiser step (the last batch of an epoch may be smaller).
    learning_rate, weight_decay : float
        AdamW settings; weight decay applies to matrices and embeddings, not to biases.
    warmup_steps : int
        Linear LR warm-up steps (clipped to the total number of steps), then cosine decay to 0.
    grad_clip_norm : float or None
        Clip the global gradient norm to this value; None disables clipping.
    ema_decay : float
        Decay of the weight EMA updated after every step.
    ema_warmup : bool
        Use the EMA warm-up ``min(decay, (1+n)/(10+n))`` (see ``cellsynth.training.ema``).
    prediction_type : {"epsilon", "sample", "v_prediction"}
        What the network predicts.
    mixed_precision : {"auto", "no", "bf16"}
        "auto" = bf16 autocast on CUDA, full precision on CPU and MPS.
    seed : int
        Seeds the shuffling generator (``seed``) and the noise generator (``seed + 1``).
    device : str
        "auto" (cuda > mps > cpu) or a torch device string.
    progress : bool
        Show a tqdm progress bar with the running loss.
    checkpoint_every_epochs : int
        Write a checkpoint every this many epochs (and always after the last one); 0 = only at the
        end. Ignored without a checkpoint directory.
    max_steps : int or None
        Stop after this many optimiser steps (the LR schedule spans the run's real length).
    time_budget_s : float or None
        Stop when the run has used this many seconds; the length of the LR schedule is set from
        the speed of the first steps (and of the first validation), so the cosine decay ends
        near the budget. The number of steps then depends on the machine: such a run is not
        bit-identical to another, even with the same seed.
    validate_every : int
        With a validator, validate every this many steps (and at the end); 0 = only at the end.
    """

    epochs: int | None
    batch_size: int = 128
    learning_rate: float = 3e-4
    weight_decay: float = 0.01
    warmup_steps: int = 100
    grad_clip_norm: float | None = 1.0
    ema_decay: float = 0.999
    ema_warmup: bool = True
    prediction_type: str = "epsilon"
    mixed_precision: str = "auto"
    seed: int = 0
    device: str = "auto"
    progress: bool = True
    checkpoint_every_epochs: int = 1
    max_steps: int | None = None
    time_budget_s: float | None = None
    validate_every: int = 0

    def __post_init__(self) -> None:
        def positive_int(name: str, value: Any, minimum: int = 1) -> None:
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(
                    f"TrainConfig.{name} must be an integer >= {minimum}, got {value!r}"
                )

        if self.epochs is not None:
            positive_int("epochs", self.epochs)
        if self.max_steps is not None:
            positive_int("max_steps", self.max_steps)
        if self.time_budget_s is not None and not self.time_budget_s > 0:
            raise ValueError(f"TrainConfig.time_budget_s must be > 0, got {self.time_budget_s!r}")
        if self.epochs is None and self.max_steps is None and self.time_budget_s is None:
            raise ValueError("TrainConfig needs epochs, max_steps or time_budget_s to end the run")
        positive_int("validate_every", self.validate_every, 0)
        positive_int("batch_size", self.batch_size)
        positive_int("warmup_steps", self.warmup_steps, 0)
        positive_int("checkpoint_every_epochs", self.checkpoint_every_epochs, 0)
        if not self.learning_rate > 0:
            raise ValueError(f"TrainConfig.learning_rate must be > 0, got {self.learning_rate!r}")
        if not self.weight_decay >= 0:
            raise ValueError(f"TrainConfig.weight_decay must be >= 0, got {self.weight_decay!r}")
        if self.grad_clip_norm is not None and not self.grad_clip_norm > 0:
            raise ValueError(
                f"TrainConfig.grad_clip_norm must be > 0 or None, got {self.grad_clip_norm!r}"
            )
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"TrainConfig.ema_decay must be in [0, 1), got {self.ema_decay!r}")
        if self.prediction_type not in PREDICTION_TYPES:
            raise ValueError(
                f"TrainConfig.prediction_type must be one of {PREDICTION_TYPES}, "
                f"got {self.prediction_type!r}"
            )
        resolve_mixed_precision(self.mixed_precision, torch.device("cpu"))  # validates the name

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error."""
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown TrainConfig options: {sorted(unknown)}")
        return cls(**d)


@dataclass
class TrainResult:
    """What :func:`train` returns.

    Attributes
    ----------
    model : nn.Module
        The trained model (raw, not EMA, weights), in eval mode, on the CPU.
    ema_state : dict[str, Tensor]
        EMA weights as CPU tensors, keyed like ``model.state_dict()`` (load them to sample).
    history : list of dict
        One row per epoch: ``epoch`` (1-based), ``loss`` (mean over the epoch's cells), ``lr``
        (of the epoch's last step), ``seconds``.
    steps : int
        Optimiser steps taken in total (including those before a resume).
    device : str
        The device it trained on.
    validation : list of dict
        With a validator: one row per validation (``step``, ``seconds``, and its scores).
    best : dict or None
        The validation row whose weights ``model`` and ``ema_state`` hold (the lowest
        ``score``); None without a validator (then they are the last weights).
    """

    model: nn.Module
    ema_state: dict[str, torch.Tensor]
    history: list[dict[str, Any]] = field(default_factory=list)
    steps: int = 0
    device: str = "cpu"
    validation: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] | None = None

    def record(
        self,
        config: TrainConfig,
        *,
        data: str,
        model_config: str | dict[str, Any],
        seconds: float,
        train_options: dict[str, Any] | None = None,
        **cells: int,
    ) -> dict[str, Any]:
        """The ``training`` provenance a bundle keeps: data, recipe, steps, loss history, time.

        ``cells`` are counts such as ``n_train_cells=...``; ``train_options`` the extra
        TrainConfig fields the caller passed through.
        """
        return {
            "data": data,
            "config": model_config if isinstance(model_config, str) else "custom",
            "epochs": config.epochs,
            "max_steps": config.max_steps,
            "time_budget_s": config.time_budget_s,
            "steps": self.steps,
            "seed": config.seed,
            "batch_size": config.batch_size,
            "learning_rate": config.learning_rate,
            "device": str(self.device),
            **{k: int(v) for k, v in cells.items()},
            "history": self.history,
            **({"validation": self.validation, "best": self.best} if self.validation else {}),
            "seconds": round(seconds, 1),
            **({"train_options": dict(train_options)} if train_options else {}),
        }


def lr_factor(step: int, warmup_steps: int, total_steps: int) -> float:
    """LR multiplier at optimiser step ``step`` (0-based): linear warm-up, then cosine to 0.

    ``(step + 1) / warmup_steps`` for ``step < warmup_steps`` (so the first step is not wasted at
    LR 0), then ``0.5 * (1 + cos(pi * (step - warmup) / (total - warmup)))``.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def _check_data(
    model: nn.Module, x: np.ndarray, labels: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """Validate the training matrix and labels against the model; return float32 / int64 copies."""
    n_genes = int(model.n_genes)
    label_sizes = tuple(int(s) for s in model.label_sizes)
    if not isinstance(x, np.ndarray) or x.dtype.kind not in "fiu":
        raise ValueError("x must be a dense numeric numpy array [cells, genes]")
    if x.ndim != 2:
        raise ValueError(f"x must be a 2-D array [cells, genes], got shape {x.shape}")
    if x.shape[0] == 0:
        raise ValueError("x has no cells: cannot train on an empty matrix")
    if x.shape[1] != n_genes:
        raise ValueError(f"x has {x.shape[1]} genes but the model was built for {n_genes}")
    x = np.ascontiguousarray(x, dtype=np.float32)
    if not np.isfinite(x).all():
        bad = int((~np.isfinite(x)).any(axis=1).sum())
        raise ValueError(
            f"x contains NaN or infinite values (in {bad} cells); clean the data first"
        )
    K = len(label_sizes)
    if labels is None:
        labels = np.zeros((x.shape[0], 0), dtype=np.int64)
    labels = np.asarray(labels)
    if labels.ndim == 1 and K == 1:
        labels = labels[:, None]
    if labels.ndim != 2 or labels.shape != (x.shape[0], K):
        raise ValueError(
            f"labels must have shape [cells, label columns] = {(x.shape[0], K)} "
            f"(the model has {K} label columns), got {labels.shape}"
        )
    if labels.size and labels.dtype.kind not in "iu":
        raise ValueError(f"labels must be integer class indices, got dtype {labels.dtype}")
    labels = np.ascontiguousarray(labels, dtype=np.int64)
    for k, size in enumerate(label_sizes):
        col = labels[:, k]
        if col.min() < 0 or col.max() >= size:
            bad = int(col.min() if col.min() < 0 else col.max())
            raise ValueError(
                f"label column {k} has class index {bad}, outside [0, {size - 1}] "
                f"(the model was built with {size} classes for it)"
            )
    return x, labels


def _fingerprint(*arrays: np.ndarray) -> str:
    """Short content hash of the training data (a resume on other data is refused)."""
    h = hashlib.blake2b(digest_size=16)
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def _data_changes(then: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """What differs between the data a checkpoint was trained on and this run's, in words."""
    changes = []
    old_ids, new_ids = then.get("identity") or {}, now.get("identity") or {}
    old_genes, new_genes = old_ids.get("genes"), new_ids.get("genes")
    if old_genes is not None and new_genes is not None and old_genes != new_genes:
        differ = sum(a != b for a, b in zip(old_genes, new_genes, strict=False))
        differ += abs(len(old_genes) - len(new_genes))
        changes.append(f"{differ} of {len(new_genes)} genes differ")
    for key in sorted(set(old_ids) | set(new_ids) - {"genes"}):
        if key != "genes" and old_ids.get(key) != new_ids.get(key):
            changes.append(f"{key} differ ({old_ids.get(key)} then, {new_ids.get(key)} now)")
    if "values" in then:  # checkpoints from before values and labels were hashed apart
        if then["values"] != now["values"]:
            changes.append("the expression values differ (other cells or preprocessing)")
        if then["labels"] != now["labels"]:
            changes.append("the cells' labels differ")
    elif then["fingerprint"] != now["fingerprint"]:
        changes.append("the expression values or labels differ")
    return changes


def _rng_state(data_gen: torch.Generator, noise_gen: torch.Generator) -> dict[str, Any]:
    """All RNG states as tensors and plain numbers (loadable with weights_only=True)."""
    np_name, np_keys, np_pos, np_has_gauss, np_cached = np.random.get_state()
    py_version, py_internal, py_gauss = random.getstate()
    cuda = []
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        cuda = torch.cuda.get_rng_state_all()
    return {
        "torch": torch.get_rng_state(),
        "cuda": cuda,
        "data_gen": data_gen.get_state(),
        "noise_gen": noise_gen.get_state(),
        "noise_gen_device": noise_gen.device.type,
        "numpy": {
            "name": str(np_name),
            "keys": torch.from_numpy(np_keys.astype(np.int64)),
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "cached_gaussian": float(np_cached),
        },
        "python": {
            "version": int(py_version),
            "internal": torch.tensor(py_internal, dtype=torch.int64),
            "gauss": py_gauss,
        },
    }


def _set_rng_state(
    state: dict[str, Any], data_gen: torch.Generator, noise_gen: torch.Generator, reseed: int
) -> None:
    """Inverse of :func:`_rng_state`; reseeds the noise generator if its device type changed."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        if len(state["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(state["cuda"])
    data_gen.set_state(state["data_gen"])
    if state["noise_gen_device"] == noise_gen.device.type:
        noise_gen.set_state(state["noise_gen"])
    else:
        warnings.warn(
            f"the checkpoint was trained on {state['noise_gen_device']} and resumes on "
            f"{noise_gen.device.type}: the noise stream is reseeded, so the run will not be "
            "bit-identical to an uninterrupted one",
            stacklevel=3,
        )
        noise_gen.manual_seed(reseed)
    npst = state["numpy"]
    np.random.set_state(
        (
            npst["name"],
            npst["keys"].numpy().astype(np.uint32),
            npst["pos"],
            npst["has_gauss"],
            npst["cached_gaussian"],
        )
    )
    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["internal"].tolist()), py["gauss"]))


def _save_atomic(obj: dict[str, Any], path: Path) -> None:
    """torch.save to a temporary name in the same directory, fsync, then os.replace."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        # A signal during torch.save would surface as a RuntimeError from its writer: hold it.
        with interrupts_deferred(), open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a training checkpoint (a file, or a directory holding ``checkpoint.pt``) safely.

    Uses ``torch.load(weights_only=True)``: no arbitrary pickled objects are executed.
    """
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    if not path.is_file():
        raise FileNotFoundError(f"no training checkpoint at {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means a bad file
        raise ValueError(f"cannot read training checkpoint {path}: {err}") from err
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(
            f"{path} is not a cellsynth training checkpoint of format {CHECKPOINT_FORMAT}"
        )
    return ckpt


def _canonical(d: Any) -> str:
    return json.dumps(d, sort_keys=True)


def _check_resume(
    ckpt: dict[str, Any],
    path: Path,
    model: nn.Module,
    data: dict[str, Any],
    schedule: dict[str, Any] | None,
    config: TrainConfig,
) -> None:
    """Raise ValueError if the checkpoint belongs to another model, data shape or recipe."""
    if _canonical(ckpt["model_config"]) != _canonical(model.config):
        raise ValueError(
            f"cannot resume from {path}: it was written for model config {ckpt['model_config']}, "
            f"but this model is {model.config}"
        )
    for key in ("n_cells", "n_genes", "label_sizes"):
        if ckpt["data"][key] != data[key]:
            raise ValueError(
                f"cannot resume from {path}: it was trained on data with {key}="
                f"{ckpt['data'][key]}, this data has {key}={data[key]}"
            )
    changed = _data_changes(ckpt["data"], data)
    if changed:
        raise ValueError(
            f"cannot resume from {path}: it was trained on other data of the same shape "
            f"({'; '.join(changed)}); start a new run (another --out) for this data"
        )
    if schedule is not None and ckpt["schedule"] is not None:
        if _canonical(ckpt["schedule"]) != _canonical(schedule):
            raise ValueError(
                f"cannot resume from {path}: it used noise schedule {ckpt['schedule']}, "
                f"not {schedule}"
            )
    old = ckpt["train_config"]
    diff = [k for k in _RESUME_MUST_MATCH if old.get(k) != getattr(config, k)]
    if diff:
        detail = ", ".join(f"{k}: {old.get(k)!r} -> {getattr(config, k)!r}" for k in diff)
        raise ValueError(f"cannot resume from {path}: the training config changed ({detail})")
    if config.max_steps is not None and ckpt["step"] > config.max_steps:
        raise ValueError(
            f"cannot resume from {path}: it has already taken {ckpt['step']} steps, more than "
            f"the {config.max_steps} asked for"
        )
    if config.epochs is not None and ckpt["epoch"] > config.epochs:
        raise ValueError(
            f"cannot resume from {path}: it has already trained {ckpt['epoch']} epochs, more than "
            f"the {config.epochs} asked for"
        )


def _make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices/embeddings (ndim >= 2) only, as in nanoGPT."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    groups = [
        {"params": decay, "weight_decay": config.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=config.learning_rate, betas=(0.9, 0.999))


def train(
    model: nn.Module,
    x: np.ndarray,
    labels: np.ndarray | None,
    schedule: Any,
    config: TrainConfig,
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
    *,
    callback: Callable[[dict[str, Any]], bool | None] | None = None,
    validator: Callable[[nn.Module], dict[str, Any]] | None = None,
    identity: dict[str, Any] | None = None,
) -> TrainResult:
    """Train a denoiser (normally a :class:`~cellsynth.training.dit.DiT`) as a DDPM.

    Parameters
    ----------
    model : DiT
        The model to train, modified in place (it has ``n_genes``, ``label_sizes``, ``config``).
    x : ndarray [N, G] float32
        Expression in model space (e.g. log1p-normalised with zeros replaced by -10).
    labels : ndarray [N, K] int64 or None
        Class index of each cell in each of the model's K label columns (None when K = 0).
    schedule : NoiseSchedule
        Forward-noise schedule (``alphas_cumprod`` [T], float64).
    config : TrainConfig
        Hyper-parameters, and the run's length: epochs, max_steps and/or a time budget.
    checkpoint_dir : str or Path, optional
        Where ``checkpoint.pt`` is written (atomically) after epochs; created if needed.
    resume : bool
        If True and ``checkpoint_dir`` holds a checkpoint, continue from it: the final weights are
        bit-identical (on the same device) to those of an uninterrupted run (not for a time
        budget, whose length depends on the machine's speed, nor when extending a run that
        ended inside an epoch; see the module docstring). Without a checkpoint training starts
        from scratch.
    callback : callable, optional
        Called after each epoch (after its checkpoint) with that epoch's history row; returning
        True stops training there (a checkpoint is written if one is due).
    validator : callable, optional
        ``validator(model) -> dict`` with a ``score`` (lower is better) and anything else worth
        recording, called with the EMA weights loaded in a copy of the model, every
        ``config.validate_every`` steps and at the end. The weights of the best validation are
        returned (``TrainResult.best``), not the last ones.
    identity : dict, optional
        What the data is beyond its values (``genes``: the gene list; ``labels``: each label's
        classes); kept in checkpoints so that a resume on other data names what changed.

    Returns
    -------
    TrainResult

    Raises
    ------
    ValueError
        Empty data, NaN/inf values, shape mismatches, labels out of range, or a checkpoint that
        belongs to another model, data (shape, genes, labels or values) or training recipe.
    """
    x, labels = _check_data(model, x, labels)
    run = _Run(model, x, labels, schedule, config, validator, identity)
    run.restore(checkpoint_dir, resume)
    return run.loop(callback)


class _Run:
    """The state of one training run: model, optimiser, EMA, RNGs, counters and its length."""

    def __init__(
        self,
        model: nn.Module,
        x: np.ndarray,
        labels: np.ndarray,
        schedule: Any,
        config: TrainConfig,
        validator: Callable[[nn.Module], dict[str, Any]] | None,
        identity: dict[str, Any] | None = None,
    ) -> None:
        self.model, self.config, self.validator = model, config, validator
        if validator is not None and hasattr(validator, "progress"):
            validator.progress = bool(config.progress)
        self.N = x.shape[0]
        self.device = device = resolve_device(config.device)
        self.amp_dtype = resolve_mixed_precision(config.mixed_precision, device)
        ac_dtype = torch.float32 if device.type == "mps" else torch.float64
        alphas_cumprod = torch.as_tensor(np.asarray(schedule.alphas_cumprod), dtype=ac_dtype)
        self.alphas_cumprod = alphas_cumprod.to(device)  # [T]
        self.T = alphas_cumprod.shape[0]
        self.steps_per_epoch = -(-self.N // config.batch_size)
        by_epochs = config.epochs * self.steps_per_epoch if config.epochs is not None else None
        bounds = [b for b in (by_epochs, config.max_steps) if b is not None]
        # A time budget alone: a provisional length until the first steps are timed.
        self.total_steps = min(bounds) if bounds else 10**9
        self.measured = not (config.time_budget_s is not None)
        self.schedule_dict = schedule.to_dict() if hasattr(schedule, "to_dict") else None
        self.data_info = {
            "n_cells": self.N,
            "n_genes": x.shape[1],
            "label_sizes": [int(s) for s in model.label_sizes],
            "fingerprint": _fingerprint(x, labels),
            "values": _fingerprint(x),
            "labels": _fingerprint(labels),
            "identity": json.loads(json.dumps(dict(identity or {}))),
        }
        model.to(device)
        self.optimizer = _make_optimizer(model, config)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_factor(s, self.warmup, self.total_steps)
        )
        self.ema = EMA(model, config.ema_decay, warmup=config.ema_warmup)
        self.data_gen = torch.Generator().manual_seed(config.seed)  # epoch shuffles, CPU
        self.noise_gen = torch.Generator(device=device).manual_seed(config.seed + 1)
        self.start_epoch, self.step, self.history = 0, 0, []
        self.validation: list[dict[str, Any]] = []
        self.best: dict[str, Any] | None = None
        self.best_states: tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]] | None = None
        self.x_all = torch.from_numpy(x)  # [N, G], CPU
        self.labels_all = torch.from_numpy(labels)  # [N, K], CPU
        self.ckpt_path: Path | None = None
        self.started = time.perf_counter()
        self.seconds_before = 0.0  # training seconds of the run before a resume

    @property
    def warmup(self) -> int:
        return min(self.config.warmup_steps, self.total_steps)

    # ------------------------------------------------------------------ checkpoints

    def restore(self, checkpoint_dir: str | Path | None, resume: bool) -> None:
        if checkpoint_dir is None:
            if resume:
                raise ValueError("resume=True needs a checkpoint_dir")
            return
        self.ckpt_path = Path(checkpoint_dir) / CHECKPOINT_NAME
        self.ckpt_path.parent.mkdir(parents=True, exist_ok=True)
        if not self.ckpt_path.exists():
            return
        if not resume:
            warnings.warn(f"overwriting the checkpoint in {self.ckpt_path.parent}", stacklevel=3)
            return
        ckpt = load_checkpoint(self.ckpt_path)
        _check_resume(
            ckpt, self.ckpt_path, self.model, self.data_info, self.schedule_dict, self.config
        )
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.ema.load_state_dict(ckpt["ema"])
        self.start_epoch, self.step, self.history = (
            ckpt["epoch"],
            ckpt["step"],
            list(ckpt["history"]),
        )
        extra = ckpt.get("run", {})
        # A time budget is refitted from this process's speed (the budget counts the seconds
        # before the interruption too, so a resume with a larger budget continues the run).
        self.seconds_before = float(extra.get("seconds", 0.0))
        self.validation = list(extra.get("validation", []))
        self.best = extra.get("best")
        if "best_model" in ckpt:
            self.best_states = (ckpt["best_model"], ckpt["best_ema"])
        # the next step's LR under this run's schedule (differs only if its length changed)
        for group, base_lr in zip(
            self.optimizer.param_groups, self.scheduler.base_lrs, strict=True
        ):
            group["lr"] = base_lr * lr_factor(self.step, self.warmup, self.total_steps)
        _set_rng_state(ckpt["rng"], self.data_gen, self.noise_gen, self.config.seed + 1 + self.step)

    def save_checkpoint(self, epoch: int) -> None:
        if self.ckpt_path is None:
            return
        state = {
            "format": CHECKPOINT_FORMAT,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "ema": self.ema.state_dict(),
            "epoch": epoch,
            "step": self.step,
            "history": self.history,
            "rng": _rng_state(self.data_gen, self.noise_gen),
            "train_config": self.config.to_dict(),
            "model_config": self.model.config,
            "schedule": self.schedule_dict,
            "data": self.data_info,
            "run": {
                "total_steps": self.total_steps,
                "seconds": self.seconds(),
                "validation": self.validation,
                "best": self.best,
            },
        }
        if self.best_states is not None:
            state["best_model"], state["best_ema"] = self.best_states
        _save_atomic(state, self.ckpt_path)

    # ------------------------------------------------------------------------ steps

    def seconds(self) -> float:
        return self.seconds_before + time.perf_counter() - self.started

    def train_step(self, idx: torch.Tensor) -> torch.Tensor:
        """One optimiser step on the cells ``idx``; the batch loss (detached)."""
        device, config = self.device, self.config
        x0 = self.x_all[idx].to(device, non_blocking=True)  # [b, G]
        y = self.labels_all[idx].to(device, non_blocking=True)  # [b, K]
        t = torch.randint(0, self.T, (x0.shape[0],), generator=self.noise_gen, device=device)
        noise = torch.randn(x0.shape, generator=self.noise_gen, device=device)  # [b, G]
        x_t = add_noise(x0, noise, t, self.alphas_cumprod)  # [b, G]
        target = training_target(x0, noise, t, self.alphas_cumprod, config.prediction_type)
        with autocast(device, self.amp_dtype):
            out = self.model(x_t, t, y, generator=self.noise_gen)  # [b, G]
        loss = F.mse_loss(out.float(), target)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if config.grad_clip_norm is not None:
            nn.utils.clip_grad_norm_(self.model.parameters(), config.grad_clip_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.ema.update(self.model)
        self.step += 1
        return loss.detach()

    def fit_budget(self, step_seconds: float) -> None:
        """Set the run's length so that it ends near the time budget (see TrainConfig)."""
        config = self.config
        per_step = step_seconds
        if self.validation and config.validate_every:
            per_step += self.validation[-1]["seconds"] / config.validate_every
        left = config.time_budget_s - self.seconds()
        fitted = self.step + max(1, int(left / max(per_step, 1e-9)))
        bounds = [fitted, config.max_steps]
        if config.epochs is not None:
            bounds.append(config.epochs * self.steps_per_epoch)
        self.total_steps = max(self.step + 1, min(b for b in bounds if b is not None))
        self.measured = True

    def validate(self) -> dict[str, Any]:
        """Score the EMA weights with the validator; keep them if they are the best so far."""
        started = time.perf_counter()
        probe = copy.deepcopy(self.model)
        probe.load_state_dict(self.ema.averaged, strict=False)
        probe.eval()
        with torch.no_grad():
            scores = dict(self.validator(probe))
        row = {"step": self.step, **scores, "seconds": time.perf_counter() - started}
        self.validation.append(row)
        if self.best is None or row["score"] < self.best["score"]:
            self.best = dict(row)
            self.best_states = (
                {k: v.detach().to("cpu").clone() for k, v in self.model.state_dict().items()},
                {k: v.detach().to("cpu").clone() for k, v in self.ema.averaged.items()},
            )
        return row

    # ------------------------------------------------------------------------- loop

    def loop(self, callback: Callable[[dict[str, Any]], bool | None] | None) -> TrainResult:
        from tqdm.auto import tqdm

        config = self.config
        bar = tqdm(
            total=None if not self.measured else self.total_steps,
            initial=self.step,
            disable=not config.progress,
            desc="training",
            unit="step",
        )
        postfix: dict[str, str] = {}
        timed_from: tuple[int, float] | None = None
        first_step = self.step
        self.model.train()
        epoch = self.start_epoch
        try:
            while self.step < self.total_steps:
                t0 = time.perf_counter()
                perm = torch.randperm(self.N, generator=self.data_gen)  # [N]
                loss_sum = torch.zeros((), device=self.device)
                cells, lr = 0, self.optimizer.param_groups[0]["lr"]
                for i in range(self.steps_per_epoch):
                    if self.step >= self.total_steps:
                        break
                    idx = perm[i * config.batch_size : (i + 1) * config.batch_size]  # [b]
                    lr = self.optimizer.param_groups[0]["lr"]
                    loss = self.train_step(idx)
                    bar.update(1)
                    loss_sum += loss * len(idx)
                    cells += len(idx)
                    if not self.measured:
                        # Time this process's steps 3..22 (the first ones pay for allocation).
                        if self.step == first_step + 2:
                            timed_from = (self.step, time.perf_counter())
                        elif timed_from and self.step == timed_from[0] + 20:
                            self.fit_budget((time.perf_counter() - timed_from[1]) / 20)
                            bar.total = self.total_steps
                    if (
                        self.validator is not None
                        and config.validate_every
                        and (
                            self.step % config.validate_every == 0 and self.step < self.total_steps
                        )
                    ):
                        row = self.validate()
                        postfix.update(_postfix(row))
                        self.model.train()
                        if config.time_budget_s is not None and len(self.validation) == 1:
                            self.fit_budget(_mean_step_seconds(self))
                            bar.total = self.total_steps
                    if config.progress and (i % 10 == 0 or self.step == self.total_steps):
                        bar.set_postfix(loss=f"{loss.item():.4f}", epoch=epoch + 1, **postfix)
                    if config.time_budget_s is not None:
                        if self.seconds() > config.time_budget_s:
                            self.total_steps = self.step  # out of time: end the run here
                        elif self.measured and self.step % 50 == 0:  # speed drifts: refit
                            self.fit_budget(_mean_step_seconds(self))
                            bar.total = self.total_steps
                mean_loss = float(loss_sum / max(cells, 1))
                if not math.isfinite(mean_loss):
                    raise FloatingPointError(
                        f"training diverged in epoch {epoch + 1} (loss {mean_loss}); "
                        "lower learning_rate or check the input scale"
                    )
                epoch += 1
                row = {
                    "epoch": epoch,
                    "step": self.step,
                    "loss": mean_loss,
                    "lr": lr,
                    "seconds": time.perf_counter() - t0,
                }
                self.history.append(row)
                last = self.step >= self.total_steps
                every = config.checkpoint_every_epochs
                saved = False
                if last and self.validator is not None:
                    if not self.validation or self.validation[-1]["step"] != self.step:
                        postfix.update(_postfix(self.validate()))
                        bar.set_postfix(loss=f"{mean_loss:.4f}", epoch=epoch, **postfix)
                if self.ckpt_path is not None and (last or (every and epoch % every == 0)):
                    self.save_checkpoint(epoch)
                    saved = True
                if callback is not None and callback(dict(row)) and not last:
                    if self.ckpt_path is not None and not saved:
                        self.save_checkpoint(epoch)
                    break
        finally:
            bar.close()
        return self.result()

    def result(self) -> TrainResult:
        model = self.model.eval()
        ema_state = {k: v.detach().to("cpu").clone() for k, v in self.ema.averaged.items()}
        if self.best_states is not None:  # the best validation's weights, not the last ones
            model.load_state_dict(self.best_states[0])
            ema_state = {k: v.clone() for k, v in self.best_states[1].items()}
        model.to("cpu")
        return TrainResult(
            model=model,
            ema_state=ema_state,
            history=self.history,
            steps=self.step,
            device=str(self.device),
            validation=self.validation,
            best=self.best,
        )


def _mean_step_seconds(run: _Run) -> float:
    """Seconds per training step since the run started, validations excluded."""
    spent = run.seconds() - sum(v["seconds"] for v in run.validation)
    return spent / max(run.step, 1)


def _postfix(row: dict[str, Any]) -> dict[str, str]:
    """The validation scores shown in the progress bar."""
    shown = {}
    for key, name in (("knn_auc", "AUC"), ("label_accuracy", "labels")):
        if key in row and row[key] is not None and math.isfinite(row[key]):
            shown[name] = f"{row[key]:.3f}"
    return shown
