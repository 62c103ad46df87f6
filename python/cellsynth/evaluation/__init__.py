"""Evaluation: ``cellsynth evaluate``, real against synthetic cells as numbers, text and figures.

:mod:`.evaluate` reads both sides and runs the stages (behind :func:`cellsynth.evaluate`),
:mod:`.compare` puts them in one representation with the same label mix, :mod:`.report` writes
metrics.json and report.md, :mod:`.plots` draws the figures. The metrics themselves live in
:mod:`cellsynth.metrics`.
"""
