"""Integer counts of synthetic cells: drawn from a count model, or read back from expression.

Two ways, by the kind of model:

- A count decoder (a latent-diffusion bundle on a negative-binomial autoencoder) gives each cell
  the expected share ``rho_g`` of its library for every gene. :class:`LibraryModel` draws the
  library size L per cell (a log-normal per label combination, fitted to the training cells) and
  :func:`sample_counts` draws ``count_g ~ NB(rho_g * L, theta_g)`` with keyed randomness; the
  log-normalised X is then ``log1p(count / L * target_sum)``, as the preprocessing made it of real
  cells.
- For gene-space models, :func:`expression_to_counts` inverts the log-normalisation (below).

Training normalised each cell to ``target_sum`` counts and took log1p, so a cell with library size
L (its total count over all genes) had ``x = log1p(count / L * target_sum)``. Inverting needs an L:
each synthetic cell draws one from the training cells' log library-size distribution recorded in
the bundle, by inverse-CDF sampling over its quantiles. The uniform comes from the same
counter-based Philox stream as the denoising noise, keyed by (seed, global cell index, a reserved
step), so a cell's library size does not depend on batching, chunking or sharding. Counts are then
``round(expm1(x) * L / target_sum)``, capped at L (no gene can hold more than the whole library; an
imperfect model can overshoot ``log1p(target_sum)``); genes truncated to zero stay zero.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from scipy.special import ndtr

from cellsynth import _core

# Philox step key of the library-size draw: distinct from every denoising step (< 2^31 in
# practice) and from x_T's reserved step 2^32 - 1.
LIBRARY_SIZE_STEP = 2**32 - 2
# Tail knots of the quantile function beyond the recorded 1% / 99% quantiles: mean -/+ this many
# standard deviations of the log library size (the normal's 0.1% / 99.9% points).
_TAIL_Z = 3.09


def _log_library_normals(n_cells: int, seed: int, cell_offset: int) -> np.ndarray:
    """Standard normals float64 [n_cells], keyed by (seed, global cell index, LIBRARY_SIZE_STEP)."""
    z = np.empty((n_cells, 1), dtype=np.float32)
    _core.randn(z, int(seed), LIBRARY_SIZE_STEP, int(cell_offset))
    return z[:, 0].astype(np.float64)


def _quantile_knots(library_size) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities and log library sizes of a monotone piecewise-linear quantile function."""
    qs = sorted((float(p), float(v)) for p, v in library_size.quantiles_log.items())
    probs = [p for p, _ in qs]
    logs = [v for _, v in qs]
    lo = min(logs[0], library_size.mean_log - _TAIL_Z * library_size.sd_log)
    hi = max(logs[-1], library_size.mean_log + _TAIL_Z * library_size.sd_log)
    probs = [0.001, *probs, 0.999]
    logs = [lo, *logs, hi]
    return np.asarray(probs), np.maximum.accumulate(np.asarray(logs))


def draw_library_sizes(library_size, n_cells: int, seed: int, cell_offset: int) -> np.ndarray:
    """Library sizes float64 [n_cells] for cells ``cell_offset .. cell_offset + n_cells - 1``.

    Parameters
    ----------
    library_size : cellsynth.data.record.LibrarySize
        The training cells' statistics (``bundle.preprocessing.library_size``).
    """
    z = _log_library_normals(n_cells, seed, cell_offset)
    u = np.clip(ndtr(z), 0.001, 0.999)  # [n] uniform
    probs, logs = _quantile_knots(library_size)
    return np.exp(np.interp(u, probs, logs))


def expression_to_counts(
    x: sp.csr_matrix, library_sizes: np.ndarray, target_sum: float
) -> sp.csr_matrix:
    """Integer counts (CSR int32 [n, G]) from log1p-normalised expression x (CSR [n, G])."""
    x = sp.csr_matrix(x, dtype=np.float64)
    sizes = np.repeat(np.asarray(library_sizes, dtype=np.float64), np.diff(x.indptr))  # [nnz]
    with np.errstate(over="ignore"):  # inf is capped just below
        values = np.minimum(np.rint(np.expm1(x.data) * (sizes / target_sum)), np.rint(sizes))
    out = sp.csr_matrix((values.astype(np.int32), x.indices.copy(), x.indptr.copy()), x.shape)
    out.eliminate_zeros()  # tiny expression can round to 0 counts
    return out


