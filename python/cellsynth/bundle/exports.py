"""The exported forms of a bundle's models (ONNX files, TensorRT engines) and their manifest.

Exports live inside the bundle directory beside the weights::

    BUNDLE/
      exports.json                 manifest: what was exported, from which config.json, checksums
      onnx/model.fp32.onnx         the denoiser, one ONNX file per precision ('fp32', 'fp16',
                                   'int8'), listed under the precision's name
      onnx/model.fp32.onnxruntime.onnx
                                   the same graph with onnxruntime's fused attention and GELU
                                   (runs on onnxruntime only; the CPU engine loads it), listed
                                   as the fp32 entry's 'onnxruntime_graph'
      tensorrt/<key>.plan          TensorRT engines, keyed by GPU, compute capability, TensorRT
                                   version and precision (an engine only runs where it was built)
      tensorrt/timing.cache        TensorRT's timing cache, reused by later builds

An autoencoder bundle holds its encoder and decoder instead, listed under the keys 'encoder' and
'decoder' (``onnx/encoder.fp32.onnx``, ``onnx/decoder.fp32.onnx``). A latent-diffusion bundle
keeps its autoencoder in ``BUNDLE/autoencoder/``, a bundle of its own with its own exports.json::

    BUNDLE/
      exports.json, onnx/model.fp32.onnx          the SCDG denoiser (width: the latent dimension)
      autoencoder/exports.json, autoencoder/onnx/decoder.fp32.onnx, .../encoder.fp32.onnx

The manifest is separate from config.json on purpose: config.json's SHA-256 is the bundle's identity
(recorded in every output's provenance), and exporting must not change it. The manifest records
that hash, so exports left over from another model are refused instead of silently used.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cellsynth.errors import BundleError, CellsynthError
from cellsynth.files import atomic_path, sha256_file

EXPORTS_FILE = "exports.json"
EXPORTS_FORMAT = "cellsynth-exports"
EXPORTS_VERSION = 1
KINDS = ("onnx", "tensorrt")
ONNX_PRECISIONS = ("fp32", "fp16", "int8")
AUTOENCODER_PARTS = ("encoder", "decoder")  # ONNX keys of an autoencoder bundle's exports


def _as_bundle(bundle: Any) -> Any:
    """The Bundle itself, or the bundle at a path or name (loaded without re-hashing weights)."""
    from cellsynth.bundle.load import load_bundle

    return load_bundle(bundle, verify_weights=False)


def read_exports(bundle: Any, discard_stale: bool = False) -> dict[str, Any]:
    """The bundle's export manifest (an empty one when nothing was exported yet), as a copy.

    ``discard_stale`` returns an empty manifest instead of raising when the recorded exports
    belong to another config.json (a new export replaces them all). A Bundle keeps the parsed
    manifest (:meth:`~cellsynth.bundle.load.Bundle.exports`), so pass the object, not its path.

    Raises
    ------
    BundleError
        As :func:`parse_exports`.
    """
    b = _as_bundle(bundle)
    path = Path(b.path) / EXPORTS_FILE
    if discard_stale and path.is_file() and _stale(path, b.hash):
        return _empty_manifest(b.hash)
    return b.exports()


def _empty_manifest(bundle_hash: str) -> dict[str, Any]:
    return {
        "format": EXPORTS_FORMAT,
        "format_version": EXPORTS_VERSION,
        "bundle_hash": bundle_hash,
        **{k: {} for k in KINDS},
    }


def parse_exports(root: Path, bundle_hash: str) -> dict[str, Any]:
    """Read and check ``root/exports.json`` for the bundle whose config.json hashes to
    ``bundle_hash``; an empty manifest when the file does not exist.

    Raises
    ------
    BundleError
        If exports.json is corrupt, of another format version, or belongs to a different
        config.json (the model was retrained or edited after exporting).
    """
    path = root / EXPORTS_FILE
    if not path.is_file():
        return _empty_manifest(bundle_hash)
    try:
        manifest = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{path} is corrupt: not valid JSON ({exc})") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != EXPORTS_FORMAT:
        raise BundleError(f"{path} is not a cellsynth export manifest")
    if manifest.get("format_version") != EXPORTS_VERSION:
        raise BundleError(
            f"{path}: export manifest version {manifest.get('format_version')!r} is not "
            f"{EXPORTS_VERSION}; re-export with this cellsynth (cellsynth export {root})"
        )
    if manifest.get("bundle_hash") != bundle_hash:
        raise BundleError(
            f"{path} was written for another config.json (the model changed after export); "
            f"re-export: cellsynth export {root} --format onnx"
        )
    for kind in KINDS:
        manifest.setdefault(kind, {})
    return manifest


def _stale(path: Path, bundle_hash: str) -> bool:
    try:
        return json.loads(path.read_text()).get("bundle_hash") != bundle_hash
    except (UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        return True


def export_entry(bundle: Any, kind: str, key: str) -> dict[str, Any] | None:
    """The manifest entry for one export, or None if it was never made."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    return read_exports(bundle)[kind].get(key)


