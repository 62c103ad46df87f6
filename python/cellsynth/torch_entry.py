"""The one way from the runtime into the PyTorch code: ``cellsynth.training``, ``cellsynth.export``.

The runtime (everything else under ``python/cellsynth``) runs without torch, so it never imports
those packages itself; ``tests/test_layout.py`` checks that no other runtime file does. Three
kinds of caller come through here, always when they run, never at import:

- :meth:`cellsynth.bundle.load.Bundle.to_torch` builds a bundle's network
  (:func:`build_module`, by the architecture name in its config.json);
- the CLI commands that are PyTorch jobs (``train``, ``distill``, ``distill-eval``,
  ``export onnx``) load their module with :func:`torch_module`;
- the top-level ``cellsynth.train`` and ``cellsynth.distill``.

Without torch each says in one line what to install.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from types import ModuleType
from typing import Any

from cellsynth.errors import BundleError, MissingDependencyError

INSTALL_TORCH = "pip install torch==2.13.0 && pip install 'cellsynth[train]'"

# Architecture name in a bundle's config.json -> (module under cellsynth, class).
ARCHITECTURES = {
    "dit": ("training.dit", "DiT"),
    "autoencoder": ("training.autoencoder", "AutoEncoder"),
    "count_autoencoder": ("training.count_autoencoder", "CountAutoEncoder"),
    "scdg": ("training.scdg", "SCDG"),
}


def require_torch() -> Any:
    """The torch module, or MissingDependencyError saying how to install it."""
    try:
        import torch
    except ImportError as exc:  # pragma: no cover - exercised only where torch is absent
        raise MissingDependencyError(f"this needs PyTorch: {INSTALL_TORCH}") from exc
    return torch


def torch_module(name: str, purpose: str = "training") -> ModuleType:
    """Import ``cellsynth.<name>`` (``training.<x>`` or ``export.<x>``); without torch, say what to
    install."""
    if not name.startswith(("training.", "export.")) and name not in ("training", "export"):
        raise ValueError(f"not a PyTorch module of cellsynth: {name!r}")
    try:
        return importlib.import_module(f"cellsynth.{name}")
    except ImportError as exc:
        raise MissingDependencyError(f"{purpose} needs PyTorch ({exc}): {INSTALL_TORCH}") from exc


def build_module(architecture: Mapping[str, Any], device: str = "cpu") -> Any:
    """A freshly initialised ``torch.nn.Module`` for a bundle's ``architecture`` block."""
    arch = dict(architecture)
    name = arch.pop("name", None)
    if name not in ARCHITECTURES:
        raise BundleError(
            f"unknown architecture {name!r}; this cellsynth knows {sorted(ARCHITECTURES)}"
        )
    module_name, class_name = ARCHITECTURES[name]
    cls = getattr(torch_module(module_name, "a bundle's PyTorch model"), class_name)
    torch = require_torch()
    with torch.device(device):
        try:
            return cls(**arch)
        except TypeError as exc:
            raise BundleError(f"architecture options do not fit {class_name}: {exc}") from exc
