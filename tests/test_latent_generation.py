"""Latent generation: ONNX export of the autoencoder and the SCDG, and generate() through them.

A latent-diffusion bundle denoises 8-d codes and decodes them to 200 genes; with onnxruntime the
whole path runs from exported files, without PyTorch.
"""

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

import cellsynth
from cellsynth.backends import choose_engine, load_decoder
from cellsynth.backends.onnxruntime_backend import OnnxRuntimeDecoder, open_session
from cellsynth.bundle.exports import export_path, read_exports
from cellsynth.bundle.load import load_bundle
from cellsynth.cli.main import main
from cellsynth.errors import BundleError, CellsynthError
from cellsynth.export.onnx import (
    ExportError,
    export_autoencoder_onnx,
    export_latent_onnx,
    export_onnx,
)
from cellsynth.files import sha256_file

GEN = dict(n_cells=40, steps=8, seed=3, batch_size=16, guidance=2.0, progress=False)


@pytest.fixture(scope="module")
def exported(tiny_scdg_bundle, wu2020_adata, tmp_path_factory):
    """A copy of the tiny latent bundle with its fp32 SCDG, encoder and decoder exports."""
    root = tmp_path_factory.mktemp("latent-onnx") / "scdg"
    shutil.copytree(tiny_scdg_bundle, root)
    entry = export_onnx(root, real_cells=wu2020_adata, progress=False)
    parts = export_autoencoder_onnx(root, real_cells=wu2020_adata, progress=False)
    return root, {"denoiser": entry, **parts}


@pytest.fixture(scope="module")
def cells(exported):
    """The same run on torch and on onnxruntime (one thread each)."""
    root, _ = exported
    return {
        engine: cellsynth.generate(root, engine=engine, device="cpu", threads=1, counts=True, **GEN)
        for engine in ("torch", "onnxruntime")
    }


