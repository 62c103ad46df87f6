"""Dataset distillation: a few synthetic cells per class that train classifiers (scDD and more).

Each class gets SPC learnable parameters, initialised from its SPC k-means centroids (default)
or SPC of its real training cells (stratified, seeded). Each iteration turns all of them into
synthetic cells through a generator,

* ``scdg``:    cells = decode(SCDG(sqrt(ab) z + sqrt(1 - ab) eps, t*) / scale)   (scDD)
* ``decoder``: cells = decode(z)                                                  (no SCDG)
* ``none``:    cells = the parameters themselves                                  (classic DM/DC)

and scores them against the real training cells: DM and DC through the frozen encoder's
features f(x), KRR and LR on the cells themselves:

* DM: ``sum_c || mean f(synthetic_c) - mean f(real_c) ||^2``
* DC: for a freshly drawn linear task head on f (weights W [C, D], bias b [C]), the gradient of its
  cross-entropy on real and on synthetic cells of each class; ``sum_c sum_i (1 - cos(g_real_i,
  g_syn_i))`` over the output nodes i, where g_i is node i's gradient row [dL/dW_i, dL/db_i].
* KRR (kernel inducing points): not a statistic to match but the task itself: ridge regression
  with a linear kernel is fitted, in closed form, on the synthetic *cells* (expression, not
  encoder features, since that is what the classifiers see) and scored on a batch of real
  training cells (:func:`krr_loss`). Measured on Kang cell type, SPC 1, one seed, directly in
  expression space (``generator='none'``): logistic regression 0.952 on the set (class means
  0.944) but the transformer 0.88; through SCDG 0.93 (the single SCDG step keeps cells near
  the data and KRR cannot move them far enough).
* LR (bilevel): the evaluation's own learner. L2-regularised logistic regression is fitted on the
  synthetic cells (float64, warm-started Newton-CG) and its cross-entropy on the real training
  cells (all of them, or a uniform draw of ``lr_cells``) is the loss, differentiated through the
  fit by the implicit function theorem (:mod:`cellsynth.training.distill_logreg`), plus an
  anchor to each cell's start. The default: the only objective measured to beat one class-mean
  cell per class and k-means centroids on Kang (``benchmarks/distillation.py``); DM through
  SCDG is the scDD paper's.

Only the parameters are updated (Adam); the encoder, decoder and SCDG are frozen in eval mode.
Generated values below the decoder's zero threshold count as silent genes (set to 0), during
matching as in the output.

Memory: the generator runs once without autograd; the matching loss gives dLoss/dCells; then the
generator is re-run with autograd one chunk of parameters at a time and backpropagated with that
gradient, so the generator's activations never exist for all cells at once. Both passes see the
same noise, so the gradient equals plain autograd's (tested).
"""

from __future__ import annotations

import datetime as _dt
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from typing import Any

import anndata
import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
import torch.nn.functional as F

from cellsynth._version import __version__
from cellsynth.bundle.load import Bundle
from cellsynth.errors import DataError
from cellsynth.training.distill_data import Task, load_task
from cellsynth.training.distill_logreg import LogisticRegressionFit
from cellsynth.training.distill_networks import NetworkTerm, parse_networks
from cellsynth.training.distill_statistics import (
    RandomFeatures,
    covariance,
    covariance_loss,
    mmd_loss,
    separation_loss,
)
from cellsynth.training.scdg import single_step

MATCHES = ("dm", "dc", "krr", "lr", "mmd")
GENERATORS = ("scdg", "decoder", "none")
INITS = ("kmeans", "random")
FEATURES = ("encoder", "random")


