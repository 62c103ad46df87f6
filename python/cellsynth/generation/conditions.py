"""Turn a user's label requests into one label combination per generated cell.

A user names some labels (``cell_type=B``) and leaves others open (``stim``). Open labels are drawn
from their joint distribution in the training data given the named ones, so the synthetic cells
carry every label the model knows and open labels keep their real proportions.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from cellsynth.bundle.format import LabelSpec
from cellsynth.errors import DataError

ConditionValue = str | Sequence[str]


def parse_condition_args(items: Sequence[str]) -> dict[str, list[str]]:
    """Parse CLI ``KEY=VALUE`` strings; a key given twice collects several values."""
    out: dict[str, list[str]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key or not value:
            raise DataError(f"--condition expects KEY=VALUE (e.g. cell_type=B), got {item!r}")
        out.setdefault(key.strip(), []).append(value.strip())
    return out


def _codes_for(spec: LabelSpec, conditions: Mapping[str, ConditionValue]) -> dict[int, set[int]]:
    """Map each named key's column to the allowed codes, validating names and values."""
    allowed: dict[int, set[int]] = {}
    for key, values in conditions.items():
        if key not in spec.keys:
            known = ", ".join(spec.keys) if spec.keys else "none (the model is unconditional)"
            raise DataError(f"unknown label {key!r}; this model's labels are: {known}")
        vocab = spec.vocabularies[key]
        wanted = [values] if isinstance(values, str) else list(values)
        unknown = [v for v in wanted if v not in vocab]
        if unknown:
            raise DataError(f"unknown value(s) {unknown} for label {key!r}; known values: {vocab}")
        allowed[spec.keys.index(key)] = {vocab.index(v) for v in wanted}
    return allowed


class LabelRuns:
    """The label codes of a run's cells, held as runs of equal combinations (cells are grouped by
    combination): ``runs[a:b]`` makes the int64 [b - a, K] codes of cells a..b-1 only, so a shard
    of a billion-cell run costs the memory of its own cells, not of all of them."""

    def __init__(self, combos: np.ndarray, counts: np.ndarray) -> None:
        self.combos = np.asarray(combos, dtype=np.int64)  # [M, K]
        self.counts = np.asarray(counts, dtype=np.int64)  # [M]
        self.ends = np.cumsum(self.counts)
        self.shape = (int(self.ends[-1]) if len(self.ends) else 0, self.combos.shape[1])

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, cells: slice) -> np.ndarray:
        if not isinstance(cells, slice):
            raise TypeError("LabelRuns are read by slices of cells")
        start, stop, step = cells.indices(len(self))
        if step != 1:
            raise ValueError("LabelRuns are read by contiguous slices")
        starts = self.ends - self.counts
        taken = np.clip(np.minimum(self.ends, stop) - np.maximum(starts, start), 0, None)
        return np.repeat(self.combos, taken, axis=0)

    def digest(self) -> str:
        """A short hash of every cell's codes (the same runs give the same digest)."""
        import hashlib

        h = hashlib.sha256(np.ascontiguousarray(self.combos).tobytes())
        h.update(np.ascontiguousarray(self.counts).tobytes())
        return h.hexdigest()[:16]


def assign_labels(
    spec: LabelSpec,
    n_cells: int,
    conditions: Mapping[str, ConditionValue] | None = None,
    seed: int = 0,
) -> np.ndarray:
    """Label codes int64 [n_cells, K] for the cells to generate, grouped by combination."""
    return assign_label_runs(spec, n_cells, conditions, seed)[:]


SPLITS = ("training", "even")


