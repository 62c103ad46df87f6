"""cellsynth: fast synthetic single-cell RNA-seq generation with diffusion models.

The runtime (this package, minus ``cellsynth.training``) needs no PyTorch.
"""

from cellsynth._version import __version__
from cellsynth.errors import (
    BundleError,
    CellsynthError,
    DataError,
    DatasetNotInstalledError,
    GeneMismatchError,
)
from cellsynth.schedules import NoiseSchedule

__all__ = [
    "__version__",
    "BundleError",
    "CellsynthError",
    "DataError",
    "DatasetNotInstalledError",
    "GeneMismatchError",
    "NoiseSchedule",
]