def _rel(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


def test_exports_are_recorded_where_their_model_lives(exported, tiny_scdg_bundle):
    root, entries = exported
    b = load_bundle(root)
    ae = b.autoencoder
    assert b.kind == "latent_diffusion" and (b.width, len(b.genes)) == (8, 200)
    # The SCDG in the bundle's own manifest, at the latent width.
    assert set(read_exports(b)["onnx"]) == {"fp32"}
    den = entries["denoiser"]
    assert den["file"] == "onnx/model.fp32.onnx" and den["kind"] == "latent_diffusion"
    assert den["inputs"]["x_t"]["shape"] == ["batch", 8]
    assert den["outputs"]["model_output"]["shape"] == ["batch", 8]
    assert den["latent_scale"] == pytest.approx(b.config["latent"]["scale"])
    # Encoder and decoder in the autoencoder's manifest, which pins the autoencoder's config.json.
    manifest = json.loads((root / "autoencoder" / "exports.json").read_text())
    assert manifest["bundle_hash"] == ae.hash and set(manifest["onnx"]) == {"encoder", "decoder"}
    io = {"encoder": (("x", 200), ("z", 8)), "decoder": (("z", 8), ("x", 200))}
    for part, (src, dst) in io.items():
        entry = entries[part]
        assert manifest["onnx"][part] == entry
        assert entry["file"] == f"onnx/{part}.fp32.onnx" and entry["precision"] == "fp32"
        assert entry["sha256"] == sha256_file(root / "autoencoder" / entry["file"])
        assert entry["inputs"] == {src[0]: {"dtype": "float32", "shape": ["batch", src[1]]}}
        assert entry["outputs"] == {dst[0]: {"dtype": "float32", "shape": ["batch", dst[1]]}}
        assert entry["zero_threshold"] == ae.config["decode"]["zero_threshold"] > 0
        meta = {
            p.key: p.value for p in onnx.load(str(export_path(ae, "onnx", part))).metadata_props
        }
        assert meta["part"] == part and meta["bundle_hash"] == ae.hash
        assert (meta["n_genes"], meta["latent_dim"]) == ("200", "8")
    # Exporting changed no config.json: the bundle still validates and keeps its identity.
    assert b.hash == load_bundle(tiny_scdg_bundle).hash
    assert not [p for p in root.rglob(".onnx-export-*")]


def test_parity_reports_cover_codes_and_real_cells(exported):
    _, entries = exported
    names = {k: [c["case"] for c in e["parity"]["cases"]] for k, e in entries.items()}
    assert "random codes (64)" in names["denoiser"]
    assert "codes of real cells (AnnData, 200)" in names["denoiser"]
    assert not any("synthetic cells" in n for n in names["denoiser"])  # no zero-negated cells
    assert names["encoder"][-1] == "real cells (200)"
    assert names["decoder"][-2:] == ["unit codes (64)", "codes of real cells (200)"]
    for entry in entries.values():
        par = entry["parity"]
        assert par["passed"] and par["tolerance"] == 1e-4 and 0 < par["max_rel_error"] < 1e-5


def test_onnx_files_match_torch_at_any_batch_size(exported):
    root, _ = exported
    b = load_bundle(root)
    ae = b.autoencoder
    scdg, module = b.to_torch("ema"), ae.to_torch()
    sessions = {
        part: open_session(export_path(ae, "onnx", part), threads=1)
        for part in ("encoder", "decoder")
    }
    den = open_session(export_path(b, "onnx", "fp32"), threads=1)
    rng = np.random.default_rng(0)
    for n in (1, 5, 33):
        x = np.where(rng.random((n, 200)) < 0.8, 0, rng.uniform(0, 4, (n, 200))).astype(np.float32)
        z = rng.standard_normal((n, 8), dtype=np.float32)
        t = rng.integers(0, 1000, n).astype(np.int64)
        labels = rng.integers(0, 4, (n, 1)).astype(np.int64)  # 3 classes + the null class
        with torch.no_grad():
            ref_z = module.encode(torch.from_numpy(x)).numpy()
            ref_x = module.decode(torch.from_numpy(z)).numpy()
            ref_d = scdg(*(torch.from_numpy(v) for v in (z, t, labels))).numpy()
        (out_z,) = sessions["encoder"].run(None, {"x": x})
        (out_x,) = sessions["decoder"].run(None, {"z": z})
        (out_d,) = den.run(None, {"x_t": z, "timestep": t, "labels": labels})
        assert out_z.shape == (n, 8) and out_x.shape == (n, 200) and out_d.shape == (n, 8)
        assert np.allclose(np.linalg.norm(out_z, axis=1), 1, atol=1e-5)  # L2-normalised codes
        assert max(_rel(out_z, ref_z), _rel(out_x, ref_x), _rel(out_d, ref_d)) < 1e-4


def test_torch_and_onnxruntime_generate_the_same_cells(exported, cells):
    root, _ = exported
    b = load_bundle(root)
    threshold = b.autoencoder.config["decode"]["zero_threshold"]
    x, y = (cells[e].X.toarray() for e in ("torch", "onnxruntime"))
    for adata in cells.values():
        assert adata.shape == (40, 200) and list(adata.var_names) == b.genes
        assert list(adata.obs["source"].cat.categories) == ["Blood", "NAT", "Tumor"]
        X = adata.X.toarray()
        # Decoded cells: non-negative, silent below the decoder's zero threshold, not all silent.
        assert X.min() == 0 and not ((X > 0) & (X < threshold)).any()
        assert 0.2 < (X == 0).mean() < 1 and X.max() > threshold
        assert adata.layers["counts"].dtype == np.int32 and adata.layers["counts"].sum() > 0
    # Agree to 1e-4 except where a value within float noise of the threshold fell either side.
    diff = np.abs(x - y)
    flipped = (diff > 1e-4 * np.abs(x).max()) & ((x == 0) != (y == 0))
    assert (flipped.mean() < 1e-3) and np.all(np.maximum(x, y)[flipped] < threshold + 1e-3)
    assert diff[~flipped].max() <= 1e-4 * np.abs(x).max()
    for engine, adata in cells.items():
        info = adata.uns["cellsynth"]
        assert info["kind"] == "latent_diffusion" and info["bundle_hash"] == b.hash
        assert info["backend"]["engine"] == info["decoder"]["engine"] == engine
        assert info["latent_scale"] == pytest.approx(b.config["latent"]["scale"])
        assert info["decoder"]["zero_threshold"] == pytest.approx(threshold)
    assert cells["onnxruntime"].uns["cellsynth"]["decoder"]["onnx_file"] == "onnx/decoder.fp32.onnx"


def test_latent_cells_do_not_depend_on_chunks_or_shards(exported, cells, tmp_path):
    root, _ = exported
    whole = cells["onnxruntime"].X.toarray()
    out = tmp_path / "syn.h5ad"
    streamed = cellsynth.generate(
        root, engine="onnxruntime", threads=1, out=out, chunk_size=16, counts=True, **GEN
    )
    np.testing.assert_array_equal(streamed.X[:].toarray(), whole)
    streamed.file.close()
    half = cellsynth.generate(root, engine="onnxruntime", threads=1, shard=(1, 2), **GEN)
    np.testing.assert_array_equal(half.X.toarray(), whole[16:])


def test_latents_are_not_truncated(exported):
    from cellsynth.backends.torch_backend import TorchDenoiser
    from cellsynth.generation.sampling import make_scheduler

    b = load_bundle(exported[0])
    sched = make_scheduler(b, "ddim", "leading", seed=0)
    sched.set_timesteps(5)
    labels = np.zeros((64, 1), np.int64)
    z = TorchDenoiser(b).denoise(sched, sched.init_noise(64, 8), labels, labels + 3, 1.0, 0, {})
    assert (z < 0).mean() > 0.2  # codes keep their sign; only genes are truncated


def test_onnxruntime_generation_runs_without_torch(exported, cells):
    root, _ = exported
    script = textwrap.dedent(
        """
        import json, sys
        sys.modules["torch"] = None  # any `import torch` now raises ImportError
        import cellsynth

        kw = json.loads(sys.argv[2])
        adata = cellsynth.generate(sys.argv[1], engine="auto", device="cpu", threads=1, **kw)
        print(json.dumps({"X": adata.X.toarray().tolist(), "info": adata.uns["cellsynth"]}))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(root), json.dumps(GEN)],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["info"]["backend"]["engine"] == result["info"]["decoder"]["engine"]
    assert result["info"]["engine_choice"] == "CPU with an ONNX export"
    expected = cells["onnxruntime"].X.toarray()
    np.testing.assert_allclose(np.array(result["X"], np.float32), expected, atol=1e-6)


def _copy(root, tmp_path):
    dst = tmp_path / "bundle"
    shutil.copytree(root, dst)
    return dst


def test_corrupt_decoder_file_is_a_clear_error(exported, tmp_path):
    root = _copy(exported[0], tmp_path)
    path = root / "autoencoder" / "onnx" / "decoder.fp32.onnx"
    data = bytearray(path.read_bytes())
    path.write_bytes(bytes(data[: len(data) // 2]))
    with pytest.raises(BundleError, match=r"decoder\.fp32\.onnx is corrupt: its SHA-256"):
        cellsynth.generate(root, engine="onnxruntime", **GEN)
    # With a matching checksum (exports.json edited), onnxruntime's refusal is reported.
    manifest_file = root / "autoencoder" / "exports.json"
    manifest = json.loads(manifest_file.read_text())
    manifest["onnx"]["decoder"]["sha256"] = sha256_file(path)
    manifest_file.write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=r"decoder\.fp32\.onnx is corrupt: onnxruntime cannot"):
        load_decoder(load_bundle(root), "onnxruntime")


def test_missing_or_foreign_decoder_export(exported, tmp_path):
    root = _copy(exported[0], tmp_path)
    manifest_file = root / "autoencoder" / "exports.json"
    manifest = json.loads(manifest_file.read_text())
    del manifest["onnx"]["decoder"]
    manifest_file.write_text(json.dumps(manifest))
    b = load_bundle(root)
    # 'auto' needs both exports for onnxruntime, so it falls back to torch ...
    assert choose_engine(b, "cpu")[:2] == ("torch", "cpu")
    # ... and asking for onnxruntime says what to run.
    with pytest.raises(BundleError, match=f"make it with: cellsynth export {root} --format onnx"):
        cellsynth.generate(root, engine="onnxruntime", **GEN)
    # Exports written for another autoencoder config.json are refused.
    manifest["bundle_hash"] = "0" * 64
    manifest_file.write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="another config.json"):
        OnnxRuntimeDecoder(b.autoencoder)


def test_autoencoder_bundle_exports_parts_but_does_not_generate(exported):
    ae = load_bundle(exported[0]).autoencoder
    with pytest.raises(ExportError, match="autoencoder bundle: it has no denoiser"):
        export_onnx(ae, progress=False)
    with pytest.raises(BundleError, match="cannot generate cells by itself"):
        cellsynth.generate(ae.path, **GEN)
    with pytest.raises(ExportError, match="parts must be among"):
        export_autoencoder_onnx(ae, parts=["middle"], progress=False)


def test_cli_export_and_sample_a_latent_bundle(tiny_scdg_bundle, tmp_path, capsys):
    root = _copy(tiny_scdg_bundle, tmp_path)
    assert main(["export", str(root), "--format", "onnx", "--no-encoder"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    exported_lines = [line for line in out if line.startswith("exported ")]
    assert len(exported_lines) == 2
    assert exported_lines[0].startswith(f"exported {root}/onnx/model.fp32.onnx (fp32, ema")
    assert exported_lines[1].startswith(
        f"exported {root}/autoencoder/onnx/decoder.fp32.onnx (decoder, fp32, model weights"
    )
    assert sum("parity vs PyTorch fp32: max relative error" in line for line in out) == 2
    assert set(read_exports(root / "autoencoder")["onnx"]) == {"decoder"}
    assert not (root / "autoencoder" / "onnx" / "encoder.fp32.onnx").exists()
    # A reduced-precision denoiser keeps the intact decoder and is judged on decoded cells.
    entries = export_latent_onnx(root, encoder=False, precision="fp16", progress=False)
    assert set(entries) == {"denoiser"}
    fid = entries["denoiser"]["fidelity"]
    assert fid["finite"] and fid["rel_rms_error"] < 0.1 and 0.2 < fid["zero_fraction_reference"] < 1
    syn = tmp_path / "syn.h5ad"
    argv = ["sample", str(root), "--n-cells", "10", "--steps", "4", "--engine", "onnxruntime"]
    assert main([*argv, "--out", str(syn)]) == 0
    assert "wrote 10 cells x 200 genes" in capsys.readouterr().out
    # TensorRT is for gene-space bundles: one line, no traceback.
    assert main(["export", str(root), "--format", "tensorrt"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("cellsynth: error: TensorRT engines are made for gene-space")
    assert "\n" not in err
    with pytest.raises(CellsynthError, match="gene-space diffusion bundles only"):
        cellsynth.generate(root, engine="tensorrt", device="cuda:0", **GEN)
