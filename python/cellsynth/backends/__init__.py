"""Denoiser backends behind one interface (:class:`Denoiser`), and the choice among them.

========== ===================================== ==========================================
engine      runs                                  needs
========== ===================================== ==========================================
torch       the bundle's module, eager            PyTorch (CUDA graphs on a GPU)
onnxruntime the bundle's ONNX export              onnxruntime (CPU); onnxruntime-gpu (CUDA)
tensorrt    an engine built from the ONNX export  an NVIDIA GPU, TensorRT 10
========== ===================================== ==========================================

``engine='auto'`` measures, for the run it is asked for, which of the engines that can run the
bundle here is fastest (on the CPU: onnxruntime with an ONNX export, torch; on a GPU: TensorRT,
onnxruntime on CUDA, torch on CUDA) for this bundle, machine, thread count, batch size and
guidance, and caches the answer (:mod:`cellsynth.backends.calibration`); with one candidate,
that one. Without a run to measure for (or a run too small to pay for it), it takes the first
available in the order TensorRT, onnxruntime on CUDA, torch on CUDA, onnxruntime on the CPU,
torch on the CPU.

A latent-diffusion bundle (SCDG over autoencoder codes) denoises with the same backends at width
D and ends with a :class:`Decoder` from :func:`load_decoder`, chosen by the denoiser's engine and
device: torch -> the autoencoder's module (:class:`~cellsynth.backends.torch_backend.TorchDecoder`),
onnxruntime -> its exported decoder
(:class:`~cellsynth.backends.onnxruntime_backend.OnnxRuntimeDecoder`). For such a bundle an
"ONNX export" means the denoiser's and the decoder's, and TensorRT is not offered.
"""

from __future__ import annotations

import importlib.util
import re
from typing import Any

from cellsynth.backends.base import Decoder, Denoiser
from cellsynth.bundle.load import Bundle
from cellsynth.errors import BundleError, CellsynthError, MissingDependencyError

ENGINES = ("torch", "onnxruntime", "tensorrt")

__all__ = [
    "ENGINES",
    "Decoder",
    "Denoiser",
    "choose_engine",
    "engine_candidates",
    "load_decoder",
    "load_denoiser",
    "load_engine",
]


def _cuda_device_count() -> int:
    from cellsynth import _core

    try:
        return int(_core.cuda_device_count()) if _core.cuda_compiled else 0
    except Exception:  # noqa: BLE001 - a broken driver means: no usable GPU
        return 0


def _has_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def _torch_cuda() -> bool:
    if not _has_module("torch"):
        return False
    import torch

    return bool(torch.cuda.is_available())


def _ort_cuda() -> bool:
    import onnxruntime as ort

    return "CUDAExecutionProvider" in ort.get_available_providers()


def _has_onnx(bundle: Bundle) -> bool:
    """An fp32 ONNX export of the denoiser (and, for latent diffusion, of the decoder too)."""
    from cellsynth.bundle.exports import export_entry

    if export_entry(bundle, "onnx", "fp32") is None:
        return False
    return not _latent(bundle) or export_entry(bundle.autoencoder, "onnx", "decoder") is not None


def _latent(bundle: Bundle) -> bool:
    return bundle.kind == "latent_diffusion"


def _require_denoiser(bundle: Bundle) -> None:
    if bundle.kind == "autoencoder":
        raise BundleError(
            f"{bundle.path} is an autoencoder bundle: it has no denoiser to generate with; "
            f"train a latent diffusion model on it (cellsynth train scdg) and sample from that"
        )


