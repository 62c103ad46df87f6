"""Export a bundle's denoiser to ONNX, check it against PyTorch, and record it in the bundle.

The graph has inputs ``x_t`` float32 [batch, G], ``timestep`` int64 [batch], ``labels`` int64
[batch, K] and output ``model_output`` float32 [batch, G], with a dynamic batch dimension; it is
made by ``torch.onnx.export(dynamo=True)`` and saved as one file (weights inside). Its
``metadata_props`` carry the provenance (bundle hash, architecture, genes, labels, precision), so a
file separated from its bundle still says what it is. For a latent-diffusion bundle G is the
latent width D (``Bundle.width``): the SCDG maps scaled autoencoder codes.

An autoencoder's two halves export separately (:func:`export_autoencoder_onnx`):
``onnx/encoder.fp32.onnx`` (``x`` float32 [batch, G] -> ``z`` [batch, D]) and
``onnx/decoder.fp32.onnx`` (``z`` [batch, D] -> ``x`` [batch, G]), in eval mode (BatchNorm on its
running statistics, no dropout), each with the L2 normalisation of the latent when the model has
it. The decoder's zero threshold is not in the graph: the runtime applies it
(:class:`cellsynth.backends.base.Decoder`). They are recorded in the autoencoder bundle's own
exports.json under the keys 'encoder' and 'decoder'; for a latent-diffusion bundle that is
``BUNDLE/autoencoder/``. :func:`export_latent_onnx` makes everything latent generation runs on
(SCDG denoiser, decoder, optionally the encoder) in one call.

Every export is checked before it is recorded (see :mod:`cellsynth.export.parity`): fp32 must match
PyTorch to a relative error of 1e-4 or the export fails; fp16 and int8 are judged by whole sampling
trajectories and their cost is reported in the manifest entry. The file is written inside the
bundle under a temporary name and only listed in exports.json once it passed.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import tempfile
import time
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch.export import Dim
from tqdm.auto import tqdm

from cellsynth._version import __version__
from cellsynth.backends.onnxruntime_backend import (
    DECODER_OUTPUTS,
    INPUT_NAMES,
    OUTPUT_NAME,
    open_session,
)
from cellsynth.bundle.exports import ONNX_PRECISIONS, export_entry, record_export
from cellsynth.bundle.format import WEIGHT_FILES
from cellsynth.bundle.load import Bundle, load_bundle
from cellsynth.errors import BundleError
from cellsynth.export import parity
from cellsynth.export.ort_fusion import fuse_for_onnxruntime
from cellsynth.export.parity import ExportError
from cellsynth.export.quantize import HalfPrecision, quantize_int8

__all__ = [
    "AUTOENCODER_PARTS",
    "ExportError",
    "export_autoencoder_onnx",
    "export_latent_onnx",
    "export_onnx",
]

# Autoencoder part -> (input name, output name); see the module docstring.
AUTOENCODER_PARTS = {"encoder": ("x", "z"), "decoder": ("z", "x")}

MIN_OPSET = 17  # LayerNormalization is a single op from opset 17
MAX_SINGLE_FILE = 2**31 - 2**20  # protobuf's 2 GiB limit, less headroom
TRAJECTORY_CELLS = 200
# Precisions that get onnxruntime's fused graph as well (fp16 on the CPU is not a speed path).
ORT_FUSED_PRECISIONS = ("fp32", "int8")
TRAJECTORY_STEPS = 20
_EXAMPLE_BATCH = 3  # not 0 or 1, which torch.export would specialise the batch dimension to


def export_onnx(
    bundle: Bundle | str,
    *,
    precision: str = "fp32",
    weights: str = "ema",
    opset: int = 18,
    batch_sizes: Sequence[int] = (1, 7, 64),
    real_cells: Any = None,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Export, check and record the bundle's denoiser as ``onnx/model.<precision>.onnx``.

    Parameters
    ----------
    bundle : Bundle or path
    precision : {'fp32', 'fp16', 'int8'}
        fp16: half-precision weights and activations (timestep embedding in float32); int8:
        dynamic quantisation of the linear layers. Inputs and outputs are float32 in all three.
    weights : {'ema', 'model'}
        Which weights of the bundle to export.
    opset : int
        ONNX opset, >= 17.
    batch_sizes : sequence of int
        Batch sizes of the random parity batches.
    real_cells : AnnData, str, np.ndarray [n, G] or None
        Real cells for the parity check: raw-count AnnData, a built-in data set name or .h5ad
        path, or log-normalised expression in model gene order. None: the bundle's training data
        if it was a built-in data set, else random inputs only (said in the report). A latent
        denoiser is checked on the autoencoder's codes of these cells.
    seed : int
        Seeds the test inputs and the trajectory noise.
    progress : bool
        Show a progress bar over the export stages.

    Returns
    -------
    dict
        The manifest entry: precision, weights, opset, inputs, outputs, ``parity`` (elementwise
        report), ``fidelity`` (trajectory report; fp16 and int8), versions, created, file, sha256.

    Raises
    ------
    ExportError
        If export fails or parity fails (nothing is recorded then), or the bundle is an
        autoencoder (it has no denoiser: see :func:`export_autoencoder_onnx`).
    BundleError
        If the bundle is invalid or its config.json changed since it was loaded.

    Notes
    -----
    For a latent-diffusion bundle this exports the SCDG denoiser only (width D); its decoder
    is exported by :func:`export_autoencoder_onnx` (``cellsynth export`` does both).
    """
    if precision not in ONNX_PRECISIONS:
        raise ExportError(f"precision must be one of {ONNX_PRECISIONS}, got {precision!r}")
    if weights not in WEIGHT_FILES:
        raise ExportError(f"weights must be one of {sorted(WEIGHT_FILES)}, got {weights!r}")
    _check_graph_options(opset, batch_sizes)
    bundle = _current(bundle)
    if bundle.kind == "autoencoder":
        raise ExportError(
            f"{bundle.path} is an autoencoder bundle: it has no denoiser; export its encoder and "
            "decoder with export_autoencoder_onnx (cellsynth export BUNDLE --format onnx)"
        )
    module = bundle.to_torch(weights)
    stages = 5 + (precision != "fp32") + (precision == "int8")
    bar = tqdm(total=stages, desc=f"export onnx {precision}", disable=not progress, leave=False)
    with tempfile.TemporaryDirectory(prefix=".onnx-export-", dir=bundle.path) as tmp:
        # Inside the bundle so that record_export's rename stays on one file system.
        fp32_file = Path(tmp) / "model.fp32.onnx"
        final = Path(tmp) / f"model.{precision}.onnx"
        bar.set_postfix_str("torch.onnx.export")
        graph = HalfPrecision(module) if precision == "fp16" else module
        _export_graph(graph, fp32_file if precision == "int8" else final, bundle, opset)
        bar.update()
        reference = parity.torch_model(module)
        bar.set_postfix_str("test inputs")
        cases = parity.random_cases(bundle, batch_sizes, seed)
        expression, real_source = parity.resolve_real_cells(bundle, real_cells, seed)
        if expression is not None:
            cases.append(parity.real_cell_case(bundle, expression, real_source, seed))
        bar.update()
        base = fused = None
        if precision in ORT_FUSED_PRECISIONS:
            bar.set_postfix_str("onnxruntime fusions")
            fp32_graph = fp32_file if precision == "int8" else final
            fused = _fused_graph(fp32_graph, Path(tmp) / f"model.{precision}.onnxruntime.onnx")
        if precision == "int8":  # the float graph it is quantised from must be right first
            bar.set_postfix_str("fp32 parity")
            base = _fp32_parity(open_session(fp32_file), reference, cases)
            if fused is not None and fused.get("path") is not None:
                _fused_parity(fused, reference, cases)
            if fused is not None and fused.get("path") is not None:
                # int8 runs on onnxruntime only, so it is quantised from the fused graph.
                quantize_int8(fused.pop("path"), final)
                fused["quantized_from"] = "the fused fp32 graph"
            else:
                quantize_int8(fp32_file, final)
            bar.update()
        _write_metadata(final, bundle, weights, precision, opset)
        bar.set_postfix_str("validate")
        session = _validate(final)
        bar.update()
        bar.set_postfix_str("parity")
        candidate = parity.session_model(session)
        if precision == "fp32":
            report = _fp32_parity(session, reference, cases)
        else:
            report = parity.elementwise_report(candidate, reference, cases, tolerance=None)
        report["real_cells"] = (
            {"source": real_source, "cells": int(len(expression))}
            if expression is not None
            else {"source": None, "note": real_source}
        )
        if base is not None:
            report["fp32_before_quantization"] = _summary(base)
        if fused is not None and fused.get("path") is not None:
            _write_metadata(fused["path"], bundle, weights, precision, opset)
            _fused_parity(fused, reference, cases)
        bar.update()
        fidelity = None
        if precision != "fp32":
            bar.set_postfix_str("trajectory fidelity")
            fidelity = parity.trajectory_report(
                candidate, reference, bundle, TRAJECTORY_CELLS, TRAJECTORY_STEPS, seed
            )
            if not (report["finite"] and fidelity["finite"]):
                raise ExportError(
                    f"the {precision} export produces NaN or infinite values; it was not "
                    "recorded (use fp32)"
                )
            bar.update()
        entry = _entry(bundle, final, precision, weights, opset, report, fidelity)
        companion = None
        if fused is not None:
            path = fused.pop("path", None)
            entry["onnxruntime_graph"] = _plain(fused)
            companion = ("onnxruntime_graph", path) if path is not None else None
        _current(bundle)  # refuse to record against a config.json that changed meanwhile
        record_export(bundle, "onnx", precision, final, entry, companion=companion)
        if companion is None:  # a fused graph of an earlier export is no longer listed
            (Path(bundle.path) / "onnx" / f"model.{precision}.onnxruntime.onnx").unlink(
                missing_ok=True
            )
        bar.update()
    bar.close()
    return export_entry(bundle, "onnx", precision) or entry