def assign_label_runs(
    spec: LabelSpec,
    n_cells: int,
    conditions: Mapping[str, ConditionValue] | None = None,
    seed: int = 0,
    split: str = "training",
) -> LabelRuns:
    """:func:`assign_labels` as :class:`LabelRuns` (nothing per cell is made up front).

    ``split='training'``: combinations are drawn in proportion to their training counts among
    those matching ``conditions`` (cell_type B or NK: B and NK as often as in the training data).
    ``split='even'``: every matching combination gets the same number of cells (those left over
    go to the first ones in code order). When every key is named, a combination unseen in
    training is allowed (with a warning): the model may still generate it, less reliably.
    """
    if split not in SPLITS:
        raise DataError(f"split must be one of {SPLITS}, got {split!r}")
    if n_cells < 1:
        raise DataError(f"n_cells must be at least 1, got {n_cells}")
    K = len(spec.keys)
    if K == 0:
        if conditions:
            _codes_for(spec, conditions)  # raises: nothing can be named
        return LabelRuns(np.zeros((1, 0), dtype=np.int64), [n_cells])
    allowed = _codes_for(spec, conditions or {})
    combos = [
        (codes, count)
        for codes, count in spec.combinations
        if all(codes[j] in ok for j, ok in allowed.items())
    ]
    if not combos:
        if len(allowed) < K:
            raise DataError(
                f"no training cells have {dict(conditions or {})}; name every label "
                f"({', '.join(spec.keys)}) to generate an unseen combination anyway"
            )
        warnings.warn(
            f"the combination {dict(conditions or {})} never occurs in the training data; "
            "the model was not trained on it",
            stacklevel=2,
        )
        grids = np.meshgrid(*[sorted(allowed[j]) for j in range(K)], indexing="ij")
        combos = [(tuple(int(g) for g in row), 1) for row in np.stack(grids, -1).reshape(-1, K)]
    codes = np.array([c for c, _ in combos], dtype=np.int64)
    if split == "even":
        m = len(codes)
        counts = np.full(m, n_cells // m, dtype=np.int64)
        counts[: n_cells % m] += 1
        return LabelRuns(codes, counts)
    weights = np.array([n for _, n in combos], dtype=np.float64)
    counts = np.random.default_rng(seed).multinomial(n_cells, weights / weights.sum())
    return LabelRuns(codes, counts)


def composition_labels(spec: LabelSpec, obs: Any, n_cells: int) -> np.ndarray:
    """Label codes int64 [n_cells, K] matching the joint label mix of a real dataset."""
    return composition_label_runs(spec, obs, n_cells)[:]


def composition_label_runs(spec: LabelSpec, obs: Any, n_cells: int) -> LabelRuns:
    """:func:`composition_labels` as :class:`LabelRuns`; the codes match the joint label mix of a
    real dataset.

    Parameters
    ----------
    spec : LabelSpec
        The bundle's labels.
    obs : DataFrame
        The real cells' obs; must hold every label column of the bundle.
    n_cells : int
        How many codes to produce; counts per combination are the real proportions rounded by
        largest remainder (so they sum to ``n_cells`` exactly), grouped by combination.
    """
    if n_cells < 1:
        raise DataError(f"n_cells must be at least 1, got {n_cells}")
    missing = [k for k in spec.keys if k not in obs.columns]
    if missing:
        raise DataError(
            f"the composition data has no label column(s) {missing}; it needs {spec.keys}"
        )
    K = len(spec.keys)
    if K == 0:
        return LabelRuns(np.zeros((1, 0), dtype=np.int64), [n_cells])
    columns = []
    for key in spec.keys:
        values = obs[key].astype(str).to_numpy()
        vocab = spec.vocabularies[key]
        unknown = sorted(set(values) - set(vocab))
        if unknown:
            raise DataError(
                f"the composition data has {key} value(s) {unknown[:10]} the model does not know; "
                f"known values: {vocab}"
            )
        index = {v: i for i, v in enumerate(vocab)}
        columns.append(np.fromiter((index[v] for v in values), dtype=np.int64, count=len(values)))
    combos, real_counts = np.unique(np.stack(columns, axis=1), axis=0, return_counts=True)
    exact = real_counts / real_counts.sum() * n_cells
    counts = np.floor(exact).astype(np.int64)
    # Largest remainder; ties go to the more common combination, then the lower codes.
    order = np.lexsort((-real_counts, -(exact - counts)))
    counts[order[: n_cells - counts.sum()]] += 1
    return LabelRuns(combos, counts)
