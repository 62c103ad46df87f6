"""Classifiers that judge a distilled set: logistic regression, an MLP, a small transformer.

Dataset distillation is evaluated by training *fresh* classifiers on the few synthetic cells and
testing them on real held-out cells; doing so across architectures shows whether the set holds
the classes' information or only fits the one model it was matched with. Each is deterministic
for a seed:

* ``logreg``: scikit-learn's ``LogisticRegression(C=1.0)`` (L-BFGS, multinomial; binomial for two
  classes), the field's reference implementation. Convex, so the seed does not matter.
* ``mlp`` (PyTorch): G -> 256 -> C, ReLU, dropout 0.2, AdamW.
* ``transformer`` (PyTorch): the genes are cut into tokens of 100 consecutive genes
  (zero-padded), each token embedded to 64 dimensions by its own linear map plus a learned
  position embedding, 2 post-norm TransformerEncoder layers (4 heads, feed-forward 128), mean
  pooling, linear head (see :class:`GeneTokenTransformer` for why untied embeddings and
  post-norm).

The two networks train for a fixed budget (:class:`NetworkBudget`): a set no larger than one
batch (SPC x C cells) is fitted full-batch for ``min_steps`` steps; a larger set gets ``epochs``
minibatch epochs, capped at ``max_steps``. On one CPU thread (Kang, 2,000 genes): logreg ~0.3
s, mlp ~1 s, transformer ~1 s on 8 cells (3.5 s on 80); on the whole training set (10,861 cells)
logreg ~4 s (scikit-learn, 2026-12-03), mlp ~6 s, transformer ~16 s.

Inputs are used as given, log-normalised expression, without standardisation. Log1p of counts
per 10k already puts every gene on one scale (0 to ~8), and a per-gene z-score would have to be
estimated from the training set itself: from 8 cells (SPC=1) the standard deviations are noise
and many genes are constant, so it amplifies exactly the genes that carry no information.
Measured with scikit-learn on Kang cell type: one class-mean cell per class gives 0.94 accuracy
raw and 0.66 standardised; full data 0.97 either way. Standardising with the *real* data's
statistics would leak real cells into what should be trained on the synthetic set alone.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import nn

from cellsynth.errors import DataError

CLASSIFIERS: tuple[str, ...] = ("logreg", "mlp", "transformer")
PREDICT_BATCH = 2048


def _as_inputs(x: np.ndarray, y: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    x = x.toarray() if sp.issparse(x) else np.asarray(x)  # AnnData X is often CSR
    if x.ndim != 2:
        raise DataError(f"expected a cells x genes matrix, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise DataError("the expression matrix contains NaN or infinite values")
    if y is not None:
        y = np.asarray(y, dtype=np.int64)
        if y.shape != (x.shape[0],):
            raise DataError(f"{x.shape[0]} cells but {y.shape} labels")
    return x, y


class Classifier(ABC):
    """fit(x [n, G], y [n]) then predict_proba / predict on [m, G]; labels are 0..n_classes-1."""

    kind: str = ""

    def __init__(self, n_classes: int, seed: int = 0) -> None:
        if n_classes < 2:
            raise DataError(f"a classifier needs at least 2 classes, got {n_classes}")
        self.n_classes = int(n_classes)
        self.seed = int(seed)

    @abstractmethod
    def fit(self, x: np.ndarray, y: np.ndarray) -> Classifier:
        """Train on expression x [n, G] and labels y [n]; returns self."""

    @abstractmethod
    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """Class probabilities, float64 [m, n_classes]."""

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Most probable class, int64 [m]."""
        return self.predict_proba(x).argmax(axis=1).astype(np.int64)


# ---------------------------------------------------------------------------------------------
# Logistic regression


class LogisticRegression(Classifier):
    """scikit-learn's ``LogisticRegression(C, solver='lbfgs')`` behind the :class:`Classifier`
    interface (labels 0..n_classes-1, probabilities for every class).

    scikit-learn models only the classes present in the training labels; an absent class gets
    probability 0 here, and a single class is always predicted. With two present classes the
    model is binomial (one weight vector and a sigmoid), as scikit-learn fits it. The input goes
    in as float64 (given float32, scikit-learn solves in float32 and stops near 5e-4) and as a
    sparse matrix when mostly zeros, as log-normalised expression is (~96% zeros for Kang), which
    its L-BFGS multiplies as such: the 10,861 x 2,000 Kang training set fits in seconds.
    """

    kind = "logreg"

    def __init__(
        self,
        n_classes: int,
        seed: int = 0,
        C: float = 1.0,
        max_iter: int = 1000,
        tol: float = 1e-5,  # converges on the whole Kang training set in ~300 iterations
    ) -> None:
        super().__init__(n_classes, seed)
        if not C > 0:
            raise DataError(f"C must be positive, got {C}")
        self.C, self.max_iter, self.tol = float(C), int(max_iter), float(tol)
        self.model_ = None

    def fit(self, x: np.ndarray, y: np.ndarray) -> LogisticRegression:
        from sklearn.linear_model import LogisticRegression as SklearnLogisticRegression

        x, y = _as_inputs(x, y)
        self.classes_ = np.unique(y)  # [K]
        if self.classes_.min() < 0 or self.classes_.max() >= self.n_classes:
            raise DataError(f"labels must be in [0, {self.n_classes}), got {self.classes_}")
        if len(self.classes_) == 1:  # nothing to separate: always the one class seen
            self.model_ = None
            return self
        model = SklearnLogisticRegression(C=self.C, max_iter=self.max_iter, tol=self.tol)
        self.model_ = model.fit(_design(x), y)
        self.coef_, self.intercept_ = model.coef_, model.intercept_
        return self

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        x, _ = _as_inputs(x)
        out = np.zeros((len(x), self.n_classes))
        if self.model_ is None:
            out[:, self.classes_[0]] = 1.0
            return out
        out[:, self.model_.classes_] = self.model_.predict_proba(_design(x))
        return out


