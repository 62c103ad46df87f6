"""Shared pytest fixtures.

Data fixtures: real data sets are loaded once per session (Kang takes ~4 s) and must be treated
as read-only by tests; take ``.copy()`` before modifying.
"""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from cellsynth.data import datasets
from cellsynth.errors import DatasetNotInstalledError


@pytest.fixture(scope="session", autouse=True)
def _private_cache_dir(tmp_path_factory: pytest.TempPathFactory):
    """Keep the engine calibration cache of ``engine='auto'`` out of the user's home."""
    import os

    before = os.environ.get("CELLSYNTH_CACHE_DIR")
    os.environ["CELLSYNTH_CACHE_DIR"] = str(tmp_path_factory.mktemp("cellsynth-cache"))
    yield
    if before is None:
        os.environ.pop("CELLSYNTH_CACHE_DIR", None)
    else:
        os.environ["CELLSYNTH_CACHE_DIR"] = before


# ----------------------------------------------------------------------------- data fixtures

KANG_SMALL_CELLS = 3000


def _load_or_skip(loader):
    try:
        return loader()
    except DatasetNotInstalledError as err:  # the data extras are a dev dependency
        pytest.skip(str(err))


@pytest.fixture(scope="session")
def kang_adata() -> ad.AnnData:
    """Kang 2018 PBMC, all 13,576 cells x 14,053 genes, raw counts in CSR float32 X."""
    return _load_or_skip(datasets.kang)


@pytest.fixture(scope="session")
def kang_small(kang_adata: ad.AnnData) -> ad.AnnData:
    """A fixed random subsample of 3,000 Kang cells (all genes), for fast real-data tests."""
    rng = np.random.default_rng(1234)
    idx = np.sort(rng.choice(kang_adata.n_obs, KANG_SMALL_CELLS, replace=False))
    return kang_adata[idx].copy()


@pytest.fixture(scope="session")
def kang_prepared(kang_small: ad.AnnData):
    """``prepare`` with default settings on ``kang_small``, labels cell_type and stim."""
    from cellsynth.data import prepare

    return prepare(kang_small, ["cell_type", "stim"])


@pytest.fixture(scope="session")
def wu2020_adata() -> ad.AnnData:
    """Wu 2020: 200 T cells, raw counts, labels cluster_orig / source / patient."""
    return _load_or_skip(datasets.wu2020)


def make_toy_adata(
    n_cells: int = 120, n_genes: int = 60, seed: int = 0, dense: bool = False
) -> ad.AnnData:
    """Synthetic counts with two labels (cell_type: 3 classes, batch: 2), every cell expressed.

    Counts are Poisson with gene-specific rates that differ by cell type, so genes vary in both
    mean and dispersion. Returns X as CSR float32 (or dense with ``dense=True``).
    """
    rng = np.random.default_rng(seed)
    cell_type = rng.choice(["alpha", "beta", "gamma"], size=n_cells, p=[0.5, 0.3, 0.2])
    batch = rng.choice(["b1", "b2"], size=n_cells)
    base = rng.gamma(0.6, 2.0, size=n_genes)
    effect = {t: rng.lognormal(0.0, 0.8, size=n_genes) for t in ("alpha", "beta", "gamma")}
    rates = np.stack([base * effect[t] for t in cell_type])
    counts = rng.poisson(rates * rng.uniform(0.5, 2.0, size=(n_cells, 1))).astype(np.float32)
    counts[:, 0] += 1  # no cell with zero total
    obs = pd.DataFrame(
        {"cell_type": pd.Categorical(cell_type), "batch": pd.Categorical(batch)},
        index=[f"cell{i}" for i in range(n_cells)],
    )
    var = pd.DataFrame(index=[f"G{j}" for j in range(n_genes)])
    return ad.AnnData(counts if dense else sp.csr_matrix(counts), obs=obs, var=var)


@pytest.fixture
def toy_adata() -> ad.AnnData:
    """A fresh synthetic AnnData (see :func:`make_toy_adata`); tests may modify it."""
    return make_toy_adata()


@pytest.fixture
def make_toy():
    """The :func:`make_toy_adata` factory, for tests that need several variants."""
    return make_toy_adata


