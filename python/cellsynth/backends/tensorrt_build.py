"""TensorRT engines of a bundle's denoiser, built from its fp32 ONNX export.

An engine runs only on the GPU model, compute capability and TensorRT version it was built with,
so engines are keyed by all three plus the precision
(:func:`cellsynth.bundle.exports.tensorrt_key`) and stored in the bundle (``tensorrt/<key>.plan``),
listed in exports.json with how they were built.
:func:`find_engine` returns the engine that fits this machine, or None, and the TensorRT backend
then builds one with :func:`build_engine`.

Build details:

* one optimisation profile over the batch dimension of every input (``x_t`` [B, G], ``timestep``
  [B], ``labels`` [B, K]): min / opt / max batch, so one engine serves every batch size in range
  (guidance doubles the rows the model sees: max_batch bounds 2B then);
* ``precision``: 'fp32' (true fp32: TensorRT's default TF32 matmuls are turned off); 'fp16' or
  'bf16' allow TensorRT to run layers in half precision,
  except the timestep embedding, kept in fp32: sinusoids of t up to 999 lose their phase in
  fp16. Its layers are found from the graph itself (every floating-point layer that depends on
  the ``timestep`` input alone, i.e. sinusoidal features and the embedding MLP before the label
  embedding is added), plus any layer whose name contains ``t_embedder``; they get
  ``layer.precision = float32`` and float32 outputs, with
  ``BuilderFlag.PREFER_PRECISION_CONSTRAINTS`` (TensorRT warns instead of failing if it cannot
  honour one);
* a timing cache in the bundle (``tensorrt/timing.cache``), loaded when present and written back
  atomically after each build, makes rebuilds (other precisions, new batch ranges) fast.

Nothing here runs or is written without an NVIDIA GPU and the ``tensorrt`` package: both are
checked first, with a message saying what to install.
"""

from __future__ import annotations

import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

from cellsynth import _core
from cellsynth.bundle.exports import (
    check_tensorrt_kind,
    export_entry,
    export_path,
    record_export,
    tensorrt_key,
)
from cellsynth.bundle.load import load_bundle
from cellsynth.errors import BundleError, CellsynthError, MissingDependencyError
from cellsynth.files import atomic_path

PRECISIONS = ("fp32", "fp16", "bf16")
TIMING_CACHE = "tensorrt/timing.cache"
GPU_MESSAGE = "TensorRT engines need an NVIDIA GPU and `pip install 'cellsynth[gpu]'`"


def require_tensorrt(device: int = 0) -> tuple[Any, dict[str, Any]]:
    """The ``tensorrt`` module and the properties of CUDA device ``device``.

    Raises
    ------
    MissingDependencyError
        Without a CUDA device (or a CUDA build of cellsynth), or without the tensorrt package.
    """
    if not _core.cuda_compiled:
        raise MissingDependencyError(
            f"{GPU_MESSAGE}; this cellsynth was built without CUDA (reinstall it where the CUDA "
            "toolkit's nvcc is on PATH)"
        )
    n = _core.cuda_device_count()
    if n == 0:
        raise MissingDependencyError(f"{GPU_MESSAGE}; this machine has no CUDA device")
    if not 0 <= device < n:
        raise CellsynthError(f"cuda:{device} does not exist: this machine has {n} CUDA device(s)")
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise MissingDependencyError(
            f"{GPU_MESSAGE}; the tensorrt package is not installed ({exc})"
        ) from exc
    return trt, _core.cuda_device_properties(device)


def engine_key(props: dict[str, Any], trt_version: str, precision: str) -> str:
    """The manifest key of an engine for a device (``cuda_device_properties``)."""
    return tensorrt_key(props["name"], props["compute_capability"], trt_version, precision)