def _design(x: np.ndarray) -> np.ndarray | sp.csr_matrix:
    """float64, sparse when mostly zeros (scikit-learn's products are then ten times faster)."""
    x = x.astype(np.float64)
    return sp.csr_matrix(x) if np.count_nonzero(x) < 0.3 * x.size else x


# ---------------------------------------------------------------------------------------------
# Networks


@dataclass(frozen=True)
class NetworkBudget:
    """How long a network trains: full-batch for tiny sets, capped minibatch epochs otherwise.

    Attributes
    ----------
    batch_size : int
        Minibatch size; a training set of at most this many cells is used whole every step.
    min_steps : int
        Optimiser steps at least (all of them for a tiny set).
    epochs : int
        Passes over a large set ...
    max_steps : int
        ... but never more steps than this.
    learning_rate, weight_decay : float
        AdamW settings.
    """

    batch_size: int = 256
    min_steps: int = 300
    epochs: int = 10
    max_steps: int = 1000
    learning_rate: float = 1e-3
    weight_decay: float = 1e-2

    def steps(self, n: int) -> int:
        """Optimiser steps for a training set of ``n`` cells."""
        per_epoch = math.ceil(n / self.batch_size)
        return int(min(max(self.min_steps, self.epochs * per_epoch), self.max_steps))


