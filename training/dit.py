"""scRDiT: a Diffusion Transformer (DiT, adaLN-Zero) over gene-expression vectors.

The layout follows facebookresearch/DiT ``models.py``: a cell's G gene values are cut into G/p
"patches" of p consecutive genes by a 1-D convolution (kernel = stride = p), each patch becomes a
token with a fixed sinusoidal position embedding, the timestep (and optional class labels) become
one conditioning vector c, and N transformer blocks are modulated by c through adaLN-Zero. A final
adaLN layer and a linear map give p values per token, which are laid back out into G genes.

Class conditioning (beyond the paper, which trains one model per cell type): each label column k
with ``label_sizes[k]`` classes has an ``nn.Embedding(label_sizes[k] + 1, hidden)`` whose last row
(index ``label_sizes[k]``) is the "null" class; the label embeddings are summed into the time
embedding. In training mode each column is independently replaced by its null index with probability
``label_dropout``, which teaches the unconditional model used by classifier-free guidance.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "DIT_CONFIGS",
    "DiT",
    "auto_config",
    "build_dit",
    "correlated_gene_order",
    "timestep_embedding",
]


def is_eager() -> bool:
    """True outside tracing, compilation and CUDA-graph capture, where data-dependent checks
    (which read values back to the host) are allowed."""
    if torch.jit.is_tracing() or torch.compiler.is_compiling():
        return False
    if torch.onnx.is_in_onnx_export():
        return False
    # A device-to-host read (.tolist()) inside a capture fails ("Cannot copy between CPU and CUDA
    # tensors during CUDA graph capture"); the warm-up calls before the capture still check,
    # replays are not checked (the runtime encodes labels from their names, so they are in
    # range). is_initialized: a capture needs CUDA up already, and this never initialises it.
    return not (torch.cuda.is_initialized() and torch.cuda.is_current_stream_capturing())


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps, as in DiT / ADM.

    Parameters
    ----------
    t : Tensor [B]
        Timesteps (int or float).
    dim : int
        Embedding width.
    max_period : float
        Lowest frequency is ``1 / max_period``.

    Returns
    -------
    Tensor [B, dim], float32: ``[cos(t * f_i), sin(t * f_i)]`` with ``f_i = max_period^(-i/half)``.
    """
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half
    )  # [half]
    args = t[:, None].float() * freqs[None]  # [B, half]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)  # [B, 2*half]
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)  # [B, dim]
    return emb


def sincos_pos_embed_1d(dim: int, n_tokens: int) -> np.ndarray:
    """Fixed 1-D sine-cosine position embedding [n_tokens, dim] (MAE / DiT formula), float32."""
    if dim % 2:
        raise ValueError(f"hidden_size must be even for the sin-cos position embedding, got {dim}")
    omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))  # [D/2]
    out = np.arange(n_tokens, dtype=np.float64)[:, None] * omega[None]  # [N, D/2]
    return np.concatenate([np.sin(out), np.cos(out)], axis=1).astype(np.float32)  # [N, D]


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN modulation: x [B, N, D], shift/scale [B, D] -> x * (1 + scale) + shift."""
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


class TimestepEmbedder(nn.Module):
    """Embeds scalar timesteps into vectors: sinusoidal features -> Linear -> SiLU -> Linear."""

    def __init__(self, hidden_size: int, frequency_embedding_size: int = 256) -> None:
        super().__init__()
        self.frequency_embedding_size = frequency_embedding_size
        self.mlp = nn.Sequential(
            nn.Linear(frequency_embedding_size, hidden_size),
            nn.SiLU(),
            nn.Linear(hidden_size, hidden_size),
        )

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        t_freq = timestep_embedding(t, self.frequency_embedding_size)  # [B, F]
        return self.mlp(t_freq.to(self.mlp[0].weight.dtype))  # [B, D]


class LabelEmbedder(nn.Module):
    """Embeds K label columns (each with a null class) and sums the embeddings: [B, K] -> [B, D]."""

    def __init__(self, label_sizes: Sequence[int], hidden_size: int, dropout: float) -> None:
        super().__init__()
        self.label_sizes = tuple(int(s) for s in label_sizes)
        self.dropout = dropout
        self.tables = nn.ModuleList(nn.Embedding(s + 1, hidden_size) for s in self.label_sizes)
        self.register_buffer(
            "null_index", torch.tensor(self.label_sizes, dtype=torch.long), persistent=False
        )

    def drop(self, labels: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """Replace each entry by its column's null index with probability ``dropout``."""
        u = torch.rand(labels.shape, generator=generator, device=labels.device)  # [B, K]
        return torch.where(u < self.dropout, self.null_index.expand_as(labels), labels)

    def forward(
        self, labels: torch.Tensor, train: bool, generator: torch.Generator | None = None
    ) -> torch.Tensor | None:
        if not self.label_sizes:
            return None
        if train and self.dropout > 0:
            labels = self.drop(labels, generator)  # [B, K]
        out = self.tables[0](labels[:, 0])  # [B, D]
        for k in range(1, len(self.tables)):
            out = out + self.tables[k](labels[:, k])  # [B, D]
        return out