def choose_engine(bundle: Bundle, device: str = "auto") -> tuple[str, str, str]:
    """Pick ``(engine, device, why)`` for ``engine='auto'``.

    ``device`` 'auto' allows a GPU; 'cpu' keeps everything on the host; 'cuda[:N]' requires one.
    """
    _require_denoiser(bundle)
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", str(device)):
        raise CellsynthError(f"unknown device {device!r}: use auto, cpu, cuda or cuda:N")
    want_cpu = device == "cpu"
    gpu = not want_cpu and _cuda_device_count() > 0
    onnx = _has_onnx(bundle)
    cuda = "cuda:0" if device in ("auto", "cuda") else device
    if gpu and onnx and _has_module("tensorrt") and not _latent(bundle):
        return "tensorrt", cuda, "GPU with TensorRT and an ONNX export"
    if gpu and onnx and _ort_cuda():
        return "onnxruntime", cuda, "GPU with onnxruntime-gpu and an ONNX export"
    if not want_cpu and _torch_cuda():
        return "torch", cuda, "GPU with PyTorch (no ONNX export or no TensorRT/onnxruntime-gpu)"
    if device not in ("auto", "cpu"):
        why = (
            "this machine has no NVIDIA GPU (or no driver for it)"
            if _cuda_device_count() == 0
            else "neither onnxruntime-gpu nor PyTorch with CUDA can use it"
        )
        raise CellsynthError(f"device {device!r} was asked for, but {why}; use --device cpu")
    if onnx:
        return "onnxruntime", "cpu", "CPU with an ONNX export"
    if _has_module("torch"):
        return "torch", "cpu", "CPU without an ONNX export (cellsynth export BUNDLE --format onnx)"
    raise MissingDependencyError(
        f"nothing can run {bundle.path}: it has no ONNX export and PyTorch is not installed; "
        f"export it where torch is (cellsynth export {bundle.path} --format onnx) or "
        "pip install torch==2.13.0"
    )


def load_denoiser(
    bundle: Bundle,
    engine: str = "auto",
    device: str = "auto",
    weights: str = "ema",
    precision: str | None = None,
    threads: int | None = None,
    run: dict[str, int] | None = None,
) -> tuple[Denoiser, str]:
    """Build the denoiser for ``engine`` and return it with a line saying why it was chosen.

    Parameters
    ----------
    engine : {'auto', 'torch', 'onnxruntime', 'tensorrt'}
    device : str
        'auto', 'cpu', 'cuda' or 'cuda:N'.
    weights : {'ema', 'model'}
        For torch; ONNX files and engines were exported from one of them (see exports.json).
    precision : str, optional
        onnxruntime: 'fp32' (default), 'fp16', 'int8'; tensorrt: 'fp16' (default), 'bf16', 'fp32'.
    threads : int, optional
        CPU threads (torch, onnxruntime on the CPU).
    run : dict, optional
        The run ``engine='auto'`` chooses for: ``batch_size``, ``steps``, ``n_cells`` and
        optionally ``guidance``. With several engines able to run the bundle on the device (and
        no ``precision`` asked for), the fastest for it is measured
        (:mod:`cellsynth.backends.calibration`) and the figures are kept in
        ``denoiser.details['engine_calibration']``. Without it: :func:`choose_engine`'s order.
    """
    if engine not in (*ENGINES, "auto"):
        raise CellsynthError(f"engine must be 'auto' or one of {ENGINES}, got {engine!r}")
    _require_denoiser(bundle)
    if engine == "tensorrt":
        from cellsynth.bundle.exports import check_tensorrt_kind

        check_tensorrt_kind(bundle)
    why, calibration = "asked for", None
    if engine == "auto":
        engine, device, why = choose_engine(bundle, device)
        candidates = engine_candidates(bundle, device)
        if run is not None and precision is None and len(candidates) > 1:
            from cellsynth.backends.calibration import choose_by_speed

            def load(name: str, on: str = device) -> tuple[Denoiser, Decoder | None]:
                return load_engine(bundle, name, on, weights, None, threads)[:2]

            engine, why, calibration = choose_by_speed(
                bundle,
                candidates,
                load,
                run["batch_size"],
                run["steps"],
                run["n_cells"],
                threads,
                guidance=float(run.get("guidance", 1.0)),
                device=device,
            )
    elif device == "auto":
        device = (
            "cuda:0" if engine == "tensorrt" or (engine == "torch" and _torch_cuda()) else "cpu"
        )
    if engine == "tensorrt" and device == "cpu":
        raise CellsynthError(
            "the tensorrt engine runs only on an NVIDIA GPU; on the CPU use --engine onnxruntime "
            "or torch"
        )
    denoiser = _build(bundle, engine, device, weights, precision, threads)
    if calibration is not None:
        denoiser.details["engine_calibration"] = calibration
    return denoiser, why


def load_engine(
    bundle: Bundle,
    engine: str = "auto",
    device: str = "auto",
    weights: str = "ema",
    precision: str | None = None,
    threads: int | None = None,
    run: dict[str, int] | None = None,
) -> tuple[Denoiser, Decoder | None, str]:
    """What generation runs on: the denoiser (:func:`load_denoiser`, same arguments), a latent
    bundle's decoder on the denoiser's kind of engine and device (None for a gene-space bundle),
    and the line saying why the engine was chosen."""
    denoiser, why = load_denoiser(bundle, engine, device, weights, precision, threads, run)
    try:
        decoder = (
            load_decoder(bundle, denoiser.name, denoiser.device, threads)
            if _latent(bundle)
            else None
        )
    except BaseException:
        denoiser.close()
        raise
    return denoiser, decoder, why