@dataclass
class DistillConfig:
    """Settings of one distillation.

    Attributes
    ----------
    spc : int
        Synthetic cells per class.
    match : {'dm', 'dc', 'krr', 'lr', 'mmd'}
        ``mmd``: per class, the multi-kernel MMD between synthetic and real features
        (:mod:`cellsynth.training.distill_statistics`).
    generator : {'scdg', 'decoder', 'none'}
    init : {'kmeans', 'random'}
        Where the SPC parameters of a class start: its SPC k-means centroids in expression space
        (scikit-learn, seeded), each then matched by DM to the mean of its own cluster, so the
        set keeps covering the class; or SPC random cells of the class, matched by DM to the
        class mean (the scDD paper's).
    iterations : int
        Optimiser steps.
    learning_rate : float
        Adam step size (the same default suits scaled codes and expression values).
    t_star : int
        SCDG's single-step timestep.
    real_batch : int
        DC: real cells per class drawn each iteration; KRR: times the number of classes, drawn
        uniformly from the training cells (LR uses ``lr_cells``).
    chunk_size : int
        Parameters per chunk of the memory-saving backward.
    seed : int
    ridge : float
        KRR: the ridge, relative to the kernel's mean diagonal (about 2).
    logreg_c : float
        LR: the inner logistic regression's inverse regularisation (scikit-learn's ``C``; the
        evaluation's is 1).
    anchor : float
        LR: weight of the squared distance (summed over genes, averaged over cells) of each
        synthetic cell to where it started in expression space (its k-means centroid, or the
        real cell with ``init='random'``), whatever the generator. Without it the cells drift to
        wherever logistic regression gains most and other learners lose (Kang cell type, SPC 5,
        one seed, the same loss in a script, anchor 0 / 0.01 / 0.1: logistic regression 0.969 /
        0.965 / 0.961, MLP 0.922 / 0.950 / 0.952, transformer 0.74 / 0.88 / 0.91).
    network_weight : float
        Weight of the networks' term (:mod:`cellsynth.training.distill_networks`): fresh
        networks trained on the synthetic cells by ``unroll_steps`` differentiable AdamW steps
        and scored on ``network_cells`` real training cells, added to the loss. 0 (default)
        leaves it out. Measured at 0.3 (``benchmarks/distillation.py --network-weight 0.3``,
        Kang, 5 seeds): on cell type the transformer rises from 0.88-0.89 to 0.92-0.93 and
        logistic regression falls by 0.003-0.007; on stim both networks fall (MLP 0.970 to 0.940
        at SPC 1); each set takes about 4 times as long (5-8 on PBMC 3k). Hence off by default.
    networks : str
        Comma-separated network kinds of that term ('mlp', 'transformer').
    unroll_steps : int
        AdamW steps each network takes on the synthetic cells per iteration.
    unroll_learning_rate : float
        Their step size.
    network_cells : int
        Real training cells, drawn uniformly each iteration, that score the networks.
    features : {'encoder', 'random'}
        DM / MMD: the feature map, the bundle's frozen encoder or a randomly initialised ReLU
        network drawn afresh every iteration (DM's recipe for images); real features then come
        from ``real_batch`` cells per class (DM: per k-means cluster) drawn each iteration.
    dc_steps : int
        DC: heads at which gradients are matched each iteration, the fresh one and after each
        of ``dc_steps - 1`` gradient steps of it on the synthetic cells (DC's inner loop;
        1: the fresh head only).
    dc_head_lr : float
        DC: the step size of those head steps.
    covariance : float
        DM: weight of the per-class feature-covariance term added to the mean matching
        (0: off).
    separation : float
        Any match: weight of a Gaussian repulsion between synthetic cells of different classes,
        in expression space, its bandwidth the mean squared distance between real class means
        (0: off).
    lr_cells : int
        LR: real training cells that score each iteration: all of them when there are at most
        this many (the loss is then exact; measured on Kang cell type without the anchor, all
        10,861 cells gave 0.964 / 0.968 / 0.968 at SPC 1 / 5 / 10 against 0.958 / 0.964 / 0.965
        with 2,048 drawn per iteration), else a fresh uniform draw of this many.
    """

    spc: int = 1
    match: str = "lr"
    generator: str = "none"
    init: str = "kmeans"
    iterations: int = 200
    learning_rate: float = 0.05
    t_star: int = 50
    real_batch: int = 256
    chunk_size: int = 256
    seed: int = 0
    ridge: float = 0.001
    logreg_c: float = 1.0
    anchor: float = 0.01
    lr_cells: int = 50_000
    network_weight: float = 0.0
    networks: str = "mlp,transformer"
    unroll_steps: int = 10
    unroll_learning_rate: float = 0.003
    network_cells: int = 512
    features: str = "encoder"
    dc_steps: int = 1
    dc_head_lr: float = 0.5
    covariance: float = 0.0
    separation: float = 0.0

    def __post_init__(self) -> None:
        if self.match not in MATCHES:
            raise DataError(f"--match must be one of {MATCHES}, got {self.match!r}")
        if self.generator not in GENERATORS:
            raise DataError(f"--generator must be one of {GENERATORS}, got {self.generator!r}")
        if self.init not in INITS:
            raise DataError(f"--init must be one of {INITS}, got {self.init!r}")
        if self.features not in FEATURES:
            raise DataError(f"features must be one of {FEATURES}, got {self.features!r}")
        if self.features != "encoder" and self.match not in ("dm", "mmd"):
            raise DataError("features apply to --match dm or mmd only")
        for name in ("covariance", "separation"):
            value = getattr(self, name)
            if not (value >= 0 and math.isfinite(value)):
                raise DataError(f"{name} must be 0 or more, got {value}")
        if not (self.dc_head_lr > 0 and math.isfinite(self.dc_head_lr)):
            raise DataError(f"dc_head_lr must be positive, got {self.dc_head_lr}")
        if int(self.dc_steps) > 1 and self.match != "dc":
            raise DataError("dc_steps applies to --match dc only")
        if self.covariance > 0 and self.match != "dm":
            raise DataError("the covariance term applies to --match dm only")
        if not self.ridge > 0:
            raise DataError(f"ridge must be positive, got {self.ridge}")
        if not self.logreg_c > 0:
            raise DataError(f"logreg_c must be positive, got {self.logreg_c}")
        if not self.anchor >= 0:
            raise DataError(f"anchor must be 0 or more, got {self.anchor}")
        if not (self.network_weight >= 0 and math.isfinite(self.network_weight)):
            raise DataError(f"network_weight must be 0 or more, got {self.network_weight}")
        if not (self.unroll_learning_rate > 0 and math.isfinite(self.unroll_learning_rate)):
            raise DataError(
                f"unroll_learning_rate must be positive, got {self.unroll_learning_rate}"
            )
        self.networks = ",".join(parse_networks(self.networks))
        for name in (
            "spc", "iterations", "real_batch", "chunk_size", "lr_cells", "unroll_steps",
            "network_cells", "dc_steps",
        ):  # fmt: skip
            if int(getattr(self, name)) < 1:
                raise DataError(f"{name} must be at least 1, got {getattr(self, name)}")