class MLP(nn.Module):
    """G -> hidden -> C with ReLU and dropout."""

    def __init__(self, n_genes: int, n_classes: int, hidden: int = 256, dropout: float = 0.2):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(n_genes, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, n_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # [n, G] -> [n, C]


class GeneTokenTransformer(nn.Module):
    """Genes cut into tokens, each embedded by its own linear map, a post-norm encoder, mean pool.

    Unlike image patches, genes have no translation symmetry: gene 3 of token 1 and gene 3 of
    token 2 are unrelated, so every token has its own embedding weights ([T, p, d], as many as
    one ``Linear(G, d)``) and not one shared patch embedding. A shared embedding can tell genes
    apart only through the position embedding and generalised badly from a few cells (Kang cell
    type, trained on one class-mean cell per class, pre-norm: 0.55-0.63 test accuracy shared,
    0.86 untied). Post-norm layers (LayerNorm after each residual sum) generalised better from
    tiny sets than pre-norm ones (class means: 0.91-0.93 against 0.86; 10 random cells per class:
    0.85 against 0.71-0.74), at equal cost. 100 genes a token (20 tokens for 2,000 genes) cost
    half of 50 (40 tokens) and generalised as well.
    """

    def __init__(
        self,
        n_genes: int,
        n_classes: int,
        genes_per_token: int = 100,
        d_model: int = 64,
        n_heads: int = 4,
        n_layers: int = 2,
        dim_feedforward: int = 128,
        dropout: float = 0.1,
    ):
        super().__init__()
        self.p = genes_per_token
        self.n_tokens = math.ceil(n_genes / genes_per_token)
        self.pad = self.n_tokens * genes_per_token - n_genes
        bound = 1.0 / math.sqrt(genes_per_token)  # nn.Linear's default init, per token
        self.embed_weight = nn.Parameter(
            torch.empty(self.n_tokens, genes_per_token, d_model).uniform_(-bound, bound)
        )
        self.embed_bias = nn.Parameter(torch.empty(self.n_tokens, d_model).uniform_(-bound, bound))
        self.pos = nn.Parameter(torch.randn(self.n_tokens, d_model) * 0.02)
        layer = nn.TransformerEncoderLayer(
            d_model, n_heads, dim_feedforward, dropout, batch_first=True, norm_first=False
        )
        self.encoder = nn.TransformerEncoder(layer, n_layers, enable_nested_tensor=False)
        self.head = nn.Linear(d_model, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.pad(x, (0, self.pad))  # [n, T * p]
        tokens = x.view(x.shape[0], self.n_tokens, self.p)  # [n, T, p]
        h = torch.einsum("ntp,tpd->ntd", tokens, self.embed_weight)  # [n, T, d]
        h = h + self.embed_bias + self.pos  # [n, T, d]
        h = self.encoder(h)  # [n, T, d], each layer ends in a LayerNorm
        return self.head(h.mean(dim=1))  # [n, C]


class NetworkClassifier(Classifier):
    """A PyTorch network trained with AdamW on cross-entropy for a :class:`NetworkBudget`."""

    default_budget = NetworkBudget()

    def __init__(
        self, n_classes: int, seed: int = 0, budget: NetworkBudget | None = None, **arch: float
    ) -> None:
        super().__init__(n_classes, seed)
        self.budget = budget or self.default_budget
        self.arch = arch
        self.steps_ = 0

    @abstractmethod
    def build(self, n_genes: int) -> nn.Module:
        """The untrained network for ``n_genes`` inputs."""

    def fit(self, x: np.ndarray, y: np.ndarray) -> NetworkClassifier:
        x, y = _as_inputs(x, y)
        if y.min() < 0 or y.max() >= self.n_classes:
            raise DataError(f"labels must be in [0, {self.n_classes}), got {np.unique(y)}")
        xt = torch.as_tensor(x, dtype=torch.float32)  # [n, G]
        yt = torch.as_tensor(y)  # [n]
        n, budget = len(xt), self.budget
        steps = budget.steps(n)
        # Everything random (init, dropout, batches) comes from the seed; the caller's global
        # torch RNG is left as it was.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            self.net = self.build(xt.shape[1])
            shuffle = torch.Generator().manual_seed(self.seed)
            opt = torch.optim.AdamW(
                self.net.parameters(), lr=budget.learning_rate, weight_decay=budget.weight_decay
            )
            self.net.train()
            order, pos = torch.randperm(n, generator=shuffle), 0
            for _ in range(steps):
                if n <= budget.batch_size:
                    xb, yb = xt, yt
                else:
                    if pos + budget.batch_size > n:  # new epoch (drop the ragged tail)
                        order, pos = torch.randperm(n, generator=shuffle), 0
                    idx = order[pos : pos + budget.batch_size]
                    pos += budget.batch_size
                    xb, yb = xt[idx], yt[idx]
                loss = F.cross_entropy(self.net(xb), yb)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        self.net.eval()
        self.steps_ = steps
        return self

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        x, _ = _as_inputs(x)
        xt = torch.as_tensor(x, dtype=torch.float32)
        with torch.no_grad():
            out = [
                self.net(xt[i : i + PREDICT_BATCH]).softmax(dim=1)
                for i in range(0, len(xt), PREDICT_BATCH)
            ]
        return torch.cat(out).double().numpy() if out else np.zeros((0, self.n_classes))


class MLPClassifier(NetworkClassifier):
    """:class:`MLP` (hidden 256, dropout 0.2)."""

    kind = "mlp"

    def build(self, n_genes: int) -> nn.Module:
        return MLP(n_genes, self.n_classes, **self.arch)


class TransformerClassifier(NetworkClassifier):
    """:class:`GeneTokenTransformer` (100 genes a token, d 64, 2 layers, 4 heads).

    Its budget is smaller than the MLP's (batches of 128, 100 to 300 steps): a step costs ~20
    times more, and on Kang 100 full-batch steps fit tiny sets as well as 300 did (class means:
    0.913 vs 0.914; 10 random cells per class: 0.838 both) while 300 steps of 128 cells (3.5
    epochs) reach 0.962 on the whole training set.
    """

    kind = "transformer"
    default_budget = NetworkBudget(batch_size=128, min_steps=100, epochs=10, max_steps=300)

    def build(self, n_genes: int) -> nn.Module:
        return GeneTokenTransformer(n_genes, self.n_classes, **self.arch)


_KINDS: dict[str, type[Classifier]] = {
    "logreg": LogisticRegression,
    "mlp": MLPClassifier,
    "transformer": TransformerClassifier,
}


def make_classifier(kind: str, n_classes: int, seed: int = 0, **options) -> Classifier:
    """A fresh, unfitted classifier of ``kind`` ('logreg', 'mlp' or 'transformer').

    ``options`` go to the class: ``C``, ``max_iter``, ``tol`` for logreg; ``budget`` (a
    :class:`NetworkBudget`) and architecture sizes for the networks.
    """
    if kind not in _KINDS:
        raise DataError(f"unknown classifier {kind!r}; choose from {', '.join(CLASSIFIERS)}")
    return _KINDS[kind](n_classes, seed, **options)


def fit_predict(
    kind: str,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    n_classes: int,
    seed: int = 0,
    **options,
) -> np.ndarray:
    """Train a fresh ``kind`` classifier on (x_train [n, G], y_train [n]) and label x_test.

    Returns
    -------
    np.ndarray, int64, shape [m]
        Predicted class of every test cell, in 0..n_classes-1.
    """
    clf = make_classifier(kind, n_classes, seed, **options)
    return clf.fit(x_train, y_train).predict(x_test)
