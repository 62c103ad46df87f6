"""Train a class-conditional scRDiT model on counts and write it as a bundle, top to bottom.

counts (.h5ad or built-in name) -> prepare (QC, normalise, genes, split) -> zero-negation ->
DiT -> DDPM training -> bundle (config.json + safetensors).
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

import anndata
import torch

from cellsynth import datasets
from cellsynth.bundle import LabelSpec, save_bundle
from cellsynth.data import prepare, zero_negate
from cellsynth.schedules import NoiseSchedule
from cellsynth.training.dit import build_dit
from cellsynth.training.trainer import TrainConfig, train


def default_checkpoint_dir(out: str | os.PathLike) -> Path:
    """Where resumable training state lives: beside the bundle, never inside it."""
    out = Path(out)
    return out.with_name(out.name + ".checkpoint")


# TrainConfig fields train_dit_bundle sets from its own arguments; the others pass through.
_SET_HERE = (
    "epochs", "batch_size", "learning_rate", "prediction_type", "seed", "device", "progress",
)  # fmt: skip


def _check_train_options(options: dict[str, Any]) -> None:
    """Raise TypeError for keyword arguments that are not extra TrainConfig fields."""
    extra = {f.name for f in fields(TrainConfig)} - set(_SET_HERE)
    unknown = sorted(set(options) - extra)
    if unknown:
        raise TypeError(
            f"train_dit_bundle got unknown options {unknown}; extra TrainConfig options are "
            f"{sorted(extra)}"
        )


def train_dit_bundle(
    data: str | os.PathLike | anndata.AnnData,
    label_keys: Sequence[str],
    out: str | os.PathLike,
    *,
    config: str | dict[str, Any] = "small",
    epochs: int = 10,
    max_cells: int | None = None,
    seed: int = 0,
    batch_size: int = 128,
    learning_rate: float = 3e-4,
    prediction_type: str = "epsilon",
    n_top_genes: int = 2000,
    gene_selection: str = "seurat",
    zero_value: float = -10.0,
    label_dropout: float = 0.1,
    schedule: NoiseSchedule | None = None,
    prepare_options: dict[str, Any] | None = None,
    device: str = "auto",
    resume: bool = False,
    checkpoint_dir: str | os.PathLike | None = None,
    overwrite: bool = False,
    progress: bool = True,
    **train_options: Any,
) -> Path:
    """Train a DiT on ``data`` conditioned on ``label_keys`` and save the bundle at ``out``.

    ``prepare_options`` go to :func:`cellsynth.data.prepare` (QC thresholds, test fraction, ...).
    Further keyword arguments are :class:`~cellsynth.training.trainer.TrainConfig` fields not named
    above (``warmup_steps``, ``weight_decay``, ``grad_clip_norm``, ``ema_decay``, ``ema_warmup``,
    ``mixed_precision``, ``checkpoint_every_epochs``); they are recorded in the bundle's
    ``training`` section.

    Returns
    -------
    Path
        The bundle directory. Resumable state is kept in ``checkpoint_dir`` (default
        ``OUT.checkpoint``) and removed once the bundle is written.
    """
    _check_train_options(train_options)
    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} already exists (choose another --out or remove it)")
    source = str(data) if not isinstance(data, anndata.AnnData) else "AnnData"
    adata = data if isinstance(data, anndata.AnnData) else datasets.load(data)
    prepared = prepare(
        adata,
        list(label_keys),
        gene_selection=gene_selection,
        n_top_genes=n_top_genes,
        zero_value=zero_value,
        seed=seed,
        max_cells=max_cells,
        **(prepare_options or {}),
    )
    schedule = schedule or NoiseSchedule()
    labels = LabelSpec.from_codes(prepared.label_keys, prepared.vocabularies, prepared.y_train)
    # Seed the initial weights too, so a seed fixes the whole run (and a resumed run, which
    # loads its weights, matches an uninterrupted one); fork_rng leaves the caller's RNG alone.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_dit(
            config,
            n_genes=prepared.x_train.shape[1],
            label_sizes=labels.sizes,
            label_dropout=label_dropout,
        )
    train_config = TrainConfig(
        epochs=epochs,
        batch_size=batch_size,
        learning_rate=learning_rate,
        prediction_type=prediction_type,
        seed=seed,
        device=device,
        progress=progress,
        **train_options,
    )
    ckpt = Path(checkpoint_dir) if checkpoint_dir is not None else default_checkpoint_dir(out)
    started = time.perf_counter()
    result = train(
        model,
        zero_negate(prepared.x_train, zero_value),
        prepared.y_train,
        schedule,
        train_config,
        checkpoint_dir=ckpt,
        resume=resume,
    )
    path = save_bundle(
        out,
        architecture=result.model.config,
        schedule=schedule,
        prediction_type=prediction_type,
        preprocessing=prepared.record,
        labels=labels,
        model_state=result.model.state_dict(),
        ema_state=result.ema_state,
        training=result.record(
            train_config,
            data=source,
            model_config=config,
            seconds=time.perf_counter() - started,
            train_options=train_options,
            n_train_cells=prepared.x_train.shape[0],
            n_test_cells=prepared.x_test.shape[0],
        ),
        overwrite=overwrite,
    )
    # Resumable state is useless once the bundle is whole.
    shutil.rmtree(ckpt, ignore_errors=True)
    return path
