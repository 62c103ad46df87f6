"""What a benchmark ran on: CPU model, cores, GPU, library versions and how busy the machine was.

No PyTorch import: versions are read from the installed package metadata, so ``cellsynth bench``
describes a torch-free machine too.
"""

from __future__ import annotations

import os
import platform
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

LIBRARIES = ("cellsynth", "numpy", "onnxruntime", "onnxruntime-gpu", "torch", "tensorrt")


def cpu_model() -> str:
    """The CPU's marketing name from /proc/cpuinfo, else what platform reports."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def library_versions(names: tuple[str, ...] = LIBRARIES) -> dict[str, str]:
    """Installed version of each library that is installed."""
    out = {}
    for name in names:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            continue
    return out


def gpu_name(index: int = 0) -> str | None:
    """CUDA device ``index`` as the core sees it, or None (no such GPU, or a core built without
    CUDA)."""
    try:
        from cellsynth import _core

        if _core.cuda_compiled and _core.cuda_device_count() > index:
            return str(_core.cuda_device_name(index))
    except Exception:  # a broken driver must not stop a CPU benchmark
        return None
    return None


def describe_machine() -> dict[str, object]:
    """The fields every benchmark result records."""
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "gpu": gpu_name(),
        "python": platform.python_version(),
        "versions": library_versions(),
        # Other work on the machine skews timings: record how busy it was.
        "load_average_1_5_15_min": [round(v, 2) for v in os.getloadavg()],
    }
