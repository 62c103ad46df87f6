"""The bundle's ONNX export on onnxruntime's CUDA execution provider, without PyTorch.

Inputs and outputs are bound to ``_core.DeviceArray`` buffers with onnxruntime's I/O binding, so
nothing crosses the PCIe bus between steps: the denoising loop (:class:`CudaDenoiser`) keeps x,
the model input / output (allocated once per batch size) and the guided output on the GPU, and the
scheduler steps x in place with its CUDA kernel. onnxruntime runs on the backend's stream when it
accepts it (``user_compute_stream``); the stream is synchronised before each run either way, so
the ordering never depends on that.

Needs the onnxruntime-gpu package (``pip install 'cellsynth[gpu]'``; it replaces the CPU-only
``onnxruntime``) and an NVIDIA GPU.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from cellsynth.backends._cuda import (
    GPU_EXTRA,
    NUMPY_DTYPES,
    CudaDenoiser,
    cuda_device_index,
    require_cuda_device,
)
from cellsynth.errors import BundleError, CellsynthError, MissingDependencyError

_ORT_TYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(int32)": "int32",
    "tensor(int64)": "int64",
}


def _import_onnxruntime_cuda() -> Any:
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise MissingDependencyError(
            f"onnxruntime on CUDA needs {GPU_EXTRA} (onnxruntime-gpu): {exc}"
        ) from exc
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        raise MissingDependencyError(
            "the installed onnxruntime has no CUDA execution provider (it is the CPU-only "
            "package): pip uninstall -y onnxruntime && pip install 'cellsynth[gpu]'"
        )
    return ort


def open_cuda_session(path: Any, device: Any = "cuda:0") -> Any:
    """A plain onnxruntime session on the CUDA execution provider (host inputs and outputs), for
    one-shot models such as the decoder of latent generation.

    Raises
    ------
    MissingDependencyError
        Without an NVIDIA GPU, onnxruntime-gpu, or a CUDA provider that starts.
    BundleError
        If onnxruntime cannot load the file.
    """
    index = cuda_device_index(device)
    require_cuda_device("onnxruntime on CUDA needs", index)
    ort = _import_onnxruntime_cuda()
    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(
            str(path),
            sess_options=options,
            providers=[("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"],
        )
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
        detail = " ".join(str(exc).split())[:300]
        raise BundleError(f"{path} is corrupt: onnxruntime cannot load it ({detail})") from exc
    if session.get_providers()[0] != "CUDAExecutionProvider":
        raise MissingDependencyError(
            "onnxruntime could not start its CUDA execution provider (are the CUDA and cuDNN "
            f"libraries onnxruntime-gpu needs installed?); providers: {session.get_providers()}"
        )
    return session


class OnnxRuntimeCudaDenoiser(CudaDenoiser):
    """A bundle's ONNX export on onnxruntime's CUDA execution provider.

    Parameters
    ----------
    bundle : path or Bundle
        A bundle with an ONNX export of ``precision``.
    precision : {'fp32', 'fp16', 'int8'}
        Which ONNX export to run (its inputs and output must be float32 / integer tensors).
    device : str or int
        'cuda', 'cuda:N' or N.

    Raises
    ------
    MissingDependencyError
        Without an NVIDIA GPU or onnxruntime-gpu.
    BundleError
        If the bundle has no such ONNX export.
    """

    name = "onnxruntime"

    def __init__(self, bundle: Any, *, precision: str = "fp32", device: Any = "cuda:0") -> None:
        from cellsynth.bundle.exports import export_path
        from cellsynth.bundle.load import load_bundle

        index = cuda_device_index(device)
        props = require_cuda_device("onnxruntime on CUDA needs", index)
        ort = _import_onnxruntime_cuda()
        b = load_bundle(bundle, verify_weights=False)
        path = export_path(b, "onnx", precision)
        super().__init__(index)
        options = ort.SessionOptions()
        options.log_severity_level = 3
        cuda = {"device_id": index, "user_compute_stream": str(self._stream.handle)}
        try:
            session = ort.InferenceSession(
                str(path),
                sess_options=options,
                providers=[("CUDAExecutionProvider", cuda), "CPUExecutionProvider"],
            )
        except Exception:  # noqa: BLE001 - an onnxruntime without user streams: its own stream
            cuda.pop("user_compute_stream")
            session = ort.InferenceSession(
                str(path),
                sess_options=options,
                providers=[("CUDAExecutionProvider", cuda), "CPUExecutionProvider"],
            )
        if session.get_providers()[0] != "CUDAExecutionProvider":
            raise MissingDependencyError(
                "onnxruntime could not start its CUDA execution provider (are the CUDA and cuDNN "
                f"libraries onnxruntime-gpu needs installed?); providers: {session.get_providers()}"
            )
        self._session = session
        self._io_names(b, path)
        self.details = {
            "precision": precision,
            "provider": "CUDAExecutionProvider",
            "onnx": path.name,
            "gpu": props["name"],
            "onnxruntime_version": ort.__version__,
        }

    def _io_names(self, bundle: Any, path: Any) -> None:
        inputs = {i.name: i for i in self._session.get_inputs()}
        outputs = self._session.get_outputs()
        if len(outputs) != 1:
            raise BundleError(f"{path}: expected one output, got {[o.name for o in outputs]}")
        missing = [n for n in ("x_t", "timestep") if n not in inputs]
        if missing:
            raise BundleError(f"{path}: the model has no input(s) {missing}; re-export it")
        types = {n: _ORT_TYPES.get(i.type) for n, i in inputs.items()}
        if types["x_t"] != "float32" or _ORT_TYPES.get(outputs[0].type) != "float32":
            raise BundleError(f"{path}: x_t and the output must be float32 tensors")
        self._x_name, self._t_name, self._out_name = "x_t", "timestep", outputs[0].name
        self._lab_name = "labels" if "labels" in inputs else None
        self.n_genes = bundle.width  # genes, or the latent width of a latent denoiser
        if self._lab_name is not None:
            width = inputs["labels"].shape[1]
            known = isinstance(width, (int, np.integer))
            self.label_width = int(width) if known else len(bundle.model_label_sizes)
            self.label_dtype = types["labels"] or "int64"
        self.timestep_dtype = types["timestep"] or "int64"

    def _run_model(self, x_ptr: int, t_ptr: int, labels_ptr: int, out_ptr: int, n: int) -> None:
        dev = self.device_index
        G, K = self.n_genes, self.label_width
        # Our queued work (the previous step writing x) must finish before onnxruntime reads x.
        self._stream.synchronize()
        io = self._session.io_binding()
        io.bind_input(self._x_name, "cuda", dev, np.float32, (n, G), x_ptr)
        io.bind_input(self._t_name, "cuda", dev, NUMPY_DTYPES[self.timestep_dtype], (n,), t_ptr)
        if self._lab_name is not None:
            io.bind_input(
                self._lab_name, "cuda", dev, NUMPY_DTYPES[self.label_dtype], (n, K), labels_ptr
            )
        io.bind_output(self._out_name, "cuda", dev, np.float32, (n, G), out_ptr)
        try:
            self._session.run_with_iobinding(io)
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
            raise CellsynthError(f"onnxruntime failed to run the model on CUDA: {exc}") from exc

    def close(self) -> None:
        super().close()
        self._session = None