class Attention(nn.Module):
    """Multi-head self-attention (fused qkv projection, scaled_dot_product_attention)."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, D = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, D // self.num_heads)  # [B, N, 3, H, d]
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each [B, H, N, d]
        x = F.scaled_dot_product_attention(q, k, v)  # [B, H, N, d]
        x = x.transpose(1, 2).reshape(B, N, D)  # [B, N, D]
        return self.proj(x)  # [B, N, D]


class Mlp(nn.Module):
    """Transformer feed-forward: Linear -> GELU(tanh) -> Linear."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))  # [B, N, D]


class DiTBlock(nn.Module):
    """A DiT block with adaptive layer norm zero (adaLN-Zero) conditioning."""

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(hidden_size, num_heads)
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(hidden_size, int(hidden_size * mlp_ratio))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 6 * hidden_size))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        # x [B, N, D], c [B, D]
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(
            c
        ).chunk(6, dim=1)  # each [B, D]
        x = x + gate_msa.unsqueeze(1) * self.attn(modulate(self.norm1(x), shift_msa, scale_msa))
        x = x + gate_mlp.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))
        return x  # [B, N, D]


class FinalLayer(nn.Module):
    """The final layer of DiT: adaLN modulation, then a linear map to p values per token."""

    def __init__(self, hidden_size: int, patch_size: int) -> None:
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden_size, patch_size)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)  # each [B, D]
        x = modulate(self.norm_final(x), shift, scale)  # [B, N, D]
        return self.linear(x)  # [B, N, p]