# The settings a distilled set records and a re-run reuses (the saturation study, distill-eval's
# distillation baselines): every field but the budget and the seed, which each caller sets.
SETTINGS: tuple[str, ...] = tuple(
    f.name for f in fields(DistillConfig) if f.name not in ("spc", "seed")
)

# cellsynth's additions to the published objectives (DM, DC, scDD): distill-eval's baselines of
# those names run without them, at DistillConfig's defaults.
ADDITIONS: tuple[str, ...] = (
    "network_weight", "networks", "unroll_steps", "unroll_learning_rate", "network_cells",
    "features", "covariance", "separation", "dc_steps", "dc_head_lr",
)  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Matching losses (each a function of synthetic features; real statistics are precomputed)


def dm_loss(
    syn_features: torch.Tensor, syn_labels: torch.Tensor, real_means: torch.Tensor
) -> torch.Tensor:
    """Distribution matching: sum over classes of ||mean synthetic feature - real mean||^2.

    Parameters
    ----------
    syn_features : Tensor [n, D]
    syn_labels : LongTensor [n]
        Class of each synthetic cell; classes without synthetic cells are skipped.
    real_means : Tensor [C, D]
        Mean real feature per class.
    """
    C = real_means.shape[0]
    onehot = F.one_hot(syn_labels, C).to(syn_features.dtype)  # [n, C]
    counts = onehot.sum(0)  # [C]
    present = counts > 0
    means = (onehot.T @ syn_features)[present] / counts[present, None]  # [C', D]
    return ((means - real_means[present]) ** 2).sum()


def head_gradients(
    features: torch.Tensor, label: int, weight: torch.Tensor, bias: torch.Tensor
) -> torch.Tensor:
    """Gradient rows [C, D + 1] of the mean cross-entropy of a linear head on one class's cells.

    For logits ``f W^T + b`` and probabilities P [n, C], dL/dW = (P - Y)^T f / n and
    dL/db = mean(P - Y); row i is output node i's [dL/dW_i, dL/db_i]. Closed form, so it stays
    differentiable in ``features`` without a double backward.
    """
    logits = features @ weight.T + bias  # [n, C]
    p = logits.softmax(dim=1)  # [n, C]
    p = p - F.one_hot(torch.full_like(p[:, 0], label, dtype=torch.long), p.shape[1]).to(p.dtype)
    n = features.shape[0]
    g_w = p.T @ features / n  # [C, D]
    g_b = p.mean(0)  # [C]
    return torch.cat([g_w, g_b[:, None]], dim=1)  # [C, D + 1]


def gradient_distance(g_real: torch.Tensor, g_syn: torch.Tensor) -> torch.Tensor:
    """Layer-wise cosine distance: sum over output nodes of 1 - cos(real row, synthetic row)."""
    cos = F.cosine_similarity(g_real, g_syn, dim=1, eps=1e-8)  # [C]
    return (1.0 - cos).sum()


def dc_loss(
    syn_features: torch.Tensor,
    syn_labels: torch.Tensor,
    real_features: list[torch.Tensor],
    weight: torch.Tensor,
    bias: torch.Tensor,
) -> torch.Tensor:
    """Gradient matching: sum over classes of the head-gradient distance (see module docstring).

    Parameters
    ----------
    syn_features : Tensor [n, D]
    syn_labels : LongTensor [n]
    real_features : list of Tensor [n_c, D]
        A batch of real features per class.
    weight, bias : Tensor [C, D], [C]
        The task head (not optimised here).
    """
    total = syn_features.new_zeros(())
    for c, real in enumerate(real_features):
        mask = syn_labels == c
        if not bool(mask.any()) or len(real) == 0:
            continue
        g_real = head_gradients(real, c, weight, bias).detach()
        g_syn = head_gradients(syn_features[mask], c, weight, bias)
        total = total + gradient_distance(g_real, g_syn)
    return total


def dc_trajectory_loss(
    syn_features: torch.Tensor,
    syn_labels: torch.Tensor,
    real_features: list[torch.Tensor],
    weight: torch.Tensor,
    bias: torch.Tensor,
    steps: int,
    head_lr: float,
) -> torch.Tensor:
    """DC along the head's training: :func:`dc_loss` at the fresh head and after each of
    ``steps - 1`` gradient steps of the head on the synthetic cells' cross-entropy.

    DC's inner loop (Zhao et al. 2021) trains the network on the synthetic set between matching
    steps, so the cells are matched where a learner trained on them will be, not only at its
    initialisation. The head's steps see the cells detached (as DC's network updates do).
    """
    total = dc_loss(syn_features, syn_labels, real_features, weight, bias)
    onehot = F.one_hot(syn_labels, weight.shape[0]).to(syn_features.dtype)
    f = syn_features.detach()
    for _ in range(steps - 1):
        residual = (f @ weight.T + bias).softmax(1) - onehot  # d mean CE / d logits, times n
        weight = weight - head_lr * residual.T @ f / len(f)
        bias = bias - head_lr * residual.mean(0)
        total = total + dc_loss(syn_features, syn_labels, real_features, weight, bias)
    return total