def export_path(bundle: Any, kind: str, key: str, verify: bool = True) -> Path:
    """Path of an exported file, checked against its recorded SHA-256.

    Raises
    ------
    BundleError
        If it was never exported (with the command that makes it), is missing, or is corrupt.
    """
    b = _as_bundle(bundle)
    root = Path(b.path)
    entry = export_entry(b, kind, key)
    if entry is None:
        raise BundleError(
            f"{root} has no {kind} export {key!r}; make it with: {_hint(root, kind, key)}"
        )
    return _checked_file(root, entry, verify)


def _checked_file(root: Path, listed: Mapping[str, Any], verify: bool = True) -> Path:
    """The file a manifest record lists (``file``, ``sha256``), refused when it lies outside the
    bundle, is missing, or (``verify``) its SHA-256 differs."""
    path = root / listed["file"]
    if not path.resolve().is_relative_to(root.resolve()):
        raise BundleError(
            f"{root / EXPORTS_FILE} lists {listed['file']!r}, outside the bundle; an export "
            "is a file inside its bundle (re-export to repair the manifest)"
        )
    if not path.is_file():
        raise BundleError(
            f"{root} is incomplete: {listed['file']} (listed in exports.json) is gone"
        )
    if verify and sha256_file(path) != listed.get("sha256"):
        raise BundleError(f"{path} is corrupt: its SHA-256 differs from the one in exports.json")
    return path


def _hint(root: Path, kind: str, key: str) -> str:
    """The command that makes a missing export."""
    if kind == "tensorrt":
        return f"cellsynth export {root} --format tensorrt"
    if key in AUTOENCODER_PARTS:
        # An autoencoder inside a latent-diffusion bundle is exported with that bundle.
        parent = root.parent
        if root.name == "autoencoder" and (parent / "config.json").is_file():
            root = parent
        return f"cellsynth export {root} --format onnx"
    flag = {"fp32": "", "fp16": " --fp16", "int8": " --quantize int8"}.get(key, f" --{key}")
    return f"cellsynth export {root} --format onnx{flag}"


def record_export(
    bundle: Any,
    kind: str,
    key: str,
    produced: str | os.PathLike,
    entry: Mapping[str, Any],
    companion: tuple[str, str | os.PathLike] | None = None,
) -> Path:
    """Move a finished export file into the bundle and list it in the manifest.

    ``produced`` is a complete file written elsewhere (e.g. a temporary directory); it is moved to
    ``<kind>/<file name>`` and the manifest is rewritten atomically, so an interrupted export
    never leaves a listed-but-partial file. ``companion`` ``(field, path)``: a second file of the
    same export (the onnxruntime-fused graph), moved beside it and listed as ``entry[field]``'s
    ``file`` and ``sha256``.
    """
    b = _as_bundle(bundle)
    root = Path(b.path)
    manifest = read_exports(b, discard_stale=True)
    record = dict(entry)
    # Both files move in before the manifest is rewritten: a failure in between leaves the old
    # manifest, whose checksums then name the replaced file instead of trusting it.
    record.update(_move_in(root, kind, Path(produced)))
    if companion is not None:
        field, path = companion
        record[field] = {**dict(record.get(field) or {}), **_move_in(root, kind, Path(path))}
    final = root / record["file"]
    manifest[kind][key] = record
    with atomic_path(root / EXPORTS_FILE) as tmp:
        tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    return final


def _move_in(root: Path, kind: str, produced: Path) -> dict[str, str]:
    """Move ``produced`` to ``root/<kind>/<its name>``; its manifest ``file`` and ``sha256``."""
    rel = f"{kind}/{produced.name}"
    final = root / rel
    final.parent.mkdir(exist_ok=True)
    with atomic_path(final) as tmp:
        os.replace(produced, tmp)
    return {"file": rel, "sha256": sha256_file(final)}


def fused_graph_path(bundle: Any, precision: str) -> Path | None:
    """The onnxruntime-fused graph of the ONNX export ``precision``, checked against its SHA-256;
    None when the export has none (no fusion applied, or exported by an older cellsynth).

    Raises
    ------
    BundleError
        If it is listed but missing or corrupt.
    """
    b = _as_bundle(bundle)
    graph = (export_entry(b, "onnx", precision) or {}).get("onnxruntime_graph") or {}
    return _checked_file(Path(b.path), graph) if graph.get("file") else None


def check_tensorrt_kind(bundle: Any) -> None:
    """Raise unless TensorRT engines can be made for the bundle (gene-space diffusion only).

    Raises
    ------
    CellsynthError
        For a latent-diffusion or autoencoder bundle, saying which engines serve it instead.
    """
    kind = getattr(bundle, "kind", "diffusion")
    if kind != "diffusion":
        raise CellsynthError(
            f"TensorRT engines are made for gene-space diffusion bundles only; {bundle.path} is "
            f"a {kind} bundle: export it with --format onnx and sample with --engine onnxruntime "
            "or torch"
        )


def tensorrt_key(gpu_name: str, compute_capability: str, tensorrt_version: str, precision: str):
    """Engine key: an engine runs only on the GPU model, compute capability and TensorRT version
    it was built for, so all three (and the precision) name it."""
    gpu = re.sub(r"[^A-Za-z0-9]+", "-", gpu_name).strip("-").lower()
    return f"{gpu}_sm{compute_capability.replace('.', '')}_trt{tensorrt_version}_{precision}"
