"""Downsampling baselines for distillation, and a way to build training sets.

:func:`subsample` selects cells by one of :data:`STRATEGIES` (random, cell-type re-weighting,
geometric sketching); :func:`diversity` scores a set of cells by the Shannon and Gini-Simpson
indices of its labels and the Vendi score of its expression.
"""

from cellsynth.subsample.diversity import (
    diversity,
    gini_simpson_index,
    shannon_index,
    vendi_score,
)
from cellsynth.subsample.features import pca, pca_features
from cellsynth.subsample.selection import resolve_size, select_indices, subsample, take_cells
from cellsynth.subsample.strategies import (
    STRATEGIES,
    geosketch_indices,
    random_indices,
    reweight_allocation,
    reweight_indices,
)

__all__ = [
    "STRATEGIES",
    "diversity",
    "geosketch_indices",
    "gini_simpson_index",
    "pca",
    "pca_features",
    "random_indices",
    "resolve_size",
    "reweight_allocation",
    "reweight_indices",
    "select_indices",
    "shannon_index",
    "subsample",
    "take_cells",
    "vendi_score",
]
