"""Committed training recipes for the models cellsynth ships (one module per bundle)."""