class _Encoder(torch.nn.Module):
    """x [B, G] -> z [B, D]: the autoencoder's encode, L2 normalisation included."""

    def __init__(self, autoencoder: torch.nn.Module) -> None:
        super().__init__()
        self.autoencoder = autoencoder

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.autoencoder.encode(x)  # [B, D]


class _Decoder(torch.nn.Module):
    """z [B, D] -> x [B, G]: the autoencoder's decode (codes L2-normalised first if it does).

    A count autoencoder's decoder gives its NB parameters instead: rho [B, G] (each gene's share
    of the library), for ZINB followed by the zero probabilities ([B, 2G]); theta stays in the
    weights file, where the runtime reads it.
    """

    def __init__(self, autoencoder: torch.nn.Module) -> None:
        super().__init__()
        self.autoencoder = autoencoder

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if not hasattr(self.autoencoder, "decode_counts"):
            return self.autoencoder.decode(z)  # [B, G]
        rho, _, pi = self.autoencoder.decode_counts(z)
        return rho if pi is None else torch.cat([rho, pi], dim=1)  # [B, G] or [B, 2G]


def _same(fn: Any, n_genes: int) -> Any:
    return fn


def _log_shares(fn: Any, n_genes: int) -> Any:
    """A count decoder's output with log(rho) for rho: shares span 1e-7 .. 1e-1, and an error
    relative to the largest share would let the small ones be anything."""

    def run(z: np.ndarray) -> np.ndarray:
        out = np.asarray(fn(z), dtype=np.float64).copy()
        out[:, :n_genes] = np.log(np.maximum(out[:, :n_genes], 1e-30))
        return out

    return run


