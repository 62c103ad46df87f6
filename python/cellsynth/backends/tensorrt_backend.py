"""The TensorRT denoiser: a bundle's engine run without PyTorch, the loop replayed as a CUDA graph.

Memory is ``_core.DeviceArray`` and all work (copies, the engine, guidance, the scheduler's CUDA
step) is queued on one ``_core.CudaStream``. The engine comes from the bundle
(:func:`cellsynth.backends.tensorrt_build.find_engine`); when there is none for this GPU / TensorRT
version / precision it is built first (and stored in the bundle), which is printed.

CUDA graphs. :meth:`TensorRTDenoiser.denoise` queues the whole denoising loop (for each timestep:
``[x; x]`` copies, the engine, the guidance kernel, the step kernel) with no allocation and no
synchronisation, so it can be recorded once per (batch size, timestep list, scheduler config,
guidance, step options) and replayed for every later batch of that shape: the host then issues
one launch per batch instead of ~4 per step. By default a configuration runs once as a plain loop
and is captured the second time it is seen (``graph_warmup=1``), so a one-off last partial batch
is never captured. What a graph bakes in, and how each is handled:

* buffer addresses: every buffer the graph touches (x, the model input / output, guidance output,
  labels, the [S, n] timestep table, noise, the cell offset, the solver history) belongs to the
  graph's entry and lives as long as it; a batch's x_T and labels are copied into them before
  each launch;
* kernel arguments, including the Philox counter (seed, cell_offset + row, step, gene) of the
  per-step noise (DDPM, DDIM with eta > 0). Baking ``cell_offset`` would give every batch the
  first batch's noise, so in a graph the noise is drawn by a separate kernel,
  ``_core.cuda_randn_device_offset``, which reads the batch's first global cell index from
  device memory (rewritten before each launch) and hands the step ``variance_noise``: bit for
  bit the noise the step kernel would draw itself (same Philox keys, same Box-Muller), so graph
  and plain loop agree exactly and a cell's values still do not depend on its batch;
* scheduler state: the scheduler's Python code runs only while capturing, on a copy of the
  scheduler, so its coefficients (and DPM-Solver++'s first-order first step) are baked per
  configuration; DPM-Solver++(2M)'s history of x0 is a device buffer of the entry, zeroed at the
  start of each replay (a memset node) and written by the step kernel at every step;
* TensorRT state: a captured graph is only valid for the execution context and input shapes it was
  captured with, so each graph gets its own execution context (sharing one block of activation
  memory when the TensorRT version supports user-managed context memory, since all contexts run
  one after another on one stream), primed by one enqueue before capture (TensorRT defers shape
  work to the first enqueue after a shape change).

Unknown scheduler classes, row counts outside the engine's profile, or a failed capture fall back
to the plain loop (a capture failure is warned about once and not retried for that
configuration).
"""

from __future__ import annotations

import collections
import copy
import gc
import sys
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cellsynth import _core
from cellsynth.backends._cuda import CudaDenoiser, cuda_device_index
from cellsynth.backends.tensorrt_graphs import GraphEntry, graph_key, needs_history, noise_mode
from cellsynth.errors import BundleError, CellsynthError

_TRT_DTYPES = {"FLOAT": "float32", "HALF": "float16", "INT32": "int32", "INT64": "int64"}


@dataclass
class _Context:
    """A TensorRT execution context and the row count its input shapes are set to."""

    context: Any
    rows: int = -1