class DiT(nn.Module):
    """Diffusion Transformer over gene vectors (scRDiT), optionally class-conditional.

    Parameters
    ----------
    n_genes : int
        G, the number of genes per cell (model input and output width).
    label_sizes : sequence of int
        Number of classes of each of the K label columns; empty for an unconditional model.
    patch_size : int
        p, genes per token; G is zero-padded up to a multiple of p and the output cropped back.
    hidden_size, depth, num_heads, mlp_ratio : transformer width, blocks, heads, MLP expansion.
    label_dropout : float
        Probability (per column, training mode only) of replacing a label by its null class.
    frequency_embedding_size : int
        Width of the sinusoidal timestep features fed to the time MLP.
    gene_order : sequence of int, optional
        A permutation of the G genes applied before patchifying (and undone on the output), so
        that a patch holds genes that vary together (:func:`correlated_gene_order`) rather than
        neighbours in the input's order. Inputs and outputs keep the bundle's gene order.

    Notes
    -----
    ``forward(x [B, G] float, t [B] timesteps, labels [B, K] int64) -> [B, G]``. Every adaLN
    modulation and the final linear layer are zero-initialised (adaLN-Zero), so a freshly built
    model outputs exactly 0.
    """

    def __init__(
        self,
        n_genes: int,
        label_sizes: Sequence[int] = (),
        patch_size: int = 10,
        hidden_size: int = 768,
        depth: int = 3,
        num_heads: int = 8,
        mlp_ratio: float = 4.0,
        label_dropout: float = 0.1,
        frequency_embedding_size: int = 256,
        gene_order: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        label_sizes = [int(s) for s in label_sizes]
        _check_config(
            n_genes, label_sizes, patch_size, hidden_size, depth, num_heads, mlp_ratio,
            label_dropout, frequency_embedding_size,
        )  # fmt: skip
        self.n_genes = int(n_genes)
        self.label_sizes = tuple(label_sizes)
        self.patch_size = int(patch_size)
        self.hidden_size = int(hidden_size)
        self.n_tokens = -(-self.n_genes // self.patch_size)  # ceil(G / p)
        self.config: dict[str, Any] = {
            "name": "dit",
            "n_genes": self.n_genes,
            "label_sizes": list(label_sizes),
            "patch_size": self.patch_size,
            "hidden_size": self.hidden_size,
            "depth": int(depth),
            "num_heads": int(num_heads),
            "mlp_ratio": float(mlp_ratio),
            "label_dropout": float(label_dropout),
            "frequency_embedding_size": int(frequency_embedding_size),
        }
        if gene_order is not None:
            order = [int(g) for g in gene_order]
            if sorted(order) != list(range(self.n_genes)):
                raise ValueError(f"gene_order must be a permutation of 0..{self.n_genes - 1}")
            self.config["gene_order"] = order
            inverse = np.argsort(order)
            self.register_buffer("gene_order", torch.tensor(order), persistent=False)
            self.register_buffer("gene_inverse", torch.from_numpy(inverse), persistent=False)
        else:
            self.gene_order = self.gene_inverse = None

        self.x_embedder = nn.Conv1d(1, hidden_size, kernel_size=patch_size, stride=patch_size)
        self.t_embedder = TimestepEmbedder(hidden_size, frequency_embedding_size)
        self.y_embedder = LabelEmbedder(label_sizes, hidden_size, label_dropout)
        pos = torch.from_numpy(sincos_pos_embed_1d(hidden_size, self.n_tokens))
        self.register_buffer("pos_embed", pos.unsqueeze(0), persistent=False)  # [1, N, D]
        self.blocks = nn.ModuleList(
            DiTBlock(hidden_size, num_heads, mlp_ratio) for _ in range(depth)
        )
        self.final_layer = FinalLayer(hidden_size, patch_size)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """DiT initialisation: Xavier linears, N(0, 0.02) embeddings, zeroed adaLN and output."""

        def _basic_init(module: nn.Module) -> None:
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

        self.apply(_basic_init)
        w = self.x_embedder.weight.data  # [D, 1, p]: initialise like a Linear(p, D)
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.x_embedder.bias)
        for table in self.y_embedder.tables:
            nn.init.normal_(table.weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        for block in self.blocks:
            nn.init.zeros_(block.adaLN_modulation[-1].weight)
            nn.init.zeros_(block.adaLN_modulation[-1].bias)
        nn.init.zeros_(self.final_layer.adaLN_modulation[-1].weight)
        nn.init.zeros_(self.final_layer.adaLN_modulation[-1].bias)
        nn.init.zeros_(self.final_layer.linear.weight)
        nn.init.zeros_(self.final_layer.linear.bias)

    def null_labels(
        self, batch_size: int, device: torch.device | str | None = None
    ) -> torch.Tensor:
        """The unconditional ("null") label of every column, LongTensor [batch_size, K]."""
        null = torch.tensor(self.label_sizes, dtype=torch.long, device=device)  # [K]
        return null.unsqueeze(0).expand(batch_size, len(self.label_sizes)).clone()

    def _check_inputs(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor) -> None:
        if x.ndim != 2 or x.shape[1] != self.n_genes:
            raise ValueError(
                f"expected expression of shape [batch, {self.n_genes}] (cells x genes), "
                f"got {tuple(x.shape)}"
            )
        B = x.shape[0]
        if t.ndim != 1 or t.shape[0] != B:
            raise ValueError(f"expected timesteps of shape [{B}], got {tuple(t.shape)}")
        K = len(self.label_sizes)
        if labels.ndim != 2 or labels.shape[0] != B or labels.shape[1] != K:
            raise ValueError(
                f"expected labels of shape [{B}, {K}] (one column per label set the model was "
                f"built with), got {tuple(labels.shape)}"
            )
        if labels.dtype.is_floating_point or labels.dtype == torch.bool:
            raise ValueError(f"labels must be integer class indices, got dtype {labels.dtype}")
        if K and B:
            lo = labels.min(dim=0).values.tolist()
            hi = labels.max(dim=0).values.tolist()
            for k, size in enumerate(self.label_sizes):
                if lo[k] < 0 or hi[k] > size:
                    bad = lo[k] if lo[k] < 0 else hi[k]
                    raise ValueError(
                        f"label column {k} has index {bad}, outside [0, {size}] "
                        f"({size} classes; index {size} is the null class)"
                    )

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        labels: torch.Tensor | None = None,
        *,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Predict the model output for noisy expression ``x`` at timesteps ``t``.

        Parameters
        ----------
        x : Tensor [B, G] float
            Noisy expression x_t.
        t : Tensor [B]
            Timesteps in [0, T), int64 or float.
        labels : LongTensor [B, K] or None
            Class indices per label column (``label_sizes[k]`` = null); None only when K = 0.
        generator : torch.Generator, optional
            RNG for label dropout (training mode); the global RNG when None.

        Returns
        -------
        Tensor [B, G]
        """
        if labels is None:
            labels = torch.zeros(x.shape[0], 0, dtype=torch.long, device=x.device)
        if is_eager():  # shape and range checks, skipped while tracing/exporting
            self._check_inputs(x, t, labels)
        G, p = self.n_genes, self.patch_size
        if self.gene_order is not None:
            x = x.index_select(1, self.gene_order)  # [B, G], patches of correlated genes
        pad = self.n_tokens * p - G  # a constant of the architecture
        h = F.pad(x, (0, pad)) if pad else x  # [B, N*p]
        h = self.x_embedder(h.unsqueeze(1))  # [B, D, N]
        h = h.transpose(1, 2) + self.pos_embed  # [B, N, D]
        c = self.t_embedder(t)  # [B, D]
        y = self.y_embedder(labels, self.training, generator)  # [B, D] or None
        if y is not None:
            c = c + y  # [B, D]
        for block in self.blocks:
            h = block(h, c)  # [B, N, D]
        h = self.final_layer(h, c)  # [B, N, p]
        out = h.flatten(1)  # [B, N*p]
        out = out[:, :G] if pad else out  # [B, G]
        if self.gene_order is not None:
            out = out.index_select(1, self.gene_inverse)  # back to the input's gene order
        return out


def _check_config(
    n_genes: int,
    label_sizes: Sequence[int],
    patch_size: int,
    hidden_size: int,
    depth: int,
    num_heads: int,
    mlp_ratio: float,
    label_dropout: float,
    frequency_embedding_size: int,
) -> None:
    """Raise ValueError naming the first invalid DiT constructor argument."""
    for name, value in [
        ("n_genes", n_genes),
        ("patch_size", patch_size),
        ("hidden_size", hidden_size),
        ("num_heads", num_heads),
        ("frequency_embedding_size", frequency_embedding_size),
    ]:
        if int(value) != value or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if int(depth) != depth or depth < 0:
        raise ValueError(f"depth must be a non-negative integer, got {depth!r}")
    if hidden_size % num_heads:
        raise ValueError(f"hidden_size {hidden_size} is not divisible by num_heads {num_heads}")
    if hidden_size % 2:
        raise ValueError(f"hidden_size must be even, got {hidden_size}")
    if any(s < 1 for s in label_sizes):
        raise ValueError(f"every label column needs at least one class, got {list(label_sizes)}")
    if not mlp_ratio > 0:
        raise ValueError(f"mlp_ratio must be positive, got {mlp_ratio!r}")
    if not 0.0 <= label_dropout < 1.0:
        raise ValueError(f"label_dropout must be in [0, 1), got {label_dropout!r}")


DIT_CONFIGS: dict[str, dict[str, Any]] = {
    # scRDiT paper: 2000 genes / p=10 -> 200 tokens of width 768 (12.6M parameters at depth 1).
    "paper": dict(patch_size=10, hidden_size=768, depth=3, num_heads=8, mlp_ratio=4.0),
    # Trains an epoch of 2000 cells x 2000 genes in seconds on 2 CPU cores.
    "small": dict(patch_size=10, hidden_size=128, depth=2, num_heads=4, mlp_ratio=4.0),
    # The shipped kang-dit bundle (training/recipes/kang_dit.py): 2000 genes / p=50 -> 40 tokens,
    # 0.79M parameters, ~1/5 of 'small' per cell: ~59 cells/s (DPM-Solver++ 20) on 1 CPU thread.
    "kang": dict(patch_size=50, hidden_size=128, depth=3, num_heads=4, mlp_ratio=2.0),
}


def correlated_gene_order(x: np.ndarray, max_cells: int = 5000, seed: int = 0) -> list[int]:
    """A gene order in which neighbours are correlated: the leaves of a hierarchical clustering.

    Average-linkage clustering of the genes of x [n, G] (training cells, log-normalised) with
    distance 1 - Pearson r (constant genes get r = 0 with everything); the dendrogram's leaf
    order puts genes that rise and fall together side by side, so a DiT patch of p consecutive
    genes holds a co-expressed module instead of p unrelated genes.
    """
    from scipy.cluster.hierarchy import leaves_list, linkage
    from scipy.spatial.distance import squareform

    x = np.asarray(x, dtype=np.float64)
    if len(x) > max_cells:
        x = x[np.random.default_rng(seed).choice(len(x), max_cells, replace=False)]
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.corrcoef(x, rowvar=False)
    r = np.nan_to_num(np.atleast_2d(r), nan=0.0)
    np.fill_diagonal(r, 1.0)
    distance = np.clip(1.0 - r, 0.0, 2.0)
    condensed = squareform(distance, checks=False)
    return [int(g) for g in leaves_list(linkage(condensed, method="average"))]


def auto_config(n_genes: int, device: str = "cpu") -> dict[str, Any]:
    """The DiT size ``config='auto'`` picks for ``n_genes`` genes on ``device``.

    Patches of ceil(G / 40) genes, so every data set gives ~40 tokens (attention cost is
    quadratic in tokens; 2,000 genes in patches of 10, the paper's, make 200 tokens and a model
    ~5x slower per cell with no better cells on Kang); on a CPU the ``kang`` widths (hidden 128,
    3 blocks: ~10 minutes for a usable model of 10,000 cells on 2 cores); on a GPU hidden 384
    and 6 blocks.
    """
    patch = max(1, -(-int(n_genes) // 40))
    if str(device).startswith("cuda"):
        return dict(patch_size=patch, hidden_size=384, depth=6, num_heads=6, mlp_ratio=4.0)
    return dict(patch_size=patch, hidden_size=128, depth=3, num_heads=4, mlp_ratio=2.0)


def build_dit(
    config: str | dict[str, Any], n_genes: int, label_sizes: Sequence[int] = (), **overrides: Any
) -> DiT:
    """Build a DiT from a named config (``DIT_CONFIGS``) or an explicit dict, with overrides.

    Parameters
    ----------
    config : str or dict
        A name in ``DIT_CONFIGS`` or a dict of DiT constructor arguments (a ``DiT.config`` works;
        its "name", "n_genes" and "label_sizes" entries are superseded by the arguments here).
    n_genes : int
        Genes per cell.
    label_sizes : sequence of int
        Classes per label column.
    **overrides
        Constructor arguments replacing the config's (e.g. ``depth=1``).
    """
    if isinstance(config, str):
        if config not in DIT_CONFIGS:
            raise ValueError(
                f"unknown DiT config {config!r}; known configs: {', '.join(DIT_CONFIGS)}"
            )
        kwargs = dict(DIT_CONFIGS[config])
    elif isinstance(config, dict):
        kwargs = {k: v for k, v in config.items() if k not in ("name", "n_genes", "label_sizes")}
    else:
        raise TypeError(f"config must be a config name or a dict, got {type(config).__name__}")
    kwargs.update(overrides)
    known = set(inspect.signature(DiT).parameters) - {"n_genes", "label_sizes"}
    unknown = set(kwargs) - known
    if unknown:
        raise ValueError(f"unknown DiT options {sorted(unknown)}; known: {sorted(known)}")
    return DiT(n_genes=n_genes, label_sizes=label_sizes, **kwargs)
