"""scRDiT's zero-negation: silent genes become a clearly separated negative value.

Training data: exact zeros of the log-normalised matrix are replaced by ``value`` (-10 in the
paper), so the model learns a wide gap between expressed (>= 0) and silent genes. Generated
data: everything below ``threshold`` (0 in the paper) is truncated back to zero.
"""

from __future__ import annotations

import numpy as np


def zero_negate(x: np.ndarray, value: float = -10.0) -> np.ndarray:
    """Replace exact zeros by a negative value.

    Parameters
    ----------
    x : np.ndarray, float32, shape [n_cells, n_genes]
        Log-normalised expression (all entries >= 0).
    value : float
        The value silent genes get; must be negative so it cannot be confused with expression.

    Returns
    -------
    np.ndarray, float32, shape [n_cells, n_genes]
        A new array.

    Raises
    ------
    ValueError
        If ``value`` is not negative, or ``x`` already has negative entries (was it
        zero-negated twice?).
    """
    if not (np.isfinite(value) and value < 0):
        raise ValueError(f"The zero-negation value must be a finite negative number, got {value}.")
    out = np.array(x, dtype=np.float32, copy=True)
    if out.size and out.min() < 0:
        raise ValueError(
            f"Input has negative values (min {out.min()}); zero-negation expects log-normalised "
            "expression >= 0. Was it already zero-negated?"
        )
    out[out == 0] = value
    return out


def inverse_zero_negate(x: np.ndarray, threshold: float = 0.0) -> np.ndarray:
    """Truncate values below ``threshold`` to zero (the paper's final step after sampling).

    Parameters
    ----------
    x : np.ndarray, shape [n_cells, n_genes]
        Generated expression in the zero-negated space.
    threshold : float
        Values strictly below it become 0; 0 truncates exactly the negatives.

    Returns
    -------
    np.ndarray, float32, shape [n_cells, n_genes]
        A new array, all entries >= 0 when ``threshold <= 0``.
    """
    if not np.isfinite(threshold):
        raise ValueError(f"threshold must be finite, got {threshold}.")
    out = np.array(x, dtype=np.float32, copy=True)
    out[out < threshold] = 0.0
    return out