def _check_options(precision, min_batch, opt_batch, max_batch, onnx_precision, workspace_gib):
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    for name, v in (("min_batch", min_batch), ("opt_batch", opt_batch), ("max_batch", max_batch)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
    if not min_batch <= opt_batch <= max_batch:
        raise ValueError(
            f"need min_batch <= opt_batch <= max_batch, got {min_batch}, {opt_batch}, {max_batch}"
        )
    if onnx_precision != "fp32":
        # TensorRT picks its own precisions; it builds from the full-precision graph.
        raise ValueError(f"engines are built from the fp32 ONNX export, got {onnx_precision!r}")
    if not (isinstance(workspace_gib, (int, float)) and workspace_gib > 0):
        raise ValueError(f"workspace_gib must be > 0, got {workspace_gib!r}")


def _float_types(trt: Any) -> tuple:
    return tuple(getattr(trt, n) for n in ("float32", "float16", "bfloat16") if hasattr(trt, n))


def keep_timestep_embedding_fp32(network: Any, trt: Any, timestep_input: str = "timestep") -> list:
    """Pin the timestep-embedding layers of a parsed network to float32; returns their names.

    A layer belongs to the embedding when its name contains 't_embedder' or when its inputs
    depend on the ``timestep`` network input and on no other input (constants aside). Layers
    producing shape tensors or non-float outputs (casts of the integer timestep, shape
    arithmetic) are left alone.
    """
    inputs = {network.get_input(i).name for i in range(network.num_inputs)}
    if timestep_input not in inputs:
        return []
    floats = _float_types(trt)
    depends: dict[str, frozenset] = {name: frozenset([name]) for name in inputs}
    kept = []
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        deps: set = set()
        for j in range(layer.num_inputs):
            t = layer.get_input(j)
            if t is not None:
                deps |= depends.get(t.name, frozenset())
        outputs = [layer.get_output(j) for j in range(layer.num_outputs)]
        for t in outputs:
            depends[t.name] = frozenset(deps)
        in_embedding = "t_embedder" in (layer.name or "") or deps == {timestep_input}
        if not in_embedding or not outputs:
            continue
        if any(getattr(t, "is_shape_tensor", False) for t in outputs):
            continue
        if not all(t.dtype in floats for t in outputs):
            continue
        layer.precision = trt.float32
        for j in range(len(outputs)):
            layer.set_output_type(j, trt.float32)
        kept.append(layer.name)
    return kept


class _Progress:
    """tqdm bars for TensorRT's top-level build phases (``trt.IProgressMonitor``)."""

    @staticmethod
    def make(trt: Any) -> Any:
        if not hasattr(trt, "IProgressMonitor"):
            return None
        from tqdm.auto import tqdm

        class Monitor(trt.IProgressMonitor):
            def __init__(self) -> None:
                trt.IProgressMonitor.__init__(self)
                self.bars: dict[str, Any] = {}

            def phase_start(self, phase_name, parent_phase, num_steps):
                try:
                    if parent_phase is None:
                        self.bars[phase_name] = tqdm(
                            total=max(int(num_steps), 1),
                            desc=f"TensorRT: {phase_name}",
                            leave=False,
                        )
                except Exception:  # noqa: BLE001 - never let a progress bar break a build
                    pass

            def step_complete(self, phase_name, step):
                try:
                    bar = self.bars.get(phase_name)
                    if bar is not None:
                        bar.n = int(step) + 1
                        bar.refresh()
                except Exception:  # noqa: BLE001
                    pass
                return True  # keep building

            def phase_finish(self, phase_name):
                try:
                    bar = self.bars.pop(phase_name, None)
                    if bar is not None:
                        bar.close()
                except Exception:  # noqa: BLE001
                    pass

        return Monitor()


def build_engine(
    bundle: Any,
    *,
    precision: str = "fp16",
    min_batch: int = 1,
    opt_batch: int = 256,
    max_batch: int = 1024,
    onnx_precision: str = "fp32",
    workspace_gib: float = 4,
    progress: bool = True,
    device: int = 0,
) -> dict[str, Any]:
    """Build a TensorRT engine from the bundle's ONNX export and store it in the bundle.

    Parameters
    ----------
    bundle : path or Bundle
        A bundle with an fp32 ONNX export (``cellsynth export BUNDLE --format onnx``).
    precision : {'fp16', 'bf16', 'fp32'}
        Precisions TensorRT may use ('fp16' / 'bf16' keep the timestep embedding in fp32).
    min_batch, opt_batch, max_batch : int
        The optimisation profile over the rows the model sees per call (2B with guidance).
    onnx_precision : 'fp32'
        The ONNX export to build from.
    workspace_gib : float
        TensorRT's workspace memory limit, GiB.
    progress : bool
        Print what is built and show TensorRT's build phases.
    device : int
        The CUDA device to build for.

    Returns
    -------
    dict
        The manifest entry (gpu, compute_capability, tensorrt_version, precision, profile,
        build_seconds, fp32_layers, ...) plus ``key`` and ``path`` (the engine file).

    Raises
    ------
    MissingDependencyError
        Without an NVIDIA GPU or the tensorrt package (nothing is written then).
    BundleError
        If the bundle has no usable ONNX export, or the graph has no dynamic batch dimension.
    CellsynthError
        If TensorRT fails to parse or build.
    """
    _check_options(precision, min_batch, opt_batch, max_batch, onnx_precision, workspace_gib)
    check_tensorrt_kind(load_bundle(bundle, verify_weights=False))
    trt, props = require_tensorrt(device)  # before writing anything
    b = load_bundle(bundle)
    onnx_file = export_path(b, "onnx", onnx_precision)
    root = Path(b.path)
    key = engine_key(props, trt.__version__, precision)

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch: the only mode of TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_file)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise CellsynthError(f"TensorRT could not parse {onnx_file}: {errors}")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    kept = _set_precision(config, network, trt, precision)
    shapes: dict[str, dict] = {}  # input -> its min / opt / max shape, for the manifest
    batches = (min_batch, opt_batch, max_batch)
    config.add_optimization_profile(_batch_profile(builder, network, onnx_file, batches, shapes))
    cache_path = root / TIMING_CACHE
    _load_timing_cache(config, cache_path)

    monitor = _Progress.make(trt) if progress else None
    if monitor is not None:
        config.progress_monitor = monitor
    if progress:
        print(
            f"building a TensorRT {precision} engine for {props['name']} (sm_"
            f"{props['compute_capability'].replace('.', '')}, TensorRT {trt.__version__}, batch "
            f"{min_batch}..{max_batch}); this takes a few minutes",
            file=sys.stderr,
        )
    started = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    seconds = time.perf_counter() - started
    if serialized is None:
        raise CellsynthError(
            f"TensorRT failed to build a {precision} engine from {onnx_file} (see its log above)"
        )

    # The timing cache (updated by the build), then the engine, both written atomically.
    _save_timing_cache(config, cache_path)
    onnx_entry = export_entry(b, "onnx", onnx_precision) or {}
    entry = {
        "gpu": props["name"],
        "compute_capability": props["compute_capability"],
        "tensorrt_version": trt.__version__,
        "precision": precision,
        "onnx_precision": onnx_precision,
        "onnx_sha256": onnx_entry.get("sha256"),
        "profile": {
            "min_batch": min_batch,
            "opt_batch": opt_batch,
            "max_batch": max_batch,
            "inputs": shapes,
        },
        "workspace_gib": workspace_gib,
        "fp32_layers": len(kept),
        "build_seconds": round(seconds, 2),
    }
    (root / "tensorrt").mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root / "tensorrt", prefix=".build-") as d:
        plan = Path(d) / f"{key}.plan"
        with open(plan, "wb") as f:
            f.write(serialized)
        final = record_export(b, "tensorrt", key, plan, entry)
    if progress:
        print(f"TensorRT engine written to {final} ({seconds:.0f} s)", file=sys.stderr)
    return {**entry, "key": key, "path": str(final)}


