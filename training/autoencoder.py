"""Encoder/decoder over log-normalised expression (the scDD "foundation model"), and its training.

The architecture follows SCimilarity as scDD uses it: MLP layers (1024 x 3 by default), each
Linear -> BatchNorm -> PReLU -> Dropout, a 128-d latent that may be L2-normalised, and a mirrored
decoder. Training minimises the reconstruction MSE, plus an optional label-aware triplet term that
pulls cells of one class together in the latent space.

Whenever the model encodes or decodes for a user it is in eval mode (BatchNorm uses its running
statistics, dropout is off): :func:`encode` and :func:`decode` make sure of it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cellsynth.training.device import resolve_device

AUTOENCODER_CONFIGS: dict[str, dict[str, Any]] = {
    # The paper's (SCimilarity) sizes.
    "paper": {"hidden": (1024, 1024, 1024), "latent_dim": 128, "dropout": 0.1},
    # Small enough to ship inside the package with the default data's bundle.
    "kang": {"hidden": (256, 256), "latent_dim": 128, "dropout": 0.1},
    "tiny": {"hidden": (32,), "latent_dim": 8, "dropout": 0.0},
}


def _mlp(sizes: Sequence[int], dropout: float) -> nn.Sequential:
    """Linear -> BatchNorm -> PReLU -> Dropout for each consecutive pair of ``sizes``."""
    layers: list[nn.Module] = []
    for a, b in zip(sizes[:-1], sizes[1:], strict=True):
        layers += [nn.Linear(a, b), nn.BatchNorm1d(b), nn.PReLU()]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


class AutoEncoder(nn.Module):
    """MLP encoder/decoder: expression [B, G] <-> latent codes [B, D].

    Parameters
    ----------
    n_genes : int
        G, genes per cell.
    latent_dim : int
        D, width of the latent code.
    hidden : sequence of int
        Encoder layer widths (the decoder mirrors them).
    dropout : float
        Dropout after every hidden layer (training mode only).
    normalize_latent : bool
        L2-normalise codes: the encoder's output and every code the decoder receives, so the
        decoder only ever sees the unit sphere it was trained on.
    label_sizes : sequence of int
        Always empty (the autoencoder is not conditioned); kept so every bundle architecture has it.
    """

    def __init__(
        self,
        n_genes: int,
        latent_dim: int = 128,
        hidden: Sequence[int] = (1024, 1024, 1024),
        dropout: float = 0.1,
        normalize_latent: bool = True,
        label_sizes: Sequence[int] = (),
    ) -> None:
        super().__init__()
        hidden = [int(h) for h in hidden]
        if n_genes < 1 or latent_dim < 1 or not hidden or min(hidden) < 1:
            raise ValueError(
                f"autoencoder sizes must be positive, got n_genes={n_genes}, "
                f"latent_dim={latent_dim}, hidden={hidden}"
            )
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        if list(label_sizes):
            raise ValueError("the autoencoder is not conditioned on labels")
        self.n_genes, self.latent_dim = int(n_genes), int(latent_dim)
        self.normalize_latent = bool(normalize_latent)
        self.label_sizes: tuple[int, ...] = ()
        self.config: dict[str, Any] = {
            "name": "autoencoder",
            "n_genes": self.n_genes,
            "latent_dim": self.latent_dim,
            "hidden": hidden,
            "dropout": float(dropout),
            "normalize_latent": self.normalize_latent,
            "label_sizes": [],
        }
        self.encoder = nn.Sequential(
            _mlp([n_genes, *hidden], dropout), nn.Linear(hidden[-1], latent_dim)
        )
        back = hidden[::-1]
        self.decoder = nn.Sequential(
            _mlp([latent_dim, *back], dropout), nn.Linear(back[-1], n_genes)
        )

    def _unit(self, z: torch.Tensor) -> torch.Tensor:
        return F.normalize(z, dim=1, eps=1e-8) if self.normalize_latent else z

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Latent codes [B, D] of log-normalised expression x [B, G]."""
        return self._unit(self.encoder(x))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Reconstructed log-normalised expression [B, G] of codes z [B, D] (not truncated)."""
        return self.decoder(self._unit(z))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(codes [B, D], reconstruction [B, G])."""
        z = self.encode(x)
        return z, self.decoder(z)


def build_autoencoder(config: str | dict[str, Any], n_genes: int, **overrides: Any) -> AutoEncoder:
    """An autoencoder from a named config ('paper', 'kang', 'tiny') or a dict of options."""
    if isinstance(config, str):
        if config not in AUTOENCODER_CONFIGS:
            raise ValueError(
                f"unknown autoencoder config {config!r}; "
                f"choose one of {sorted(AUTOENCODER_CONFIGS)}"
            )
        config = AUTOENCODER_CONFIGS[config]
    options = {k: v for k, v in dict(config).items() if k not in ("name", "n_genes")}
    options.update(overrides)
    return AutoEncoder(n_genes, **options)


def _batched(fn: Any, x: np.ndarray | torch.Tensor, batch: int = 4096) -> np.ndarray:
    x = torch.as_tensor(np.asarray(x, dtype=np.float32))
    return torch.cat([fn(x[i : i + batch]) for i in range(0, len(x), batch)]).numpy()


