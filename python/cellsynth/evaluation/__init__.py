"""Evaluation: ``cellsynth evaluate``, real against synthetic cells as numbers, text and figures.

The metrics themselves live in :mod:`cellsynth.metrics`; this stage loads and aligns the two
sides (:mod:`.evaluate`) and draws the figures (:mod:`.plots`).
"""
