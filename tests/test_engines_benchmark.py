"""benchmarks/engines.py: its reference loops compute cellsynth's cells, its FLOP count is right.

The speed benchmark compares cellsynth with the usual PyTorch loop (diffusers' DDIM) and the
published scRDiT loop; the comparison is only fair if all three generate the same cells from the
same initial noise, which is what these tests check (timings are never asserted).
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import numpy as np
import pytest

import cellsynth
from cellsynth.bundle.load import load_bundle

pytest.importorskip("diffusers")

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
N_CELLS = 20  # not a multiple of the published loop's batch of 16: a short last batch
SEED = 3


@pytest.fixture(scope="module")
def engines():
    """The benchmark module, imported from benchmarks/."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        return importlib.import_module("engines")
    finally:
        sys.path.remove(str(BENCHMARKS))


@pytest.fixture(scope="module")
def bundle(tiny_bundle):
    return load_bundle(tiny_bundle)


@pytest.fixture(scope="module", params=[20, 1000], ids=["rate50", "rate1"])
def generated(request, bundle):
    """cellsynth's cells (torch engine, DDIM eta 0, 'leading') at 20 and 1000 steps."""
    steps = request.param
    adata = cellsynth.generate(
        bundle,
        n_cells=N_CELLS,
        steps=steps,
        seed=SEED,
        scheduler="ddim",
        timestep_spacing="leading",
        batch_size=8,
        engine="torch",
        device="cpu",
        progress=False,
    )
    return steps, adata


def _inputs(engines, bundle):
    x_T = engines.initial_noise(bundle, N_CELLS, SEED)  # [n, G]
    labels = engines.benchmark_labels(bundle, N_CELLS, SEED)  # [n, K]
    return x_T, labels


def test_labels_are_those_generate_draws(engines, bundle, generated):
    _, adata = generated
    _, labels = _inputs(engines, bundle)
    codes = np.stack([adata.obs[k].cat.codes.to_numpy() for k in bundle.labels.keys], 1)
    K = len(bundle.labels.keys)
    np.testing.assert_array_equal(labels[:, :K], codes)
    # then the depth bins generate drew for the same cells (keyed by seed and cell)
    assert labels.shape[1] == len(bundle.model_label_sizes) == K + 1
    assert ((labels[:, K] >= 0) & (labels[:, K] < bundle.model_label_sizes[K])).all()


def test_usual_loop_gives_cellsynths_cells(engines, bundle, generated):
    steps, adata = generated
    x_T, labels = _inputs(engines, bundle)
    expected = adata.X.toarray()
    got = engines.usual_loop(bundle.to_torch(), bundle, x_T, labels, steps, batch_size=8)
    assert got.shape == expected.shape == (N_CELLS, len(bundle.genes))
    assert 0.05 < (expected == 0).mean() < 0.95  # real cells: some silent genes, not all
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-4)


def test_published_loop_gives_cellsynths_cells(engines, bundle, generated):
    steps, adata = generated
    x_T, labels = _inputs(engines, bundle)
    got = engines.published_loop(bundle.to_torch(), bundle, x_T, labels, steps, seed=SEED)
    np.testing.assert_allclose(got, adata.X.toarray(), atol=1e-4, rtol=1e-4)


def test_limit_runs_only_the_first_steps(engines, bundle):
    """Timing runs stop after ``limit`` model calls: 0 calls leave x_T (clamped) unchanged."""
    x_T, labels = _inputs(engines, bundle)
    model = bundle.to_torch()
    for loop in (engines.usual_loop, engines.published_loop):
        out = loop(model, bundle, x_T, labels, 20, limit=0)
        np.testing.assert_array_equal(out, np.clip(x_T, 0, None))
        assert np.isfinite(loop(model, bundle, x_T, labels, 20, limit=2)).all()


def test_flop_formula_matches_flop_counter(engines, bundle):
    for check in engines.check_flop_formula():
        assert check["relative_difference"] < 0.02, check
    counted = engines.counted_flops_per_cell(bundle.to_torch())
    assert abs(engines.dit_flops_per_cell(bundle.architecture) - counted) < 0.02 * counted


def test_flop_formula_values(engines):
    # G=103, p=5 -> N=21, D=32, L=2, M=64, F=256, summed by hand from the formula.
    arch = dict(n_genes=103, patch_size=5, hidden_size=32, depth=2, mlp_ratio=2.0)
    assert engines.dit_flops_per_cell(arch) == 861_568
    # The paper config on 2000 genes: about 8.9 GFLOP per cell and step.
    paper = dict(n_genes=2000, patch_size=10, hidden_size=768, depth=3, mlp_ratio=4.0)
    assert engines.dit_flops_per_cell(paper) == pytest.approx(8.89e9, rel=0.01)
