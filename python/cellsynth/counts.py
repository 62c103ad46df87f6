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
