"""Device and mixed-precision selection for training: "auto" means cuda > mps > cpu."""

from __future__ import annotations

import contextlib

import torch

__all__ = ["MIXED_PRECISION", "autocast", "resolve_device", "resolve_mixed_precision"]

MIXED_PRECISION = ("auto", "no", "bf16")


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """Turn "auto" (or a device string) into a torch.device, checking that it is available.

    Parameters
    ----------
    device : str or torch.device
        "auto" picks CUDA if available, then Apple MPS, then CPU; otherwise any torch device
        string such as "cpu", "cuda", "cuda:1" or "mps".
    """
    if isinstance(device, torch.device):
        dev = device
    elif device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    else:
        try:
            dev = torch.device(device)
        except RuntimeError as err:
            raise ValueError(f"unknown device {device!r}: {err}") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {str(dev)!r} requested but CUDA is not available")
        if dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device())
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError("device 'mps' requested but Apple MPS is not available")
    return dev


def resolve_mixed_precision(mixed_precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for a setting: "auto" -> bf16 on CUDA (when supported), else none."""
    if mixed_precision not in MIXED_PRECISION:
        raise ValueError(
            f"unknown mixed_precision {mixed_precision!r}; expected one of {MIXED_PRECISION}"
        )
    if mixed_precision == "no":
        return None
    if mixed_precision == "bf16":
        return torch.bfloat16
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """``torch.autocast`` for ``dtype``, or a no-op context when dtype is None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