def export_autoencoder_onnx(
    bundle: Bundle | str,
    *,
    parts: Sequence[str] = ("encoder", "decoder"),
    opset: int = 18,
    batch_sizes: Sequence[int] = (1, 7, 64),
    real_cells: Any = None,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, dict[str, Any]]:
    """Export, check and record an autoencoder's encoder and/or decoder as fp32 ONNX files.

    Parameters
    ----------
    bundle : Bundle or path
        An autoencoder bundle, or a latent-diffusion bundle (its ``autoencoder/`` is exported).
    parts : sequence of {'encoder', 'decoder'}
        Which halves: ``onnx/encoder.fp32.onnx`` (``x`` [batch, G] -> ``z`` [batch, D]) and
        ``onnx/decoder.fp32.onnx`` (``z`` [batch, D] -> ``x`` [batch, G]; a count decoder's
        ``rho`` [batch, G] or ``rho_zero_prob`` [batch, 2G], checked on log(rho)), in the
        autoencoder bundle, listed in its exports.json under the part's name.
    opset : int
        ONNX opset, >= 17.
    batch_sizes : sequence of int
        Batch sizes of the synthetic parity batches.
    real_cells : AnnData, str, np.ndarray [n, G] or None
        Real cells for the parity check, as in :func:`export_onnx` (the decoder is checked on
        their codes).
    seed : int
        Seeds the test inputs.
    progress : bool
        Show a progress bar over the parts.

    Returns
    -------
    dict of str to dict
        Part name -> its manifest entry: part, precision ('fp32'), weights ('model'), opset,
        inputs, outputs, normalize_latent, zero_threshold, ``parity`` (max relative error
        <= 1e-4), versions, created, file, sha256.

    Raises
    ------
    ExportError
        If the bundle has no autoencoder, export fails or parity fails (that part is then not
        recorded).
    """
    parts = list(dict.fromkeys(parts))
    unknown = [p for p in parts if p not in AUTOENCODER_PARTS]
    if unknown or not parts:
        raise ExportError(f"parts must be among {sorted(AUTOENCODER_PARTS)}, got {list(parts)}")
    _check_graph_options(opset, batch_sizes)
    top = _current(bundle)
    if top.kind == "diffusion":
        raise ExportError(
            f"{top.path} is a gene-space diffusion bundle: it has no autoencoder to export"
        )
    ae = top.autoencoder
    module = ae.to_torch()  # eval mode
    G, D = len(ae.genes), int(ae.architecture["latent_dim"])
    expression, real_source = parity.resolve_real_cells(top, real_cells, seed)
    entries: dict[str, dict[str, Any]] = {}
    bar = tqdm(parts, desc="export onnx autoencoder", disable=not progress, leave=False)
    for part in bar:
        bar.set_postfix_str(part)
        wrapper = (_Encoder if part == "encoder" else _Decoder)(module).eval()
        in_name, out_name = AUTOENCODER_PARTS[part]
        in_width, out_width = (G, D) if part == "encoder" else (D, G)
        likelihood = str(ae.architecture.get("likelihood", "mse"))
        if part == "decoder":
            out_name = DECODER_OUTPUTS[likelihood]
            out_width = 2 * G if likelihood == "zinb" else G
        with tempfile.TemporaryDirectory(prefix=".onnx-export-", dir=ae.path) as tmp:
            final = Path(tmp) / f"{part}.fp32.onnx"
            example = (torch.ones(_EXAMPLE_BATCH, in_width),)
            _export_module(wrapper, example, [in_name], out_name, final, opset, f"the {part}")
            _write_part_metadata(final, ae, part, opset)
            session = _validate(final)
            cases = parity.autoencoder_cases(ae, part, batch_sizes, expression, seed)
            compare = _log_shares if part == "decoder" and likelihood != "mse" else _same
            report = _fp32_parity(
                session,
                compare(parity.torch_function(wrapper), G),
                cases,
                candidate=compare(parity.session_function(session), G),
            )
            report["real_cells"] = (
                {"source": real_source, "cells": int(len(expression))}
                if expression is not None
                else {"source": None, "note": real_source}
            )
            entry = {
                "part": part,
                "precision": "fp32",
                "weights": "model",
                "opset": int(opset),
                "bundle_hash": ae.hash,
                "inputs": {in_name: {"dtype": "float32", "shape": ["batch", in_width]}},
                "outputs": {out_name: {"dtype": "float32", "shape": ["batch", out_width]}},
                "normalize_latent": bool(ae.architecture.get("normalize_latent", False)),
                "likelihood": likelihood,
                "zero_threshold": float(ae.config.get("decode", {}).get("zero_threshold", 0.0)),
                "size_bytes": final.stat().st_size,
                "parity": report,
                "versions": _versions(),
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            }
            _current(ae)  # refuse to record against a config.json that changed meanwhile
            record_export(ae, "onnx", part, final, _plain(entry))
        entries[part] = export_entry(ae, "onnx", part) or entry
    return entries


