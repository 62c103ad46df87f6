"""SCDG (scDD): a conditional diffusion denoiser over autoencoder latent codes that predicts x0.

The codes are small (128-d), so the network is a stack of residual MLP blocks, each modulated by the
sum of a timestep embedding and one embedding per label column (scale and shift of a LayerNorm, as
adaLN in DiT). Label dropout during training (to each column's null class) enables classifier-free
guidance. It trains with :func:`cellsynth.training.trainer.train` like the DiT: the same
``forward(x [B, D], t [B], labels [B, K]) -> [B, D]`` signature, where D plays the role of genes.

Single-step generation (used by distillation): noise a code to a fixed t*, denoise once:
``x0_hat = SCDG(sqrt(ab) z + sqrt(1 - ab) eps, t*, labels)``; see :func:`single_step`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from cellsynth.training.dit import LabelEmbedder, TimestepEmbedder, is_eager

_KANG = {"hidden_size": 192, "depth": 2, "mlp_ratio": 2.0, "frequency_embedding_size": 128}

SCDG_CONFIGS: dict[str, dict[str, Any]] = {
    # The default: trains in a minute or two on a CPU; on Kang as good as 'small' (kNN AUC
    # 0.60 against 0.59 in benchmarks/fidelity_peers.py's terms) at a tenth of the time.
    "default": _KANG,
    "small": {"hidden_size": 512, "depth": 4, "mlp_ratio": 2.0},
    # Small enough to ship with the default data's bundle (the same as 'default').
    "kang": _KANG,
    "tiny": {"hidden_size": 32, "depth": 1, "mlp_ratio": 2.0, "frequency_embedding_size": 16},
}


class ResidualBlock(nn.Module):
    """h + MLP(LayerNorm(h) * (1 + scale(c)) + shift(c)); the output layer starts at zero."""

    def __init__(self, hidden: int, mlp_ratio: float) -> None:
        super().__init__()
        inner = int(hidden * mlp_ratio)
        self.norm = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 2 * hidden))
        self.mlp = nn.Sequential(nn.Linear(hidden, inner), nn.SiLU(), nn.Linear(inner, hidden))
        nn.init.zeros_(self.modulation[-1].weight)
        nn.init.zeros_(self.modulation[-1].bias)
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)

    def forward(self, h: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.modulation(c).chunk(2, dim=1)  # [B, H] each
        return h + self.mlp(self.norm(h) * (1 + scale) + shift)  # [B, H]


class SCDG(nn.Module):
    """Conditional latent denoiser.

    Parameters
    ----------
    n_genes : int
        D, the latent width (named like the DiT's so the trainer and bundles treat both alike).
    label_sizes : sequence of int
        Classes per label column; each also gets a null class for guidance.
    hidden_size, depth, mlp_ratio : width, residual blocks, MLP expansion.
    label_dropout : float
        Probability per column (training only) of replacing a label by its null class.
    frequency_embedding_size : int
        Width of the sinusoidal timestep features.
    """

    def __init__(
        self,
        n_genes: int,
        label_sizes: Sequence[int] = (),
        hidden_size: int = 512,
        depth: int = 4,
        mlp_ratio: float = 2.0,
        label_dropout: float = 0.1,
        frequency_embedding_size: int = 256,
    ) -> None:
        super().__init__()
        if n_genes < 1 or hidden_size < 1 or depth < 1 or mlp_ratio <= 0:
            raise ValueError(
                f"SCDG sizes must be positive, got n_genes={n_genes}, hidden_size={hidden_size}, "
                f"depth={depth}, mlp_ratio={mlp_ratio}"
            )
        if not 0.0 <= label_dropout < 1.0:
            raise ValueError(f"label_dropout must be in [0, 1), got {label_dropout}")
        if frequency_embedding_size < 2 or frequency_embedding_size % 2:
            raise ValueError("frequency_embedding_size must be an even number >= 2")
        self.n_genes = int(n_genes)
        self.label_sizes = tuple(int(s) for s in label_sizes)
        self.config: dict[str, Any] = {
            "name": "scdg",
            "n_genes": self.n_genes,
            "label_sizes": list(self.label_sizes),
            "hidden_size": int(hidden_size),
            "depth": int(depth),
            "mlp_ratio": float(mlp_ratio),
            "label_dropout": float(label_dropout),
            "frequency_embedding_size": int(frequency_embedding_size),
        }
        self.x_in = nn.Linear(n_genes, hidden_size)
        self.t_embedder = TimestepEmbedder(hidden_size, frequency_embedding_size)
        self.y_embedder = LabelEmbedder(self.label_sizes, hidden_size, label_dropout)
        for table in self.y_embedder.tables:
            nn.init.normal_(table.weight, std=0.02)
        self.blocks = nn.ModuleList(ResidualBlock(hidden_size, mlp_ratio) for _ in range(depth))
        self.norm_out = nn.LayerNorm(hidden_size, eps=1e-6)
        self.x_out = nn.Linear(hidden_size, n_genes)

    def null_labels(self, batch_size: int, device: Any = None) -> torch.Tensor:
        """The null label of every column, LongTensor [batch_size, K]."""
        null = torch.tensor(self.label_sizes, dtype=torch.long, device=device)
        return null.unsqueeze(0).expand(batch_size, len(self.label_sizes)).clone()

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        labels: torch.Tensor | None = None,
        *,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Predicted clean codes [B, D] from noisy codes x [B, D] at timesteps t [B]."""
        if labels is None:
            labels = torch.zeros(x.shape[0], 0, dtype=torch.long, device=x.device)
        if is_eager() and (x.ndim != 2 or x.shape[1] != self.n_genes):
            raise ValueError(
                f"expected codes of shape [batch, {self.n_genes}], got {tuple(x.shape)}"
            )
        if is_eager() and labels.shape[1] != len(self.label_sizes):
            raise ValueError(
                f"expected {len(self.label_sizes)} label columns, got {labels.shape[1]}"
            )
        c = self.t_embedder(t)  # [B, H]
        y = self.y_embedder(labels, self.training, generator)  # [B, H] or None
        if y is not None:
            c = c + y
        h = self.x_in(x)  # [B, H]
        for block in self.blocks:
            h = block(h, c)  # [B, H]
        return self.x_out(self.norm_out(h))  # [B, D]


def build_scdg(
    config: str | dict[str, Any], n_genes: int, label_sizes: Sequence[int], **overrides: Any
) -> SCDG:
    """An SCDG from a named config ('default', 'small', 'kang', 'tiny') or a dict of options."""
    if isinstance(config, str):
        if config not in SCDG_CONFIGS:
            raise ValueError(
                f"unknown SCDG config {config!r}; choose one of {sorted(SCDG_CONFIGS)}"
            )
        config = SCDG_CONFIGS[config]
    options = {k: v for k, v in dict(config).items() if k not in ("name", "n_genes", "label_sizes")}
    options.update(overrides)
    return SCDG(n_genes, label_sizes, **options)


def single_step(
    model: nn.Module,
    codes: torch.Tensor,
    labels: torch.Tensor,
    noise: torch.Tensor,
    t_star: int,
    alphas_cumprod: torch.Tensor,
) -> torch.Tensor:
    """One forward-noise + denoise step: ``model(sqrt(ab) z + sqrt(1-ab) eps, t*, labels)``.

    Parameters
    ----------
    codes, noise : Tensor [B, D]
        Codes in the model's (scaled) latent space, and standard normal noise.
    labels : LongTensor [B, K]
    t_star : int
        The fixed timestep.
    alphas_cumprod : Tensor [T]

    Returns
    -------
    Tensor [B, D], the predicted clean codes. Differentiable in ``codes``.
    """
    ab = alphas_cumprod[t_star].to(codes.dtype)
    x_t = ab.sqrt() * codes + (1 - ab).sqrt() * noise  # [B, D]
    t = torch.full((codes.shape[0],), t_star, dtype=torch.long, device=codes.device)
    return model(x_t, t, labels)
