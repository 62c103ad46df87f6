"""cellsynth: fast synthetic single-cell RNA-seq generation with diffusion models.

The runtime (this package, minus ``cellsynth.training``) needs no PyTorch.
"""

from cellsynth import data, datasets
from cellsynth._version import __version__
from cellsynth.bundle import Bundle, load_bundle
from cellsynth.errors import (
    BundleError,
    CellsynthError,
    DataError,
    DatasetNotInstalledError,
    GeneMismatchError,
    MissingDependencyError,
)
from cellsynth.generate import generate
from cellsynth.scale import normalize_like
from cellsynth.schedules import NoiseSchedule

__all__ = [
    "__version__",
    "Bundle",
    "BundleError",
    "CellsynthError",
    "DataError",
    "DatasetNotInstalledError",
    "GeneMismatchError",
    "MissingDependencyError",
    "NoiseSchedule",
    "data",
    "datasets",
    "generate",
    "load_bundle",
    "normalize_like",
]
