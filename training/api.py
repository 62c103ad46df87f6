"""``cellsynth.train``: one call for the three trainers, named as on the command line.

``cellsynth train dit|autoencoder|scdg`` and ``cellsynth.train("dit"|"autoencoder"|"scdg", ...)``
reach the same functions (:func:`~cellsynth.training.train_dit.train_dit_bundle`,
:func:`~cellsynth.training.train_autoencoder.train_autoencoder_bundle`,
:func:`~cellsynth.training.train_scdg.train_scdg_bundle`); their keyword options pass through.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

MODELS = ("dit", "autoencoder", "scdg")


def train(
    model: str,
    data: Any,
    out: str | os.PathLike,
    *,
    labels: Sequence[str] = (),
    **options: Any,
) -> Path:
    """Train a model of kind ``model`` on ``data`` (path, built-in name or AnnData of raw counts).

    ``labels`` are the obs columns to condition on. ``scdg`` needs ``autoencoder=`` (a bundle
    trained by ``train("autoencoder", ...)``). Returns the bundle directory.
    """
    labels = [labels] if isinstance(labels, str) else list(labels)
    if model == "dit":
        from cellsynth.training.train_dit import train_dit_bundle

        return Path(train_dit_bundle(data, labels, out, **options))
    if model == "autoencoder":
        from cellsynth.training.train_autoencoder import train_autoencoder_bundle

        return Path(train_autoencoder_bundle(data, out, label_keys=labels, **options))
    if model == "scdg":
        autoencoder = options.pop("autoencoder", None)
        if autoencoder is None:
            raise ValueError(
                "train('scdg', ...) needs autoencoder=: a bundle from train('autoencoder', ...)"
            )
        from cellsynth.training.train_scdg import train_scdg_bundle

        return Path(train_scdg_bundle(autoencoder, data, labels, out, **options))
    raise ValueError(f"model must be one of {', '.join(MODELS)}; got {model!r}")
