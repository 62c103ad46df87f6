"""The cellsynth command line: end to end on real data, and one-line errors on bad input."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import anndata
import numpy as np
import pytest

import cellsynth
from cellsynth.cli.main import main


def run_cli(*args: str) -> subprocess.CompletedProcess:
    """Run the installed entry point in a fresh process, as a user would."""
    return subprocess.run(
        [sys.executable, "-m", "cellsynth.cli.main", *args], capture_output=True, text=True
    )


def test_info_describes_a_bundle(tiny_bundle: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["info", str(tiny_bundle)]) == 0
    out = capsys.readouterr().out
    assert "genes        100" in out
    assert "label        cell_type: 3 values (alpha, beta, gamma)" in out
    assert "parameters" in out and "prediction   epsilon" in out
    assert "validation   step" in out and "kNN AUC" in out
    # the default co-expression gene order is named, not listed gene by gene
    assert "gene order   clustered by co-expression" in out and "gene_order=" not in out


def test_sample_writes_h5ad_atomically(tiny_bundle: Path, tmp_path: Path) -> None:
    out = tmp_path / "syn.h5ad"
    code = main(
        [
            "sample",
            str(tiny_bundle),
            "--n-cells",
            "20",
            "--steps",
            "4",
            "--seed",
            "5",
            "--condition",
            "cell_type=gamma",
            "--batch-size",
            "8",
            "--scheduler",
            "dpmsolver++",
            "--timestep-spacing",
            "trailing",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    adata = anndata.read_h5ad(out)
    assert adata.shape == (20, 100) and set(adata.obs["cell_type"]) == {"gamma"}
    prov = adata.uns["cellsynth"]
    assert prov["seed"] == 5
    assert (prov["scheduler"], prov["timestep_spacing"]) == ("dpmsolver++", "trailing")
    assert prov["noise"] == "philox4x32-10"
    assert [p.name for p in tmp_path.iterdir()] == ["syn.h5ad"]  # no temporary left behind


@pytest.mark.parametrize(
    "args, message",
    [
        (["info", "does-not-exist"], "no model bundle at does-not-exist"),
        (
            ["sample", "BUNDLE", "--n-cells", "5", "--condition", "cell_type=Z", "--out", "o.h5ad"],
            r"unknown value\(s\) \['Z'\] for label 'cell_type'",
        ),
        (
            ["sample", "BUNDLE", "--n-cells", "5", "--condition", "tissue=x", "--out", "o.h5ad"],
            "unknown label 'tissue'",
        ),
        (["sample", "BUNDLE", "--n-cells", "5", "--out", "o.csv"], "--out must end in .h5ad"),
        (
            ["sample", "BUNDLE", "--n-cells", "5", "--steps", "5000", "--out", "o.h5ad"],
            "steps must be between 1 and the 1000",
        ),
        (["train", "dit", "--data", "no-such.h5ad", "--out", "x"], "no-such.h5ad"),
        (["sample", "BUNDLE", "--n-cells", "many", "--out", "o.h5ad"], "invalid int value"),
        (
            ["sample", "BUNDLE", "--n-cells", "5", "--scheduler", "euler", "--out", "o.h5ad"],
            "invalid choice: 'euler'",
        ),
        (
            [
                "sample",
                "BUNDLE",
                "--n-cells",
                "5",
                "--scheduler",
                "ddpm",
                "--eta",
                "1",
                "--out",
                "o.h5ad",
            ],
            "eta applies to the ddim scheduler only",
        ),
    ],
)
def test_bad_input_gives_one_line_and_exit_1(
    tiny_bundle: Path, tmp_path: Path, args: list[str], message: str
) -> None:
    args = [str(tiny_bundle) if a == "BUNDLE" else a for a in args]
    args = [str(tmp_path / a) if a in ("o.h5ad", "o.csv", "x") else a for a in args]
    result = run_cli(*args)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert __import__("re").search(message, lines[0]), lines[0]
    assert not list(tmp_path.glob("*.h5ad"))


def test_missing_label_column_is_named(tmp_path: Path) -> None:
    from conftest import make_toy_adata

    path = tmp_path / "counts.h5ad"
    make_toy_adata(n_cells=50).write_h5ad(path)
    result = run_cli(
        "train", "dit", "--data", str(path), "--label", "tissue", "--out", str(tmp_path / "b")
    )
    assert result.returncode == 1
    assert "tissue" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "b").exists()


@pytest.mark.slow
def test_train_small_on_kang_then_sample(tmp_path: Path) -> None:
    """The issue's acceptance run: small DiT, 1 epoch, 2000 Kang cells, then 256 cells."""
    bundle = tmp_path / "kang-small"
    assert (
        main(
            [
                "train",
                "dit",
                "--data",
                "kang",
                "--label",
                "cell_type",
                "--label",
                "stim",
                "--config",
                "small",
                "--epochs",
                "1",
                "--max-cells",
                "2000",
                "--out",
                str(bundle),
            ]
        )
        == 0
    )
    assert not (tmp_path / "kang-small.checkpoint").exists()
    b = cellsynth.load_bundle(bundle)
    assert len(b.genes) == 2000
    out = tmp_path / "syn.h5ad"
    assert (
        main(["sample", str(bundle), "--n-cells", "256", "--steps", "50", "--out", str(out)]) == 0
    )
    adata = anndata.read_h5ad(out)
    assert adata.shape == (256, 2000)
    assert list(adata.var_names) == b.genes
    kang_types = set(cellsynth.datasets.kang().obs["cell_type"].astype(str))
    assert set(adata.obs["cell_type"].astype(str)) <= kang_types
    assert set(adata.obs["stim"].astype(str)) <= {"CTRL", "STIM"}
    x = adata.X.toarray()
    assert np.isfinite(x).all() and (x >= 0).all()


@pytest.mark.parametrize(
    "damage, problem",
    [
        ("delete", "is gone"),
        ("garble", "is corrupt"),
        ("point outside", "outside the bundle"),
    ],
)
def test_info_checks_the_exports_it_lists(
    tiny_onnx_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture, damage, problem
) -> None:
    import json
    import shutil

    bundle = Path(shutil.copytree(tiny_onnx_bundle, tmp_path / "b"))
    onnx = bundle / "onnx" / "model.fp32.onnx"
    if damage == "delete":
        onnx.unlink()
    elif damage == "garble":
        onnx.write_bytes(b"not a model")
    else:
        shutil.copy(onnx, tmp_path / "sibling.onnx")
        manifest = json.loads((bundle / "exports.json").read_text())
        for entry in manifest["onnx"].values():
            entry["file"] = "../sibling.onnx"
        (bundle / "exports.json").write_text(json.dumps(manifest))
    assert main(["info", str(bundle)]) == 0
    line = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("onnx")][0]
    assert "unusable" in line and problem in line and "parity" not in line
