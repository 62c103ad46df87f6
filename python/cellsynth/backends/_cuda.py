"""What the torch-free CUDA backends (TensorRT, onnxruntime-CUDA) share.

* device checks that fail with an actionable message where there is no GPU;
* native arrays: ``_core.DeviceArray`` (cudaMalloc'd, float32 / int64) tied to the backend's one
  ``_core.CudaStream``, so every copy, model call, guidance kernel and scheduler step is ordered
  on that stream;
* the denoising loop over persistent device buffers (:meth:`CudaDenoiser._loop`): per step, copy
  ``x`` twice into the model input when guided, run the model, apply guidance in place with
  ``_core.cuda_guide``, and step ``x`` in place with the CUDA scheduler kernel. The loop allocates
  nothing, so TensorRT can record it as one CUDA graph.
"""

from __future__ import annotations

import collections
from abc import abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from cellsynth import _core
from cellsynth.backends.base import Denoiser
from cellsynth.errors import CellsynthError, MissingDependencyError

GPU_EXTRA = "`pip install 'cellsynth[gpu]'`"


def cuda_device_index(device: Any) -> int:
    """The CUDA device number of 'cuda', 'cuda:N', N or None (0)."""
    if device is None:
        return 0
    if isinstance(device, (int, np.integer)) and not isinstance(device, bool):
        index = int(device)
    else:
        text = str(device).strip().lower()
        if text == "cuda":
            return 0
        if not text.startswith("cuda:") or not text[5:].isdigit():
            raise ValueError(f"device must be 'cuda', 'cuda:N' or an int, got {device!r}")
        index = int(text[5:])
    if index < 0:
        raise ValueError(f"device must be >= 0, got {index}")
    return index


def require_cuda_device(what: str, device: int = 0) -> dict[str, Any]:
    """The properties of CUDA device ``device`` (``_core.cuda_device_properties``).

    ``what`` starts the message, e.g. 'TensorRT engines need'.

    Raises
    ------
    MissingDependencyError
        ``"<what> an NVIDIA GPU and pip install 'cellsynth[gpu]'; this machine has no CUDA
        device"`` (or: cellsynth was built without CUDA).
    CellsynthError
        If device ``device`` does not exist.
    """
    if not _core.cuda_compiled:
        raise MissingDependencyError(
            f"{what} an NVIDIA GPU and {GPU_EXTRA}; this cellsynth was built without CUDA "
            "(reinstall it where the CUDA toolkit's nvcc is on PATH)"
        )
    n = _core.cuda_device_count()
    if n == 0:
        raise MissingDependencyError(
            f"{what} an NVIDIA GPU and {GPU_EXTRA}; this machine has no CUDA device"
        )
    if device >= n:
        raise CellsynthError(f"cuda:{device} does not exist: this machine has {n} CUDA device(s)")
    return _core.cuda_device_properties(device)


# numpy dtype of each DeviceArray dtype name
NUMPY_DTYPES = {
    "float32": np.float32,
    "float16": np.float16,
    "int32": np.int32,
    "int64": np.int64,
}


@dataclass
class LoopBuffers:
    """Device memory of one denoising loop; pointers into it may be baked into a CUDA graph, so
    these buffers live as long as whatever captured them."""

    n_cells: int  # B
    n_in: int  # rows the model sees: B, or 2B with guidance
    x: Any  # [B, G] float32: x_T in, x_0 out, stepped in place
    model_in: Any  # [2B, G] float32 ([x; x]) with guidance, else None (the model reads x)
    model_out: Any  # [n_in, G] float32
    guided: Any  # [B, G] float32 guided output, or None
    labels: Any  # [n_in, K] label codes, or None when the model has no labels
    timesteps: Any  # [S, n_in] timestep codes, row i = timesteps[i]
    noise: Any = None  # [B, G] float32, the step noise drawn in the graph (device-offset noise)
    offset: Any = None  # [1] int64: the batch's first global cell index, read by the noise kernel
    history: Any = None  # [B, G] float32: DPM-Solver++'s previous x0


