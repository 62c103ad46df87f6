"""Where a step runs: the arrays a scheduler is given, handed to the compiled core without copies.

The math of each scheduler lives in its own module (ddim.py, ddpm.py, dpmsolver.py) and in the
compiled core (csrc/step.h); this module only moves arrays:

* NumPy float32 C-contiguous arrays go to ``_core.step`` zero-copy;
* CPU torch tensors go the same way through ``tensor.numpy()`` (shared memory), and the result is a
  tensor;
* CUDA torch tensors go to ``_core.cuda_step`` as device pointers, launched on
  ``torch.cuda.current_stream()``; without a CUDA build they round-trip through the CPU;
* torch-free device arrays (``_core.DeviceArray``, or any object with ``is_cuda = True``,
  ``data_ptr()``, ``shape``, ``dtype`` 'float32' and ``device`` (an int)) go to
  ``_core.cuda_step`` too, launched on the ``stream`` given to :func:`run_step`, else on the
  sample's ``stream`` attribute (a ``cudaStream_t`` as int; 0, the legacy default stream, when it
  has none). This is how the TensorRT and onnxruntime-CUDA backends step without torch.

torch is never imported here unless the caller passes tensors (the runtime must work without it).
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np

from cellsynth import _core


def loaded_torch():
    """torch when the caller has imported it, else None (this module never imports it)."""
    return sys.modules.get("torch")


def is_tensor(x: Any) -> bool:
    """A torch tensor (False without torch loaded)."""
    torch = loaded_torch()
    return torch is not None and isinstance(x, torch.Tensor)


def is_device_array(x: Any) -> bool:
    """A torch-free CUDA array: not a tensor, ``is_cuda`` is True and it has ``data_ptr()``."""
    return (
        not is_tensor(x)
        and getattr(x, "is_cuda", False) is True
        and callable(getattr(x, "data_ptr", None))
    )


def _array_kind(x: Any) -> str:
    if is_tensor(x):
        return "tensor"
    return "device" if is_device_array(x) else "host"


def stream_handle(stream: Any) -> int:
    """A cudaStream_t as int from an int, a ``_core.CudaStream`` or a ``torch.cuda.Stream``."""
    if stream is None:
        return 0
    for attr in ("handle", "cuda_stream"):
        if hasattr(stream, attr):
            return int(getattr(stream, attr))
    return int(stream)


def _span(t) -> tuple[int, int]:
    """[first byte, one past the last byte) of a contiguous tensor's storage use."""
    start = t.data_ptr()
    return start, start + t.numel() * t.element_size()


def _check_no_aliasing(arrays: dict[str, Any], span) -> None:
    """The aliasing rules of the fused step (csrc/bindings/helpers.h checks the NumPy path the
    same way): ``out`` may be ``sample`` itself but overlap nothing else; ``history`` overlaps
    nothing it is read with. ``span(a)`` gives [first byte, one past the last)."""

    def overlap(a: Any, b: Any) -> bool:
        (a0, a1), (b0, b1) = span(a), span(b)
        return a0 != a1 and b0 != b1 and a0 < b1 and b0 < a1

    out, sample, hist = arrays["out"], arrays["sample"], arrays.get("history")
    if span(out) != span(sample) and overlap(out, sample):
        raise ValueError("out and sample overlap in memory (aliased arrays); pass separate arrays")
    for name in ("model_output", "history", "variance_noise"):
        if arrays.get(name) is not None and overlap(out, arrays[name]):
            raise ValueError(f"out and {name} overlap in memory (aliased arrays)")
    if hist is not None:
        for name in ("model_output", "sample", "variance_noise"):
            if arrays.get(name) is not None and overlap(hist, arrays[name]):
                raise ValueError(f"history and {name} overlap in memory (aliased arrays)")


