"""The ``cellsynth`` command line (entry point: cellsynth.cli.main:main)."""

from __future__ import annotations

from types import ModuleType


def training_module(name: str, purpose: str = "training") -> ModuleType:
    """Import ``cellsynth.training.<name>``, or say in one line how to install PyTorch.

    Commands import their PyTorch code only when they run, so the rest of the CLI works without it.
    """
    import importlib

    try:
        return importlib.import_module(f"cellsynth.training.{name}")
    except ImportError as exc:
        from cellsynth.errors import MissingDependencyError

        raise MissingDependencyError(
            f"{purpose} needs PyTorch ({exc}): "
            "pip install torch==2.13.0 && pip install 'cellsynth[train]'"
        ) from exc
