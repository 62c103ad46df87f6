"""``cellsynth export``: the bundle's denoiser to ONNX (checked against PyTorch) or TensorRT.

What ``--format onnx`` exports depends on the bundle's kind:

* diffusion (DiT): the denoiser, at the precision asked for;
* latent_diffusion (SCDG): the denoiser, and its autoencoder's decoder and encoder (fp32, into
  ``BUNDLE/autoencoder/``; ``--no-encoder`` skips the encoder, which generation does not need).
  With ``--fp16`` / ``--quantize`` the autoencoder parts are exported only if missing;
* autoencoder: encoder and decoder (fp32).

TensorRT engines are made for diffusion bundles only.

A bundle shipped with cellsynth is read-only: ``--out DIR`` exports into a copy of any bundle,
made under a temporary name and renamed when the export is complete.
"""

from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path
from typing import Any

TENSORRT_DEFAULTS = {"precision": "fp16", "min_batch": 1, "opt_batch": 256, "max_batch": 1024}
ONNX_DEFAULTS = {"fp16": False, "quantize": None, "opset": 18, "data": None, "no_encoder": False}


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="export a bundle's denoiser to ONNX or a TensorRT engine",
        description="Export the denoiser into the bundle (listed in BUNDLE/exports.json). ONNX "
        "exports are checked against PyTorch before they are recorded.",
    )
    p.add_argument("bundle", help="bundle directory or shipped name (kang-dit, kang-scdg)")
    p.add_argument("--format", required=True, choices=["onnx", "tensorrt"])
    p.add_argument("--weights", default="ema", choices=["ema", "model"])
    p.add_argument(
        "--out",
        metavar="DIR",
        help="export into a copy of the bundle at DIR instead of into the bundle itself "
        "(needed for a shipped bundle, which is read-only)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    onnx = p.add_argument_group("onnx")
    precision = onnx.add_mutually_exclusive_group()
    precision.add_argument(
        "--fp16", action="store_true", help="half-precision weights (timestep embedding fp32)"
    )
    precision.add_argument("--quantize", choices=["int8"], help="int8 dynamic quantisation (CPU)")
    onnx.add_argument("--opset", type=int, help="ONNX opset, >= 17 (default: 18)")
    onnx.add_argument(
        "--data",
        metavar="NAME_OR_PATH",
        help="real cells for the parity check: a built-in data set or an .h5ad of raw counts "
        "(default: the training data, if it was a built-in data set)",
    )
    onnx.add_argument("--seed", type=int, default=0, help="seed of the test inputs")
    onnx.add_argument(
        "--no-encoder",
        action="store_true",
        help="latent-diffusion or autoencoder bundles: export the decoder but not the encoder "
        "(generation needs only the decoder)",
    )
    trt = p.add_argument_group("tensorrt")
    trt.add_argument("--precision", choices=["fp16", "bf16", "fp32"], help="default: fp16")
    trt.add_argument("--min-batch", type=int, help="default: 1")
    trt.add_argument("--opt-batch", type=int, help="batch size tuned for (default: 256)")
    trt.add_argument("--max-batch", type=int, help="default: 1024")
    p.set_defaults(run=run, parser=p)


def run(args: argparse.Namespace) -> None:
    other = TENSORRT_DEFAULTS if args.format == "onnx" else ONNX_DEFAULTS
    given = [k for k in other if getattr(args, k) not in (None, False)]
    if given:
        flags = ", ".join("--" + k.replace("_", "-") for k in given)
        fmt = "tensorrt" if args.format == "onnx" else "onnx"
        args.parser.error(f"{flags} only with --format {fmt}, not --format {args.format}")
    from cellsynth.bundle.load import resolve_bundle_path
    from cellsynth.files import atomic_directory, check_output

    export = _onnx if args.format == "onnx" else _tensorrt
    source = resolve_bundle_path(args.bundle)
    if args.out is None:
        _refuse_read_only(args, source)
        export(args, source, shown=args.bundle)
        return
    check_output(args.out, args.overwrite, directory=True)
    with atomic_directory(args.out, overwrite=True) as copy:
        shutil.copytree(source, copy, dirs_exist_ok=True, ignore=shutil.ignore_patterns("*.tmp*"))
        export(args, copy, shown=args.out)


def _refuse_read_only(args: argparse.Namespace, source: Path) -> None:
    from cellsynth.bundle.format import SHIPPED_DIR
    from cellsynth.errors import BundleError

    shipped = source.resolve().is_relative_to(SHIPPED_DIR.resolve())
    if shipped or not os.access(source, os.W_OK):
        why = "is shipped with cellsynth" if shipped else "is not writable"
        raise BundleError(
            f"{args.bundle} {why}, so the export cannot go into it; export into a copy: "
            f"cellsynth export {args.bundle} --format {args.format} --out "
            f"my-{Path(args.bundle).name}"
        )


def _onnx(args: argparse.Namespace, path: Path, shown: str) -> None:
    from cellsynth.bundle.load import load_bundle
    from cellsynth.torch_entry import torch_module

    onnx_export = torch_module("export.onnx", "ONNX export")

    precision = "fp16" if args.fp16 else args.quantize or "fp32"
    options = {
        "weights": args.weights,
        "opset": args.opset if args.opset is not None else 18,
        "real_cells": args.data,
        "seed": args.seed,
        "progress": True,
    }
    bundle = load_bundle(path)
    if bundle.kind == "diffusion":
        if args.no_encoder:
            args.parser.error("--no-encoder only for latent_diffusion or autoencoder bundles")
        entry = onnx_export.export_onnx(bundle, precision=precision, **options)
        print("\n".join(report_lines(shown, entry)))
        return
    if bundle.kind == "autoencoder" and precision != "fp32":
        args.parser.error(
            "an autoencoder exports in fp32 only; --fp16 and --quantize apply to a denoiser"
        )
    entries = onnx_export.export_latent_onnx(
        bundle, encoder=not args.no_encoder, precision=precision, **options
    )
    for name, entry in entries.items():
        part = Path(bundle.autoencoder.path) if name != "denoiser" else bundle.path
        root = os.path.join(shown, os.path.relpath(part, bundle.path)).removesuffix(os.sep + ".")
        print("\n".join(report_lines(root, entry)))


def _tensorrt(args: argparse.Namespace, path: Path, shown: str) -> None:
    from cellsynth.bundle.exports import check_tensorrt_kind
    from cellsynth.bundle.load import load_bundle

    bundle = load_bundle(path)
    check_tensorrt_kind(bundle)
    try:
        from cellsynth.backends.tensorrt_build import build_engine
    except ImportError as exc:
        from cellsynth.errors import MissingDependencyError

        raise MissingDependencyError(
            f"TensorRT engines need an NVIDIA GPU with tensorrt installed "
            f"(pip install 'cellsynth[gpu]'): {exc}"
        ) from exc
    opts = {k: getattr(args, k) for k in TENSORRT_DEFAULTS}
    opts = {k: v if v is not None else TENSORRT_DEFAULTS[k] for k, v in opts.items()}
    entry = build_engine(bundle, onnx_precision="fp32", progress=True, **opts)
    where = os.path.join(shown, entry["file"]) if entry.get("file") else entry.get("path", "")
    gpu = f" for {entry['gpu']}" if entry.get("gpu") else ""
    built = f" in {entry['build_seconds']:.0f} s" if entry.get("build_seconds") else ""
    print(
        f"built TensorRT engine {where}{gpu} ({opts['precision']}, batch "
        f"{opts['min_batch']}..{opts['max_batch']}, tuned for {opts['opt_batch']}){built}"
    )


def fusion_summary(graph: dict[str, Any]) -> str:
    """One phrase on an export's onnxruntime-fused graph (``entry['onnxruntime_graph']``)."""
    if not graph.get("fused"):
        return f"not fused ({graph.get('reason', 'no reason recorded')})"
    ops = ", ".join(f"{op} x{n}" for op, n in graph["fused_ops"].items())
    where = graph.get("file") or graph.get("quantized_from", "")
    parity = graph.get("parity", {}).get("max_rel_error")
    checked = f", parity {parity:.1e}" if isinstance(parity, float) else ""
    return f"{where}: {ops} ({graph['ops_before']} -> {graph['ops_after']} nodes{checked})"


def report_lines(bundle: str, entry: dict[str, Any]) -> list[str]:
    """A few lines summarising an ONNX manifest entry: file, parity, trajectory fidelity."""
    par = entry["parity"]
    what = f"{entry['part']}, " if entry.get("part") else ""
    lines = [
        f"exported {bundle}/{entry['file']} ({what}{entry['precision']}, {entry['weights']} "
        f"weights, opset {entry['opset']}, {entry['size_bytes'] / 2**20:.1f} MiB, "
        f"sha256 {entry['sha256'][:12]})"
    ]
    cases = ", ".join(f"{c['case']}" for c in par["cases"])
    gate = f" (tolerance {par['tolerance']:.0e})" if par.get("tolerance") else " (not gated)"
    lines.append(
        f"parity vs PyTorch fp32: max relative error {par['max_rel_error']:.2e}{gate}, max abs "
        f"error {par['max_abs_error']:.2e}, over {cases}"
    )
    real = par.get("real_cells", {})
    if real.get("source") is None and real.get("note"):
        lines.append(f"note: {real['note']}")
    graph = entry.get("onnxruntime_graph")
    if graph:
        lines.append(f"onnxruntime graph: {fusion_summary(graph)}")
    base = par.get("fp32_before_quantization")
    if base:
        lines.append(
            f"fp32 graph before quantisation: max relative error {base['max_rel_error']:.2e}"
        )
    fid = entry.get("fidelity")
    if fid:
        lines.append(
            f"trajectory fidelity ({fid['scheduler'].upper()} {fid['steps']} steps, "
            f"{fid['cells']} cells, vs PyTorch fp32): RMS difference "
            f"{100 * fid['rel_rms_error']:.3f}% of the cells' RMS; per-gene means differ by at "
            f"most {fid['gene_mean_max_abs_diff']:.3g} (correlation {fid['gene_mean_corr']:.5f}); "
            f"zero fraction {fid['zero_fraction_export']:.4f} vs "
            f"{fid['zero_fraction_reference']:.4f} (max per-gene difference "
            f"{fid['zero_fraction_max_gene_diff']:.3f})"
        )
    return lines