def _set_precision(config: Any, network: Any, trt: Any, precision: str) -> list:
    """Builder flags for ``precision``; the layers kept in fp32 below fp32 (the time embedding)."""
    kept: list = []
    if precision == "fp32" and hasattr(trt.BuilderFlag, "TF32"):
        config.clear_flag(trt.BuilderFlag.TF32)  # TF32 matmuls (on by default) are not fp32
    if precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
    elif precision == "bf16":
        config.set_flag(trt.BuilderFlag.BF16)
    if precision != "fp32":
        kept = keep_timestep_embedding_fp32(network, trt)
        if kept:
            config.set_flag(trt.BuilderFlag.PREFER_PRECISION_CONSTRAINTS)
    return kept


def _batch_profile(
    builder: Any, network: Any, onnx_file: Path, batches: tuple[int, int, int], shapes: dict
) -> Any:
    """The optimisation profile over the batch range (min, opt, max); fills ``shapes``."""
    min_batch, opt_batch, max_batch = batches
    profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        inp = network.get_input(i)
        shape = tuple(int(d) for d in inp.shape)
        if not shape or shape[0] != -1:
            raise BundleError(
                f"{onnx_file}: input {inp.name!r} has shape {shape}, without a dynamic batch "
                "dimension; re-export the ONNX model with cellsynth"
            )
        if any(d < 0 for d in shape[1:]):
            raise BundleError(
                f"{onnx_file}: input {inp.name!r} has dynamic dimensions besides the batch: {shape}"
            )
        rest = shape[1:]
        lo, mid, hi = (min_batch, *rest), (opt_batch, *rest), (max_batch, *rest)
        profile.set_shape(inp.name, lo, mid, hi)
        shapes[inp.name] = {"min": list(lo), "opt": list(mid), "max": list(hi)}
    return profile


