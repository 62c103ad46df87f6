"""cellsynth.generate: the AnnData it returns, its labels, reproducibility and bad options."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

import cellsynth
from cellsynth.errors import DataError


def test_generate_returns_expression_with_genes_labels_and_provenance(tiny_bundle: Path) -> None:
    b = cellsynth.load_bundle(tiny_bundle)
    adata = cellsynth.generate(
        tiny_bundle, n_cells=37, steps=5, seed=3, batch_size=16, progress=False
    )
    assert adata.shape == (37, 100)
    assert list(adata.var_names) == b.genes
    assert sp.issparse(adata.X) and adata.X.dtype == np.float32
    values = adata.X.toarray()
    assert np.isfinite(values).all() and (values >= 0).all()
    # Zero-negation truncation leaves exact zeros (the tiny model is barely trained, so only the
    # presence of both zeros and expressed values is checked here, not their scale).
    assert 0.05 < (values == 0).mean() < 0.999
    assert list(adata.obs.columns) == ["cell_type", "batch"]
    assert list(adata.obs["cell_type"].cat.categories) == ["alpha", "beta", "gamma"]
    prov = adata.uns["cellsynth"]
    assert prov["bundle_hash"] == b.hash
    assert (prov["steps"], prov["eta"], prov["seed"], prov["n_cells"]) == (5, 0.0, 3, 37)
    assert prov["cellsynth_version"] == cellsynth.__version__


def test_conditions_fix_the_labels(tiny_bundle: Path) -> None:
    adata = cellsynth.generate(
        tiny_bundle,
        n_cells=12,
        steps=3,
        conditions={"cell_type": "beta", "batch": "b2"},
        progress=False,
    )
    assert set(adata.obs["cell_type"]) == {"beta"} and set(adata.obs["batch"]) == {"b2"}


def test_same_seed_same_cells_other_seed_other_cells(tiny_bundle: Path) -> None:
    kw = dict(n_cells=8, steps=4, eta=1.0, progress=False)
    a = cellsynth.generate(tiny_bundle, seed=11, **kw).X.toarray()
    b = cellsynth.generate(tiny_bundle, seed=11, **kw).X.toarray()
    c = cellsynth.generate(tiny_bundle, seed=12, **kw).X.toarray()
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_ddpm_and_guidance_run(tiny_bundle: Path) -> None:
    adata = cellsynth.generate(
        tiny_bundle, n_cells=6, steps=10, scheduler="ddpm", guidance=2.0, progress=False
    )
    assert np.isfinite(adata.X.toarray()).all()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(steps=0), "steps must be between 1 and the 1000"),
        (dict(steps=1001), "steps must be between 1 and the 1000"),
        (dict(scheduler="euler"), "scheduler must be one of"),
        (dict(eta=-1.0), "eta must be a finite number >= 0"),
        (dict(guidance=float("nan")), "guidance must be finite"),
        (dict(batch_size=0), "batch_size must be at least 1"),
        (dict(scheduler="ddpm", eta=0.5), "eta applies to the ddim scheduler only"),
        (dict(n_cells=0), "n_cells must be at least 1"),
        (dict(conditions={"cell_type": "delta"}), r"unknown value\(s\) \['delta'\]"),
    ],
)
def test_bad_options_are_named(tiny_bundle: Path, kwargs: dict, message: str) -> None:
    opts = dict(n_cells=4, steps=2, progress=False) | kwargs
    with pytest.raises(DataError, match=message):
        cellsynth.generate(tiny_bundle, **opts)