def krr_loss(
    syn: torch.Tensor,
    syn_labels: torch.Tensor,
    real: torch.Tensor,
    real_labels: torch.Tensor,
    n_classes: int,
    ridge: float,
) -> torch.Tensor:
    """Kernel ridge regression on the synthetic cells, scored on real cells (KIP).

    A linear model with a bias fitted to few cells lies in their span (the representer
    theorem; so does L2-regularised logistic regression), so its predictions are those of a
    kernel machine on the linear kernel k(a, b) = a.b / s + 1, with s the mean squared norm of
    the synthetic cells (so ``ridge`` is relative to the kernel's scale). Ridge regression has
    them in closed form: alpha = (K_ss + ridge I)^-1 Y_s, predictions K_rs alpha, so the loss,
    the mean squared error on the real cells' centred one-hot labels, is differentiable in the
    synthetic cells without unrolling a training loop (Nguyen et al. 2021, "KIP").

    Parameters
    ----------
    syn : Tensor [n, G]
    syn_labels : LongTensor [n]
    real : Tensor [m, G]
    real_labels : LongTensor [m]
    n_classes : int
    ridge : float
        > 0; relative to the kernel's mean diagonal (~2).
    """
    # float64: with a small ridge, near-duplicate synthetic cells make K_ss ill-conditioned.
    syn64, real64 = syn.double(), real.double()
    ys = F.one_hot(syn_labels, n_classes).double() - 1.0 / n_classes  # [n, C]
    yr = F.one_hot(real_labels, n_classes).double() - 1.0 / n_classes  # [m, C]
    scale = (syn64 * syn64).sum(1).mean().detach().clamp_min(1e-12)
    k_ss = syn64 @ syn64.T / scale + 1.0  # [n, n]
    k_rs = real64 @ syn64.T / scale + 1.0  # [m, n]
    eye = torch.eye(len(syn), dtype=torch.float64)
    alpha = torch.linalg.solve(k_ss + ridge * eye, ys)  # [n, C]
    return ((k_rs @ alpha - yr) ** 2).sum(1).mean().to(syn.dtype)


# ---------------------------------------------------------------------------------------------
# Generators: parameters -> synthetic cells in gene space


