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
from cellsynth.bundle import Bundle, load_bundle
from cellsynth.errors import BundleError, CellsynthError
from cellsynth.exports import ONNX_PRECISIONS, export_entry, export_path

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

    Raises
    ------
    BundleError
        If the export is missing, corrupt, or belongs to another config.json.
    """

    name = "onnxruntime"

    def __init__(
        self,
        bundle: Bundle | str | os.PathLike,
        precision: str = "fp32",
        device: str = "cpu",
        threads: int | None = None,
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
        # export_path checks the manifest's config hash and the file's SHA-256 first.
        path = export_path(self.bundle, "onnx", precision)
        self.session = open_session(path, threads)
        _check_metadata(self.session, path, self.bundle, precision)
        opts = self.session.get_session_options()
        entry = export_entry(self.bundle, "onnx", precision) or {}
        self.device = "cpu"
        self.details = {
            "precision": precision,
            "provider": "CPUExecutionProvider",
            "threads": int(opts.intra_op_num_threads),
            "onnx_file": str(Path(path).relative_to(self.bundle.path)),
            "onnx_sha256": entry.get("sha256"),
            "weights": entry.get("weights"),
            "onnxruntime_version": ort.__version__,
        }

    def __call__(self, x_t: Any, timesteps: Any, labels: Any) -> np.ndarray:
        feeds = {
            "x_t": np.ascontiguousarray(x_t, dtype=np.float32),  # [B, G]
            "timestep": np.ascontiguousarray(timesteps, dtype=np.int64),  # [B]
            "labels": np.ascontiguousarray(labels, dtype=np.int64),  # [B, K]
        }
        (out,) = self.session.run([OUTPUT_NAME], feeds)  # [B, G] float32, a fresh array
        return out

    def close(self) -> None:
        self.session = None


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
