"""What a benchmark ran on: CPU model, cores, library versions, load (shared by the scripts)."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch

import cellsynth


def cpu_model() -> str:
    """The CPU's marketing name from /proc/cpuinfo, else what platform reports."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict[str, object]:
    """The fields every benchmark result records."""
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cellsynth": cellsynth.__version__,
        # Other work on the machine skews timings: record how busy it was.
        "load_average_1_5_15_min": [round(v, 2) for v in os.getloadavg()],
    }