# ---------------------------------------------------------------------------- model fixtures

TINY_DIT = dict(patch_size=5, hidden_size=32, depth=1, num_heads=2, mlp_ratio=2.0)
# train_dit_bundle options for a tiny model on make_toy_adata counts (seconds on 2 cores).
# The paper's epsilon prediction and zero value (the tests' expectations were written for them;
# the defaults a user gets are tested by the CLI tests).
TINY_TRAINING = dict(
    config=TINY_DIT,
    prediction_type="epsilon",
    zero_value=-10.0,
    epochs=2,
    batch_size=32,
    progress=False,
    prepare_options=dict(min_genes_per_cell=10),
)


def _train_tiny_dit(tmp_path_factory: pytest.TempPathFactory, name: str, **options) -> Path:
    """A tiny DiT trained 2 epochs on toy counts: 100 genes, labels cell_type x batch."""
    from cellsynth.training.train_dit import train_dit_bundle

    out = tmp_path_factory.mktemp("bundles") / name
    return train_dit_bundle(
        make_toy_adata(n_cells=240, n_genes=150),
        ["cell_type", "batch"],
        out,
        n_top_genes=100,
        **options,
        **TINY_TRAINING,
    )


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory):
    """A bundle of a tiny DiT trained 2 epochs on toy counts: 100 genes, labels cell_type x batch.

    Session-scoped and shared: tests that damage a bundle must copy it first.
    """
    return _train_tiny_dit(tmp_path_factory, "tiny")


@pytest.fixture(scope="session")
def tiny_bundle_without_depth(tmp_path_factory: pytest.TempPathFactory):
    """The tiny bundle's model without depth conditioning (``depth_bins=0``), as bundles written
    before it have: labels are only the user's."""
    return _train_tiny_dit(tmp_path_factory, "tiny-no-depth", depth_bins=0)


@pytest.fixture(scope="session")
def tiny_onnx_bundle(tiny_bundle, tmp_path_factory):
    """A copy of the tiny bundle with its fp32 ONNX export (for backend tests)."""
    import shutil

    from cellsynth.export.onnx import export_onnx

    root = tmp_path_factory.mktemp("onnx-bundles") / "tiny"
    shutil.copytree(tiny_bundle, root)
    export_onnx(root, progress=False)
    return root


def train_toy_scdg(adata: ad.AnnData, root: Path, label: str = "cell_type") -> Path:
    """A tiny MSE autoencoder (60 genes, 2 epochs) and SCDG (2 epochs) on toy counts, labelled
    by ``label``: the bundle the distillation tests distil and evaluate with."""
    from cellsynth.training.train_autoencoder import train_autoencoder_bundle
    from cellsynth.training.train_scdg import train_scdg_bundle

    ae = train_autoencoder_bundle(
        adata, root / "ae", label_keys=[label], likelihood="mse", config="tiny", epochs=2,
        n_top_genes=60, progress=False, prepare_options={"min_genes_per_cell": 1},
    )  # fmt: skip
    return train_scdg_bundle(ae, adata, [label], root / "scdg", config="tiny", epochs=2,
                             progress=False)  # fmt: skip


@pytest.fixture(scope="session")
def tiny_scdg_bundle(wu2020_adata, tmp_path_factory: pytest.TempPathFactory):
    """A latent-diffusion bundle: a tiny autoencoder (200 genes -> 8-d latent, 2 epochs) and a tiny
    SCDG on its codes (2 epochs, label 'source': Blood / NAT / Tumor), trained on Wu 2020.

    Session-scoped and shared: tests that export into or damage it must copy it first.
    """
    from cellsynth.training.train_autoencoder import train_autoencoder_bundle
    from cellsynth.training.train_scdg import train_scdg_bundle

    root = tmp_path_factory.mktemp("latent-bundles")
    ae = train_autoencoder_bundle(
        wu2020_adata,
        root / "tiny-ae",
        label_keys=["source"],
        likelihood="mse",
        config="tiny",
        epochs=2,
        n_top_genes=200,
        progress=False,
    )
    return train_scdg_bundle(
        ae, wu2020_adata, ["source"], root / "tiny-scdg", config="tiny", epochs=2, progress=False
    )