def export_latent_onnx(
    bundle: Bundle | str,
    *,
    encoder: bool = True,
    precision: str = "fp32",
    weights: str = "ema",
    opset: int = 18,
    real_cells: Any = None,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, dict[str, Any]]:
    """Export what torch-free latent generation needs: the SCDG denoiser and the decoder.

    Parameters
    ----------
    bundle : Bundle or path
        A latent-diffusion bundle, or an autoencoder bundle (then only its parts).
    encoder : bool
        Also export the encoder (generation does not need it; distillation does).
    precision : {'fp32', 'fp16', 'int8'}
        Of the denoiser. The autoencoder parts are always fp32; with a reduced precision they
        are exported only where no intact export exists yet (an fp32 run re-exports them).
    weights, opset, real_cells, seed, progress
        As for :func:`export_onnx`.

    Returns
    -------
    dict of str to dict
        Manifest entries: 'denoiser' (in the bundle's exports.json), 'encoder' and 'decoder'
        (in the autoencoder's exports.json), each when exported by this call.
    """
    top = _current(bundle)
    if top.kind == "diffusion":
        raise ExportError(
            f"{top.path} is a gene-space diffusion bundle: export it with export_onnx"
        )
    entries: dict[str, dict[str, Any]] = {}
    if top.kind == "latent_diffusion":
        entries["denoiser"] = export_onnx(
            top,
            precision=precision,
            weights=weights,
            opset=opset,
            real_cells=real_cells,
            seed=seed,
            progress=progress,
        )
    parts = ["encoder", "decoder"] if encoder else ["decoder"]
    if precision != "fp32":
        parts = [p for p in parts if not _intact(top.autoencoder, p)]
    if parts:
        entries.update(
            export_autoencoder_onnx(
                top, parts=parts, opset=opset, real_cells=real_cells, seed=seed, progress=progress
            )
        )
    return entries


