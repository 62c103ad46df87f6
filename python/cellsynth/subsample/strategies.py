"""The three downsampling strategies; each returns sorted cell indices, deterministic for a seed.

- ``random``: uniform without replacement.
- ``reweight``: cell-type re-weighting, as many cells of every type of a label as the budget
  allows (see :func:`reweight_allocation` for types smaller than their share).
- ``geosketch``: geometric sketching (Hie et al. 2019, the ``geosketch`` package) of PCA
  features: cells are spread over a plaid covering of the embedding with about ``n`` boxes and
  one cell is drawn per box, so small but distinct populations keep cells that uniform
  sampling would miss.
"""

from __future__ import annotations

import numpy as np

from cellsynth.errors import MissingDependencyError

STRATEGIES: tuple[str, ...] = ("random", "reweight", "geosketch")


def random_indices(n_obs: int, n: int, seed: int = 0) -> np.ndarray:
    """``n`` of ``n_obs`` cells uniformly without replacement.

    Returns
    -------
    np.ndarray, int64, shape [n]
        Sorted cell indices.
    """
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n_obs, size=n, replace=False)).astype(np.int64)


def reweight_allocation(sizes: dict[str, int], n: int) -> dict[str, int]:
    """How many cells each type gets for an equal share of ``n`` (water-filling).

    Every type is given ``n // K`` cells for K types. A type with no more cells than its share
    gives all of them, and what it leaves unused is shared equally among the other types; this
    repeats until every remaining type has more cells than its share. The last ``r`` cells that
    do not divide evenly (``r`` < number of remaining types) go one each to the remaining types
    with the most cells, ties broken by type name, so the result never depends on the seed.

    Parameters
    ----------
    sizes : dict of str to int
        Cells available per type.
    n : int
        Budget, at most ``sum(sizes.values())``.

    Returns
    -------
    dict of str to int
        Cells per type, summing to ``n``; a type gets either all its cells or at least as many
        as any type that is not exhausted, minus one.
    """
    if n > sum(sizes.values()):
        raise ValueError(f"cannot take {n} cells from {sum(sizes.values())}")
    alloc: dict[str, int] = {}
    remaining = sorted(sizes)
    budget = n
    while remaining:
        share = budget // len(remaining)
        small = [t for t in remaining if sizes[t] <= share]
        if not small:
            break
        for t in small:
            alloc[t] = sizes[t]
            budget -= sizes[t]
        remaining = [t for t in remaining if t not in alloc]
    if remaining:
        share, extra = divmod(budget, len(remaining))
        # Every remaining type has more than `share` cells, so one more is always available.
        by_size = sorted(remaining, key=lambda t: (-sizes[t], t))
        for rank, t in enumerate(by_size):
            alloc[t] = share + (1 if rank < extra else 0)
    return {t: alloc[t] for t in sorted(sizes)}


def reweight_indices(labels: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """``n`` cells spread equally over the label's types (see :func:`reweight_allocation`).

    Parameters
    ----------
    labels : np.ndarray, shape [n_cells]
        Type of every cell (compared as strings).
    n : int
        Cells to select, at most n_cells.
    seed : int
        Seeds the uniform draw within each type.

    Returns
    -------
    np.ndarray, int64, shape [n]
        Sorted cell indices.
    """
    labels = np.asarray(labels).astype(str)
    types, inverse = np.unique(labels, return_inverse=True)
    counts = np.bincount(inverse, minlength=len(types))
    sizes = {t: int(c) for t, c in zip(types, counts, strict=True)}
    alloc = reweight_allocation(sizes, n)
    rng = np.random.default_rng(seed)
    chosen = []
    # Types are visited in sorted order, so the draws of one type do not depend on dict order.
    for k, t in enumerate(types):
        members = np.flatnonzero(inverse == k)
        chosen.append(rng.choice(members, size=alloc[t], replace=False))
    return np.sort(np.concatenate(chosen)).astype(np.int64)


def geosketch_indices(features: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """``n`` cells by geometric sketching of an embedding.

    Parameters
    ----------
    features : np.ndarray, shape [n_cells, n_dims]
        Low-dimensional embedding, e.g. :func:`cellsynth.subsample.pca_features`.
    n : int
        Sketch size, at most n_cells.
    seed : int
        Seed, 0 <= seed < 2**32 (geosketch seeds numpy's legacy global generator).

    Returns
    -------
    np.ndarray, int64, shape [n]
        Sorted cell indices.
    """
    try:
        from geosketch import gs
    except ImportError as exc:
        raise MissingDependencyError(
            "the geosketch strategy needs the geosketch package: pip install geosketch"
        ) from exc
    features = np.asarray(features, dtype=np.float64)
    if features.max(initial=0.0) == features.min(initial=0.0):
        # All cells coincide: geosketch would divide by zero; every box is the same box.
        return random_indices(len(features), n, seed)
    # geosketch reseeds and draws from np.random's global state; restore it so a sketch does
    # not change the random numbers of the caller's other code.
    state = np.random.get_state()
    try:
        picked = gs(features, n, seed=seed, replace=False)
    finally:
        np.random.set_state(state)
    out = np.sort(np.asarray(picked, dtype=np.int64))
    if out.size != n or np.unique(out).size != n:  # pragma: no cover - a geosketch bug
        raise RuntimeError(f"geosketch returned {out.size} cells ({np.unique(out).size} distinct)")
    return out
