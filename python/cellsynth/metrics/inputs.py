"""The inputs of :func:`~cellsynth.metrics.report.compute_metrics`, checked and shaped: dense
matrices of one width, and label sets (one or several label keys, the joint label of cells)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np


def dense(x: Any) -> np.ndarray:
    """[n, G] float32 (float64 kept as given) from a numpy array or a scipy.sparse matrix."""
    if hasattr(x, "toarray"):
        x = x.toarray()
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"expected a cells x genes matrix, got an array of shape {x.shape}")
    return x if x.dtype in (np.float32, np.float64) else x.astype(np.float32)


def label_sets(
    real_labels: Any, synthetic_labels: Any, label_key: str | None, n_real: int, n_syn: int
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{key: (real labels [n], synthetic labels [m])} as string arrays, validated."""
    if real_labels is None and synthetic_labels is None:
        return {}
    if real_labels is None or synthetic_labels is None:
        raise ValueError("give labels for both real and synthetic cells, or for neither")
    if isinstance(real_labels, Mapping):
        keys = [label_key] if label_key is not None else list(real_labels)
        for k in keys:
            if k not in real_labels or k not in synthetic_labels:
                raise ValueError(f"label {k!r} missing from real or synthetic labels")
        pairs = {k: (real_labels[k], synthetic_labels[k]) for k in keys}
    else:
        pairs = {label_key or "label": (real_labels, synthetic_labels)}
    out = {}
    for k, (r, s) in pairs.items():
        r, s = np.asarray(r).astype(str), np.asarray(s).astype(str)
        if len(r) != n_real or len(s) != n_syn:
            raise ValueError(
                f"label {k!r}: {len(r)} real / {len(s)} synthetic labels for "
                f"{n_real} real / {n_syn} synthetic cells"
            )
        out[k] = (r, s)
    return out


#: Metric families, each computed by one function below; ``families=`` picks a subset.


def check_widths(real: np.ndarray, synthetic: np.ndarray, *others: Any) -> None:
    """Every matrix must have the same genes (columns) as the real cells."""
    for x, what in (
        (synthetic, "synthetic cells"),
        *zip(others, ("floor_real", "pca_real"), strict=True),
    ):
        if x is not None and x.shape[1] != real.shape[1]:
            raise ValueError(
                f"real cells have {real.shape[1]} genes and {what} {x.shape[1]}: "
                "align both to the same genes first"
            )


def floor_label_sets(
    floor_labels: Any,
    labels: dict[str, tuple[np.ndarray, np.ndarray]],
    label_key: str | None,
    floor: np.ndarray | None,
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The floor sample's labels in the shape of ``labels`` ({key: (labels [n_f], unused)})."""
    if floor is None or not labels:
        return labels
    if floor_labels is None:
        raise ValueError("give labels for the floor cells too (floor_labels)")
    out = {}
    for key in labels:
        f = floor_labels[key] if isinstance(floor_labels, Mapping) else floor_labels
        f = np.asarray(f).astype(str)
        if len(f) != len(floor):
            raise ValueError(f"label {key!r}: {len(f)} floor labels for {len(floor)} floor cells")
        out[key] = (f, f)
    return out


def joint_labels(
    labels: dict[str, tuple[np.ndarray, np.ndarray]], synthetic: bool = False
) -> np.ndarray | None:
    """The joint class of each cell ('a|b' over every label key), or None without labels."""
    if not labels:
        return None
    cols = [pair[1] if synthetic else pair[0] for pair in labels.values()]
    out = cols[0].astype(object)
    for col in cols[1:]:
        out = out + "|" + col.astype(object)
    return out.astype(str)