def _check_graph_options(opset: int, batch_sizes: Sequence[int]) -> None:
    """The opset and parity batch sizes every export takes."""
    if int(opset) < MIN_OPSET:
        raise ExportError(f"opset must be >= {MIN_OPSET}, got {opset}")
    if not batch_sizes or min(batch_sizes) < 1:
        raise ExportError(f"batch_sizes must be positive, got {list(batch_sizes)}")


def _intact(bundle: Bundle, key: str) -> bool:
    """An ONNX export ``key`` is listed and its file has the recorded SHA-256."""
    from cellsynth.bundle.exports import export_path

    try:
        export_path(bundle, "onnx", key)
    except BundleError:
        return False
    return True


def _write_part_metadata(path: Path, ae: Bundle, part: str, opset: int) -> None:
    """Provenance of an autoencoder part in the file's metadata_props."""
    arch = ae.architecture
    props = {
        "cellsynth_version": __version__,
        "bundle_hash": ae.hash,
        "architecture": str(arch.get("name")),
        "kind": "autoencoder",
        "part": part,
        "n_genes": str(len(ae.genes)),
        "latent_dim": str(arch.get("latent_dim")),
        "normalize_latent": json.dumps(bool(arch.get("normalize_latent", False))),
        "likelihood": str(arch.get("likelihood", "mse")),
        "zero_threshold": repr(float(ae.config.get("decode", {}).get("zero_threshold", 0.0))),
        "weights": "model",
        "precision": "fp32",
        "opset": str(opset),
    }
    _set_props(path, onnx.load(str(path)), props, f"cellsynth autoencoder {part} of {ae.name}")


