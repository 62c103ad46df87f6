"""Writing a bundle directory atomically (what every trainer calls at its end)."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cellsynth._version import __version__
from cellsynth.bundle.format import (
    AUTOENCODER_DIR,
    CONFIG_FILE,
    FORMAT_NAME,
    FORMAT_VERSION,
    KIND_WEIGHTS,
    KINDS,
    VAR_FILE,
    WEIGHT_FILES,
    LabelSpec,
    genes_stamp,
)
from cellsynth.bundle.load import Bundle, load_bundle
from cellsynth.bundle.validate import validate
from cellsynth.errors import BundleError
from cellsynth.files import atomic_directory, default_file_mode, sha256_file
from cellsynth.scheduler import PREDICTION_TYPES
from cellsynth.scheduler.schedules import NoiseSchedule


def save_bundle(
    out: str | os.PathLike,
    *,
    architecture: Mapping[str, Any],
    schedule: NoiseSchedule | None,
    prediction_type: str | None,
    preprocessing: Any,
    labels: LabelSpec,
    model_state: Mapping[str, Any],
    ema_state: Mapping[str, Any] | None = None,
    training: Mapping[str, Any] | None = None,
    overwrite: bool = False,
    kind: str = "diffusion",
    autoencoder: str | os.PathLike | None = None,
    extra: Mapping[str, Any] | None = None,
    files: Mapping[str, Any] | None = None,
    var: Any = None,
) -> Path:
    """Write a bundle directory atomically and return its path.

    Parameters
    ----------
    out : path
        Target directory; written under a temporary name and renamed when complete.
    architecture : dict
        Constructor options of the model plus ``"name"`` (e.g. ``DiT.config``).
    preprocessing : PreprocessingRecord
        Its ``genes`` become the bundle's gene order.
    model_state, ema_state : dict of str to torch.Tensor
        State dicts; ``ema_state`` defaults to ``model_state``.
    training : dict, optional
        Free-form provenance (data set, epochs, loss history, seed).
    kind : {'diffusion', 'autoencoder', 'latent_diffusion'}
        What the bundle holds; an autoencoder has no schedule, prediction type or EMA.
    autoencoder : path, optional
        For 'latent_diffusion': the autoencoder bundle, copied into ``OUT/autoencoder``.
    extra : dict, optional
        Further config entries of the kind (e.g. an autoencoder's ``decode`` settings).
    files : dict of str to callable, optional
        Further files for people (e.g. ``training.json``, ``training.png``): name -> a function
        that writes that file at the path it is given; written inside the temporary directory,
        so they appear with the bundle or not at all. They are not part of the bundle's hash.
    var : pandas.DataFrame, optional
        The genes' metadata (:attr:`cellsynth.data.PreparedData.var`), indexed by the bundle's
        genes in their order; written as ``var.json``. A latent-diffusion bundle takes its
        autoencoder's and must not be given one.
    """
    import shutil

    from safetensors.torch import save_file

    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if kind != "autoencoder" and prediction_type not in PREDICTION_TYPES:
        raise ValueError(
            f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}"
        )
    if (kind == "latent_diffusion") != (autoencoder is not None):
        raise ValueError("a latent_diffusion bundle, and only it, needs its autoencoder bundle")
    if var is not None and kind == "latent_diffusion":
        raise ValueError("a latent_diffusion bundle's gene metadata is its autoencoder's")
    if var is not None and [str(g) for g in var.index] != list(preprocessing.genes):
        raise ValueError("var must be indexed by the preprocessing record's genes, in order")
    record = preprocessing.to_dict()
    config: dict[str, Any] = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "cellsynth_version": __version__,
        "kind": kind,
        "architecture": dict(architecture),
        "genes": list(record["genes"]),
        "preprocessing": record,
        "labels": labels.to_dict(),
        "training": dict(training or {}),
        "weights": {},
        **dict(extra or {}),
    }
    if kind != "autoencoder":
        config["schedule"] = schedule.to_dict()
        config["prediction_type"] = prediction_type
    states = {"model": model_state, "ema": ema_state if ema_state is not None else model_state}
    states = {k: v for k, v in states.items() if k in KIND_WEIGHTS[kind]}
    with atomic_directory(out, overwrite=overwrite) as tmp:
        if autoencoder is not None:
            ae = load_bundle(autoencoder)
            if ae.kind != "autoencoder":
                raise BundleError(f"{ae.path} is a {ae.kind} bundle, not an autoencoder")
            shutil.copytree(ae.path, tmp / AUTOENCODER_DIR, ignore=shutil.ignore_patterns("*.tmp*"))
            config["autoencoder"] = {"path": AUTOENCODER_DIR, "config_sha256": ae.hash}
        for which, state in states.items():
            tensors = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
            # The gene list is written into the weights too: a config.json edited consistently
            # (genes, record, architecture) must not pass, and a patched model's tensors alone
            # do not show its number of genes.
            metadata = {"format": "pt", **genes_stamp(config["genes"])}
            save_file(tensors, str(tmp / WEIGHT_FILES[which]), metadata=metadata)
            # safetensors writes 0600; a bundle's files share config.json's mode (the umask's).
            os.chmod(tmp / WEIGHT_FILES[which], default_file_mode())
            config["weights"][WEIGHT_FILES[which]] = sha256_file(tmp / WEIGHT_FILES[which])
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=1) + "\n")
        if var is not None:
            from cellsynth.data.gene_metadata import write_var

            write_var(var, tmp / VAR_FILE)
        for name, write in (files or {}).items():
            write(tmp / name)
        # Validate what was written before it takes the final name.
        validate(Bundle(tmp, config), check_against_torch=False, verify_weights=False)
    return Path(out)
