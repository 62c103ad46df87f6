"""cellsynth: fast synthetic single-cell RNA-seq generation with diffusion models.

The public API is loaded lazily (PEP 562 ``__getattr__``): ``import cellsynth`` or
``from cellsynth import _core`` runs no heavy import, and ``cellsynth.generate`` imports the
generation stage on first use. The runtime needs no PyTorch; ``train`` and ``distill`` are the
lazy doors into the PyTorch rooms (``cellsynth.training``), which need ``cellsynth[train]``.
"""

from __future__ import annotations

import importlib
from typing import Any

from cellsynth._version import __version__
from cellsynth.errors import (
    BundleError,
    CellsynthError,
    DataError,
    DatasetNotInstalledError,
    GeneMismatchError,
    MissingDependencyError,
)

# public name -> (module, attribute; None = the module itself)
_LAZY = {
    "generate": ("cellsynth.generation.run", "generate"),
    "evaluate": ("cellsynth.evaluation.evaluate", "evaluate"),
    "load_bundle": ("cellsynth.bundle.load", "load_bundle"),
    "Bundle": ("cellsynth.bundle.load", "Bundle"),
    "normalize_like": ("cellsynth.bundle.scale", "normalize_like"),
    "NoiseSchedule": ("cellsynth.scheduler.schedules", "NoiseSchedule"),
    "train": ("cellsynth.training.api", "train"),
    "distill": ("cellsynth.training.distill", "distill"),
    "data": ("cellsynth.data", None),
    "datasets": ("cellsynth.data.datasets", None),
}

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
    "distill",
    "evaluate",
    "generate",
    "load_bundle",
    "normalize_like",
    "train",
]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'cellsynth' has no attribute {name!r}")
    module_name, attribute = _LAZY[name]
    if module_name.startswith("cellsynth.training"):
        from cellsynth.torch_entry import torch_module

        module = torch_module(module_name.removeprefix("cellsynth."), f"cellsynth.{name}")
    else:
        module = importlib.import_module(module_name)
    value = module if attribute is None else getattr(module, attribute)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
