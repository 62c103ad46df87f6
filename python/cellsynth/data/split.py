"""Seeded stratified train/test splits and subsamples over joint label combinations."""

from __future__ import annotations

import numpy as np


def joint_strata(strata: np.ndarray) -> np.ndarray:
    """One code per distinct label combination.

    Parameters
    ----------
    strata : np.ndarray of int, shape [n] or [n, K]
        Label codes; with K columns, cells are in the same stratum only if all K codes agree.

    Returns
    -------
    np.ndarray, int64, shape [n]
        Codes 0..S-1 in the sorted order of the combinations.
    """
    strata = np.asarray(strata)
    if strata.ndim == 1:
        strata = strata[:, None]
    if strata.ndim != 2:
        raise ValueError(f"strata must have shape [n] or [n, K], got {strata.shape}.")
    if strata.shape[1] == 0:  # no labels: one stratum
        return np.zeros(strata.shape[0], dtype=np.int64)
    _, inverse = np.unique(strata, axis=0, return_inverse=True)
    return inverse.reshape(-1).astype(np.int64)


def _apportion(
    sizes: np.ndarray, total: int, lower: np.ndarray, upper: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Split ``total`` across strata in proportion to ``sizes`` within [lower, upper].

    Largest-remainder rounding; ties are broken by a seeded shuffle so that no stratum is
    systematically favoured. Returns int64 counts of shape [S] summing to ``total``.
    """
    quota = sizes * (total / sizes.sum())
    alloc = np.clip(np.floor(quota), lower, upper).astype(np.int64)
    shuffle = rng.permutation(sizes.size)
    while alloc.sum() != total:
        gap = quota - alloc
        if alloc.sum() < total:
            room = shuffle[alloc[shuffle] < upper[shuffle]]
            pick = room[np.argmax(gap[room])]  # argmax keeps the first of tied strata
            alloc[pick] += 1
        else:
            room = shuffle[alloc[shuffle] > lower[shuffle]]
            pick = room[np.argmin(gap[room])]
            alloc[pick] -= 1
    return alloc


def _members(codes: np.ndarray, n_strata: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Cell indices of each stratum, shuffled by ``rng``."""
    order = np.argsort(codes, kind="stable")
    bounds = np.cumsum(np.bincount(codes, minlength=n_strata))[:-1]
    return [rng.permutation(m) for m in np.split(order, bounds)]


def stratified_split(
    strata: np.ndarray, test_fraction: float = 0.2, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Seeded train/test split that keeps the proportions of every label combination.

    The test set has ``round(n * test_fraction)`` cells, apportioned to the strata (joint label
    combinations) by largest remainder. Every stratum with >= 2 cells keeps at least one training
    cell. Single-cell strata may land in either split (otherwise rare combinations, common
    with several label keys, would shrink the test set below ``test_fraction``).

    Parameters
    ----------
    strata : np.ndarray of int, shape [n] or [n, K]
        Label codes per cell.
    test_fraction : float
        Fraction of cells held out, in [0, 1).
    seed : int
        Same seed, same split.

    Returns
    -------
    train_idx, test_idx : np.ndarray, int64, sorted
        Disjoint, together ``arange(n)``.
    """
    if not 0 <= test_fraction < 1:
        raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction}.")
    codes = joint_strata(strata)
    n = codes.size
    rng = np.random.default_rng(seed)
    sizes = np.bincount(codes)
    upper = np.where(sizes >= 2, sizes - 1, sizes)
    n_test = min(int(round(n * test_fraction)), int(upper.sum()))
    if n == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    alloc = _apportion(sizes, n_test, np.zeros_like(sizes), upper, rng)
    members = _members(codes, sizes.size, rng)
    test = np.concatenate([m[:k] for m, k in zip(members, alloc, strict=True)])
    test = np.sort(test).astype(np.int64)
    train = np.setdiff1d(np.arange(n, dtype=np.int64), test, assume_unique=True)
    return train, test


def stratified_subsample(strata: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """Seeded subsample of ``n`` cells that keeps the proportions of every label combination.

    Each stratum keeps at least one cell when ``n`` is at least the number of strata; with fewer,
    the largest strata are represented.

    Parameters
    ----------
    strata : np.ndarray of int, shape [N] or [N, K]
        Label codes per cell.
    n : int
        Cells to keep (>= 1). All cells are returned when ``n >= N``.
    seed : int
        Same seed, same subsample.

    Returns
    -------
    np.ndarray, int64, shape [min(n, N)], sorted
    """
    if n < 1:
        raise ValueError(f"The number of cells to keep must be >= 1, got {n}.")
    codes = joint_strata(strata)
    if n >= codes.size:
        return np.arange(codes.size, dtype=np.int64)
    rng = np.random.default_rng(seed)
    sizes = np.bincount(codes)
    lower = np.ones_like(sizes) if n >= sizes.size else np.zeros_like(sizes)
    alloc = _apportion(sizes, n, lower, sizes, rng)
    members = _members(codes, sizes.size, rng)
    keep = np.concatenate([m[:k] for m, k in zip(members, alloc, strict=True)])
    return np.sort(keep).astype(np.int64)
