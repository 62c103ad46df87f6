"""The onnxruntime backend on the CPU: the bundle's ONNX export run by the CPU execution provider.

This is the production path without PyTorch, so this module must never import torch. Arrays stay
on the host as NumPy, so the base class's NumPy defaults (``to_native``, ``twice``, ``guide``)
apply unchanged. The CUDA execution provider with I/O binding lives in
:mod:`cellsynth.backends.onnxruntime_cuda_backend`.

:class:`OnnxRuntimeDecoder` runs an autoencoder's exported decoder for latent generation, on the
CPU or (with onnxruntime-gpu) the CUDA execution provider: it is called once per batch, after the
denoising loop, so plain host inputs and outputs suffice there.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from cellsynth.backends.base import Decoder, Denoiser
from cellsynth.bundle.exports import ONNX_PRECISIONS, export_entry, export_path, fused_graph_path
from cellsynth.bundle.load import Bundle, load_bundle
from cellsynth.errors import BundleError, CellsynthError

INPUT_NAMES = ("x_t", "timestep", "labels")
OUTPUT_NAME = "model_output"


def session_options(threads: int | None = None) -> Any:
    """CPU session options: ``threads`` intra-op threads (default: all cores), one inter-op
    thread and sequential execution (the DiT is one chain of ops, so parallel branches buy
    nothing and would compete with the intra-op pool), all graph optimisations."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = int(threads) if threads else (os.cpu_count() or 1)
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return opts


def open_session(path: str | os.PathLike, threads: int | None = None) -> Any:
    """An onnxruntime CPU ``InferenceSession`` for ``path``.

    Raises
    ------
    BundleError
        If onnxruntime cannot load the file ("<path> is corrupt: ...").
    """
    import onnxruntime as ort

    try:
        return ort.InferenceSession(
            str(path), session_options(threads), providers=["CPUExecutionProvider"]
        )
    except Exception as exc:  # onnxruntime raises its own exception types for bad graphs
        detail = " ".join(str(exc).split())[:300]
        raise BundleError(f"{path} is corrupt: onnxruntime cannot load it ({detail})") from exc