class CudaDenoiser(Denoiser):
    """A denoiser whose native arrays are ``_core.DeviceArray`` on one CUDA device and stream.

    Subclasses set ``n_genes``, ``label_width`` (K, 0 without labels), ``timestep_dtype`` and
    ``label_dtype`` (DeviceArray dtype names) and implement :meth:`_run_model`.
    """

    n_genes: int = 0
    label_width: int = 0
    timestep_dtype: str = "int64"
    label_dtype: str = "int64"

    def __init__(self, device: int) -> None:
        super().__init__()
        self.device_index = device
        self.device = f"cuda:{device}"
        self._stream = _core.CudaStream(device)  # also makes `device` current for this thread
        self._timestep_cache: collections.OrderedDict[tuple, Any] = collections.OrderedDict()
        self._loop_buffers: collections.OrderedDict[tuple, LoopBuffers] = collections.OrderedDict()

    # --- memory ----------------------------------------------------------------------------

    @property
    def stream(self) -> Any:
        """The backend's ``_core.CudaStream``: all its work is queued there."""
        return self._stream

    def empty(self, shape: tuple[int, ...], dtype: str = "float32") -> Any:
        """Uninitialised device memory on this backend's device and stream."""
        return _core.DeviceArray(
            tuple(int(d) for d in shape), dtype, self.device_index, stream=self._stream.handle
        )

    def _from_host(self, host: np.ndarray, dtype: str) -> Any:
        host = np.ascontiguousarray(host, dtype=NUMPY_DTYPES[dtype])
        a = self.empty(host.shape, dtype)
        a.copy_from_host(host)
        return a

    def to_native(self, host: np.ndarray) -> Any:
        """A device copy of a host array: floats become float32, integers int64."""
        host = np.asarray(host)
        if host.dtype.kind == "f":
            return self._from_host(host, "float32")
        if host.dtype.kind in "iub":
            return self._from_host(host, "int64")
        raise TypeError(f"cannot move an array of dtype {host.dtype} to the GPU")

    def to_host(self, x: Any) -> np.ndarray:
        """A NumPy copy of a device array (waits for the backend's stream)."""
        if isinstance(x, np.ndarray):
            return x
        return x.copy_to_host(self._stream.handle)

    def timesteps(self, t: int, n: int) -> Any:
        """Device [n] filled with ``t`` (cached: treat it as read-only)."""
        key = (int(t), int(n))
        a = self._timestep_cache.get(key)
        if a is None:
            a = self._from_host(np.full(n, t), self.timestep_dtype)
            self._timestep_cache[key] = a
            if len(self._timestep_cache) > 4096:
                self._timestep_cache.popitem(last=False)
        return a

    def twice(self, x: Any) -> Any:
        """Device ``[x; x]`` [2B, G]."""
        out = self.empty((2 * x.shape[0], *x.shape[1:]), x.dtype)
        out.copy_from_device(x, self._stream.handle, dst_offset_bytes=0)
        out.copy_from_device(x, self._stream.handle, dst_offset_bytes=x.nbytes)
        return out

    def guide(self, out: Any, scale: float) -> Any:
        """Device ``uncond + scale * (cond - uncond)`` [B, G] from out = ``[cond; uncond]``."""
        b = out.shape[0] // 2
        g = self.empty((b, *out.shape[1:]), "float32")
        half = out.nbytes // 2
        _core.cuda_guide(
            g.data_ptr(),
            out.data_ptr(),
            out.data_ptr() + half,
            g.size,
            float(scale),
            stream=self._stream.handle,
            device=self.device_index,
        )
        return g

    # --- the model ------------------------------------------------------------------------

    @abstractmethod
    def _run_model(self, x_ptr: int, t_ptr: int, labels_ptr: int, out_ptr: int, n: int) -> None:
        """Queue the model on the stream: out [n, G] float32 from x [n, G] float32, timesteps
        [n] and labels [n, K] (device pointers; labels_ptr is 0 when K == 0). Must not allocate
        device memory or synchronise (TensorRT records it into a CUDA graph)."""

    def __call__(self, x_t: Any, timesteps: Any, labels: Any) -> Any:
        if isinstance(x_t, np.ndarray):
            x_t = self.to_native(x_t)
        if isinstance(timesteps, np.ndarray):
            timesteps = self._from_host(timesteps, self.timestep_dtype)
        if isinstance(labels, np.ndarray):
            labels = self._from_host(labels, self.label_dtype)
        n = int(x_t.shape[0])
        if tuple(x_t.shape) != (n, self.n_genes) or x_t.dtype != "float32":
            raise ValueError(
                f"x_t must be float32 [n, {self.n_genes}], got {x_t.dtype} {tuple(x_t.shape)}"
            )
        if tuple(timesteps.shape) != (n,) or timesteps.dtype != self.timestep_dtype:
            raise ValueError(
                f"timesteps must be {self.timestep_dtype} [{n}], got {timesteps.dtype} "
                f"{tuple(timesteps.shape)}"
            )
        lab_ptr = 0
        if self.label_width:
            if tuple(labels.shape) != (n, self.label_width) or labels.dtype != self.label_dtype:
                raise ValueError(
                    f"labels must be {self.label_dtype} [{n}, {self.label_width}], got "
                    f"{labels.dtype} {tuple(labels.shape)}"
                )
            lab_ptr = labels.data_ptr()
        out = self.empty((n, self.n_genes), "float32")
        self._run_model(x_t.data_ptr(), timesteps.data_ptr(), lab_ptr, out.data_ptr(), n)
        return out

    # --- the loop -------------------------------------------------------------------------

    def _new_buffers(
        self, n_cells: int, guided: bool, n_steps: int, noise: bool, history: bool
    ) -> LoopBuffers:
        G = self.n_genes
        n_in = 2 * n_cells if guided else n_cells
        return LoopBuffers(
            n_cells=n_cells,
            n_in=n_in,
            x=self.empty((n_cells, G)),
            model_in=self.empty((n_in, G)) if guided else None,
            model_out=self.empty((n_in, G)),
            guided=self.empty((n_cells, G)) if guided else None,
            labels=self.empty((n_in, self.label_width), self.label_dtype)
            if self.label_width
            else None,
            timesteps=self.empty((max(n_steps, 1), n_in), self.timestep_dtype),
            noise=self.empty((n_cells, G)) if noise else None,
            offset=self.empty((1,), "int64") if noise else None,
            history=self.empty((n_cells, G)) if history else None,
        )

    def _plain_buffers(self, n_cells: int, guided: bool, n_steps: int) -> LoopBuffers:
        key = (n_cells, guided, n_steps)
        b = self._loop_buffers.get(key)
        if b is None:
            b = self._new_buffers(n_cells, guided, n_steps, noise=False, history=False)
            self._loop_buffers[key] = b
            while len(self._loop_buffers) > 2:
                self._loop_buffers.popitem(last=False)
        self._loop_buffers.move_to_end(key)
        return b

    def _fill_inputs(
        self,
        b: LoopBuffers,
        x_T: np.ndarray,
        codes: np.ndarray | None,
        timesteps: list[int] | None,
        cell_offset: int | None,
    ) -> None:
        """Copy a batch's host inputs into its buffers (each copy waits for the stream)."""
        b.x.copy_from_host(np.ascontiguousarray(x_T, dtype=np.float32))
        if b.labels is not None and codes is not None:
            b.labels.copy_from_host(
                np.ascontiguousarray(codes, dtype=NUMPY_DTYPES[self.label_dtype])
            )
        if timesteps is not None and len(timesteps):
            ts = np.repeat(np.asarray(timesteps, dtype=np.int64)[:, None], b.n_in, axis=1)
            b.timesteps.copy_from_host(ts.astype(NUMPY_DTYPES[self.timestep_dtype]))
        if b.offset is not None and cell_offset is not None:
            b.offset.copy_from_host(np.array([cell_offset], dtype=np.int64))

    def _loop(
        self,
        scheduler: Any,
        b: LoopBuffers,
        timesteps: list[int],
        guidance: float,
        cell_offset: int,
        step_options: Mapping[str, Any],
    ) -> None:
        """Queue the whole denoising loop on the stream; x is stepped in place.

        With ``b.noise`` the step noise is drawn here, keyed by the offset in ``b.offset`` (device
        memory), and handed to the scheduler as ``variance_noise``: the queued work then does not
        depend on ``cell_offset``, which a CUDA graph would otherwise bake in.
        """
        s = self._stream.handle
        dev = self.device_index
        G = self.n_genes
        ts_row = b.n_in * b.timesteps.itemsize
        lab_ptr = 0 if b.labels is None else b.labels.data_ptr()
        guided = b.model_in is not None
        for i, t in enumerate(timesteps):
            if guided:
                b.model_in.copy_from_device(b.x, s, dst_offset_bytes=0)
                b.model_in.copy_from_device(b.x, s, dst_offset_bytes=b.x.nbytes)
                x_ptr = b.model_in.data_ptr()
            else:
                x_ptr = b.x.data_ptr()
            self._run_model(
                x_ptr, b.timesteps.data_ptr() + i * ts_row, lab_ptr, b.model_out.data_ptr(), b.n_in
            )
            if guided:
                _core.cuda_guide(
                    b.guided.data_ptr(),
                    b.model_out.data_ptr(),
                    b.model_out.data_ptr() + b.n_cells * G * 4,
                    b.n_cells * G,
                    float(guidance),
                    stream=s,
                    device=dev,
                )
                model_output = b.guided
            else:
                model_output = b.model_out
            kwargs = dict(step_options)
            offset = cell_offset
            if b.noise is not None:
                step_index = _noise_step_index(scheduler, t, i)
                _core.cuda_randn_device_offset(
                    b.noise.data_ptr(),
                    b.n_cells,
                    G,
                    scheduler.seed,
                    step_index,
                    b.offset.data_ptr(),
                    stream=s,
                    device=dev,
                )
                kwargs["variance_noise"] = b.noise
                offset = 0  # unused: the kernel reads the given noise
            # In place; the last step also truncates negatives to zero (truncate_final).
            scheduler.step(model_output, t, b.x, cell_offset=offset, out=b.x, **kwargs)

    def denoise(
        self,
        scheduler: Any,
        x_T: np.ndarray,
        labels: np.ndarray,
        null_labels: np.ndarray,
        guidance: float,
        cell_offset: int,
        step_options: Mapping[str, Any],
        on_step: Any = None,
        timer: Any = None,
    ) -> np.ndarray:
        """As :meth:`Denoiser.denoise` (``on_step`` is called once, at the end: a GPU batch is
        quick), over persistent device buffers (no per-step allocation); ``timer`` is left unsplit
        (device work is asynchronous)."""
        guided, codes, timesteps = self._batch(x_T, labels, null_labels, guidance, scheduler)
        b = self._plain_buffers(len(x_T), guided, len(timesteps))
        self._fill_inputs(b, x_T, codes, timesteps, None)
        self._loop(scheduler, b, timesteps, guidance, cell_offset, step_options)
        if on_step is not None:
            on_step(len(timesteps))
        return b.x.copy_to_host()

    def _batch(self, x_T, labels, null_labels, guidance, scheduler):
        x_T = np.asarray(x_T)
        if x_T.ndim != 2 or x_T.shape[1] != self.n_genes:
            raise ValueError(f"x_T must be [B, {self.n_genes}], got shape {x_T.shape}")
        guided = guidance != 1.0
        codes = None
        if self.label_width:
            codes = np.concatenate([labels, null_labels]) if guided else np.asarray(labels)
            if codes.shape != ((2 if guided else 1) * len(x_T), self.label_width):
                raise ValueError(
                    f"labels must be [B, {self.label_width}] like x_T's B = {len(x_T)}, got "
                    f"{np.shape(labels)}"
                )
        return guided, codes, [int(t) for t in scheduler.timesteps]

    def close(self) -> None:
        self._timestep_cache.clear()
        self._loop_buffers.clear()


def _noise_step_index(scheduler: Any, t: int, i: int) -> int:
    """The step index that keys step ``t``'s noise: the scheduler's position of ``t`` (DDIM and
    DDPM look it up in their timestep list), else the loop position."""
    finder = getattr(scheduler, "index_for_timestep", None)
    if finder is None:
        return i
    return int(finder(t))