def _load_timing_cache(config: Any, cache_path: Path) -> None:
    """Reuse the bundle's timing cache (an unreadable one, from another TensorRT: start afresh)."""
    blob = cache_path.read_bytes() if cache_path.is_file() else b""
    cache = config.create_timing_cache(blob)
    if cache is None and blob:
        cache = config.create_timing_cache(b"")
    config.set_timing_cache(cache, False)  # ignore_mismatch=False


def _save_timing_cache(config: Any, cache_path: Path) -> None:
    updated = config.get_timing_cache()
    if updated is not None:
        with atomic_path(cache_path) as tmp:
            with open(tmp, "wb") as f:
                f.write(updated.serialize())


def find_engine(bundle: Any, precision: str = "fp16", device: int = 0) -> Path | None:
    """The bundle's engine for this GPU, compute capability, TensorRT version and precision.

    Returns None when there is none, when the recorded build does not match this machine
    (another GPU or TensorRT version), when it was built from an ONNX file that has since been
    re-exported, or when the file is missing or corrupt: the caller then builds a new one.

    Raises
    ------
    MissingDependencyError
        Without an NVIDIA GPU or the tensorrt package.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    trt, props = require_tensorrt(device)
    b = load_bundle(bundle, verify_weights=False)
    key = engine_key(props, trt.__version__, precision)
    entry = export_entry(b, "tensorrt", key)
    if entry is None:
        return None
    expected = {
        "gpu": props["name"],
        "compute_capability": props["compute_capability"],
        "tensorrt_version": trt.__version__,
        "precision": precision,
    }
    if any(entry.get(k) != v for k, v in expected.items()):
        return None
    onnx_entry = export_entry(b, "onnx", entry.get("onnx_precision", "fp32"))
    if onnx_entry is not None and entry.get("onnx_sha256") not in (None, onnx_entry.get("sha256")):
        return None  # built from an older ONNX export
    try:
        return export_path(b, "tensorrt", key)
    except BundleError as exc:
        warnings.warn(f"ignoring the TensorRT engine {key}: {exc}", RuntimeWarning, stacklevel=2)
        return None
