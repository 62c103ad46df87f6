"""The bundle format: file names, required config entries per kind, and the label spec.

One home for what a bundle directory holds, read by loading, validation and saving alike.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

FORMAT_NAME = "cellsynth-bundle"
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHT_FILES = {"model": "model.safetensors", "ema": "ema.safetensors"}
VAR_FILE = "var.json"
KINDS = ("diffusion", "autoencoder", "latent_diffusion")
AUTOENCODER_DIR = "autoencoder"  # where a latent-diffusion bundle keeps its autoencoder
_COMMON_KEYS = ("format", "format_version", "architecture", "genes", "preprocessing", "labels")
REQUIRED_KEYS = {
    "diffusion": _COMMON_KEYS + ("schedule", "prediction_type", "weights"),
    "autoencoder": _COMMON_KEYS + ("weights",),
    "latent_diffusion": _COMMON_KEYS + ("schedule", "prediction_type", "weights", "autoencoder"),
}
# Which weight files each kind holds (an autoencoder is not trained with an EMA).
KIND_WEIGHTS = {
    "diffusion": ("model", "ema"),
    "autoencoder": ("model",),
    "latent_diffusion": ("model", "ema"),
}

# Bundles shipped inside the package, addressable by name wherever a bundle path is accepted.
SHIPPED_DIR = Path(__file__).parents[1] / "models"  # python/cellsynth/models


@dataclass(frozen=True)
class LabelSpec:
    """The categorical labels a model is conditioned on.

    Attributes
    ----------
    keys : list of str
        obs column names, in the column order of the model's ``labels`` input [B, K].
    vocabularies : dict of str to list of str
        Category names per key; a label's code is its index here.
    combinations : list of (codes, count)
        Joint label combinations seen in training and how often, used to fill in labels a user
        leaves unspecified.
    """

    keys: list[str]
    vocabularies: dict[str, list[str]]
    combinations: list[tuple[tuple[int, ...], int]] = field(default_factory=list)

    @property
    def sizes(self) -> list[int]:
        """Number of categories per key, in key order."""
        return [len(self.vocabularies[k]) for k in self.keys]

    def to_dict(self) -> dict[str, Any]:
        return {
            "keys": list(self.keys),
            "vocabularies": {k: list(self.vocabularies[k]) for k in self.keys},
            "combinations": [{"codes": list(c), "count": int(n)} for c, n in self.combinations],
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LabelSpec:
        keys = list(d["keys"])
        vocab = {k: list(v) for k, v in d["vocabularies"].items()}
        missing = [k for k in keys if k not in vocab]
        if missing:
            raise ValueError(f"labels.vocabularies has no entry for {missing}")
        combos = [(tuple(int(c) for c in e["codes"]), int(e["count"])) for e in d["combinations"]]
        for codes, _ in combos:
            if len(codes) != len(keys) or any(
                not 0 <= c < len(vocab[k]) for c, k in zip(codes, keys, strict=True)
            ):
                raise ValueError(
                    f"labels.combinations holds codes {list(codes)} outside the vocabularies"
                )
        return cls(keys, vocab, combos)

    @classmethod
    def from_codes(
        cls, keys: Sequence[str], vocabularies: Mapping[str, Sequence[str]], codes: np.ndarray
    ) -> LabelSpec:
        """Build the spec from training label codes int [N, K]."""
        codes = np.asarray(codes, dtype=np.int64).reshape(len(codes), len(keys))
        uniq, counts = np.unique(codes, axis=0, return_counts=True)
        combos = [(tuple(int(c) for c in row), int(n)) for row, n in zip(uniq, counts, strict=True)]
        return cls(list(keys), {k: list(vocabularies[k]) for k in keys}, combos)


def genes_stamp(genes: list[str]) -> dict[str, str]:
    digest = hashlib.sha256("\n".join(genes).encode()).hexdigest()
    return {"genes_count": str(len(genes)), "genes_sha256": digest}
