"""What a benchmark ran on (shared by the scripts): the package's own description
(:func:`cellsynth.bench.machine.describe_machine`) plus torch's thread count."""

from __future__ import annotations

import platform

import torch

import cellsynth
from cellsynth.bench.machine import cpu_model, describe_machine

__all__ = ["cpu_model", "machine"]


def machine() -> dict[str, object]:
    """The fields every benchmark result records."""
    described = describe_machine()
    return {
        "cpu": described["cpu"],
        "cores": described["cores"],
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cellsynth": cellsynth.__version__,
        "load_average_1_5_15_min": described["load_average_1_5_15_min"],
    }
