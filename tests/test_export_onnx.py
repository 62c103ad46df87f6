"""ONNX export (cellsynth.export.onnx), its checks, the onnxruntime backend, `cellsynth export`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import onnx
import pytest
import torch
from conftest import make_toy_adata

from cellsynth.backends.onnxruntime_backend import OnnxRuntimeDenoiser, open_session
from cellsynth.bundle.exports import export_path, read_exports
from cellsynth.bundle.load import load_bundle
from cellsynth.cli.main import main
from cellsynth.errors import BundleError, CellsynthError
from cellsynth.export import parity
from cellsynth.export.onnx import export_onnx
from cellsynth.files import sha256_file
from cellsynth.scheduler import scheduler_for_bundle

# The cells the tiny bundle was trained on (same generator and seed as the fixture).
TOY = dict(n_cells=240, n_genes=150)


@pytest.fixture(scope="module")
def exported(tiny_bundle, tmp_path_factory):
    """A copy of the tiny bundle with fp32 (checked on real toy cells), fp16 and int8 exports."""
    root = tmp_path_factory.mktemp("onnx") / "tiny"
    shutil.copytree(tiny_bundle, root)
    entries = {"fp32": export_onnx(root, real_cells=make_toy_adata(**TOY), progress=False)}
    for precision in ("fp16", "int8"):
        entries[precision] = export_onnx(root, precision=precision, progress=False)
    return root, entries


def _inputs(bundle, n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, len(bundle.genes)), dtype=np.float32)
    t = rng.integers(0, 1000, n).astype(np.int64)
    labels = np.stack([rng.integers(0, s + 1, n) for s in bundle.model_label_sizes], 1)
    return x, t, labels.astype(np.int64)


def _torch(bundle, x, t, labels):
    module = bundle.to_torch("ema")
    with torch.no_grad():
        return module(torch.from_numpy(x), torch.from_numpy(t), torch.from_numpy(labels)).numpy()


def _rel(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


def test_dynamic_batch_matches_torch(exported):
    root, _ = exported
    bundle = load_bundle(root)
    session = open_session(export_path(bundle, "onnx", "fp32"), threads=1)
    assert session.get_inputs()[0].shape[0] == session.get_outputs()[0].shape[0] != 1
    for n in (1, 3, 17):
        x, t, labels = _inputs(bundle, n, seed=n)
        (out,) = session.run(None, {"x_t": x, "timestep": t, "labels": labels})
        ref = _torch(bundle, x, t, labels)
        assert out.shape == (n, 100) and out.dtype == np.float32
        assert _rel(out, ref) < 1e-5


def test_graph_interface_and_metadata(exported):
    root, _ = exported
    bundle = load_bundle(root)
    model = onnx.load(str(root / "onnx" / "model.fp32.onnx"))
    assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)
    assert model.opset_import[0].version >= 17
    io = {v.name: v.type.tensor_type for v in [*model.graph.input, *model.graph.output]}
    assert list(io) == ["x_t", "timestep", "labels", "model_output"]
    f32, i64 = onnx.TensorProto.FLOAT, onnx.TensorProto.INT64
    assert [io[k].elem_type for k in io] == [f32, i64, i64, f32]
    assert io["x_t"].shape.dim[0].dim_param and io["x_t"].shape.dim[1].dim_value == 100
    assert io["labels"].shape.dim[1].dim_value == 3  # cell_type, batch and the depth bin
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["bundle_hash"] == bundle.hash
    assert meta["architecture"] == "dit" and meta["n_genes"] == "100"
    assert json.loads(meta["label_keys"]) == ["cell_type", "batch"]
    assert json.loads(meta["label_sizes"]) == bundle.model_label_sizes == [3, 2, 8]
    assert meta["prediction_type"] == "epsilon" and meta["weights"] == "ema"
    assert meta["precision"] == "fp32" and meta["opset"] == "18"
    assert meta["cellsynth_version"]
    int8 = onnx.load(str(root / "onnx" / "model.int8.onnx"))
    assert {p.key: p.value for p in int8.metadata_props}["precision"] == "int8"
    assert "MatMulInteger" in {n.op_type for n in int8.graph.node}


def test_manifest_entry_and_checksum(exported):
    root, entries = exported
    manifest = read_exports(root)
    assert set(manifest["onnx"]) == {"fp32", "fp16", "int8"}
    for precision, entry in entries.items():
        assert manifest["onnx"][precision] == entry
        assert entry["file"] == f"onnx/model.{precision}.onnx"
        assert entry["sha256"] == sha256_file(root / entry["file"])
        assert entry["inputs"]["x_t"] == {"dtype": "float32", "shape": ["batch", 100]}
        assert entry["outputs"]["model_output"]["shape"] == ["batch", 100]
        assert set(entry["versions"]) == {"cellsynth", "torch", "onnx", "onnxruntime"}
        assert entry["created"].endswith("Z") and entry["bundle_hash"] == load_bundle(root).hash
    assert not [p for p in root.iterdir() if p.name.startswith(".")]  # no temporary left over


def test_fp32_parity_report(exported):
    _, entries = exported
    par = entries["fp32"]["parity"]
    assert par["passed"] and par["tolerance"] == 1e-4
    assert 0 < par["max_rel_error"] < 1e-5 and par["max_abs_error"] > 0
    batches = [c["batch"] for c in par["cases"]]
    assert batches[:3] == [1, 7, 64] and batches[-1] == 240  # the real toy cells
    assert par["real_cells"] == {"source": "AnnData", "cells": 240}
    assert max(c["max_rel_error"] for c in par["cases"]) == par["max_rel_error"]
    assert "fidelity" not in entries["fp32"]


def test_random_inputs_include_null_labels_and_real_cells_fallback(tiny_bundle):
    bundle = load_bundle(tiny_bundle)
    cases = parity.random_cases(bundle, (1, 5), seed=0)
    assert [len(c[1]) for c in cases] == [1, 5, 64]
    for _, _x, t, labels in cases:
        assert (labels[-1] == bundle.model_label_sizes).all() and t.max() < 1000
    # The tiny bundle was trained on an in-memory AnnData: random inputs only, and said so.
    x, why = parity.resolve_real_cells(bundle, None, seed=0)
    assert x is None and "random inputs only" in why
    with pytest.raises(CellsynthError, match=r"\[n_cells, 100\]"):
        parity.resolve_real_cells(bundle, np.zeros((3, 7)), seed=0)


def test_reduced_precision_reports(exported):
    _, entries = exported
    for precision, max_rms in (("fp16", 0.01), ("int8", 0.05)):
        entry = entries[precision]
        assert entry["parity"]["tolerance"] is None and entry["parity"]["finite"]
        assert entry["parity"]["max_rel_error"] > 1e-6  # really reduced precision
        fid = entry["fidelity"]
        assert fid["cells"] == 200 and fid["steps"] == 20 and fid["finite"]
        assert 0 < fid["rel_rms_error"] < max_rms
        assert fid["gene_mean_corr"] > 0.99
        assert 0 < fid["zero_fraction_reference"] < 1
        assert abs(fid["zero_fraction_export"] - fid["zero_fraction_reference"]) < 0.02
    assert entries["int8"]["parity"]["fp32_before_quantization"]["passed"]
    assert (
        entries["fp16"]["fidelity"]["rel_rms_error"] < entries["int8"]["fidelity"]["rel_rms_error"]
    )


def test_backend_matches_torch(exported):
    root, entries = exported
    bundle = load_bundle(root)
    x, t, labels = _inputs(bundle, 9)
    ref = _torch(bundle, x, t, labels)
    for precision, tol in (("fp32", 1e-5), ("fp16", 1e-2), ("int8", 1.0)):
        den = OnnxRuntimeDenoiser(bundle, precision=precision, threads=1)
        out = den(x, t, labels)
        assert out.shape == x.shape and out.dtype == np.float32 and _rel(out, ref) < tol
        desc = den.describe()
        assert desc["engine"] == "onnxruntime" and desc["device"] == "cpu"
        assert desc["precision"] == precision and desc["threads"] == 1
        assert desc["provider"] == "CPUExecutionProvider"
        # fp32 runs the onnxruntime-fused graph; int8 was quantised from it; fp16 is unfused.
        fused = entries[precision].get("onnxruntime_graph", {}).get("file")
        assert desc["onnx_file"] == (fused or entries[precision]["file"])
        assert desc["onnx_sha256"] == sha256_file(root / desc["onnx_file"])


def test_fused_graph_recorded_and_checked(exported):
    root, entries = exported
    graph = entries["fp32"]["onnxruntime_graph"]
    assert graph["fused"] and graph["file"] == "onnx/model.fp32.onnxruntime.onnx"
    assert graph["fused_ops"] == {"MultiHeadAttention": 1, "FastGelu": 1}  # depth 1
    assert graph["ops_after"] < graph["ops_before"]
    assert graph["parity"]["passed"] and 0 < graph["parity"]["max_rel_error"] < 1e-5
    assert graph["sha256"] == sha256_file(root / graph["file"])
    model = onnx.load(str(root / graph["file"]))
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["bundle_hash"] == load_bundle(root).hash and meta["precision"] == "fp32"
    # The portable file keeps standard ops only (TensorRT and other runtimes read it).
    plain = onnx.load(str(root / entries["fp32"]["file"]))
    assert {n.domain for n in plain.graph.node} <= {"", "ai.onnx"}
    int8 = entries["int8"]["onnxruntime_graph"]
    assert int8["quantized_from"] == "the fused fp32 graph" and "file" not in int8
    assert "onnxruntime_graph" not in entries["fp16"]


def test_slices_are_bit_identical_to_one_call(exported):
    root, _ = exported
    bundle = load_bundle(root)
    x, t, labels = _inputs(bundle, 50, seed=4)
    whole = OnnxRuntimeDenoiser(bundle, threads=1, rows_per_call=1000)(x, t, labels)
    for rows in (1, 7, 49):
        den = OnnxRuntimeDenoiser(bundle, threads=1, rows_per_call=rows)
        assert den.details["rows_per_call"] == rows
        out = den(x, t, labels)
        assert out.flags.c_contiguous and np.array_equal(out, whole)
    with pytest.raises(CellsynthError, match="rows_per_call must be >= 1"):
        OnnxRuntimeDenoiser(bundle, rows_per_call=0)


def test_rows_per_call_fits_the_activation_in_cache():
    from cellsynth.backends.onnxruntime_backend import default_rows_per_call

    kang = dict(n_genes=2000, patch_size=50, hidden_size=128)  # 40 tokens x 128: 20 KiB/cell
    paper = dict(n_genes=2000, patch_size=10, hidden_size=768)  # 600 KiB/cell
    assert default_rows_per_call(kang) == 32
    assert default_rows_per_call(paper) == 4  # the floor
    assert default_rows_per_call(dict(n_genes=32, hidden_size=192)) == 1024  # an MLP: 1 token
    assert default_rows_per_call(dict(n_genes=32)) >= 2**30  # nothing to size by


def test_export_without_fused_graph_still_runs(exported, tmp_path):
    """A bundle exported before fused graphs existed (or where none applied) runs the portable
    graph; a listed fused graph that is damaged is refused, naming the file."""
    root = _copy(exported[0], tmp_path)
    manifest = read_exports(root)
    graph = manifest["onnx"]["fp32"]["onnxruntime_graph"]
    (root / graph["file"]).write_bytes(b"garbage")
    with pytest.raises(BundleError, match=r"model\.fp32\.onnxruntime\.onnx is corrupt"):
        OnnxRuntimeDenoiser(load_bundle(root), threads=1)
    del manifest["onnx"]["fp32"]["onnxruntime_graph"]
    (root / "exports.json").write_text(json.dumps(manifest))
    den = OnnxRuntimeDenoiser(load_bundle(root), threads=1)
    assert den.details["onnx_file"] == "onnx/model.fp32.onnx" and den.details["fused_ops"] == {}


@pytest.mark.parametrize("guidance", [1.0, 2.0])
def test_denoise_matches_torch_backend(exported, guidance):
    from cellsynth.backends.torch_backend import TorchDenoiser

    root, _ = exported
    bundle = load_bundle(root)
    rng = np.random.default_rng(3)
    sizes = bundle.model_label_sizes
    labels = np.stack([rng.integers(0, s, 32) for s in sizes], 1).astype(np.int64)
    null = np.tile(np.array(bundle.model_label_sizes, dtype=np.int64), (32, 1))
    cells = []
    for den in (OnnxRuntimeDenoiser(bundle, threads=1), TorchDenoiser(bundle)):
        sched = scheduler_for_bundle(bundle, "ddim", truncate_final=True, seed=5)
        sched.set_timesteps(10)
        x_T = sched.init_noise(32, 100)
        cells.append(den.denoise(sched, x_T, labels, null, guidance, 0, {"eta": 0.0}))
    onnx_cells, torch_cells = cells
    assert (onnx_cells >= 0).all() and (onnx_cells == 0).mean() > 0.05
    assert np.abs(onnx_cells - torch_cells).max() <= 1e-5 * max(1.0, np.abs(torch_cells).max())


def _copy(root, tmp_path):
    dst = tmp_path / "bundle"
    shutil.copytree(root, dst)
    return dst


def test_corrupt_onnx_file_names_the_file(exported, tmp_path):
    root = _copy(exported[0], tmp_path)
    path = root / "onnx" / "model.fp32.onnx"
    data = bytearray(path.read_bytes())
    data[len(data) // 3 : len(data) // 3 + 64] = b"\xff" * 64
    path.write_bytes(bytes(data[: len(data) // 2]))
    with pytest.raises(BundleError, match=r"model\.fp32\.onnx is corrupt"):
        OnnxRuntimeDenoiser(root)
    # Even with a matching checksum (exports.json edited), onnxruntime's refusal is reported.
    manifest = json.loads((root / "exports.json").read_text())
    manifest["onnx"]["fp32"]["sha256"] = sha256_file(path)
    manifest["onnx"]["fp32"].pop("onnxruntime_graph")  # so the engine opens the plain file
    (root / "exports.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=r"model\.fp32\.onnx is corrupt: onnxruntime cannot"):
        OnnxRuntimeDenoiser(root)


def test_changed_config_is_refused(exported, tmp_path):
    root = _copy(exported[0], tmp_path)
    bundle = load_bundle(root)
    config = json.loads((root / "config.json").read_text())
    config["training"]["note"] = "edited after export"
    (root / "config.json").write_text(json.dumps(config))
    # The exports no longer belong to this config.json ...
    with pytest.raises(BundleError, match="another config.json"):
        OnnxRuntimeDenoiser(root)
    # ... and a bundle object loaded before the edit may not be exported.
    with pytest.raises(BundleError, match="changed since the bundle was loaded"):
        export_onnx(bundle, progress=False)
    # Exporting the edited bundle afresh replaces the stale manifest.
    entry = export_onnx(load_bundle(root), progress=False)
    manifest = json.loads((root / "exports.json").read_text())
    assert manifest["bundle_hash"] == load_bundle(root).hash
    assert manifest["onnx"] == {"fp32": entry}
    OnnxRuntimeDenoiser(root)


def test_bad_arguments(exported):
    root, _ = exported
    with pytest.raises(CellsynthError, match="precision"):
        export_onnx(root, precision="int4")
    with pytest.raises(CellsynthError, match="opset"):
        export_onnx(root, opset=13)
    with pytest.raises(CellsynthError, match="onnxruntime_cuda_backend"):
        OnnxRuntimeDenoiser(root, device="cuda:0")
    with pytest.raises(CellsynthError, match="precision must be one of"):
        OnnxRuntimeDenoiser(root, precision="bf16")


def test_cli_export_prints_report(exported, tmp_path, capsys):
    root = _copy(exported[0], tmp_path)
    cells = tmp_path / "cells.h5ad"
    make_toy_adata(**TOY).write_h5ad(cells)
    argv = ["export", str(root), "--format", "onnx", "--quantize", "int8", "--data", str(cells)]
    assert main(argv) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[0].startswith(f"exported {root}/onnx/model.int8.onnx (int8, ema weights")
    assert "parity vs PyTorch fp32: max relative error" in out[1]
    assert f"real cells ({cells}, 240)" in out[1]
    assert any("fp32 graph before quantisation" in line for line in out)
    assert out[-1].startswith("trajectory fidelity (DDIM 20 steps, 200 cells")


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--format", "onnx", "--fp16", "--quantize", "int8"], "not allowed with"),
        (["--format", "onnx", "--max-batch", "8"], "--max-batch only with --format tensorrt"),
        (["--format", "tensorrt", "--fp16"], "--fp16 only with --format onnx"),
        (["--format", "coreml"], "invalid choice"),
    ],
)
def test_cli_bad_usage_is_one_line(exported, capsys, argv, message):
    with pytest.raises(SystemExit) as exc:
        main(["export", str(exported[0]), *argv])
    assert exc.value.code == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and message in err


def test_cli_missing_bundle_is_one_line(tmp_path, capsys):
    assert main(["export", str(tmp_path / "nope"), "--format", "onnx"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("cellsynth: error:") and "\n" not in err


def test_backend_runs_without_torch(exported):
    root, _ = exported
    bundle = load_bundle(root)
    x, t, labels = _inputs(bundle, 5)
    ref = _torch(bundle, x, t, labels)
    script = textwrap.dedent(
        """
        import json, sys
        sys.modules["torch"] = None  # any `import torch` now raises ImportError
        import numpy as np
        from cellsynth.backends.onnxruntime_backend import OnnxRuntimeDenoiser

        x, t, labels = (np.asarray(v, dtype) for v, dtype in
                        zip(json.loads(sys.stdin.read()), ("float32", "int64", "int64")))
        out = OnnxRuntimeDenoiser(sys.argv[1], threads=1)(x, t, labels)
        print(json.dumps(out.tolist()))
        """
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", script, str(root)],
        input=json.dumps([x.tolist(), t.tolist(), labels.tolist()]),
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    out = np.array(json.loads(done.stdout), dtype=np.float32)
    assert _rel(out, ref) < 1e-5


def test_cli_tensorrt_without_gpu_is_one_line(exported, capsys):
    pytest.importorskip("cellsynth.backends.tensorrt_build")
    from cellsynth.backends import _cuda_device_count

    if _cuda_device_count() > 0:
        pytest.skip("a CUDA device is present (the build itself is tested in test_gpu_engines)")
    assert main(["export", str(exported[0]), "--format", "tensorrt", "--opt-batch", "64"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("cellsynth: error:") and "\n" not in err and "GPU" in err


def test_failed_parity_records_nothing(tiny_bundle, tmp_path, monkeypatch):
    root = _copy(tiny_bundle, tmp_path)
    monkeypatch.setattr(parity, "FP32_TOLERANCE", 0.0)  # no float export can pass this
    with pytest.raises(parity.ExportError, match="differs from PyTorch.*not recorded"):
        export_onnx(root, progress=False)
    assert read_exports(root)["onnx"] == {}
    assert not (root / "onnx").exists() and not (root / "exports.json").exists()
    assert not [p for p in root.iterdir() if p.name.startswith(".")]