class OnnxRuntimeDenoiser(Denoiser):
    """A bundle's ONNX export on onnxruntime's CPU execution provider.

    Parameters
    ----------
    bundle : Bundle or path
        The bundle; its exports.json must list an ONNX export of ``precision``.
    precision : {'fp32', 'fp16', 'int8'}
        Which export (``cellsynth export BUNDLE --format onnx [--fp16 | --quantize int8]``).
    device : str
        Only 'cpu' here.
    threads : int, optional
        Intra-op threads; default all cores (``os.cpu_count()``).
    rows_per_call : int, optional
        Cells per onnxruntime call; a larger batch is run in slices of this size written into one
        output array (default :func:`rows_per_call` of the architecture). The result is the same
        to the bit whatever the slice size: every cell's output depends on its own row only.

    Raises
    ------
    BundleError
        If the export is missing, corrupt, or belongs to another config.json.

    Notes
    -----
    Two things make this faster than the bundle's PyTorch module on the CPU: the graph with
    onnxruntime's fused attention and GELU (``onnx/model.<precision>.onnxruntime.onnx``, made at
    export; the portable graph where it is absent), and slices small enough that a transformer's
    activations stay in the core's caches between its element-wise ops (a batch of 512 kang-dit
    cells is 10 MB per activation; 32 cells are 0.6 MB).
    """

    name = "onnxruntime"
    step_threads = 1  # onnxruntime's intra-op pool spins between calls (see Denoiser)

    def __init__(
        self,
        bundle: Bundle | str | os.PathLike,
        precision: str = "fp32",
        device: str = "cpu",
        threads: int | None = None,
        rows_per_call: int | None = None,
    ) -> None:
        super().__init__()
        if device != "cpu":
            raise CellsynthError(
                f"OnnxRuntimeDenoiser runs on the CPU only, got device {device!r}; the CUDA "
                "path is OnnxRuntimeCudaDenoiser in cellsynth.backends.onnxruntime_cuda_backend"
            )
        if precision not in ONNX_PRECISIONS:
            raise CellsynthError(
                f"ONNX precision must be one of {ONNX_PRECISIONS}, got {precision!r}"
            )
        import onnxruntime as ort

        self.bundle = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
        if rows_per_call is not None and int(rows_per_call) < 1:
            raise CellsynthError(f"rows_per_call must be >= 1, got {rows_per_call}")
        # export_path checks the manifest's config hash and the portable file's SHA-256 (the
        # export's identity), fused_graph_path the fused file's.
        portable = export_path(self.bundle, "onnx", precision)
        path = fused_graph_path(self.bundle, precision) or portable
        self.session = open_session(path, threads)
        _check_metadata(self.session, path, self.bundle, precision)
        opts = self.session.get_session_options()
        entry = export_entry(self.bundle, "onnx", precision) or {}
        self.device = "cpu"
        self.width = self.bundle.width
        self.rows_per_call = int(rows_per_call or default_rows_per_call(self.bundle.architecture))
        graph = entry.get("onnxruntime_graph") or {}
        self.details = {
            "precision": precision,
            "provider": "CPUExecutionProvider",
            "threads": int(opts.intra_op_num_threads),
            "rows_per_call": self.rows_per_call,
            "onnx_file": str(Path(path).relative_to(self.bundle.path)),
            "onnx_sha256": graph.get("sha256") if graph.get("file") else entry.get("sha256"),
            "fused_ops": graph.get("fused_ops", {}),
            "weights": entry.get("weights"),
            "onnxruntime_version": ort.__version__,
        }

    def __call__(self, x_t: Any, timesteps: Any, labels: Any) -> np.ndarray:
        x = np.ascontiguousarray(x_t, dtype=np.float32)  # [B, G]
        t = np.ascontiguousarray(timesteps, dtype=np.int64)  # [B]
        y = np.ascontiguousarray(labels, dtype=np.int64)  # [B, K]
        n, rows = len(x), self.rows_per_call
        if n <= rows:
            (out,) = self.session.run([OUTPUT_NAME], {"x_t": x, "timestep": t, "labels": y})
            return out  # [B, G] float32, a fresh array
        out = np.empty((n, self.width), dtype=np.float32)  # [B, G]
        binding = self.session.io_binding()
        for start in range(0, n, rows):
            stop = min(n, start + rows)
            # Row slices of C-contiguous arrays are contiguous: bound without a copy, and the
            # output of each slice is written straight into its rows of ``out``.
            binding.bind_cpu_input("x_t", x[start:stop])
            binding.bind_cpu_input("timestep", t[start:stop])
            binding.bind_cpu_input("labels", y[start:stop])
            binding.bind_output(
                OUTPUT_NAME,
                "cpu",
                0,
                np.float32,
                (stop - start, self.width),
                out[start:stop].ctypes.data,
            )
            self.session.run_with_iobinding(binding)
        return out

    def close(self) -> None:
        self.session = None


#: Activation bytes of one call's [rows, tokens, hidden] tensor that stay in a core's caches:
#: kang-dit (40 tokens x 128) ran fastest at 32-64 rows per call and the scRDiT paper config
#: (200 x 768) at 4 (2-core EPYC, onnxruntime 1.32; benchmarks/engines.py).
CALL_ACTIVATION_BYTES = 1 << 20
MIN_ROWS_PER_CALL = 4


