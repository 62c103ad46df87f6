"""Recipe of the shipped ``kang-scdg`` bundle: count autoencoder + SCDG on Kang PBMC, on one thread.

    python -m cellsynth.training.recipes.kang_scdg \
        --out python/cellsynth/models/kang-scdg --export-onnx --overwrite

Data: :func:`cellsynth.datasets.kang`, the default :func:`cellsynth.data.prepare` (QC, 80/20 split
stratified on ``cell_type`` x ``stim``, 2000 Seurat HVGs fitted on the training cells, log1p of
counts per 10k) -- the same split and genes as ``kang-dit``.

Autoencoder: the count model of ``cellsynth train autoencoder`` with its defaults (the
``"default"`` config: LayerNorm/SiLU/dropout 0.1 layers 2000 -> 256 -> 256 -> 32, a variational
encoder with KL weight 1e-3, a negative-binomial decoder over the 2000 genes plus the pooled other
genes, per-gene dispersions), AdamW 1e-3 with cosine decay, batch 128, up to 150 epochs with early
stopping on 10% of the training cells held back.

SCDG: the ``"kang"`` config (hidden 192, 2 residual blocks, MLP ratio 2; 0.56M parameters),
conditioned on ``cell_type`` and ``stim`` with label dropout 0.1, x0 prediction on codes scaled
to unit RMS, AdamW 1e-3, batch 256, 100 epochs, EMA 0.999, validated on held-out cells every 500
steps (the best weights are kept). Library sizes: a log-normal per cell type x stim.

Exports (``--export-onnx``): the SCDG denoiser (fp32, and int8 for ``--precision int8``) and the
NB decoder, so latent generation (and the count sampling, in the C++ core) runs without torch.
The encoder is not shipped (distillation runs in PyTorch and uses the safetensors weights);
``cellsynth export kang-scdg --format onnx --out DIR`` exports a copy with it.

Measured against scVI and the other generators by ``benchmarks/fidelity_peers.py``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from cellsynth.training.train_autoencoder import train_autoencoder_bundle
from cellsynth.training.train_scdg import train_scdg_bundle

__all__ = ["AUTOENCODER_RECIPE", "SCDG_RECIPE", "train_kang_scdg"]

LABELS = ("cell_type", "stim")

AUTOENCODER_RECIPE: dict[str, Any] = dict(likelihood="nb", config="default")
SCDG_RECIPE: dict[str, Any] = dict(
    config="kang", epochs=100, batch_size=256, learning_rate=1e-3, ema_decay=0.999
)


def train_kang_scdg(
    out: str | os.PathLike,
    *,
    export_onnx: bool = False,
    overwrite: bool = False,
    threads: int = 1,
    seed: int = 0,
    progress: bool = True,
) -> Path:
    """Train the autoencoder, then the SCDG on it, and write the bundle at ``out``."""
    torch.set_num_threads(threads)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        ae = train_autoencoder_bundle(
            "kang",
            Path(tmp) / "autoencoder",
            label_keys=list(LABELS),
            seed=seed,
            progress=progress,
            **AUTOENCODER_RECIPE,
        )
        path = train_scdg_bundle(
            ae, "kang", list(LABELS), out, seed=seed, overwrite=overwrite, progress=progress,
            **SCDG_RECIPE,
        )  # fmt: skip
    if export_onnx:
        from cellsynth.export.onnx import export_latent_onnx

        export_latent_onnx(path, encoder=False, progress=progress)
        # The int8 denoiser (dynamic quantisation): --precision int8, faster on CPU, its
        # fidelity cost measured by benchmarks/fidelity_peers.py (kang-scdg@10:int8).
        export_latent_onnx(path, encoder=False, precision="int8", progress=progress)
    shutil.rmtree(Path(str(out) + ".checkpoint"), ignore_errors=True)
    print(f"kang-scdg: {time.perf_counter() - started:.0f} s")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--export-onnx", action="store_true")
    parser.add_argument("--overwrite", action="store_true")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    train_kang_scdg(
        args.out, export_onnx=args.export_onnx, overwrite=args.overwrite, threads=args.threads
    )


if __name__ == "__main__":
    main()
