"""Give a bundle trained before gene metadata was kept its ``var.json``, without retraining.

    python -m cellsynth.training.recipes.add_gene_metadata python/cellsynth/models/kang-dit kang

The bundle's preprocessing record is re-run on the counts it was trained on (the gene list is
checked to prove they are those counts), and the gene table is computed exactly as training
computes it today. Only ``var.json`` is added: config.json, the weights and the exports are
untouched, so the bundle's hash and its generated values stay the same. A latent-diffusion
bundle's table belongs to its autoencoder (``BUNDLE/autoencoder/var.json``).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from cellsynth.bundle.format import AUTOENCODER_DIR, VAR_FILE
from cellsynth.bundle.heldout import prepare_like
from cellsynth.bundle.load import load_bundle
from cellsynth.data import datasets
from cellsynth.data.gene_metadata import write_var
from cellsynth.files import atomic_path


def add_gene_metadata(bundle: str | os.PathLike, data: str, overwrite: bool = False) -> Path:
    """Write ``var.json`` into ``bundle`` (its autoencoder for a latent bundle); return its path."""
    b = load_bundle(bundle)
    root = b.path / AUTOENCODER_DIR if b.kind == "latent_diffusion" else b.path
    target = root / VAR_FILE
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target} exists; pass --overwrite to replace it")
    prepared = prepare_like(b.preprocessing, datasets.load(data), where=str(b.path))
    with atomic_path(target, overwrite=True) as tmp:
        write_var(prepared.var, tmp)
    load_bundle(b.path)  # the new table must pass the bundle's own checks
    return target


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", help="bundle directory")
    parser.add_argument("data", help="the counts it was trained on: a shipped data set or .h5ad")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing var.json")
    args = parser.parse_args(argv)
    print(add_gene_metadata(args.bundle, args.data, args.overwrite))


if __name__ == "__main__":
    main()
