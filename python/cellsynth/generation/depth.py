"""Depth conditioning of a gene-space model: each cell's library-size bin is one more label.

Real cells of one class differ in depth (library size), and depth moves every gene's chance of
being detected at once. A DiT conditioned on cell type and stim alone had to make that shared
factor up from noise and made too little of it: on Kang's held-out cells the detected genes per
cell have sd 24, the DiT's cells 16. Trained with each cell's depth bin as an extra label column
(quantiles of the training cells' log library size), the model is told the factor instead
(what it changed on Kang: docs/architecture.md, "Depth conditioning").

Generation draws each cell's library size from the training cells' log-normal of its label
combination (:class:`~cellsynth.generation.counts.LibraryModel`, keyed per cell like the noise, so
it does not depend on batching) and conditions on its bin; with ``--counts`` the same library size
turns the cell's X into counts. The user never names the bin: it is not in the bundle's labels,
only in the model's label input (``Bundle.model_label_sizes``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from cellsynth.generation.counts import LibraryModel


class DepthConditioning:
    """Library-size bins of a depth-conditioned model and the law its cells draw depth from.

    Parameters
    ----------
    edges : sequence of float
        Increasing inner edges of the bins on the log library size (n_bins - 1 of them).
    library : LibraryModel
        Log-normal library sizes per label combination of the training cells.
    """

    def __init__(self, edges, library: LibraryModel) -> None:
        self.edges = np.asarray(edges, dtype=np.float64)
        if self.edges.ndim != 1 or (np.diff(self.edges) < 0).any():
            raise ValueError("depth bin edges must be a non-decreasing list")
        self.library = library

    @property
    def n_bins(self) -> int:
        return len(self.edges) + 1

    @classmethod
    def fit(
        cls, library_sizes: np.ndarray, codes: np.ndarray, keys: list[str], n_bins: int
    ) -> DepthConditioning:
        """Bins at the quantiles of the cells' log library sizes [N] (> 0); the per-combination
        law from the same cells with label codes [N, K]."""
        if n_bins < 2:
            raise ValueError(f"depth conditioning needs at least 2 bins, got {n_bins}")
        logs = np.log(np.asarray(library_sizes, dtype=np.float64))
        edges = np.quantile(logs, np.linspace(0.0, 1.0, n_bins + 1)[1:-1])
        return cls(edges, LibraryModel.fit(library_sizes, codes, list(keys)))

    def bins(self, library_sizes: np.ndarray) -> np.ndarray:
        """Bin codes int64 [N] of library sizes [N]: 0 .. n_bins - 1."""
        logs = np.log(np.asarray(library_sizes, dtype=np.float64))
        return np.searchsorted(self.edges, logs, side="right").astype(np.int64)

    def draw(self, codes: np.ndarray, seed: int, cell_offset: int) -> tuple[np.ndarray, np.ndarray]:
        """(library sizes float64 [B], model label codes int64 [B, K + 1]) of cells
        ``cell_offset ..`` with label codes [B, K]: the codes with each cell's depth bin added."""
        codes = np.asarray(codes, dtype=np.int64).reshape(len(codes), -1)
        library = self.library.draw(codes, seed, cell_offset)
        return library, np.concatenate([codes, self.bins(library)[:, None]], axis=1)

    def to_dict(self) -> dict[str, Any]:
        return {"edges_log": [float(e) for e in self.edges], "library": self.library.to_dict()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DepthConditioning:
        return cls(d["edges_log"], LibraryModel.from_dict(d["library"]))


def depth_conditioning(config: dict[str, Any]) -> DepthConditioning | None:
    """A bundle config's depth conditioning, or None for a model without it."""
    depth = config.get("depth")
    return None if depth is None else DepthConditioning.from_dict(depth)
