"""Turn generated log-normalised expression back into integer counts.

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
    z = np.empty((n_cells, 1), dtype=np.float32)
    _core.randn(z, int(seed), LIBRARY_SIZE_STEP, int(cell_offset))
    u = np.clip(ndtr(z[:, 0].astype(np.float64)), 0.001, 0.999)  # [n] uniform
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