class TensorRTDenoiser(CudaDenoiser):
    """A bundle's denoiser as a TensorRT engine on one CUDA device.

    Parameters
    ----------
    bundle : path or Bundle
    precision : {'fp16', 'bf16', 'fp32'}
        Which engine to use (built when absent; see
        :func:`cellsynth.backends.tensorrt_build.build_engine`).
    device : str or int
        'cuda', 'cuda:N' or N.
    build : bool
        Build a missing or mismatched engine (else raise a BundleError).
    cuda_graph : bool
        Replay the denoising loop as CUDA graphs (module docstring).
    graph_warmup : int
        Plain runs of a configuration before it is captured (0: capture at first sight).
    max_graphs : int
        Captured configurations kept (least recently used are dropped).
    capture_mode : {'thread_local', 'global', 'relaxed'}
        cudaStreamCaptureMode of the capture.
    progress : bool
        Show the engine build, if one is needed.
    build_options : dict, optional
        Extra :func:`~cellsynth.backends.tensorrt_build.build_engine` options (batch range,
        workspace).

    Raises
    ------
    MissingDependencyError
        Without an NVIDIA GPU or the tensorrt package.
    """

    name = "tensorrt"

    def __init__(
        self,
        bundle: Any,
        *,
        precision: str = "fp16",
        device: Any = "cuda:0",
        build: bool = True,
        cuda_graph: bool = True,
        graph_warmup: int = 1,
        max_graphs: int = 4,
        capture_mode: str = "thread_local",
        progress: bool = True,
        build_options: Mapping[str, Any] | None = None,
    ) -> None:
        from cellsynth.backends.tensorrt_build import build_engine, find_engine, require_tensorrt
        from cellsynth.bundle.load import load_bundle

        index = cuda_device_index(device)
        trt, props = require_tensorrt(index)  # before anything else: a clear error without GPU
        b = load_bundle(bundle, verify_weights=False)
        path = find_engine(b, precision, index)
        if path is None:
            if not build:
                raise BundleError(
                    f"{b.path} has no TensorRT {precision} engine for {props['name']} and "
                    f"TensorRT {trt.__version__}; build it with: cellsynth export {b.path} "
                    "--format tensorrt"
                )
            print(
                f"cellsynth: no TensorRT {precision} engine for {props['name']} / TensorRT "
                f"{trt.__version__} in {b.path}: building one",
                file=sys.stderr,
            )
            build_engine(
                b, precision=precision, progress=progress, device=index, **(build_options or {})
            )
            path = find_engine(b, precision, index)
            if path is None:
                raise CellsynthError(f"the TensorRT engine just built for {b.path} was not found")
        super().__init__(index)
        self._trt = trt
        self.cuda_graph = bool(cuda_graph)
        self.graph_warmup = int(graph_warmup)
        self.max_graphs = max(1, int(max_graphs))
        self.capture_mode = capture_mode
        self.engine_path = Path(path)
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self._engine = self._runtime.deserialize_cuda_engine(self.engine_path.read_bytes())
        if self._engine is None:
            raise BundleError(
                f"TensorRT {trt.__version__} could not load {self.engine_path}; delete it and "
                "rebuild (cellsynth export BUNDLE --format tensorrt)"
            )
        self._io_names(b)
        self._scratch = None
        self._main = _Context(self._new_context())
        self._current = self._main
        self._graphs: collections.OrderedDict[tuple, GraphEntry] = collections.OrderedDict()
        self._uses: dict[tuple, int] = {}
        self._uncapturable: set[tuple] = set()
        self.graph_launches = 0
        self.graph_captures = 0
        self.details = {
            "precision": precision,
            "engine": self.engine_path.name,
            "tensorrt_version": trt.__version__,
            "gpu": props["name"],
            "compute_capability": props["compute_capability"],
            "cuda_graph": self.cuda_graph,
            "batch_rows": [self._min_rows, self._max_rows],
        }

    # --- engine I/O ------------------------------------------------------------------------

    def _io_names(self, bundle: Any) -> None:
        trt, eng = self._trt, self._engine
        names = [eng.get_tensor_name(i) for i in range(eng.num_io_tensors)]
        inputs = [n for n in names if eng.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if eng.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(outputs) != 1:
            raise BundleError(f"{self.engine_path}: expected one output, got {outputs}")

        def dtype(n: str) -> str:
            d = eng.get_tensor_dtype(n)
            name = getattr(d, "name", str(d).split(".")[-1])
            if name not in _TRT_DTYPES:
                raise BundleError(f"{self.engine_path}: tensor {n!r} has unsupported type {name}")
            return _TRT_DTYPES[name]

        shapes = {n: tuple(int(d) for d in eng.get_tensor_shape(n)) for n in names}
        floats = [n for n in inputs if dtype(n).startswith("float")]
        ints = [n for n in inputs if not dtype(n).startswith("float")]
        x = "x_t" if "x_t" in inputs else (floats[0] if len(floats) == 1 else None)
        t = (
            "timestep"
            if "timestep" in inputs
            else next((n for n in ints if len(shapes[n]) == 1), None)
        )
        lab = (
            "labels" if "labels" in inputs else next((n for n in ints if len(shapes[n]) == 2), None)
        )
        if x is None or t is None or len(inputs) != 2 + (lab is not None):
            raise BundleError(
                f"{self.engine_path}: cannot tell x_t, timestep and labels apart among the inputs "
                f"{inputs}"
            )
        if dtype(x) != "float32" or dtype(outputs[0]) != "float32":
            raise BundleError(f"{self.engine_path}: x_t and the output must be float32 tensors")
        self._x_name, self._t_name, self._lab_name, self._out_name = x, t, lab, outputs[0]
        self.n_genes = shapes[x][1]
        if self.n_genes != bundle.width:
            raise BundleError(
                f"{self.engine_path} takes {self.n_genes} genes but the bundle has "
                f"{bundle.width}: rebuild the engine"
            )
        self.label_width = shapes[lab][1] if lab is not None else 0
        self.timestep_dtype = dtype(t)
        self.label_dtype = dtype(lab) if lab is not None else "int64"
        lo, _, hi = eng.get_tensor_profile_shape(x, 0)
        self._min_rows, self._max_rows = int(lo[0]), int(hi[0])

    def _new_context(self) -> Any:
        """An execution context; all share one block of activation memory when TensorRT lets
        the user manage it (they never run concurrently: one stream)."""
        trt, eng = self._trt, self._engine
        strategy = getattr(
            getattr(trt, "ExecutionContextAllocationStrategy", None), "USER_MANAGED", None
        )
        size = getattr(eng, "device_memory_size_v2", None)
        if strategy is not None and size is not None:
            ctx = None
            try:
                ctx = eng.create_execution_context(strategy)
                if ctx is not None and hasattr(ctx, "set_device_memory"):
                    if self._scratch is None:
                        # Fixed for the denoiser's life: graphs bake its address.
                        self._scratch = self.empty(((int(size) + 3) // 4 or 1,), "float32")
                    ctx.set_device_memory(self._scratch.data_ptr(), int(size))
                    return ctx
            except Exception:  # noqa: BLE001 - fall back to a context owning its memory
                pass
        ctx = eng.create_execution_context()
        if ctx is None:
            raise CellsynthError(
                "TensorRT could not create an execution context (out of GPU memory?)"
            )
        return ctx

    def _set_rows(self, c: _Context, n: int) -> None:
        if c.rows == n:
            return
        ctx = c.context
        ok = ctx.set_input_shape(self._x_name, (n, self.n_genes))
        ok = ctx.set_input_shape(self._t_name, (n,)) and ok
        if self._lab_name is not None:
            ok = ctx.set_input_shape(self._lab_name, (n, self.label_width)) and ok
        if not ok:
            raise CellsynthError(f"TensorRT rejected a batch of {n} rows")
        c.rows = n

    def _enqueue(self, c: _Context, x_ptr: int, t_ptr: int, lab_ptr: int, out_ptr: int, n: int):
        self._set_rows(c, n)
        ctx = c.context
        ctx.set_tensor_address(self._x_name, x_ptr)
        ctx.set_tensor_address(self._t_name, t_ptr)
        if self._lab_name is not None:
            ctx.set_tensor_address(self._lab_name, lab_ptr)
        ctx.set_tensor_address(self._out_name, out_ptr)
        if not ctx.execute_async_v3(self._stream.handle):
            raise CellsynthError("TensorRT failed to run the engine (see its log above)")

    def _run_model(self, x_ptr: int, t_ptr: int, labels_ptr: int, out_ptr: int, n: int) -> None:
        if n < self._min_rows:
            raise CellsynthError(
                f"the engine was built for batches of {self._min_rows}..{self._max_rows} rows, "
                f"got {n}; rebuild it with a smaller min_batch"
            )
        G, K = self.n_genes, self.label_width
        t_size = 8 if self.timestep_dtype == "int64" else 4
        l_size = 8 if self.label_dtype == "int64" else 4
        step = self._max_rows
        for start in range(0, n, step):  # rows beyond the profile: several calls
            m = min(step, n - start)
            if 0 < m < self._min_rows:  # keep every call within the profile
                start, m = n - self._min_rows, self._min_rows
            self._enqueue(
                self._current,
                x_ptr + start * G * 4,
                t_ptr + start * t_size,
                labels_ptr + start * K * l_size if labels_ptr else 0,
                out_ptr + start * G * 4,
                m,
            )

    # --- the loop as a CUDA graph -----------------------------------------------------------

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
        quick); replays a CUDA graph of the loop when it can (``timer`` stays unsplit)."""
        guided, codes, timesteps = self._batch(x_T, labels, null_labels, guidance, scheduler)
        n_cells = len(x_T)
        n_in = 2 * n_cells if guided else n_cells
        noise = noise_mode(scheduler, step_options)
        plain = (
            not self.cuda_graph
            or noise is None
            or not timesteps
            or not self._min_rows <= n_in <= self._max_rows
        )
        # The plain loop (no graph), as CudaDenoiser runs it.
        args = (null_labels, guidance, cell_offset, step_options, on_step, timer)
        if plain:
            return super().denoise(scheduler, x_T, labels, *args)
        key = graph_key(scheduler, n_cells, guided, guidance, timesteps, step_options, noise)
        entry = self._graphs.get(key)
        if entry is None:
            uses = self._uses.get(key, 0) + 1
            if len(self._uses) > 1024:
                self._uses.clear()
            self._uses[key] = uses
            if key not in self._uncapturable and uses > self.graph_warmup:
                entry = self._capture(
                    key,
                    scheduler,
                    x_T,
                    codes,
                    timesteps,
                    guidance,
                    step_options,
                    noise,
                    cell_offset,
                )
            if entry is None:
                return super().denoise(scheduler, x_T, labels, *args)
        self._graphs.move_to_end(key)
        b = entry.buffers
        self._fill_inputs(b, x_T, codes, None, cell_offset if entry.noise else None)
        entry.graph.launch(self._stream.handle)
        entry.launches += 1
        self.graph_launches += 1
        if on_step is not None:
            on_step(len(timesteps))
        return b.x.copy_to_host()

    def _capture(
        self, key, scheduler, x_T, codes, timesteps, guidance, step_options, noise, cell_offset
    ) -> GraphEntry | None:
        """Record the loop for this configuration; None (and a warning) when that fails."""
        n_cells = len(x_T)
        guided = guidance != 1.0
        history = needs_history(scheduler)
        if history and getattr(scheduler, "step_index", None) is not None:
            return None  # not fresh (set_timesteps not called): the plain loop says so
        gc_enabled = gc.isenabled()
        try:
            b = self._new_buffers(n_cells, guided, len(timesteps), noise == "device", history)
            self._fill_inputs(b, x_T, codes, timesteps, cell_offset)
            if b.model_in is not None:
                b.model_in.zero_()
            sched = copy.copy(scheduler)  # the caller's scheduler is not stepped
            if history:
                sched.use_history_buffer(b.history)  # allocated now: no allocation while capturing
            c = _Context(self._new_context())
            # Prime the context for these shapes and addresses (deferred shape work).
            self._current = c
            self._run_model(
                (b.model_in if b.model_in is not None else b.x).data_ptr(),
                b.timesteps.data_ptr(),
                0 if b.labels is None else b.labels.data_ptr(),
                b.model_out.data_ptr(),
                b.n_in,
            )
            self._stream.synchronize()
            gc.disable()  # no collection (and cudaFree) while capturing
            _core.CudaGraph.begin_capture(self._stream, mode=self.capture_mode)
            try:
                if b.history is not None:
                    b.history.zero_()
                self._loop(sched, b, timesteps, guidance, 0, step_options)
            except BaseException:
                _core.CudaGraph.abort_capture(self._stream)
                raise
            graph = _core.CudaGraph.end_capture(self._stream)
        except Exception as exc:  # noqa: BLE001 - any failure: run without a graph
            self._uncapturable.add(key)
            warnings.warn(
                f"could not capture the denoising loop as a CUDA graph ({exc}); this "
                "configuration runs as a plain loop",
                RuntimeWarning,
                stacklevel=3,
            )
            try:
                self._stream.synchronize()
            except Exception:  # noqa: BLE001
                pass
            return None
        finally:
            self._current = self._main
            if gc_enabled:
                gc.enable()
        entry = GraphEntry(graph=graph, buffers=b, context=c, noise=noise == "device")
        self._graphs[key] = entry
        self.graph_captures += 1
        while len(self._graphs) > self.max_graphs:
            _, old = self._graphs.popitem(last=False)
            self._stream.synchronize()  # it may still run
            old.graph.close()
        return entry

    def close(self) -> None:
        """Free graphs, contexts and buffers (waits for queued work first)."""
        try:
            self._stream.synchronize()
        except Exception:  # noqa: BLE001
            pass
        for entry in self._graphs.values():
            entry.graph.close()
        self._graphs.clear()
        super().close()
