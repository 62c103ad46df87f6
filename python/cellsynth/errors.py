"""Exceptions with messages a biologist can act on; the CLI prints them as one line."""

from __future__ import annotations


class CellsynthError(Exception):
    """Base class of every error cellsynth raises on purpose (bad input, bad files)."""


class DataError(CellsynthError, ValueError):
    """The expression data or its labels cannot be used as given (NaN, negative counts, ...)."""


class GeneMismatchError(DataError):
    """The genes of a data set do not match the genes a model was trained on."""


class BundleError(CellsynthError):
    """A model bundle is missing, corrupt, of another format version or inconsistent."""


class DatasetNotInstalledError(CellsynthError, ImportError):
    """A built-in data set's package is not installed; the message gives the pip command."""


class MissingDependencyError(CellsynthError, ImportError):
    """An optional dependency (for example PyTorch for training) is not installed."""