def _check_cuda_tensors(tensors: dict[str, Any]) -> None:
    torch = loaded_torch()
    sample = tensors["sample"]
    if sample.ndim != 2:
        raise ValueError(f"sample must be 2-D [n_cells, n_genes], got shape {tuple(sample.shape)}")
    for name, t in tensors.items():
        if t is None:
            continue
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor like sample, got {type(t).__name__}")
        if t.device != sample.device:
            raise ValueError(f"{name} is on {t.device} but sample is on {sample.device}")
        if t.dtype != torch.float32:
            raise ValueError(f"{name} must have dtype float32, got {t.dtype}")
        if t.shape != sample.shape:
            raise ValueError(
                f"{name} has shape {tuple(t.shape)}, expected {tuple(sample.shape)} like sample"
            )
        if not t.is_contiguous():
            raise ValueError(f"{name} must be C-contiguous (use .contiguous())")
    _check_no_aliasing(tensors, _span)


def _device_span(a: Any) -> tuple[int, int]:
    start = int(a.data_ptr())
    return start, start + int(np.prod(tuple(a.shape), dtype=np.int64)) * 4


def _check_device_arrays(arrays: dict[str, Any]) -> None:
    sample = arrays["sample"]
    shape = tuple(sample.shape)
    if len(shape) != 2:
        raise ValueError(f"sample must be 2-D [n_cells, n_genes], got shape {shape}")
    for name, a in arrays.items():
        if a is None:
            continue
        if not is_device_array(a):
            raise TypeError(
                f"{name} must be a CUDA device array like sample, got {type(a).__name__}"
            )
        if int(a.device) != int(sample.device):
            raise ValueError(f"{name} is on cuda:{a.device} but sample is on cuda:{sample.device}")
        if str(a.dtype) != "float32":
            raise ValueError(f"{name} must have dtype float32, got {a.dtype}")
        if tuple(a.shape) != shape:
            raise ValueError(f"{name} has shape {tuple(a.shape)}, expected {shape} like sample")
    _check_no_aliasing(arrays, _device_span)


def _numpy_view(x: Any, name: str) -> np.ndarray:
    """A NumPy array sharing memory with a NumPy array or CPU tensor (validated by the core)."""
    if isinstance(x, np.ndarray):
        return x
    if is_tensor(x):
        return x.detach().numpy()
    raise TypeError(f"{name} must be a numpy.ndarray or a torch.Tensor, got {type(x).__name__}")


_warned_cpu_fallback = False


def run_step(
    coefficients: Any,
    model_output: Any,
    sample: Any,
    *,
    out: Any = None,
    history: Any = None,
    variance_noise: Any = None,
    options: Mapping[str, Any],
    stream: Any = None,
) -> Any:
    """Run the fused step on NumPy arrays, CPU tensors, CUDA tensors or CUDA device arrays;
    returns ``out``.

    ``options`` are the keyword options of ``_core.step`` besides the arrays and coefficients.
    ``stream`` (device arrays only; an int handle or a ``_core.CudaStream``) overrides the
    sample's ``stream`` attribute; CUDA tensors always use torch's current stream.
    """
    if is_tensor(sample) and sample.is_cuda:
        return _run_cuda(coefficients, model_output, sample, out, history, variance_noise, options)
    if is_device_array(sample):
        return _run_device_array(
            coefficients, model_output, sample, out, history, variance_noise, options, stream
        )
    tensor_in = is_tensor(sample)
    if tensor_in != is_tensor(model_output):
        raise TypeError(
            "model_output and sample must both be NumPy arrays or both be torch tensors, got "
            f"{type(model_output).__name__} and {type(sample).__name__}"
        )
    x = _numpy_view(sample, "sample")
    m = _numpy_view(model_output, "model_output")
    if out is None:
        if tensor_in:
            torch = loaded_torch()
            out = torch.empty(tuple(x.shape), dtype=torch.float32)
        else:
            out = np.empty(x.shape, dtype=np.float32)
    o = _numpy_view(out, "out")
    h = None if history is None else _numpy_view(history, "history")
    z = None if variance_noise is None else _numpy_view(variance_noise, "variance_noise")
    _core.step(m, x, o, coefficients, history=h, noise=z, **options)
    return out