@torch.no_grad()
def encode(model: AutoEncoder, x: np.ndarray) -> np.ndarray:
    """Codes float32 [N, D] of expression [N, G], in eval mode."""
    model.eval()
    return _batched(model.encode, x)


@torch.no_grad()
def decode(model: AutoEncoder, z: np.ndarray, zero_threshold: float = 0.0) -> np.ndarray:
    """Expression float32 [N, G] of codes [N, D], in eval mode; values below the threshold -> 0."""
    model.eval()
    out = _batched(model.decode, z)
    out[out < zero_threshold] = 0.0
    return out


def zero_threshold(reconstruction: np.ndarray, real: np.ndarray) -> float:
    """The level below which reconstructed values count as zeros so their share matches ``real``'s.

    A decoder trained with MSE returns small positive values where a gene was silent; cutting at
    the quantile of the real zero fraction restores the sparsity of real cells.
    """
    zero_fraction = float((np.asarray(real) <= 0).mean())
    return max(0.0, float(np.quantile(reconstruction, zero_fraction)))


def triplet_loss(
    z: torch.Tensor, labels: torch.Tensor, margin: float, generator: Any
) -> torch.Tensor:
    """Mean hinge ``max(0, d(a, p) - d(a, n) + margin)`` over anchors with both partners.

    For every cell a random other cell of its class is the positive and a random cell of another
    class the negative; d is the Euclidean distance between codes [B, D].
    """
    B = z.shape[0]
    same = labels[:, None] == labels[None, :]  # [B, B]
    eye = torch.eye(B, dtype=torch.bool, device=z.device)
    u = torch.rand(B, B, generator=generator, device=z.device)  # random tie-break per pair
    pos_score = torch.where(same & ~eye, u, torch.full_like(u, -1.0))
    neg_score = torch.where(~same, u, torch.full_like(u, -1.0))
    has = (pos_score.max(1).values >= 0) & (neg_score.max(1).values >= 0)  # [B]
    if not bool(has.any()):
        return z.sum() * 0.0
    p = z[pos_score.argmax(1)]  # [B, D]
    n = z[neg_score.argmax(1)]  # [B, D]
    d_ap = (z - p).norm(dim=1)
    d_an = (z - n).norm(dim=1)
    return F.relu(d_ap - d_an + margin)[has].mean()


@dataclass
class AutoEncoderTraining:
    """Hyper-parameters of :func:`train_autoencoder`."""

    epochs: int = 30
    batch_size: int = 256
    learning_rate: float = 1e-3
    weight_decay: float = 1e-5
    triplet_weight: float = 0.0
    triplet_margin: float = 0.1
    seed: int = 0
    device: str = "auto"
    progress: bool = True

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def train_autoencoder(
    model: AutoEncoder,
    x: np.ndarray,
    labels: np.ndarray | None,
    config: AutoEncoderTraining,
) -> list[dict[str, float]]:
    """Fit ``model`` in place on expression x [N, G] (labels [N] for the triplet term).

    Adam with cosine LR decay over all steps; shuffles and dropout draw from a generator seeded by
    ``config.seed``. Returns the per-epoch history (mean MSE and triplet loss).
    """
    from tqdm.auto import tqdm

    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2 or x.shape[1] != model.n_genes:
        raise ValueError(f"expected expression [cells, {model.n_genes}], got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("the expression matrix holds NaN or infinite values")
    if config.triplet_weight > 0 and labels is None:
        raise ValueError("the triplet term needs labels")
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)  # dropout masks
    gen = torch.Generator().manual_seed(config.seed)
    model.to(device).train()
    opt = torch.optim.Adam(
        model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
    )
    N = len(x)
    steps_per_epoch = -(-N // config.batch_size)
    total = config.epochs * steps_per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total))
    )
    x_all = torch.from_numpy(x)
    y_all = torch.from_numpy(np.asarray(labels, dtype=np.int64)) if labels is not None else None
    history = []
    bar = tqdm(total=total, disable=not config.progress, desc="autoencoder", unit="step")
    try:
        for epoch in range(config.epochs):
            t0 = time.perf_counter()
            perm = torch.randperm(N, generator=gen)
            sums = {"mse": 0.0, "triplet": 0.0}
            for i in range(steps_per_epoch):
                idx = perm[i * config.batch_size : (i + 1) * config.batch_size]
                if len(idx) < 2:  # BatchNorm needs two cells
                    continue
                xb = x_all[idx].to(device)  # [b, G]
                z, recon = model(xb)  # [b, D], [b, G]
                mse = F.mse_loss(recon, xb)
                loss = mse
                if config.triplet_weight > 0:
                    trip = triplet_loss(z, y_all[idx].to(device), config.triplet_margin, gen)
                    loss = loss + config.triplet_weight * trip
                    sums["triplet"] += float(trip.detach()) * len(idx)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                sums["mse"] += float(mse.detach()) * len(idx)
                bar.update(1)
                if i % 10 == 0:
                    bar.set_postfix(mse=f"{float(mse.detach()):.4f}", epoch=epoch + 1)
            row = {"epoch": epoch + 1, **{k: v / N for k, v in sums.items()}}
            row["seconds"] = time.perf_counter() - t0
            if not math.isfinite(row["mse"]):
                raise FloatingPointError(f"autoencoder training diverged in epoch {epoch + 1}")
            history.append(row)
    finally:
        bar.close()
    model.eval().to("cpu")
    return history
