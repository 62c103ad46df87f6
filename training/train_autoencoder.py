"""Train the encoder/decoder on counts and write it as an autoencoder bundle, top to bottom.

counts (.h5ad or built-in name) -> prepare (QC, normalise, genes, split stratified on the labels)
-> AutoEncoder (MSE + optional triplet) -> zero threshold of the decoder -> bundle.

The split is part of the bundle's preprocessing record: the SCDG trained on top of it and
distillation rebuild exactly this split, so the held-out cells stay unseen by every model.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anndata
import numpy as np
import torch

from cellsynth import datasets
from cellsynth.bundle import LabelSpec, save_bundle
from cellsynth.data import prepare
from cellsynth.training.autoencoder import (
    AutoEncoderTraining,
    build_autoencoder,
    decode,
    encode,
    train_autoencoder,
    zero_threshold,
)
from cellsynth.training.device import resolve_device


def train_autoencoder_bundle(
    data: str | os.PathLike | anndata.AnnData,
    out: str | os.PathLike,
    *,
    label_keys: Sequence[str] = (),
    config: str | dict[str, Any] = "paper",
    normalize_latent: bool = True,
    triplet_weight: float = 0.0,
    epochs: int = 30,
    batch_size: int = 256,
    learning_rate: float = 1e-3,
    n_top_genes: int = 2000,
    gene_selection: str = "seurat",
    max_cells: int | None = None,
    seed: int = 0,
    device: str = "auto",
    prepare_options: dict[str, Any] | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Train an autoencoder and save it as a bundle of kind 'autoencoder' at ``out``.

    Parameters
    ----------
    label_keys : sequence of str
        obs columns that stratify the train/test split; the first one also labels the triplet
        term when ``triplet_weight > 0``.
    config : str or dict
        'paper' (1024 x 3, latent 128), 'kang' (256 x 2, latent 128) or options of AutoEncoder.
    """
    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} already exists (choose another --out or remove it)")
    if triplet_weight > 0 and not label_keys:
        raise ValueError("the triplet term needs a label: pass --label KEY")
    source = str(data) if not isinstance(data, anndata.AnnData) else "AnnData"
    adata = data if isinstance(data, anndata.AnnData) else datasets.load(data)
    prepared = prepare(
        adata,
        list(label_keys),
        gene_selection=gene_selection,
        n_top_genes=n_top_genes,
        seed=seed,
        max_cells=max_cells,
        **(prepare_options or {}),
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_autoencoder(
            config, n_genes=prepared.x_train.shape[1], normalize_latent=normalize_latent
        )
    settings = AutoEncoderTraining(
        epochs=epochs,
        batch_size=batch_size,
        learning_rate=learning_rate,
        triplet_weight=triplet_weight,
        seed=seed,
        device=device,
        progress=progress,
    )
    started = time.perf_counter()
    labels = prepared.y_train[:, 0] if label_keys else None
    history = train_autoencoder(model, prepared.x_train, labels, settings)
    seconds = time.perf_counter() - started
    recon_train = decode(model, encode(model, prepared.x_train))
    threshold = zero_threshold(recon_train, prepared.x_train)
    recon_test = decode(model, encode(model, prepared.x_test), threshold)
    test_mse = float(np.mean((recon_test - prepared.x_test) ** 2))
    return save_bundle(
        out,
        kind="autoencoder",
        architecture=model.config,
        schedule=None,
        prediction_type=None,
        preprocessing=prepared.record,
        labels=LabelSpec([], {}),
        model_state=model.state_dict(),
        extra={"decode": {"zero_threshold": threshold}},
        training={
            "data": source,
            "config": config if isinstance(config, str) else "custom",
            **settings.to_dict(),
            "device": str(resolve_device(device)),  # what "auto" resolved to
            "n_train_cells": int(prepared.x_train.shape[0]),
            "n_test_cells": int(prepared.x_test.shape[0]),
            "test_mse": test_mse,
            "history": history,
            "seconds": round(seconds, 1),
        },
        overwrite=overwrite,
    )
