"""A count-aware autoencoder: encoder on log-normalised expression, negative-binomial decoder.

The decoder models what was measured, UMI counts, the way scVI does: for a cell with code z and
library size L (its total count over *all* genes, the size the preprocessing normalises by),

    rho   = softmax(decoder(z))            [G + 1]: the share of the library of each modelled gene,
                                           plus one "every other gene" share (so the modelled
                                           genes' part of the library is learned, not assumed)
    mu_g  = rho_g * L                      the expected count of gene g
    c_g   ~ NB(mu_g, theta_g)              theta_g > 0 a learned per-gene inverse dispersion
          (ZINB: c_g = 0 with probability pi_g(z), else NB; pi from a second decoder head)

and the loss is the negative log-likelihood of the cell's counts (the other genes' total included)
plus, optionally, beta * KL(q(z|x) || N(0, I)) (a VAE; beta = 0 gives a deterministic encoder
whose codes are the posterior means). The expected expression in the preprocessing's space is
``log1p(rho_g * target_sum)`` (:meth:`CountAutoEncoder.decode`), so code written for the MSE
autoencoder (distillation, the decoder backends) reads a count decoder unchanged; generation
instead draws counts with :meth:`CountAutoEncoder.decode_counts` and cellsynth's keyed sampler.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cellsynth.training.device import resolve_device

LIKELIHOODS = ("nb", "zinb")

COUNT_AUTOENCODER_CONFIGS: dict[str, dict[str, Any]] = {
    # The default: small enough to train in minutes on a CPU and to ship.
    "default": {"hidden": (256, 256), "latent_dim": 32, "dropout": 0.1},
    "large": {"hidden": (1024, 512), "latent_dim": 64, "dropout": 0.1},
    "tiny": {"hidden": (32,), "latent_dim": 8, "dropout": 0.0},
}


def _mlp(sizes: Sequence[int], dropout: float) -> nn.Sequential:
    """Linear -> LayerNorm -> SiLU -> Dropout for each consecutive pair of ``sizes``.

    LayerNorm rather than BatchNorm: a cell's code must not depend on the other cells of its
    batch, in training as in use.
    """
    layers: list[nn.Module] = []
    for a, b in zip(sizes[:-1], sizes[1:], strict=True):
        layers += [nn.Linear(a, b), nn.LayerNorm(b), nn.SiLU()]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


def log_nb(
    x: torch.Tensor, mu: torch.Tensor, theta: torch.Tensor, eps: float = 1e-8
) -> torch.Tensor:
    """log NB(x; mean mu, inverse dispersion theta), elementwise (scVI's parameterisation).

    log p = theta (log theta - log(theta + mu)) + x (log mu - log(theta + mu))
            + lgamma(x + theta) - lgamma(theta) - lgamma(x + 1)
    """
    log_theta_mu = torch.log(theta + mu + eps)
    return (
        theta * (torch.log(theta + eps) - log_theta_mu)
        + x * (torch.log(mu + eps) - log_theta_mu)
        + torch.lgamma(x + theta)
        - torch.lgamma(theta)
        - torch.lgamma(x + 1)
    )


def log_zinb(
    x: torch.Tensor, mu: torch.Tensor, theta: torch.Tensor, zi_logits: torch.Tensor
) -> torch.Tensor:
    """log ZINB: pi = sigmoid(zi_logits); p(0) = pi + (1 - pi) NB(0), p(x>0) = (1 - pi) NB(x)."""
    log_nb_x = log_nb(x, mu, theta)
    log_pi = -F.softplus(-zi_logits)  # log sigmoid
    log_not_pi = -F.softplus(zi_logits)  # log (1 - sigmoid)
    zero = torch.logaddexp(log_pi, log_not_pi + log_nb_x)
    return torch.where(x < 0.5, zero, log_not_pi + log_nb_x)


# Terms of the exact sum in nb_expected_log1p; the rest of the distribution is one tail term.
EXPECTED_LOG1P_TERMS = 32


def nb_expected_log1p(
    mu: torch.Tensor, theta: torch.Tensor, scale: torch.Tensor, terms: int = EXPECTED_LOG1P_TERMS
) -> torch.Tensor:
    """E[log1p(scale * X)] for X ~ NB(mu, theta), elementwise, differentiable in mu and theta.

    The expected log-normalised expression of a count model (scale = target_sum / library). It
    differs from ``log1p(scale * mu)``, the log of the expected expression, by Jensen's gap, which
    is large for the sparse genes: a gene seen in 10% of cells at ~20 normalised counts has a mean
    log1p of ~0.3 and a log1p(mean) of ~1.1. Real cells averaged in log space (a class mean) are
    on the first scale, so a cell meant to stand for them must be too.

    The sum over counts 0..terms-1 is exact; the rest of the distribution is one term at the
    mean of its tail m (which keeps the mean exact), corrected to second order for the tail's
    variance v: ``log1p(s m) - s^2 v / (2 (1 + s m)^2)``, the correction capped so that the term
    never falls below ``log1p(s * terms)``. Against an exact float64 sum
    (tests/test_count_models.py) the error is at most 0.0021 where mu <= 5 and 0.19 (log units;
    mean 0.02) for mu up to 1,000, the worst at strong overdispersion (theta 0.1).

    Parameters
    ----------
    mu : Tensor [..., G], > 0 ; theta : Tensor broadcastable to mu, > 0 ; scale : Tensor
        broadcastable to mu, > 0.
    """
    k = torch.arange(terms, dtype=mu.dtype, device=mu.device)  # [K]
    m, t = mu[..., None], theta[..., None]
    log_p = (
        torch.lgamma(k + t)
        - torch.lgamma(t)
        - torch.lgamma(k + 1)
        + t * (torch.log(t) - torch.log(t + m))
        + k * (torch.log(m + 1e-30) - torch.log(t + m))
    )
    p = log_p.exp()  # [..., G, K]
    s = scale[..., None] if scale.dim() else scale
    body = (p * torch.log1p(k * s)).sum(-1)
    tail_mass = (1.0 - p.sum(-1)).clamp_min(0.0)
    tail_mean = (mu - (p * k).sum(-1)) / tail_mass.clamp_min(1e-12)
    tail_mean = tail_mean.clamp_min(float(terms))
    second = mu + mu * mu / theta + mu * mu  # E[X^2]
    tail_var = (second - (p * k * k).sum(-1)) / tail_mass.clamp_min(1e-12) - tail_mean**2
    at_mean = torch.log1p(tail_mean * scale)
    floor = torch.log1p(float(terms) * scale)
    correction = 0.5 * scale**2 * tail_var.clamp_min(0.0) / (1.0 + scale * tail_mean) ** 2
    correction = torch.minimum(correction, (at_mean - floor).clamp_min(0.0))
    return body + tail_mass * (at_mean - correction)


class CountAutoEncoder(nn.Module):
    """Encoder [B, G] log-normalised -> codes [B, D]; decoder codes -> NB / ZINB over counts.

    Parameters
    ----------
    n_genes : int
        G, the modelled genes.
    latent_dim : int
        D.
    hidden : sequence of int
        Encoder layer widths (the decoder mirrors them).
    dropout : float
        Dropout after every hidden layer (training only).
    likelihood : {'nb', 'zinb'}
    variational : bool
        A VAE encoder (mean and log-variance; codes are sampled in training). The codes a user
        gets (:meth:`encode`) are always the means.
    target_sum : float
        The preprocessing's normalisation target (for :meth:`decode`).
    label_sizes : sequence of int
        Always empty (not conditioned); kept so every bundle architecture has it.
    """

    def __init__(
        self,
        n_genes: int,
        latent_dim: int = 32,
        hidden: Sequence[int] = (256, 256),
        dropout: float = 0.1,
        likelihood: str = "nb",
        variational: bool = True,
        target_sum: float = 1e4,
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
        if likelihood not in LIKELIHOODS:
            raise ValueError(f"likelihood must be one of {LIKELIHOODS}, got {likelihood!r}")
        if not target_sum > 0:
            raise ValueError(f"target_sum must be positive, got {target_sum}")
        if list(label_sizes):
            raise ValueError("the autoencoder is not conditioned on labels")
        self.n_genes, self.latent_dim = int(n_genes), int(latent_dim)
        self.likelihood, self.variational = likelihood, bool(variational)
        self.target_sum = float(target_sum)
        self.label_sizes: tuple[int, ...] = ()
        self.config: dict[str, Any] = {
            "name": "count_autoencoder",
            "n_genes": self.n_genes,
            "latent_dim": self.latent_dim,
            "hidden": hidden,
            "dropout": float(dropout),
            "likelihood": likelihood,
            "variational": self.variational,
            "target_sum": self.target_sum,
            "label_sizes": [],
        }
        self.encoder = _mlp([n_genes, *hidden], dropout)
        self.z_mean = nn.Linear(hidden[-1], latent_dim)
        self.z_logvar = nn.Linear(hidden[-1], latent_dim) if self.variational else None
        back = hidden[::-1]
        self.decoder = _mlp([latent_dim, *back], dropout)
        self.rho_logits = nn.Linear(back[-1], n_genes + 1)  # + the other genes' share
        self.zi_logits = nn.Linear(back[-1], n_genes) if likelihood == "zinb" else None
        # log theta per modelled gene and for the other genes' total; theta = 1 at the start.
        self.log_theta = nn.Parameter(torch.zeros(n_genes + 1))

    # -------------------------------------------------------------- the parts a user needs

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Codes [B, D] (posterior means) of log-normalised expression x [B, G]."""
        return self.z_mean(self.encoder(x))

    def decode_counts(
        self, z: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """NB parameters of codes z [B, D]: (rho [B, G], theta [G], zero prob. [B, G] or None).

        rho_g is gene g's expected share of the cell's whole library (all genes), so the
        expected count is rho_g * L; the shares of the modelled genes sum to below 1.
        """
        h = self.decoder(z)
        rho = torch.softmax(self.rho_logits(h), dim=-1)[:, : self.n_genes]  # [B, G]
        theta = torch.exp(self.log_theta[: self.n_genes])  # [G]
        pi = torch.sigmoid(self.zi_logits(h)) if self.zi_logits is not None else None
        return rho, theta, pi

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Expected log-normalised expression [B, G] of codes z: log1p(rho * target_sum).

        With ZINB the expectation is over the zero inflation too: (1 - pi) rho.
        """
        rho, _, pi = self.decode_counts(z)
        if pi is not None:
            rho = rho * (1 - pi)
        return torch.log1p(rho * self.target_sum)

    def expected_log_expression(self, z: torch.Tensor, library: torch.Tensor) -> torch.Tensor:
        """E[log1p(X / L * target_sum)] [B, G] for codes z [B, D] and library sizes L [B].

        The mean of the log-normalised expression of cells drawn from the model at these codes
        and depths (:func:`nb_expected_log1p`; ZINB: times 1 - pi, its zeros add nothing), the
        scale of real cells averaged in log space. :meth:`decode` is the log of the mean instead.
        """
        rho, theta, pi = self.decode_counts(z)
        library = library.to(rho.dtype)[:, None]  # [B, 1]
        out = nb_expected_log1p(rho * library, theta.expand_as(rho), self.target_sum / library)
        return out if pi is None else (1 - pi) * out

    # ------------------------------------------------------------------------- training

    def loss(
        self,
        x: torch.Tensor,
        counts: torch.Tensor,
        library: torch.Tensor,
        kl_weight: float,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Mean over cells of the count NLL (+ kl_weight * KL); also the terms separately.

        x [B, G] log-normalised, counts [B, G] of the modelled genes, library [B] the whole
        library sizes (so the other genes' count is library - counts.sum(1)).
        """
        h = self.encoder(x)
        mean = self.z_mean(h)
        if self.z_logvar is not None:
            logvar = self.z_logvar(h).clamp(-12.0, 8.0)
            eps = torch.randn(mean.shape, generator=generator, device=mean.device)
            z = mean + torch.exp(0.5 * logvar) * eps
            kl = 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).sum(dim=1)  # [B]
        else:
            z, kl = mean, torch.zeros(len(x), device=x.device)
        nll = self.nll(z, counts, library)  # [B]
        total = (nll + kl_weight * kl).mean()
        return total, {"nll": nll.mean().detach(), "kl": kl.mean().detach()}

    def nll(self, z: torch.Tensor, counts: torch.Tensor, library: torch.Tensor) -> torch.Tensor:
        """Negative log-likelihood [B] of counts [B, G] and the other genes' total given codes z.

        library [B] is the whole library size: the other genes hold library - counts.sum(1).
        """
        hd = self.decoder(z)
        rho = torch.softmax(self.rho_logits(hd), dim=-1)  # [B, G + 1]
        other = (library - counts.sum(dim=1)).clamp(min=0.0)  # [B]
        mu = rho * library[:, None]  # [B, G + 1]
        theta = torch.exp(self.log_theta)  # [G + 1]
        ll = log_nb(other, mu[:, -1], theta[-1])  # [B]
        if self.zi_logits is not None:
            genes = log_zinb(counts, mu[:, :-1], theta[:-1], self.zi_logits(hd))
        else:
            genes = log_nb(counts, mu[:, :-1], theta[:-1])
        return -(ll + genes.sum(dim=1))


def build_count_autoencoder(
    config: str | dict[str, Any], n_genes: int, **overrides: Any
) -> CountAutoEncoder:
    """A count autoencoder from a named config ('default', 'large', 'tiny') or a dict."""
    if isinstance(config, str):
        if config not in COUNT_AUTOENCODER_CONFIGS:
            raise ValueError(
                f"unknown count autoencoder config {config!r}; "
                f"choose one of {sorted(COUNT_AUTOENCODER_CONFIGS)}"
            )
        config = COUNT_AUTOENCODER_CONFIGS[config]
    options = {k: v for k, v in dict(config).items() if k not in ("name", "n_genes")}
    options.update(overrides)
    return CountAutoEncoder(n_genes, **options)


@dataclass
class CountTraining:
    """Hyper-parameters of :func:`train_count_autoencoder`."""

    epochs: int = 150
    batch_size: int = 128
    learning_rate: float = 1e-3
    weight_decay: float = 1e-6
    kl_weight: float = 1e-3
    kl_warmup_epochs: int = 10
    min_steps: int = 2000
    theta_lr_factor: float = 10.0
    validation_fraction: float = 0.1
    patience_steps: int = 1500
    seed: int = 0
    device: str = "auto"
    progress: bool = True

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _check_inputs(
    model: CountAutoEncoder, x: np.ndarray, counts: Any, library: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    x = np.ascontiguousarray(x, dtype=np.float32)
    counts = np.ascontiguousarray(
        counts.toarray() if hasattr(counts, "toarray") else counts, dtype=np.float32
    )
    library = np.ascontiguousarray(library, dtype=np.float32).ravel()
    if x.ndim != 2 or x.shape[1] != model.n_genes or counts.shape != x.shape:
        raise ValueError(
            f"expected expression and counts [cells, {model.n_genes}], got {x.shape} and "
            f"{counts.shape}"
        )
    if len(library) != len(x):
        raise ValueError(f"{len(library)} library sizes for {len(x)} cells")
    if not (np.isfinite(x).all() and np.isfinite(counts).all() and np.isfinite(library).all()):
        raise ValueError("the expression, counts or library sizes hold NaN or infinite values")
    if (counts < 0).any() or (library <= 0).any():
        raise ValueError("counts must be >= 0 and library sizes > 0")
    return x, counts, library


def initial_log_theta(counts: np.ndarray, library: np.ndarray) -> np.ndarray:
    """Moment estimates of log theta [G + 1] (genes, then the other genes' total), float32.

    On counts scaled to the median library size, theta = mean^2 / (variance - mean), within
    [e^-3, e^5] (no over-dispersion: e^5). Differences between cell states inflate the variance,
    so this starts theta low; training raises it.
    """
    scale = (np.median(library) / library)[:, None]
    other = (library - counts.sum(axis=1))[:, None]
    c = np.concatenate([counts, other], axis=1).astype(np.float64) * scale
    mean, var = c.mean(axis=0), c.var(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        theta = np.where(var > mean, mean**2 / (var - mean), np.exp(5.0))
    return np.log(np.clip(np.nan_to_num(theta, nan=1.0), np.exp(-3.0), np.exp(5.0))).astype(
        np.float32
    )


@torch.no_grad()
def count_nll(
    model: CountAutoEncoder, x: np.ndarray, counts: Any, library: np.ndarray, batch: int = 1024
) -> float:
    """Mean negative log-likelihood per cell of (held-out) cells, decoding their mean codes."""
    model.eval()
    x, counts, library = _check_inputs(model, x, counts, library)
    total = 0.0
    for s in range(0, len(x), batch):
        xb, cb, lb = (torch.from_numpy(a[s : s + batch]) for a in (x, counts, library))
        total += float(model.nll(model.encode(xb), cb, lb).sum())
    return total / len(x)


def train_count_autoencoder(
    model: CountAutoEncoder,
    x: np.ndarray,
    counts: Any,
    library: np.ndarray,
    config: CountTraining,
) -> list[dict[str, float]]:
    """Fit ``model`` in place: x [N, G] log-normalised, counts [N, G], library [N] (all genes).

    AdamW with cosine LR decay over all steps; the KL weight rises linearly over the first
    ``kl_warmup_epochs`` epochs (as scVI warms it up), so the decoder first learns to
    reconstruct. At least ``min_steps`` optimiser steps are taken (more epochs on a small data
    set: 200 cells make 2 steps an epoch). The dispersions start at a moment estimate of each
    gene's counts and learn ``theta_lr_factor`` times faster than the network: Adam moves a
    parameter by about the learning rate per step, and log theta may need to travel several
    units. Early stopping, as scVI does it: ``validation_fraction`` of the cells (at least 20;
    none below 100 cells) are held back, their NLL is computed after every epoch, training stops
    once it has not improved for ``patience_steps`` steps, and the best epoch's weights are kept.
    Shuffles, latent noise and dropout draw from generators seeded by ``config.seed``. Returns
    the per-epoch history (mean NLL and KL per cell, validation NLL, seconds).
    """
    x, counts, library = _check_inputs(model, x, counts, library)
    device = resolve_device(config.device)
    held, keep = _validation_rows(len(x), config.validation_fraction, config.seed)
    val = (x[held], counts[held], library[held]) if len(held) else None
    x, counts, library = x[keep], counts[keep], library[keep]
    with torch.random.fork_rng(devices=[]):  # dropout masks, seeded; the caller's RNG untouched
        torch.manual_seed(config.seed)
        return _fit(model, x, counts, library, val, config, device)


def _fit(
    model: CountAutoEncoder,
    x: np.ndarray,
    counts: np.ndarray,
    library: np.ndarray,
    val: tuple[np.ndarray, np.ndarray, np.ndarray] | None,
    config: CountTraining,
    device: torch.device,
) -> list[dict[str, float]]:
    """The training loop of :func:`train_count_autoencoder` (inputs checked, split done)."""
    from tqdm.auto import tqdm

    gen = torch.Generator().manual_seed(config.seed)
    noise_gen = torch.Generator(device=device).manual_seed(config.seed + 1)
    with torch.no_grad():
        model.log_theta.copy_(torch.from_numpy(initial_log_theta(counts, library)))
    model.to(device).train()
    network = [p for n, p in model.named_parameters() if n != "log_theta"]
    opt = torch.optim.AdamW(
        [
            {"params": network},
            {"params": [model.log_theta], "lr": config.learning_rate * config.theta_lr_factor},
        ],
        lr=config.learning_rate,
        weight_decay=config.weight_decay,
    )
    N = len(x)
    steps_per_epoch = -(-N // config.batch_size)
    epochs = max(config.epochs, -(-config.min_steps // steps_per_epoch))
    if epochs > config.epochs and config.progress:
        print(
            f"cellsynth: {config.epochs} epochs are {config.epochs * steps_per_epoch} steps; "
            f"training {epochs} epochs ({epochs * steps_per_epoch} steps, the minimum "
            f"{config.min_steps}; early stopping may end it sooner)",
            file=sys.stderr,
        )
    total = epochs * steps_per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total))
    )
    tensors = [torch.from_numpy(a) for a in (x, counts, library)]
    history = []
    best: tuple[float, int, dict[str, torch.Tensor]] | None = None  # (NLL, step, weights)
    step = 0
    bar = tqdm(total=total, disable=not config.progress, desc="autoencoder (nb)", unit="step")
    try:
        for epoch in range(epochs):
            t0 = time.perf_counter()
            warm = min(1.0, (epoch + 1) / max(1, config.kl_warmup_epochs))
            kl_weight = config.kl_weight * warm
            perm = torch.randperm(N, generator=gen)
            sums = {"nll": 0.0, "kl": 0.0}
            for i in range(steps_per_epoch):
                idx = perm[i * config.batch_size : (i + 1) * config.batch_size]
                xb, cb, lb = (t[idx].to(device) for t in tensors)
                loss, terms = model.loss(xb, cb, lb, kl_weight, noise_gen)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                nn.utils.clip_grad_norm_(model.parameters(), 10.0)
                opt.step()
                sched.step()
                step += 1
                for k in sums:
                    sums[k] += float(terms[k]) * len(idx)
                bar.update(1)
                if i % 10 == 0:
                    bar.set_postfix(nll=f"{float(terms['nll']):.1f}", epoch=epoch + 1)
            row = {"epoch": epoch + 1, "step": step, **{k: v / N for k, v in sums.items()}}
            if not math.isfinite(row["nll"]):
                raise FloatingPointError(f"autoencoder training diverged in epoch {epoch + 1}")
            if val is not None:
                row["validation_nll"] = count_nll(model.to("cpu"), *val)
                model.to(device).train()
                if best is None or row["validation_nll"] < best[0]:
                    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
                    best = (row["validation_nll"], step, state)
                bar.set_postfix(val_nll=f"{row['validation_nll']:.1f}", epoch=epoch + 1)
            row["seconds"] = time.perf_counter() - t0
            history.append(row)
            if best is not None and step >= config.min_steps:
                if step - best[1] >= config.patience_steps:
                    break  # no better on the held-back cells for patience_steps: stop
    finally:
        bar.close()
    if best is not None:
        model.load_state_dict(best[2])
    model.eval().to("cpu")
    return history


def _validation_rows(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(held-back rows, training rows) for early stopping; nothing held back below 100 cells."""
    if n < 100 or fraction <= 0:
        return np.zeros(0, dtype=np.int64), np.arange(n)
    size = max(20, int(round(fraction * n)))
    perm = np.random.default_rng(seed + 7).permutation(n)
    return np.sort(perm[:size]), np.sort(perm[size:])
