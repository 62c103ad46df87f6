"""Export a bundle's denoiser to ONNX, check it against PyTorch, and record it in the bundle.

The graph has inputs ``x_t`` float32 [batch, G], ``timestep`` int64 [batch], ``labels`` int64
[batch, K] and output ``model_output`` float32 [batch, G], with a dynamic batch dimension; it is
made by ``torch.onnx.export(dynamo=True)`` and saved as one file (weights inside). Its
``metadata_props`` carry the provenance (bundle hash, architecture, genes, labels, precision), so a
file separated from its bundle still says what it is.

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
from cellsynth.backends.onnxruntime_backend import INPUT_NAMES, OUTPUT_NAME, open_session
from cellsynth.bundle import WEIGHT_FILES, Bundle, load_bundle
from cellsynth.errors import BundleError
from cellsynth.export import parity
from cellsynth.export.parity import ExportError
from cellsynth.export.quantize import HalfPrecision, quantize_int8
from cellsynth.exports import ONNX_PRECISIONS, export_entry, record_export

__all__ = ["ExportError", "export_onnx"]

MIN_OPSET = 17  # LayerNormalization is a single op from opset 17
MAX_SINGLE_FILE = 2**31 - 2**20  # protobuf's 2 GiB limit, less headroom
TRAJECTORY_CELLS = 200
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
        if it was a built-in data set, else random inputs only (said in the report).
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
        If export fails or parity fails (nothing is recorded then).
    BundleError
        If the bundle is invalid or its config.json changed since it was loaded.
    """
    if precision not in ONNX_PRECISIONS:
        raise ExportError(f"precision must be one of {ONNX_PRECISIONS}, got {precision!r}")
    if weights not in WEIGHT_FILES:
        raise ExportError(f"weights must be one of {sorted(WEIGHT_FILES)}, got {weights!r}")
    if int(opset) < MIN_OPSET:
        raise ExportError(f"opset must be >= {MIN_OPSET}, got {opset}")
    if not batch_sizes or min(batch_sizes) < 1:
        raise ExportError(f"batch_sizes must be positive, got {list(batch_sizes)}")
    bundle = _current(bundle)
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
        base = None
        if precision == "int8":  # the float graph it is quantised from must be right first
            bar.set_postfix_str("fp32 parity")
            base = _fp32_parity(open_session(fp32_file), reference, cases)
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
        _current(bundle)  # refuse to record against a config.json that changed meanwhile
        record_export(bundle, "onnx", precision, final, entry)
        bar.update()
    bar.close()
    return export_entry(bundle, "onnx", precision) or entry


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


def _export_graph(module: torch.nn.Module, path: Path, bundle: Bundle, opset: int) -> None:
    """torch.onnx.export with a dynamic batch dimension, saved as one file at ``path``."""
    G, K = len(bundle.genes), len(bundle.labels.keys)
    B = _EXAMPLE_BATCH
    example = (
        torch.zeros(B, G),
        torch.zeros(B, dtype=torch.int64),
        torch.tensor([bundle.labels.sizes] * B, dtype=torch.int64).reshape(B, K),
    )
    batch = Dim("batch")
    try:
        with _quiet():
            program = torch.onnx.export(
                module,
                example,
                input_names=list(INPUT_NAMES),
                output_names=[OUTPUT_NAME],
                # Positional, so it does not depend on the forward's argument names.
                dynamic_shapes=tuple({0: batch} for _ in example),
                opset_version=int(opset),
                dynamo=True,
                external_data=False,
            )
    except Exception as exc:  # the exporter raises many types; all mean the same to a user
        raise ExportError(f"torch.onnx could not export the denoiser: {_one_line(exc)}") from exc
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
        "n_genes": str(len(bundle.genes)),
        "label_keys": json.dumps(bundle.labels.keys),
        "label_sizes": json.dumps(bundle.labels.sizes),
        "prediction_type": bundle.prediction_type,
        "weights": weights,
        "precision": precision,
        "opset": str(opset),
    }
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, props)
    model.doc_string = f"cellsynth {bundle.architecture.get('name')} denoiser of {bundle.name}"
    onnx.save(model, str(path))


def _validate(path: Path) -> Any:
    """onnx.checker on the file, then an onnxruntime session for it."""
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as exc:  # checker raises ValidationError or shape-inference errors
        raise ExportError(f"the exported ONNX graph is invalid: {_one_line(exc)}") from exc
    return open_session(path)


def _fp32_parity(session: Any, reference: parity.Model, cases: list) -> dict[str, Any]:
    report = parity.elementwise_report(
        parity.session_model(session), reference, cases, tolerance=parity.FP32_TOLERANCE
    )
    if not report["passed"]:
        worst = max(report["cases"], key=lambda r: r["max_rel_error"])
        raise ExportError(
            f"the ONNX export differs from PyTorch: max relative error "
            f"{report['max_rel_error']:.2e} > {parity.FP32_TOLERANCE:.0e} on {worst['case']}"
            f"{'' if report['finite'] else ' (non-finite outputs)'}; it was not recorded"
        )
    return report


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
    import onnxruntime

    G, K = len(bundle.genes), len(bundle.labels.keys)
    entry = {
        "precision": precision,
        "weights": weights,
        "opset": int(opset),
        "bundle_hash": bundle.hash,
        "inputs": {
            "x_t": {"dtype": "float32", "shape": ["batch", G]},
            "timestep": {"dtype": "int64", "shape": ["batch"]},
            "labels": {"dtype": "int64", "shape": ["batch", K], "keys": bundle.labels.keys},
        },
        "outputs": {"model_output": {"dtype": "float32", "shape": ["batch", G]}},
        "size_bytes": path.stat().st_size,
        "parity": report,
        "versions": {
            "cellsynth": __version__,
            "torch": str(torch.__version__),
            "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__,
        },
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if fidelity is not None:
        entry["fidelity"] = fidelity
    return _plain(entry)


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