def _run_cuda(coefficients, model_output, sample, out, history, variance_noise, options):
    torch = loaded_torch()
    if out is None:
        out = torch.empty_like(sample, memory_format=torch.contiguous_format)
    tensors = {
        "model_output": model_output,
        "sample": sample,
        "out": out,
        "history": history,
        "variance_noise": variance_noise,
    }
    _check_cuda_tensors(tensors)
    if not _core.cuda_compiled:
        global _warned_cpu_fallback
        if not _warned_cpu_fallback:
            warnings.warn(
                "cellsynth was built without CUDA: the scheduler steps CUDA tensors on the CPU "
                "(copying them there and back)",
                RuntimeWarning,
                stacklevel=3,
            )
            _warned_cpu_fallback = True
        cpu = {k: (None if v is None else v.detach().cpu()) for k, v in tensors.items()}
        cpu_out = cpu["out"] if out.data_ptr() != sample.data_ptr() else cpu["sample"]
        run_step(
            coefficients,
            cpu["model_output"],
            cpu["sample"],
            out=cpu_out,
            history=cpu["history"],
            variance_noise=cpu["variance_noise"],
            options=options,
        )
        out.copy_(cpu_out)
        if history is not None:
            history.copy_(cpu["history"])
        return out
    n_cells, n_genes = sample.shape
    _core.cuda_step(
        model_output.data_ptr(),
        sample.data_ptr(),
        out.data_ptr(),
        int(n_cells),
        int(n_genes),
        coefficients,
        history=0 if history is None else history.data_ptr(),
        noise=0 if variance_noise is None else variance_noise.data_ptr(),
        stream=torch.cuda.current_stream(sample.device).cuda_stream,
        device=sample.device.index if sample.device.index is not None else 0,
        **options,
    )
    return out


def _run_device_array(
    coefficients, model_output, sample, out, history, variance_noise, options, stream
):
    if not _core.cuda_compiled:
        raise RuntimeError(
            "cellsynth was built without CUDA: it cannot step CUDA device arrays (reinstall with "
            "the CUDA toolkit present)"
        )
    handle = stream_handle(stream if stream is not None else getattr(sample, "stream", 0))
    device = int(sample.device)
    if out is None:
        out = _core.DeviceArray(tuple(sample.shape), "float32", device, stream=handle)
    arrays = {
        "model_output": model_output,
        "sample": sample,
        "out": out,
        "history": history,
        "variance_noise": variance_noise,
    }
    _check_device_arrays(arrays)
    n_cells, n_genes = (int(d) for d in sample.shape)
    _core.cuda_step(
        int(model_output.data_ptr()),
        int(sample.data_ptr()),
        int(out.data_ptr()),
        n_cells,
        n_genes,
        coefficients,
        history=0 if history is None else int(history.data_ptr()),
        noise=0 if variance_noise is None else int(variance_noise.data_ptr()),
        stream=handle,
        device=device,
        **options,
    )
    return out


def zeros_like(x: Any) -> Any:
    """A zero float32 array / tensor (same device; same stream for device arrays) like ``x``."""
    if is_tensor(x):
        torch = loaded_torch()
        return torch.zeros(tuple(x.shape), dtype=torch.float32, device=x.device)
    if is_device_array(x):
        handle = stream_handle(getattr(x, "stream", 0))
        z = _core.DeviceArray(tuple(x.shape), "float32", int(x.device), stream=handle)
        z.zero_()
        return z
    return np.zeros(np.shape(x), dtype=np.float32)


def same_kind(a: Any, b: Any) -> bool:
    """Whether a buffer made for ``a`` can serve ``b`` (type, shape, device)."""
    kind = _array_kind(a)
    if kind != _array_kind(b):
        return False
    if tuple(a.shape) != tuple(b.shape):
        return False
    if kind == "host":
        return True
    return a.device == b.device
