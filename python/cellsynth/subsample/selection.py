"""The public entry point: check the request, run a strategy, return the selected cells."""

from __future__ import annotations

import datetime as _dt
import math

import anndata as ad
import numpy as np

from cellsynth._version import __version__
from cellsynth.data.validate import validate_labels
from cellsynth.errors import DataError
from cellsynth.subsample.features import DEFAULT_N_COMPONENTS, DEFAULT_N_TOP_GENES, pca_features
from cellsynth.subsample.strategies import (
    STRATEGIES,
    geosketch_indices,
    random_indices,
    reweight_indices,
)


def resolve_size(n_obs: int, n: int | None = None, fraction: float | None = None) -> int:
    """Number of cells asked for, from exactly one of a count and a fraction.

    A fraction gives ``floor(fraction * n_obs + 0.5)`` cells (round half up), at least one.

    Raises
    ------
    DataError
        If both or neither are given, n is not in [1, n_obs], or fraction is not in (0, 1].
    """
    if (n is None) == (fraction is None):
        raise DataError("Give exactly one of n (a number of cells) and fraction (0 < f <= 1).")
    if n is not None:
        if isinstance(n, bool) or not isinstance(n, int | np.integer):
            raise DataError(f"n must be a whole number of cells, got {n!r}.")
        if n < 1:
            raise DataError(f"n must be at least 1 cell, got {n}.")
        if n > n_obs:
            raise DataError(
                f"Cannot select {n} cells from a data set of {n_obs} cells; use n <= {n_obs}."
            )
        return int(n)
    if not (isinstance(fraction, float | int | np.floating) and 0 < fraction <= 1):
        raise DataError(f"fraction must be in (0, 1], got {fraction!r}.")
    return max(1, math.floor(float(fraction) * n_obs + 0.5))


def _check_seed(seed: int) -> int:
    # geosketch seeds numpy's legacy generator, which takes 0 <= seed < 2**32; use the same
    # range for every strategy so a seed that works for one works for all.
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or not 0 <= seed < 2**32:
        raise DataError(f"seed must be a whole number in [0, 2**32), got {seed!r}.")
    return int(seed)


def select_indices(
    adata: ad.AnnData,
    strategy: str,
    n: int | None = None,
    fraction: float | None = None,
    label_key: str | None = None,
    seed: int = 0,
    *,
    features: np.ndarray | None = None,
    n_components: int = DEFAULT_N_COMPONENTS,
    n_top_genes: int = DEFAULT_N_TOP_GENES,
) -> np.ndarray:
    """Indices of the cells a strategy selects; see :func:`subsample` for the parameters.

    Parameters
    ----------
    features : np.ndarray, shape [n_cells, n_dims], optional
        Precomputed embedding for "geosketch" (default: :func:`pca_features` of ``adata``), so
        a caller that also needs the PCA (for diversity) computes it once.

    Returns
    -------
    np.ndarray, int64, shape [n_selected]
        Sorted, distinct cell indices.
    """
    if strategy not in STRATEGIES:
        raise DataError(
            f"Unknown subsampling strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}."
        )
    seed = _check_seed(seed)
    size = resolve_size(adata.n_obs, n, fraction)
    if strategy == "reweight" and label_key is None:
        raise DataError(
            "The reweight strategy needs a label column (label_key / --label), e.g. "
            "'cell_type', to balance."
        )
    if label_key is not None:
        # Checked for every strategy: the key is recorded in the provenance.
        validate_labels(adata.obs, [label_key])
    if strategy == "random":
        return random_indices(adata.n_obs, size, seed)
    if strategy == "reweight":
        return reweight_indices(adata.obs[label_key].to_numpy(), size, seed)
    if features is None:
        features = pca_features(adata, n_components, n_top_genes)
    elif len(features) != adata.n_obs:
        raise DataError(f"features have {len(features)} rows for {adata.n_obs} cells.")
    return geosketch_indices(features, size, seed)


def subsample(
    adata: ad.AnnData,
    strategy: str,
    n: int | None = None,
    fraction: float | None = None,
    label_key: str | None = None,
    seed: int = 0,
    *,
    n_components: int = DEFAULT_N_COMPONENTS,
    n_top_genes: int = DEFAULT_N_TOP_GENES,
) -> ad.AnnData:
    """A subset of the cells chosen by a downsampling strategy.

    Parameters
    ----------
    adata : AnnData, shape [n_cells, n_genes]
        The data; "geosketch" needs raw counts (``layers['counts']``, X or ``.raw``).
    strategy : {"random", "reweight", "geosketch"}
        See :mod:`cellsynth.subsample.strategies`.
    n : int, optional
        Cells to select, 1 <= n <= n_cells. Exactly one of ``n`` and ``fraction``.
    fraction : float, optional
        Fraction of the cells, 0 < fraction <= 1 (rounded half up, at least one cell).
    label_key : str, optional
        obs column to balance; required by "reweight", recorded otherwise.
    seed : int
        Same seed, same cells; 0 <= seed < 2**32.
    n_components, n_top_genes : int
        PCA settings for "geosketch" (see :func:`pca_features`).

    Returns
    -------
    AnnData, shape [n_selected, n_genes]
        A copy of the selected cells in their original order, with obs, var, layers, obsm and
        raw kept; ``uns['cellsynth']`` (command 'subsample') records the strategy, its settings
        and the selected rows of the input (``source_indices``).

    Raises
    ------
    DataError
        For an unknown strategy, both or neither of n and fraction, n out of range, a fraction
        outside (0, 1], reweight without a (valid) label column, or counts that cannot be
        log-normalised (NaN, negative) for geosketch.
    """
    idx = select_indices(
        adata,
        strategy,
        n,
        fraction,
        label_key,
        seed,
        n_components=n_components,
        n_top_genes=n_top_genes,
    )
    return take_cells(
        adata,
        idx,
        strategy=strategy,
        fraction=fraction,
        label_key=label_key,
        seed=seed,
        n_components=n_components,
        n_top_genes=n_top_genes,
    )


def take_cells(adata: ad.AnnData, idx: np.ndarray, **settings) -> ad.AnnData:
    """Copy of ``adata[idx]`` with the subsampling provenance in ``uns['cellsynth']`` (the one
    provenance key of every cellsynth output, ``command`` 'subsample').

    ``settings`` (strategy, seed, ...) are recorded as given; None values are left out because
    .h5ad files cannot store None.
    """
    out = adata[np.asarray(idx)].copy()
    record = {k: v for k, v in settings.items() if v is not None}
    if record.get("strategy") != "geosketch":
        # PCA settings only describe a geosketch selection.
        record.pop("n_components", None)
        record.pop("n_top_genes", None)
    record = {"command": "subsample", **record}
    record.update(
        n_cells=int(len(idx)),
        n_source_cells=int(adata.n_obs),
        source_indices=np.asarray(idx, dtype=np.int64),
        cellsynth_version=__version__,
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    )
    out.uns.pop("cellsynth", None)  # a subsample of a cellsynth output is described anew
    out.uns["cellsynth"] = record
    return out
