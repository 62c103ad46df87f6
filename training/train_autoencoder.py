"""Train the encoder/decoder on counts and write it as an autoencoder bundle, top to bottom.

counts (.h5ad or built-in name) -> prepare (QC, normalise, genes, split stratified on the labels)
-> a count autoencoder (negative binomial / ZINB decoder over the counts; the default) or the
scDD AutoEncoder (MSE + optional triplet, then the zero threshold of its decoder) -> bundle.

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

from cellsynth.bundle.format import LabelSpec
from cellsynth.bundle.save import save_bundle
from cellsynth.data import datasets, prepare
from cellsynth.files import remove_orphans
from cellsynth.training.autoencoder import (
    AutoEncoderTraining,
    build_autoencoder,
    decode,
    encode,
    train_autoencoder,
    zero_threshold,
)
from cellsynth.training.count_autoencoder import (
    CountTraining,
    build_count_autoencoder,
    count_nll,
    train_count_autoencoder,
)
from cellsynth.training.device import resolve_device

LIKELIHOOD_CHOICES = ("nb", "zinb", "mse")

#: Training defaults by likelihood (the count model learns from noisier targets: smaller batches,
#: more epochs).
DEFAULTS = {
    "nb": {"config": "default", "epochs": 150, "batch_size": 128},
    "zinb": {"config": "default", "epochs": 150, "batch_size": 128},
    "mse": {"config": "paper", "epochs": 30, "batch_size": 256},
}


def train_autoencoder_bundle(
    data: str | os.PathLike | anndata.AnnData,
    out: str | os.PathLike,
    *,
    label_keys: Sequence[str] = (),
    likelihood: str = "nb",
    config: str | dict[str, Any] | None = None,
    latent_dim: int | None = None,
    kl_weight: float = 1e-3,
    normalize_latent: bool = True,
    triplet_weight: float = 0.0,
    epochs: int | None = None,
    batch_size: int | None = None,
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
    likelihood : {'nb', 'zinb', 'mse'}
        'nb' / 'zinb': a count autoencoder (:mod:`cellsynth.training.count_autoencoder`) whose
        decoder models the counts, for generation; 'mse': the scDD encoder/decoder over
        log-normalised expression (:mod:`cellsynth.training.autoencoder`).
    config : str or dict
        Count models: 'default' (256 x 2, latent 32), 'large' (1024, 512; latent 64), 'tiny'.
        MSE: 'paper' (1024 x 3, latent 128), 'kang' (256 x 2, latent 128), 'tiny'. Or options of
        the model class. Default: 'default' / 'paper'.
    latent_dim : int, optional
        Overrides the config's latent width.
    kl_weight : float
        Count models: weight of the KL term (0 = a deterministic encoder).
    normalize_latent, triplet_weight : MSE model only (L2-normalised latent; label triplet term).
    epochs, batch_size : default by likelihood (150 / 128 for counts, with early stopping on
        held-back cells; 30 / 256 for MSE).
    """
    if likelihood not in LIKELIHOOD_CHOICES:
        raise ValueError(f"likelihood must be one of {LIKELIHOOD_CHOICES}, got {likelihood!r}")
    defaults = DEFAULTS[likelihood]
    config = defaults["config"] if config is None else config
    epochs = defaults["epochs"] if epochs is None else epochs
    batch_size = defaults["batch_size"] if batch_size is None else batch_size
    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} already exists (choose another --out or remove it)")
    remove_orphans(out)  # what a killed earlier run of this bundle left (its process is gone)
    if triplet_weight > 0 and not label_keys:
        raise ValueError("the triplet term needs a label: pass --label KEY")
    if likelihood != "mse" and triplet_weight > 0:
        raise ValueError("the triplet term belongs to the MSE autoencoder (likelihood 'mse')")
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
    overrides = {} if latent_dim is None else {"latent_dim": int(latent_dim)}
    common = dict(
        data=source,
        config=config,
        prepared=prepared,
        epochs=epochs,
        batch_size=batch_size,
        learning_rate=learning_rate,
        seed=seed,
        device=device,
        progress=progress,
    )
    if likelihood == "mse":
        model, training, extra = _fit_mse(
            **common,
            overrides={**overrides, "normalize_latent": normalize_latent},
            labels=prepared.y_train[:, 0] if label_keys else None,
            triplet_weight=triplet_weight,
        )
    else:
        model, training, extra = _fit_counts(
            **common,
            overrides={**overrides, "likelihood": likelihood, "variational": kl_weight > 0},
            kl_weight=kl_weight,
        )
    return save_bundle(
        out,
        kind="autoencoder",
        architecture=model.config,
        schedule=None,
        prediction_type=None,
        preprocessing=prepared.record,
        labels=LabelSpec([], {}),
        model_state=model.state_dict(),
        extra={"decode": extra},
        training=training,
        overwrite=overwrite,
        var=prepared.var,
    )


def _record(data: str, config: Any, settings: Any, device: str, prepared: Any) -> dict[str, Any]:
    return {
        "data": data,
        "config": config if isinstance(config, str) else "custom",
        **settings.to_dict(),
        "device": str(resolve_device(device)),  # what "auto" resolved to
        "n_train_cells": int(prepared.x_train.shape[0]),
        "n_test_cells": int(prepared.x_test.shape[0]),
    }


def _fit_mse(
    *, data, config, prepared, epochs, batch_size, learning_rate, seed, device, progress,
    overrides, labels, triplet_weight,
) -> tuple[Any, dict[str, Any], dict[str, Any]]:  # fmt: skip
    """The scDD MSE autoencoder and its zero threshold."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_autoencoder(config, n_genes=prepared.x_train.shape[1], **overrides)
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
    history = train_autoencoder(model, prepared.x_train, labels, settings)
    seconds = time.perf_counter() - started
    recon_train = decode(model, encode(model, prepared.x_train))
    threshold = zero_threshold(recon_train, prepared.x_train)
    recon_test = decode(model, encode(model, prepared.x_test), threshold)
    training = {
        **_record(data, config, settings, device, prepared),
        "test_mse": float(np.mean((recon_test - prepared.x_test) ** 2)),
        "history": history,
        "seconds": round(seconds, 1),
    }
    return model, training, {"likelihood": "mse", "zero_threshold": threshold}


def _fit_counts(
    *, data, config, prepared, epochs, batch_size, learning_rate, seed, device, progress,
    overrides, kl_weight,
) -> tuple[Any, dict[str, Any], dict[str, Any]]:  # fmt: skip
    """The count (NB / ZINB) autoencoder, with its held-out negative log-likelihood."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_count_autoencoder(
            config,
            n_genes=prepared.x_train.shape[1],
            target_sum=prepared.record.target_sum,
            **overrides,
        )
    settings = CountTraining(
        epochs=epochs,
        batch_size=batch_size,
        learning_rate=learning_rate,
        kl_weight=kl_weight,
        seed=seed,
        device=device,
        progress=progress,
    )
    started = time.perf_counter()
    history = train_count_autoencoder(
        model, prepared.x_train, prepared.counts_train, prepared.library_train, settings
    )
    seconds = time.perf_counter() - started
    training = {
        **_record(data, config, settings, device, prepared),
        "history": history,
        "seconds": round(seconds, 1),
    }
    if len(prepared.x_test):
        training["test_nll_per_cell"] = count_nll(
            model, prepared.x_test, prepared.counts_test, prepared.library_test
        )
    return model, training, {"likelihood": model.likelihood, "zero_threshold": 0.0}