class CellGenerator:
    """Turns distillation parameters [n, P] into expression [n, G] (frozen models, eval mode).

    ``noise`` ([n, D], SCDG only) is passed in so two passes over the same parameters agree.
    """

    def __init__(self, kind: str, bundle: Bundle, t_star: int) -> None:
        self.kind = kind
        ae_bundle = bundle.autoencoder
        self.ae = _frozen(ae_bundle.to_torch())
        self.zero_threshold = float(ae_bundle.config.get("decode", {}).get("zero_threshold", 0.0))
        # A count decoder gives cells as the expected log-normalised expression at a typical
        # depth for the cell's labels (see _decode); an MSE decoder's output is that already.
        self.counts = hasattr(self.ae, "expected_log_expression")
        self.library_of = _typical_library(bundle) if self.counts else None
        self.scdg = None
        if kind == "scdg":
            if bundle.kind != "latent_diffusion":
                raise DataError(
                    f"--generator scdg needs an SCDG bundle; {bundle.path} is an autoencoder "
                    "(use --generator decoder or none)"
                )
            self.scdg = _frozen(bundle.to_torch())
            self.scale = float(bundle.config["latent"]["scale"])
            T = bundle.schedule.num_train_timesteps
            if not 0 <= t_star < T:
                raise DataError(f"t_star must be in [0, {T}), got {t_star}")
            self.t_star = int(t_star)
            self.alphas_cumprod = torch.as_tensor(
                np.asarray(bundle.schedule.alphas_cumprod), dtype=torch.float64
            )

    @property
    def latent_dim(self) -> int:
        return self.ae.latent_dim

    def truncate(self, x: torch.Tensor) -> torch.Tensor:
        """Values below the decoder's zero threshold (and all negatives) become exact zeros."""
        return torch.where(x >= max(self.zero_threshold, 0.0), x, torch.zeros_like(x))

    def initial(self, x_real: np.ndarray) -> torch.Tensor:
        """Parameters [n, P] that start from the given real cells [n, G]."""
        x = torch.as_tensor(np.asarray(x_real, dtype=np.float32))
        if self.kind == "none":
            return x.clone()
        with torch.no_grad():
            z = self.ae.encode(x)  # [n, D]
        return z * self.scale if self.kind == "scdg" else z

    def __call__(
        self, params: torch.Tensor, cond: torch.Tensor, noise: torch.Tensor | None
    ) -> torch.Tensor:
        if self.kind == "none":
            return self.truncate(params)
        z = params
        if self.kind == "scdg":
            z = single_step(self.scdg, params, cond, noise, self.t_star, self.alphas_cumprod)
            z = z / self.scale
        return self.truncate(self._decode(z, cond))

    def _decode(self, z: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """Expression [n, G] of codes z [n, D].

        A count decoder's ``decode`` is log1p of the expected expression; real cells averaged in
        log space (what a class-mean cell or a classifier's weights reflect) are on the scale of
        the expected log1p, which is far lower for sparse genes (Jensen's gap). Measured on Kang
        (logistic regression on one cell per class from the mean code): 0.904 accuracy with
        decode, 0.929 with the expected log1p; stim at 10 cells per class: 0.923 -> 0.984.
        """
        if not self.counts:
            return self.ae.decode(z)
        return self.ae.expected_log_expression(z, self.library_of(cond))


def _typical_library(bundle: Bundle) -> Callable[[torch.Tensor], torch.Tensor]:
    """Library size [n] for SCDG label codes [n, K]: the median of the bundle's log-normal for
    that label combination (what generation draws from), else of all training cells."""
    from cellsynth.generation.counts import LibraryModel

    library = (bundle.config.get("latent") or {}).get("library")
    if library is None:  # an autoencoder bundle: its training cells' depth
        median = float(np.exp(bundle.autoencoder.preprocessing.library_size.mean_log))
        return lambda cond: torch.full((len(cond),), median)
    model = LibraryModel.from_dict(library)

    def of(cond: torch.Tensor) -> torch.Tensor:
        mean_log, _ = model.parameters(cond.detach().cpu().numpy())
        return torch.as_tensor(np.exp(mean_log), dtype=torch.float32)

    return of


def _frozen(module: torch.nn.Module) -> torch.nn.Module:
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module


# ---------------------------------------------------------------------------------------------
# The optimisation


def chunked_gradient(
    generator: Callable[[torch.Tensor, torch.Tensor, Any], torch.Tensor],
    params: torch.Tensor,
    cond: torch.Tensor,
    noise: torch.Tensor | None,
    loss_fn: Callable[[torch.Tensor], torch.Tensor],
    chunk_size: int,
) -> tuple[float, torch.Tensor]:
    """Loss and dLoss/dParams with the memory-saving two-pass backward (module docstring).

    Returns
    -------
    (loss value, gradient [n, P]) ; ``params`` itself is not modified.
    """
    n = params.shape[0]
    with torch.no_grad():
        cells = torch.cat(
            [
                generator(
                    params[i : i + chunk_size],
                    cond[i : i + chunk_size],
                    None if noise is None else noise[i : i + chunk_size],
                )
                for i in range(0, n, chunk_size)
            ]
        )  # [n, G]
    cells.requires_grad_(True)
    loss = loss_fn(cells)
    (d_cells,) = torch.autograd.grad(loss, cells)  # [n, G]
    grad = torch.zeros_like(params)
    for i in range(0, n, chunk_size):
        p = params[i : i + chunk_size].detach().requires_grad_(True)
        out = generator(
            p, cond[i : i + chunk_size], None if noise is None else noise[i : i + chunk_size]
        )
        out.backward(d_cells[i : i + chunk_size])
        grad[i : i + chunk_size] = p.grad
    return float(loss.detach()), grad


def _class_cells(task: Task, c: int, spc: int) -> np.ndarray:
    """Training-cell indices of class ``c``, refused when the class has fewer than SPC cells."""
    idx = task.class_indices(c)
    if spc > len(idx):
        raise DataError(
            f"SPC {spc} is larger than class {task.classes[c]!r} of {task.label!r}, which has "
            f"{len(idx)} training cells; lower --spc"
        )
    return idx


def initial_cells(task: Task, spc: int, seed: int) -> np.ndarray:
    """Indices [C * spc] of the real training cells the parameters start from (class-major)."""
    rng = np.random.default_rng(seed)
    chosen = []
    for c in range(len(task.classes)):
        idx = _class_cells(task, c, spc)
        chosen.append(np.sort(rng.choice(idx, size=spc, replace=False)))
    return np.concatenate(chosen)


def fit_kmeans(x: np.ndarray, k: int, seed: int, max_iter: int = 300) -> Any:
    """scikit-learn's KMeans (k-means++, 3 starts, seeded) on float64 rows [n, G]: the one
    k-means of the distillation's start and of distill-eval's ``kmeans`` baseline."""
    from sklearn.cluster import KMeans

    return KMeans(n_clusters=k, n_init=3, random_state=seed, max_iter=max_iter).fit(x)


def kmeans_start(task: Task, spc: int, seed: int) -> tuple[np.ndarray, np.ndarray, list]:
    """SPC k-means centroids per class in expression space (class-major).

    Returns
    -------
    centroids : float32 [C * spc, G]
    nearest : int [C * spc]
        The training cell nearest each centroid (its labels condition the SCDG; named in the
        output as the cell it started from).
    members : list of int arrays
        Training-cell indices of each centroid's cluster.
    """
    centroids, nearest, members = [], [], []
    for c in range(len(task.classes)):
        idx = _class_cells(task, c, spc)
        x = task.x_train[idx].astype(np.float64)
        km = fit_kmeans(x, spc, seed)
        for j in range(spc):
            inside = np.flatnonzero(km.labels_ == j)
            if inside.size == 0:  # k-means can leave a cluster empty on duplicated cells
                inside = np.argsort(((x - km.cluster_centers_[j]) ** 2).sum(1))[:1]
            centre = km.cluster_centers_[j]
            near = inside[np.argmin(((x[inside] - centre) ** 2).sum(1))]
            centroids.append(centre.astype(np.float32))
            nearest.append(idx[near])
            members.append(idx[inside])
    return np.stack(centroids), np.asarray(nearest, dtype=np.int64), members


class Distiller:
    """One distillation run over a :class:`Task` (see :func:`distill`)."""

    def __init__(self, task: Task, config: DistillConfig) -> None:
        self.task, self.config = task, config
        self.gen = CellGenerator(config.generator, task.bundle, config.t_star)
        self.C = len(task.classes)
        self.rng = torch.Generator().manual_seed(config.seed)
        with torch.no_grad():
            feats = self.gen.ae.encode(torch.as_tensor(task.x_train))  # [N, D], all train cells
        self.real_by_class = [feats[task.class_indices(c)] for c in range(self.C)]
        self.real_means = torch.stack([f.mean(0) for f in self.real_by_class])  # [C, D]
        if config.init == "kmeans":
            start, self.init_idx, members = kmeans_start(task, config.spc, config.seed)
        else:
            self.init_idx = initial_cells(task, config.spc, config.seed)  # [C * spc]
            start, members = task.x_train[self.init_idx], None
        self.labels = torch.as_tensor(task.y_train[self.init_idx])  # [n]
        self.cond = torch.as_tensor(task.cond_train[self.init_idx])  # [n, K]
        self.params = self.gen.initial(start)  # [n, P]
        self.start_cells = torch.as_tensor(np.asarray(start, dtype=np.float32))  # LR's anchor
        # DM targets: each synthetic cell's own cluster mean [n, D] with the k-means start,
        # else the mean of its class [C, D].
        if members is not None:
            self.dm_groups = torch.arange(len(self.init_idx))
            self.dm_members = members
            self.dm_targets = torch.stack([feats[m].mean(0) for m in members])
        else:
            self.dm_groups, self.dm_targets = self.labels, self.real_means
            self.dm_members = [task.class_indices(c) for c in range(self.C)]
        self.separation_bandwidth = None
        if config.separation > 0:  # how far apart real classes are, in expression space
            means = torch.stack(
                [torch.as_tensor(task.x_train[task.class_indices(c)]).double().mean(0)
                 for c in range(self.C)]
            )  # fmt: skip
            d = torch.cdist(means, means) ** 2
            self.separation_bandwidth = float(d[~torch.eye(self.C, dtype=torch.bool)].mean())
        # LR keeps its fit between iterations (a warm start; the cells move a little per step).
        self.logreg = LogisticRegressionFit(self.C, config.logreg_c)
        self._lr_real: torch.Tensor | None = None
        self.network_term = None
        if config.network_weight > 0:
            self.network_term = NetworkTerm(
                config.networks, task.x_train.shape[1], self.C,
                config.unroll_steps, config.unroll_learning_rate, config.network_cells, self.rng,
            )  # fmt: skip

    def noise(self, generator: torch.Generator | None = None) -> torch.Tensor | None:
        """SCDG noise [n, D] for the parameters (None for other generators); from ``self.rng``
        unless a generator is given."""
        if self.config.generator != "scdg":
            return None
        return torch.randn(self.params.shape, generator=generator or self.rng)

    def loss_fn(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """This iteration's loss of synthetic cells [n, G]: the matching loss, plus the networks'
        term when it is on (both draw their randomness here)."""
        terms = [(1.0, self.matching_fn())]
        if self.network_term is not None:
            terms.append((self.config.network_weight, self.network_term.draw(
                torch.as_tensor(self.task.x_train), torch.as_tensor(self.task.y_train), self.labels
            )))  # fmt: skip
        if self.separation_bandwidth is not None:
            labels, bandwidth = self.labels, self.separation_bandwidth
            terms.append(
                (self.config.separation, lambda cells: separation_loss(cells, labels, bandwidth))
            )
        if len(terms) == 1:
            return terms[0][1]
        return lambda cells: sum(weight * term(cells) for weight, term in terms)

    def matching_fn(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """This iteration's matching loss of synthetic cells [n, G] (DC draws head and batches)."""
        encode = self.gen.ae.encode
        if self.config.match in ("dm", "mmd"):
            return self._statistics_fn()
        if self.config.match == "lr":
            return self._lr_loss_fn()
        if self.config.match == "krr":
            # Uniform over the training cells, as the test cells are: accuracy weighs classes
            # by their size.
            n = len(self.task.y_train)
            m = min(self.config.real_batch * self.C, n)
            pick = torch.randperm(n, generator=self.rng)[:m].numpy()
            real = torch.as_tensor(self.task.x_train[pick])  # [m, G]
            labels = torch.as_tensor(self.task.y_train[pick])
            ridge = self.config.ridge
            return lambda cells: krr_loss(cells, self.labels, real, labels, self.C, ridge)
        D = self.real_means.shape[1]
        weight = torch.randn(self.C, D, generator=self.rng) / D**0.5  # [C, D], fresh head
        bias = torch.zeros(self.C)
        batches = []
        for f in self.real_by_class:
            k = min(self.config.real_batch, len(f))
            batches.append(f[torch.randperm(len(f), generator=self.rng)[:k]])
        steps, head_lr = int(self.config.dc_steps), self.config.dc_head_lr
        return lambda cells: dc_trajectory_loss(
            encode(cells), self.labels, batches, weight, bias, steps, head_lr
        )

    def _statistics_fn(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """DM (and its covariance term) or MMD through this iteration's feature map."""
        config, task = self.config, self.task
        if config.features == "encoder":
            features = self.gen.ae.encode
            real_groups = [self.real_by_class[c] for c in range(self.C)]  # all, precomputed
            dm_targets = self.dm_targets
        else:  # a fresh random network; real features from a draw of each group's cells
            features = RandomFeatures(task.x_train.shape[1], self.rng)

            def draw(idx: np.ndarray) -> np.ndarray:
                k = min(config.real_batch, len(idx))
                return idx[torch.randperm(len(idx), generator=self.rng)[:k].numpy()]

            def embed(picks: list[np.ndarray]) -> list[torch.Tensor]:
                with torch.no_grad():
                    return [features(torch.as_tensor(task.x_train[p])) for p in picks]

            # Both draws are made whatever the match (the random stream, and so every set, stays
            # as benchmarked); only the features the loss reads are computed.
            member_picks = [draw(m) for m in self.dm_members]
            class_picks = [draw(task.class_indices(c)) for c in range(self.C)]
            if config.match == "mmd":
                real_groups = embed(class_picks)
            else:
                dm_targets = torch.stack([f.mean(0) for f in embed(member_picks)])
                real_groups = embed(class_picks) if config.covariance > 0 else []
        if config.match == "mmd":
            if config.features == "encoder":  # a batch per class, as for DC
                real_groups = [
                    f[torch.randperm(len(f), generator=self.rng)[: config.real_batch]]
                    for f in real_groups
                ]
            return lambda cells: mmd_loss(features(cells), self.labels, real_groups)
        groups = self.dm_groups
        if config.covariance == 0:
            return lambda cells: dm_loss(features(cells), groups, dm_targets)
        real_cov = torch.stack([covariance(f) for f in real_groups])  # [C, D, D]
        weight = config.covariance

        def loss(cells: torch.Tensor) -> torch.Tensor:
            f = features(cells)
            spread = covariance_loss(f, self.labels, real_cov)
            return dm_loss(f, groups, dm_targets) + weight * spread

        return loss

    def _lr_loss_fn(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """LR: the bilevel loss on all training cells (or a uniform draw) plus the anchor."""
        n = len(self.task.y_train)
        if n <= self.config.lr_cells:
            if self._lr_real is None:  # float64 once, not a copy per iteration
                self._lr_real = torch.as_tensor(self.task.x_train).double()  # [N, G]
            real, labels = self._lr_real, torch.as_tensor(self.task.y_train)
        else:
            pick = torch.randperm(n, generator=self.rng)[: self.config.lr_cells].numpy()
            real = torch.as_tensor(self.task.x_train[pick])
            labels = torch.as_tensor(self.task.y_train[pick])
        anchor, start = self.config.anchor, self.start_cells

        def loss(cells: torch.Tensor) -> torch.Tensor:
            value = self.logreg.loss(cells, self.labels, real, labels)
            if anchor > 0:
                value = value + anchor * ((cells - start) ** 2).sum(1).mean()
            return value

        return loss

    def run(self, progress: bool = True) -> list[float]:
        from tqdm.auto import tqdm

        params = self.params.clone().requires_grad_(True)
        opt = torch.optim.Adam([params], lr=self.config.learning_rate)
        history = []
        bar = tqdm(
            range(self.config.iterations),
            disable=not progress,
            desc=f"distilling ({self.config.match}, {self.config.generator})",
            unit="it",
        )
        for _ in bar:
            loss, grad = chunked_gradient(
                self.gen, params.detach(), self.cond, self.noise(), self.loss_fn(),
                self.config.chunk_size,
            )  # fmt: skip
            if not np.isfinite(loss):
                rates = "the learning rate" + (
                    " or the unroll learning rate" if self.network_term is not None else ""
                )
                raise FloatingPointError(f"distillation diverged; lower {rates}")
            history.append(loss)
            bar.set_postfix(loss=f"{loss:.4g}")
            opt.zero_grad(set_to_none=True)
            params.grad = grad
            opt.step()
        self.params = params.detach()
        return history

    def cells(self) -> np.ndarray:
        """The synthetic cells [n, G] of the current parameters (noise from the seed)."""
        noise = self.noise(torch.Generator().manual_seed(self.config.seed + 1))
        with torch.no_grad():
            return self.gen(self.params, self.cond, noise).numpy()

    def matching_loss(self, params: torch.Tensor | None = None, seed: int = 12345) -> float:
        """DM loss of ``params`` (default: the current ones) with fixed noise, for comparisons
        (to the cluster means with the k-means start, else to the class means)."""
        params = self.params if params is None else params
        noise = self.noise(torch.Generator().manual_seed(seed))
        with torch.no_grad():
            cells = self.gen(params, self.cond, noise)
            return float(dm_loss(self.gen.ae.encode(cells), self.dm_groups, self.dm_targets))


def distill(
    bundle: str | os.PathLike | Bundle,
    data: str | os.PathLike | anndata.AnnData,
    label: str,
    spc: int,
    match: str = "lr",
    generator: str = "none",
    iterations: int | None = None,
    seed: int = 0,
    progress: bool = True,
    task: Task | None = None,
    **options: Any,
) -> anndata.AnnData:
    """Distil ``data`` into ``spc`` synthetic cells per class of ``label``.

    Parameters
    ----------
    bundle : path, shipped name or Bundle
        An SCDG bundle ('kang-scdg'), or an autoencoder bundle for ``generator`` decoder/none.
    data : path, built-in name or AnnData
        The counts the bundle was trained on (its split is rebuilt; test cells are never used).
    label : str
        The obs column that defines the classes (any categorical label).
    spc : int
        Synthetic cells per class.
    match : {'lr', 'dm', 'dc', 'krr'}
        The bilevel logistic regression (default; module docstring), distribution matching,
        gradient matching or kernel ridge regression (KIP).
    generator : {'none', 'scdg', 'decoder'}
        Directly in expression space (default), through SCDG + decoder (scDD), or the decoder
        only.
    iterations : int, optional
        Optimiser steps (default 200).
    task : Task, optional
        An already loaded task (skips re-preparing the data).
    **options
        Other :class:`DistillConfig` fields (``init``, ``learning_rate``, ``t_star``,
        ``real_batch``, ``chunk_size``, ``ridge``, ``logreg_c``, ``anchor``, ``lr_cells``,
        ``network_weight``, ``networks``, ``unroll_steps``, ``unroll_learning_rate``,
        ``network_cells``).

    Returns
    -------
    AnnData
        ``X`` float32 [C * spc, G] log-normalised expression; ``obs[label]`` the class;
        ``obs['init_cell']`` the real cell each started from (with the k-means start, the
        training cell nearest its centroid, whose labels condition the SCDG);
        ``uns['cellsynth']`` (command 'distill') provenance and the loss history.
    """
    started = time.perf_counter()
    if task is None:
        task = load_task(bundle, data, label)
    elif task.label != label:
        raise DataError(f"the given task is for label {task.label!r}, not {label!r}")
    config = DistillConfig(
        spc=spc, match=match, generator=generator, seed=seed,
        **({"iterations": iterations} if iterations is not None else {}), **options,
    )  # fmt: skip
    run = Distiller(task, config)
    history = run.run(progress=progress)
    X = run.cells().astype(np.float32)
    names = [f"distilled-{task.classes[c]}-{i}" for c, i in _class_ranks(run.labels.numpy())]
    obs = pd.DataFrame(
        {
            label: pd.Categorical.from_codes(run.labels.numpy(), categories=task.classes),
            "init_cell": np.asarray(task.cell_names[run.init_idx], dtype=str),
        },
        index=pd.Index(names, dtype=object),
    )
    b = task.bundle
    provenance = {
        "command": "distill",
        "bundle": str(b.path),
        "bundle_hash": b.hash,
        "data": str(data) if isinstance(data, str | os.PathLike) else "AnnData",
        "label": label,
        **asdict(config),
        "loss_history": [float(v) for v in history],
        # LR: whether every inner fit reached its tolerance (the implicit gradient assumes it)
        "lr_fit": run.logreg.record() if config.match == "lr" else None,
        # the networks' term alone, per iteration (its draws differ each time: a noisy curve)
        "network_loss_history": None
        if run.network_term is None
        else [float(v) for v in run.network_term.history],
        "initial_loss": float(history[0]) if history else None,
        "final_loss": float(history[-1]) if history else None,
        "seconds": round(time.perf_counter() - started, 2),
        "cellsynth_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    provenance = {k: v for k, v in provenance.items() if v is not None}
    return anndata.AnnData(
        X=sp.csr_matrix(X),  # CSR like every other cellsynth output
        obs=obs,
        var=b.var,
        uns={"cellsynth": provenance},
    )


def _class_ranks(labels: np.ndarray) -> list[tuple[int, int]]:
    """(class, rank within class) of each synthetic cell, for readable cell names."""
    seen: dict[int, int] = {}
    out = []
    for c in labels.tolist():
        out.append((c, seen.get(c, 0)))
        seen[c] = seen.get(c, 0) + 1
    return out