def default_rows_per_call(architecture: dict[str, Any]) -> int:
    """Cells per onnxruntime call for a model: the largest power of two whose [rows, tokens,
    hidden] float32 activation fits :data:`CALL_ACTIVATION_BYTES`, at least 4. An architecture
    without tokens (the latent SCDG's MLP) counts one token per cell."""
    hidden = int(architecture.get("hidden_size") or 0)
    if hidden <= 0:
        return 1 << 30  # nothing to size it by: one call per batch
    patch = int(architecture.get("patch_size") or 0)
    tokens = -(-int(architecture["n_genes"]) // patch) if patch > 0 else 1
    rows = CALL_ACTIVATION_BYTES // (tokens * hidden * 4)
    return max(MIN_ROWS_PER_CALL, 1 << max(0, int(rows).bit_length() - 1))


def _check_metadata(session: Any, path: Path, bundle: Bundle, precision: str) -> None:
    """Refuse an ONNX file whose embedded provenance contradicts the bundle."""
    meta = session.get_modelmeta().custom_metadata_map
    inputs = [i.name for i in session.get_inputs()]
    if tuple(inputs) != INPUT_NAMES:
        raise BundleError(f"{path} has inputs {inputs}, expected {list(INPUT_NAMES)}")
    problems = []
    if meta.get("bundle_hash") != bundle.hash:
        problems.append("it was exported from another config.json")
    if meta.get("precision") != precision:
        problems.append(f"its precision is {meta.get('precision')!r}, not {precision!r}")
    if meta.get("n_genes") != str(bundle.width):
        problems.append(f"it has width {meta.get('n_genes')}, the bundle {bundle.width}")
    if problems:
        raise BundleError(
            f"{path} does not belong to this bundle: {'; '.join(problems)}; re-export: "
            f"cellsynth export {bundle.path} --format onnx"
        )


class OnnxRuntimeDecoder(Decoder):
    """An autoencoder's exported decoder (``onnx/decoder.fp32.onnx``) on onnxruntime.

    Parameters
    ----------
    autoencoder : Bundle
        The autoencoder bundle; its exports.json must list the 'decoder' export.
    latent_scale : float
        Divides the latents before decoding (see :class:`Decoder`).
    device : str
        'cpu', or 'cuda[:N]' for the CUDA execution provider (onnxruntime-gpu).
    threads : int, optional
        Intra-op threads on the CPU; default all cores.
    export_hint : str, optional
        The command that makes a missing export (defaults to exporting ``autoencoder``).

    Raises
    ------
    BundleError
        If the decoder export is missing, corrupt, or belongs to another config.json.
    """

    name = "onnxruntime"

    def __init__(
        self,
        autoencoder: Bundle,
        latent_scale: float = 1.0,
        device: str = "cpu",
        threads: int | None = None,
        export_hint: str | None = None,
    ) -> None:
        super().__init__(autoencoder, latent_scale)
        import onnxruntime as ort

        if export_entry(autoencoder, "onnx", "decoder") is None and export_hint:
            raise BundleError(
                f"{autoencoder.path} has no ONNX export of its decoder; make it with: {export_hint}"
            )
        path = export_path(autoencoder, "onnx", "decoder")  # checks hash and SHA-256
        if device == "cpu":
            self.session = open_session(path, threads)
            provider = "CPUExecutionProvider"
        else:
            from cellsynth.backends.onnxruntime_cuda_backend import open_cuda_session

            self.session = open_cuda_session(path, device)
            provider = "CUDAExecutionProvider"
        _check_decoder(self.session, path, autoencoder, self)
        entry = export_entry(autoencoder, "onnx", "decoder") or {}
        self.device = device
        self.details = {
            "precision": entry.get("precision", "fp32"),
            "provider": provider,
            "onnx_file": str(Path(path).relative_to(autoencoder.path)),
            "onnx_sha256": entry.get("sha256"),
            "onnxruntime_version": ort.__version__,
        }

    def run(self, codes: np.ndarray) -> np.ndarray:
        (out,) = self.session.run([DECODER_OUTPUTS[self.likelihood]], {"z": codes})
        return out  # [B, G] float32 ([B, 2G] for zinb)

    def close(self) -> None:
        self.session = None


#: The decoder file's output by likelihood: expression, NB shares, or NB shares and zero
#: probabilities side by side ([B, 2G]).
DECODER_OUTPUTS = {"mse": "x", "nb": "rho", "zinb": "rho_zero_prob"}


def _check_decoder(session: Any, path: Path, ae: Bundle, decoder: Decoder) -> None:
    """Refuse a decoder file whose interface or embedded provenance contradicts the bundle."""
    inputs = [i.name for i in session.get_inputs()]
    outputs = [o.name for o in session.get_outputs()]
    expected = DECODER_OUTPUTS.get(decoder.likelihood)
    if inputs != ["z"] or outputs != [expected]:
        raise BundleError(
            f"{path} has inputs {inputs} and outputs {outputs}, expected z -> {expected} (a "
            f"{decoder.likelihood} decoder)"
        )
    meta = session.get_modelmeta().custom_metadata_map
    problems = []
    if meta.get("bundle_hash") != ae.hash:
        problems.append("it was exported from another config.json")
    if meta.get("part") != "decoder":
        problems.append(f"it is a {meta.get('part')!r}, not the decoder")
    if (meta.get("latent_dim"), meta.get("n_genes")) != (
        str(decoder.latent_dim),
        str(decoder.n_genes),
    ):
        problems.append(
            f"it maps {meta.get('latent_dim')} -> {meta.get('n_genes')}, the bundle "
            f"{decoder.latent_dim} -> {decoder.n_genes}"
        )
    if problems:
        raise BundleError(
            f"{path} does not belong to this autoencoder: {'; '.join(problems)}; re-export: "
            f"cellsynth export {ae.path} --format onnx"
        )
