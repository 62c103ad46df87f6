"""The main job: `cellsynth demo` with the shipped kang-dit bundle, end to end (about 2 minutes)."""

from __future__ import annotations

import json
from pathlib import Path

import anndata
import pandas as pd
import pytest

import cellsynth
from cellsynth.bundle.heldout import held_out_cells
from cellsynth.cli.main import main
from cellsynth.generation.conditions import composition_labels


def test_kang_dit_is_shipped_and_addressable_by_name(capsys: pytest.CaptureFixture) -> None:
    b = cellsynth.load_bundle("kang-dit")
    assert len(b.genes) == 2000 and b.labels.keys == ["cell_type", "stim"]
    assert len(b.labels.vocabularies["cell_type"]) == 8
    assert main(["info", "kang-dit"]) == 0
    printed = capsys.readouterr().out
    assert "onnx/model.fp32.onnx" in printed
    # The CPU engine's graph with onnxruntime's fused attention and GELU ships too (3.4 MB).
    assert "onnxruntime: onnx/model.fp32.onnxruntime.onnx: FastGelu x3, MultiHeadAttention x3" in (
        printed
    )
    total = sum(f.stat().st_size for f in b.path.rglob("*") if f.is_file())
    assert total < 14e6  # kang-dit and kang-scdg together must stay < 30 MB


@pytest.mark.slow
def test_demo_generates_every_group_and_compares_with_real_cells(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out)]) == 0
    printed = capsys.readouterr()
    assert "engine onnxruntime" in printed.err  # the ONNX export runs without torch's help
    assert f"cells:    {out / 'demo.h5ad'}" in printed.out
    assert "comparing 4000 synthetic with" in printed.err  # no silent stage
    assert "drawing the figure" in printed.err
    adata = anndata.read_h5ad(out / "demo.h5ad")
    # The held-out cells' label mix, every cell type in both conditions.
    b = cellsynth.load_bundle("kang-dit")
    _, real_obs = held_out_cells(b, cellsynth.datasets.kang())
    want = pd.DataFrame(composition_labels(b.labels, real_obs, 4000), columns=b.labels.keys)
    got = adata.obs.groupby(["cell_type", "stim"], observed=True).size()
    assert len(got) == 16 and sorted(got) == sorted(want.value_counts())
    assert (out / "demo.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    s = json.loads((out / "fidelity.json").read_text())
    assert s["label_mix"].startswith("the label mix of the") and s["n_synthetic"] == 4000
    # The shipped model's cells look like real held-out ones (values measured at 0.104 vs
    # 0.105, 0.954 vs 0.957, r = 0.99, agreement 0.98 / 0.95); the bounds leave room for noise.
    assert abs(s["mean_expression_synthetic"] / s["mean_expression_real"] - 1) < 0.2
    assert abs(s["zero_fraction_synthetic"] - s["zero_fraction_real"]) < 0.02
    assert s["r_gene_means"] > 0.95 and s["r_gene_zero_fractions"] > 0.95
    assert s["cell_type_agreement"] > 0.85 and s["stim_agreement"] > 0.85
