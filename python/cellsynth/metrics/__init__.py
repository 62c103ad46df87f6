"""Fidelity of synthetic cells against real ones (numpy/scipy only, no torch)."""

from cellsynth.metrics.summary import fit_pca, quick_summary

__all__ = ["fit_pca", "quick_summary"]
