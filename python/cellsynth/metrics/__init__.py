"""Fidelity of synthetic cells against real ones (numpy/scipy/POT only, no torch).

- :func:`compute_metrics`: every metric below with its real-vs-real floor, per label on request.
- :mod:`cellsynth.metrics.paper`: the scRDiT paper's definitions (KL, 1-D W1, multi-kernel MMD).
- :mod:`cellsynth.metrics.sound`: unbiased PCA MMD^2, exact and sliced W2, gene statistics,
  kNN two-sample AUC.
- :func:`quick_summary`: the few numbers ``cellsynth demo`` prints.
"""

from cellsynth.metrics.report import METRICS, compute_metrics
from cellsynth.metrics.summary import fit_pca, quick_summary

__all__ = ["METRICS", "compute_metrics", "fit_pca", "quick_summary"]