def _current(bundle: Bundle | str) -> Bundle:
    """The bundle, re-validated from disk; refuses if config.json changed since it was loaded."""
    if not isinstance(bundle, Bundle):
        return load_bundle(bundle)
    fresh = load_bundle(bundle.path)
    if fresh.config != bundle.config:
        raise BundleError(
            f"{bundle.path / 'config.json'} changed since the bundle was loaded; load it again "
            "before exporting"
        )
    return fresh


@contextlib.contextmanager
def _quiet() -> Iterator[io.StringIO]:
    """Silence torch.onnx's stage messages, warnings and logging; yield what was printed."""
    captured = io.StringIO()
    log = logging.getLogger("torch.onnx")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(captured):
            warnings.simplefilter("ignore")
            yield captured
    finally:
        log.setLevel(level)


def _label_columns(bundle: Bundle) -> list[str]:
    """Names of the label input's columns: the bundle's label keys, then a depth-conditioned
    model's depth bin (drawn by generation, never named by the user)."""
    depth = ["depth bin"] if len(bundle.model_label_sizes) > len(bundle.labels.keys) else []
    return list(bundle.labels.keys) + depth


def _export_graph(module: torch.nn.Module, path: Path, bundle: Bundle, opset: int) -> None:
    """torch.onnx.export with a dynamic batch dimension, saved as one file at ``path``."""
    G, K = bundle.width, len(bundle.model_label_sizes)
    B = _EXAMPLE_BATCH
    example = (
        torch.zeros(B, G),
        torch.zeros(B, dtype=torch.int64),
        torch.tensor([bundle.model_label_sizes] * B, dtype=torch.int64).reshape(B, K),
    )
    _export_module(module, example, list(INPUT_NAMES), OUTPUT_NAME, path, opset, "the denoiser")


def _export_module(
    module: torch.nn.Module,
    example: tuple[torch.Tensor, ...],
    input_names: list[str],
    output_name: str,
    path: Path,
    opset: int,
    what: str,
) -> None:
    """torch.onnx.export (dynamo) with dim 0 of every input dynamic, one file at ``path``."""
    batch = Dim("batch")
    try:
        with _quiet():
            program = torch.onnx.export(
                module,
                example,
                input_names=input_names,
                output_names=[output_name],
                # Positional, so it does not depend on the forward's argument names.
                dynamic_shapes=tuple({0: batch} for _ in example),
                opset_version=int(opset),
                dynamo=True,
                external_data=False,
            )
    except Exception as exc:  # the exporter raises many types; all mean the same to a user
        raise ExportError(f"torch.onnx could not export {what}: {_one_line(exc)}") from exc
    proto = program.model_proto
    if proto.ByteSize() > MAX_SINGLE_FILE:
        raise ExportError(
            f"the model is {proto.ByteSize() / 2**30:.1f} GiB, over ONNX's 2 GiB single-file "
            "limit; external-data export is not supported yet"
        )
    onnx.save(proto, str(path))


def _write_metadata(path: Path, bundle: Bundle, weights: str, precision: str, opset: int) -> None:
    """Store the provenance in the file's metadata_props (string key -> string value)."""
    model = onnx.load(str(path))
    props = {
        "cellsynth_version": __version__,
        "bundle_hash": bundle.hash,
        "architecture": str(bundle.architecture.get("name")),
        "kind": bundle.kind,
        "n_genes": str(bundle.width),
        "label_keys": json.dumps(bundle.labels.keys),
        "label_sizes": json.dumps(bundle.model_label_sizes),
        "prediction_type": bundle.prediction_type,
        "weights": weights,
        "precision": precision,
        "opset": str(opset),
    }
    if bundle.kind == "latent_diffusion":
        props["latent_scale"] = repr(float(bundle.config["latent"]["scale"]))
    _set_props(
        path, model, props, f"cellsynth {bundle.architecture.get('name')} denoiser of {bundle.name}"
    )


def _set_props(path: Path, model: Any, props: dict[str, str], doc: str) -> None:
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, props)
    model.doc_string = doc
    onnx.save(model, str(path))


def _validate(path: Path) -> Any:
    """onnx.checker on the file, then an onnxruntime session for it."""
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as exc:  # checker raises ValidationError or shape-inference errors
        raise ExportError(f"the exported ONNX graph is invalid: {_one_line(exc)}") from exc
    return open_session(path)