def sample_counts(mean, theta, seed: int, cell_offset: int = 0, zero_prob=None) -> np.ndarray:
    """Negative-binomial (or zero-inflated NB) counts, keyed per cell like the denoising noise.

    ``count[i, g] ~ NB(mean[i, g], theta[g])``, the Gamma-Poisson mixture with mean ``m`` and
    variance ``m + m**2 / theta`` (scipy's ``nbinom(n=theta, p=theta / (theta + m))``); a
    ``theta`` of ``+inf`` gives Poisson(``m``). With ``zero_prob``, a count is 0 with probability
    ``zero_prob[i, g]`` and NB otherwise. Every random number is a Philox draw of
    (seed, ``cell_offset + i``, g, draw index) under the reserved counter bit
    ``_core.COUNT_STREAM_BIT`` (csrc/counts.h), so a cell's counts do not depend on batch size,
    chunking, sharding or device: ``sample_counts(mean[a:b], theta, seed, a)`` equals rows
    ``a .. b-1`` of ``sample_counts(mean, theta, seed)``.

    Parameters
    ----------
    mean : array-like, [n_cells, n_genes]
        NB means, finite and >= 0 (converted to float32).
    theta : array-like, [n_genes]
        Per-gene inverse dispersion, > 0 or ``numpy.inf`` (converted to float32).
    seed : int
        In ``[0, 2**64)``.
    cell_offset : int
        Global index of the first row (>= 0).
    zero_prob : array-like, [n_cells, n_genes], optional
        Zero-inflation probabilities in ``[0, 1]`` (converted to float32).

    Returns
    -------
    numpy.ndarray
        int32 [n_cells, n_genes] counts, capped at ``2**31 - 1``.

    Raises
    ------
    ValueError
        When a shape or value is invalid; the message names the argument.
    """
    mean = np.ascontiguousarray(mean, dtype=np.float32)
    theta = np.ascontiguousarray(theta, dtype=np.float32)
    if zero_prob is not None:
        zero_prob = np.ascontiguousarray(zero_prob, dtype=np.float32)
    out = np.empty(mean.shape if mean.ndim == 2 else (0, 0), dtype=np.int32)
    _core.sample_counts(mean, theta, out, seed, int(cell_offset), zero_prob)
    return out


class LibraryModel:
    """Library sizes of synthetic cells: a log-normal per label combination of the training cells.

    Depth differs between cell types and conditions (monocytes hold more RNA than T cells), so a
    count model draws it per label combination: ``log L ~ Normal(mean_c, sd_c)`` with the
    combination's mean and sd of the training cells' log library sizes; a combination with fewer
    than ``min_cells`` training cells uses all training cells. The normal is a Philox draw keyed
    by (seed, global cell index), so a cell's library size does not depend on batching.

    Parameters
    ----------
    keys : list of str
        The label keys, in the order of the label codes given to :meth:`draw`.
    groups : dict
        {"code,code,...": [mean_log, sd_log, n_cells]} per label-code combination.
    overall : list
        [mean_log, sd_log, n_cells] of every training cell.
    """

    def __init__(
        self, keys: list[str], groups: dict[str, list[float]], overall: list[float]
    ) -> None:
        self.keys, self.groups, self.overall = list(keys), dict(groups), list(overall)

    @classmethod
    def fit(
        cls, library: np.ndarray, codes: np.ndarray, keys: list[str], min_cells: int = 10
    ) -> LibraryModel:
        """Fit to library sizes [N] (> 0) of cells with label codes [N, K]."""
        logs = np.log(np.asarray(library, dtype=np.float64))
        codes = np.asarray(codes, dtype=np.int64).reshape(len(logs), len(keys))  # [N, K]

        def stats(values: np.ndarray) -> list[float]:
            sd = float(values.std(ddof=1)) if len(values) > 1 else 0.0
            return [float(values.mean()), sd, int(len(values))]

        groups = {}
        combos, inverse = np.unique(codes, axis=0, return_inverse=True)
        for i, combo in enumerate(combos):
            values = logs[inverse.ravel() == i]
            if len(values) >= min_cells:
                groups[",".join(str(int(c)) for c in combo)] = stats(values)
        return cls(keys, groups, stats(logs))

    def to_dict(self) -> dict[str, object]:
        return {"keys": self.keys, "groups": self.groups, "overall": self.overall}

    @classmethod
    def from_dict(cls, d: dict[str, object]) -> LibraryModel:
        return cls(list(d["keys"]), dict(d["groups"]), list(d["overall"]))

    def parameters(self, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(mean_log [B], sd_log [B]) for cells with label codes [B, K]."""
        codes = np.asarray(codes, dtype=np.int64)
        codes = codes.reshape(len(codes), len(self.keys))  # [B, K]; K = 0 without labels
        mean = np.full(len(codes), self.overall[0])
        sd = np.full(len(codes), self.overall[1])
        names = [",".join(str(int(c)) for c in row) for row in codes]
        for i, name in enumerate(names):
            if name in self.groups:
                mean[i], sd[i] = self.groups[name][0], self.groups[name][1]
        return mean, sd

    def draw(self, codes: np.ndarray, seed: int, cell_offset: int) -> np.ndarray:
        """Library sizes float64 [B] of cells ``cell_offset ..`` with label codes [B, K]."""
        mean, sd = self.parameters(codes)
        return np.exp(mean + sd * _log_library_normals(len(mean), seed, cell_offset))


def counts_and_expression(
    rho: np.ndarray,
    theta: np.ndarray,
    zero_prob: np.ndarray | None,
    library: np.ndarray,
    target_sum: float,
    seed: int,
    cell_offset: int,
) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """Counts (CSR int32 [B, G]) and log-normalised X (CSR float32 [B, G]) of a count model.

    ``count ~ NB(rho * library, theta)`` (zero-inflated with ``zero_prob``), keyed by
    (seed, ``cell_offset + row``, gene); ``X = log1p(count / library * target_sum)``: the
    preprocessing's normalisation with the cell's whole library size.
    """
    library = np.asarray(library, dtype=np.float64)
    mean = np.asarray(rho, dtype=np.float64) * library[:, None]
    counts = sp.csr_matrix(sample_counts(mean, theta, seed, cell_offset, zero_prob))
    x = counts.astype(np.float64)
    x.data = np.log1p(x.data * np.repeat(target_sum / library, np.diff(x.indptr)))
    return counts, x.astype(np.float32)
