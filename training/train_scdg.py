"""Train SCDG in the latent space of an autoencoder bundle and write a latent-diffusion bundle.

autoencoder bundle + the counts it was trained on -> rebuild its split -> encode the training cells
(eval mode) -> scale codes to unit variance -> DDPM training with x0 prediction (the DiT's trainer)
-> bundle holding the SCDG and, in ``autoencoder/``, a copy of the autoencoder.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anndata
import numpy as np
import torch

from cellsynth import datasets
from cellsynth.bundle import LabelSpec, load_bundle, save_bundle
from cellsynth.errors import DataError
from cellsynth.heldout import obs_labels, prepare_like
from cellsynth.schedules import NoiseSchedule
from cellsynth.training.autoencoder import encode
from cellsynth.training.scdg import build_scdg
from cellsynth.training.trainer import TrainConfig, train


def latent_scale(codes: np.ndarray) -> float:
    """1 / (RMS of the codes' coordinates): diffusion then sees data of unit scale, as its noise."""
    rms = float(np.sqrt(np.mean(np.square(codes, dtype=np.float64))))
    if not rms > 0:
        raise DataError("every latent code is zero; the autoencoder is degenerate")
    return 1.0 / rms


def train_scdg_bundle(
    autoencoder: str | os.PathLike,
    data: str | os.PathLike | anndata.AnnData,
    label_keys: Sequence[str],
    out: str | os.PathLike,
    *,
    config: str | dict[str, Any] = "small",
    epochs: int = 100,
    batch_size: int = 256,
    learning_rate: float = 1e-3,
    label_dropout: float = 0.1,
    schedule: NoiseSchedule | None = None,
    seed: int = 0,
    device: str = "auto",
    overwrite: bool = False,
    progress: bool = True,
    **train_options: Any,
) -> Path:
    """Train an SCDG conditioned on ``label_keys`` and save the latent-diffusion bundle at ``out``.

    Parameters
    ----------
    autoencoder : path
        An autoencoder bundle (``cellsynth train autoencoder``); it is copied into the new bundle.
    data : path, name or AnnData
        The counts the autoencoder was trained on (its split is rebuilt and checked).
    label_keys : sequence of str
        Conditions (any obs columns).
    config : str or dict
        'small', 'kang', 'tiny' or SCDG options.
    **train_options
        Further :class:`~cellsynth.training.trainer.TrainConfig` fields (``warmup_steps``,
        ``ema_decay``, ...).
    """
    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} already exists (choose another --out or remove it)")
    ae = load_bundle(autoencoder)
    if ae.kind != "autoencoder":
        raise DataError(f"{ae.path} is a {ae.kind} bundle, not an autoencoder bundle")
    source = str(data) if not isinstance(data, anndata.AnnData) else "AnnData"
    adata = data if isinstance(data, anndata.AnnData) else datasets.load(data)
    prepared = prepare_like(ae.preprocessing, adata, str(ae.path))
    keys = list(label_keys)
    obs = obs_labels(adata, prepared.obs_train.index, keys)
    vocab = {k: sorted(obs[k].unique().tolist()) for k in keys}
    y = (
        np.stack([np.searchsorted(vocab[k], obs[k].to_numpy()) for k in keys], axis=1).astype(
            np.int64
        )
        if keys
        else np.zeros((len(obs), 0), np.int64)
    )  # [N, K]
    codes = encode(ae.to_torch(), prepared.x_train)  # [N, D]
    scale = latent_scale(codes)
    labels = LabelSpec.from_codes(keys, vocab, y)
    schedule = schedule or NoiseSchedule()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_scdg(
            config, n_genes=codes.shape[1], label_sizes=labels.sizes, label_dropout=label_dropout
        )
    train_config = TrainConfig(
        epochs=epochs,
        batch_size=batch_size,
        learning_rate=learning_rate,
        prediction_type="sample",
        seed=seed,
        device=device,
        progress=progress,
        **train_options,
    )
    started = time.perf_counter()
    ckpt = out.with_name(out.name + ".checkpoint")
    result = train(model, codes * scale, y, schedule, train_config, checkpoint_dir=ckpt)
    path = save_bundle(
        out,
        kind="latent_diffusion",
        autoencoder=ae.path,
        architecture=result.model.config,
        schedule=schedule,
        prediction_type="sample",
        preprocessing=ae.preprocessing,
        labels=labels,
        model_state=result.model.state_dict(),
        ema_state=result.ema_state,
        extra={"latent": {"scale": scale}},
        training=result.record(
            train_config,
            data=source,
            model_config=config,
            seconds=time.perf_counter() - started,
            train_options=train_options,
            n_train_cells=codes.shape[0],
        ),
        overwrite=overwrite,
    )
    shutil.rmtree(ckpt, ignore_errors=True)
    return path