def engine_candidates(bundle: Bundle, device: str) -> list[str]:
    """The engines that can run ``bundle`` on ``device``, in :func:`choose_engine`'s order (its
    choice first)."""
    if device == "cpu":
        usable = [("onnxruntime", _has_onnx(bundle)), ("torch", _has_module("torch"))]
    else:  # the conditions of choose_engine, in its order
        gpu_onnx = _cuda_device_count() > 0 and _has_onnx(bundle)
        usable = [
            ("tensorrt", gpu_onnx and _has_module("tensorrt") and not _latent(bundle)),
            ("onnxruntime", gpu_onnx and _ort_cuda()),
            ("torch", _torch_cuda()),
        ]
    return [name for name, ok in usable if ok]


def _build(
    bundle: Bundle,
    engine: str,
    device: str,
    weights: str,
    precision: str | None,
    threads: int | None,
) -> Denoiser:
    denoiser: Any
    if engine == "torch":
        if not _has_module("torch"):
            raise MissingDependencyError(
                "the torch engine needs PyTorch, which is not installed: pip install "
                "torch==2.13.0, or use --engine onnxruntime"
            )
        if device.startswith("cuda") and not _torch_cuda():
            raise CellsynthError(
                f"the torch engine on {device} needs PyTorch with CUDA and a GPU; this PyTorch "
                "sees none (a CPU build, or no driver): use --device cpu"
            )
        from cellsynth.backends.torch_backend import TorchDenoiser

        denoiser = TorchDenoiser(bundle, device=device, weights=weights, threads=threads)
    elif engine == "onnxruntime" and device == "cpu":
        from cellsynth.backends.onnxruntime_backend import OnnxRuntimeDenoiser

        denoiser = OnnxRuntimeDenoiser(bundle, precision=precision or "fp32", threads=threads)
    elif engine == "onnxruntime":
        from cellsynth.backends.onnxruntime_cuda_backend import OnnxRuntimeCudaDenoiser

        denoiser = OnnxRuntimeCudaDenoiser(bundle, precision=precision or "fp32", device=device)
    else:
        from cellsynth.backends.tensorrt_backend import TensorRTDenoiser

        denoiser = TensorRTDenoiser(bundle, precision=precision or "fp16", device=device)
    return denoiser


def load_decoder(
    bundle: Bundle,
    engine: str,
    device: str = "cpu",
    threads: int | None = None,
) -> Decoder:
    """The decoder that ends latent generation, on the same kind of engine as the denoiser.

    Parameters
    ----------
    bundle : Bundle
        A latent-diffusion bundle (its autoencoder and ``config['latent']['scale']`` are used),
        or an autoencoder bundle (scale 1).
    engine : {'torch', 'onnxruntime'}
        The denoiser's engine (``Denoiser.name``): torch runs the autoencoder's module,
        onnxruntime its exported decoder (no PyTorch needed).
    device : str
        The denoiser's device: 'cpu' or 'cuda:N'.
    threads : int, optional
        CPU threads.

    Raises
    ------
    BundleError
        If the bundle has no autoencoder, or (onnxruntime) its decoder export is missing or
        corrupt.
    """
    if bundle.kind == "diffusion":
        raise BundleError(
            f"{bundle.path} is a gene-space diffusion bundle: it generates cells directly and "
            "has no decoder"
        )
    ae = bundle.autoencoder
    scale = float(bundle.config["latent"]["scale"]) if _latent(bundle) else 1.0
    if engine == "torch":
        from cellsynth.backends.torch_backend import TorchDecoder

        return TorchDecoder(ae, scale, device=device, threads=threads)
    if engine == "onnxruntime":
        from cellsynth.backends.onnxruntime_backend import OnnxRuntimeDecoder

        hint = f"cellsynth export {bundle.path} --format onnx"
        return OnnxRuntimeDecoder(ae, scale, device=device, threads=threads, export_hint=hint)
    raise CellsynthError(
        f"no decoder runs on the {engine!r} engine; latent generation uses torch or onnxruntime"
    )