def _fp32_parity(
    session: Any, reference: parity.Model, cases: list, candidate: parity.Model | None = None
) -> dict[str, Any]:
    """Elementwise report of ``candidate`` (default: the denoiser session) gated at fp32."""
    candidate = candidate or parity.session_model(session)
    report = parity.elementwise_report(candidate, reference, cases, tolerance=parity.FP32_TOLERANCE)
    if not report["passed"]:
        worst = max(report["cases"], key=lambda r: r["max_rel_error"])
        raise ExportError(
            f"the ONNX export differs from PyTorch: max relative error "
            f"{report['max_rel_error']:.2e} > {parity.FP32_TOLERANCE:.0e} on {worst['case']}"
            f"{'' if report['finite'] else ' (non-finite outputs)'}; it was not recorded"
        )
    return report


def _fused_graph(src: Path, dst: Path) -> dict[str, Any]:
    """onnxruntime's fusions applied to ``src`` (see :mod:`cellsynth.export.ort_fusion`).

    Returns the fusion report with ``path`` (the fused file) when something fused; without
    ``path`` (and with ``reason``) when nothing applies or the rewriter failed: the export then
    goes on with the portable graph alone.
    """
    try:
        report = fuse_for_onnxruntime(src, dst)
    except Exception as exc:  # the rewriter raises many types; the portable graph still works
        dst.unlink(missing_ok=True)
        return {"fused": False, "reason": f"the rewriter failed: {_one_line(exc)}"}
    if not report["fused_ops"]:
        dst.unlink(missing_ok=True)
        return {**report, "fused": False, "reason": "no fusion applies to this architecture"}
    return {**report, "fused": True, "path": dst}


def _fused_parity(fused: dict[str, Any], reference: parity.Model, cases: list) -> None:
    """Gate the fused graph at fp32 tolerance against PyTorch, in place: the report's summary
    is kept, and a graph that fails is dropped (the portable one is used) with the reason."""
    try:
        fused["parity"] = _summary(_fp32_parity(open_session(fused["path"]), reference, cases))
    except ExportError as exc:
        Path(fused.pop("path")).unlink(missing_ok=True)
        fused.update(fused=False, reason=f"the fused graph failed parity: {exc}")


def _summary(report: dict[str, Any]) -> dict[str, Any]:
    keys = ("metric", "tolerance", "passed", "max_rel_error", "max_abs_error")
    return {k: report[k] for k in keys}


def _entry(
    bundle: Bundle,
    path: Path,
    precision: str,
    weights: str,
    opset: int,
    report: dict[str, Any],
    fidelity: dict[str, Any] | None,
) -> dict[str, Any]:
    G, K = bundle.width, len(bundle.model_label_sizes)
    entry = {
        "precision": precision,
        "weights": weights,
        "opset": int(opset),
        "bundle_hash": bundle.hash,
        "inputs": {
            "x_t": {"dtype": "float32", "shape": ["batch", G]},
            "timestep": {"dtype": "int64", "shape": ["batch"]},
            "labels": {"dtype": "int64", "shape": ["batch", K], "keys": _label_columns(bundle)},
        },
        "outputs": {"model_output": {"dtype": "float32", "shape": ["batch", G]}},
        "size_bytes": path.stat().st_size,
        "parity": report,
        "versions": _versions(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if bundle.kind == "latent_diffusion":
        entry["kind"] = bundle.kind
        entry["latent_scale"] = float(bundle.config["latent"]["scale"])
    if fidelity is not None:
        entry["fidelity"] = fidelity
    return _plain(entry)


def _versions() -> dict[str, str]:
    import onnxruntime

    return {
        "cellsynth": __version__,
        "torch": str(torch.__version__),
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
    }


def _plain(x: Any) -> Any:
    """JSON-ready copy (NumPy scalars to Python numbers)."""
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_plain(v) for v in x]
    if isinstance(x, np.generic):
        return x.item()
    return x


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:400] or type(exc).__name__
