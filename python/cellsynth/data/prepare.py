"""From an AnnData of raw counts to train/test matrices and labels ready for a model."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from cellsynth.data.gene_metadata import gene_metadata
from cellsynth.data.genes import DEFAULT_MIN_DETECTION_RATE, GENE_SELECTION_METHODS, rank_genes
from cellsynth.data.io import extract_counts
from cellsynth.data.normalize import library_sizes, log1p_normalize, qc_masks
from cellsynth.data.record import GeneSelection, LibrarySize, PreprocessingRecord, SplitInfo
from cellsynth.data.split import stratified_split, stratified_subsample
from cellsynth.data.validate import validate_labels
from cellsynth.errors import DataError

# QC defaults of the scanpy/Seurat PBMC tutorials. On Kang (already filtered upstream at >= 500
# detected genes per cell) they remove 0 of 13,576 cells and 216 of 14,053 genes (genes seen in
# fewer than 3 cells, which no gene selection would pick anyway).
DEFAULT_MIN_GENES_PER_CELL = 200
DEFAULT_MIN_CELLS_PER_GENE = 3


@dataclass
class PreparedData:
    """Preprocessed train/test data.

    Attributes
    ----------
    record : PreprocessingRecord
        How to re-apply this preprocessing.
    label_keys : list of str
        Label columns, in the column order of ``y_train`` / ``y_test``; may be empty.
    vocabularies : dict of str to list of str
        Sorted class names per label key; codes in ``y`` index into these.
    x_train, x_test : np.ndarray, float32, shape [n_train, G] and [n_test, G]
        Log-normalised expression of the selected genes (not zero-negated).
    y_train, y_test : np.ndarray, int64, shape [n_train, K] and [n_test, K]
        Label codes, K = len(label_keys).
    obs_train, obs_test : pandas.DataFrame, shape [n_train, K] and [n_test, K]
        The labels as categoricals, indexed by the original cell names.
    counts_train, counts_test : scipy.sparse.csr_matrix, float32, [n_train, G] and [n_test, G]
        The raw counts of the selected genes (what count-likelihood models are trained on).
    library_train, library_test : np.ndarray, float32, [n_train] and [n_test]
        Library sizes: total counts over all genes, the size ``x`` was normalised by.
    var : pandas.DataFrame, shape [G, *]
        The model genes' metadata: the input's ``var`` columns plus statistics of the training
        cells (see :mod:`cellsynth.data.gene_metadata`).
    """

    record: PreprocessingRecord
    label_keys: list[str]
    vocabularies: dict[str, list[str]]
    x_train: np.ndarray
    x_test: np.ndarray
    y_train: np.ndarray
    y_test: np.ndarray
    obs_train: pd.DataFrame
    obs_test: pd.DataFrame
    counts_train: sp.csr_matrix | None = None
    counts_test: sp.csr_matrix | None = None
    library_train: np.ndarray | None = None
    library_test: np.ndarray | None = None
    var: pd.DataFrame | None = None

    @property
    def genes(self) -> list[str]:
        """The model genes, in column order."""
        return self.record.genes


def _label_codes(obs: pd.DataFrame, keys: list[str]) -> tuple[np.ndarray, dict[str, list[str]]]:
    """Codes [n, K] into sorted vocabularies of the labels (as strings) present in ``obs``."""
    codes = np.zeros((len(obs), len(keys)), dtype=np.int64)
    vocabularies: dict[str, list[str]] = {}
    for j, key in enumerate(keys):
        values = obs[key].astype(str).to_numpy()
        vocab, codes[:, j] = np.unique(values, return_inverse=True)
        vocabularies[key] = [str(v) for v in vocab]
    return codes, vocabularies


def _input_var(adata: ad.AnnData, source: str) -> pd.DataFrame:
    """The input's gene metadata, one row per column of the counts (``raw`` has its own var)."""
    return adata.raw.var if source == "raw" else adata.var


def _check_options(
    gene_selection: str,
    n_top_genes: int,
    target_sum: float,
    zero_value: float,
    max_cells: int | None,
) -> None:
    """Reject option values that would fail later with a less clear message."""
    if gene_selection not in GENE_SELECTION_METHODS:
        raise ValueError(
            f"Unknown gene_selection {gene_selection!r}; choose one of {GENE_SELECTION_METHODS}."
        )
    if n_top_genes < 1:
        raise ValueError(f"n_top_genes must be >= 1, got {n_top_genes}.")
    if not target_sum > 0:
        raise ValueError(f"target_sum must be positive, got {target_sum}.")
    if not zero_value < 0:
        raise ValueError(f"zero_value must be negative, got {zero_value}.")
    if max_cells is not None and max_cells < 1:
        raise ValueError(f"max_cells must be >= 1 or None, got {max_cells}.")


def prepare(
    adata: ad.AnnData,
    label_keys: Sequence[str],
    *,
    counts: str = "auto",
    gene_selection: str = "seurat",
    n_top_genes: int = 2000,
    min_detection_rate: float = DEFAULT_MIN_DETECTION_RATE,
    min_genes_per_cell: int = DEFAULT_MIN_GENES_PER_CELL,
    min_cells_per_gene: int = DEFAULT_MIN_CELLS_PER_GENE,
    target_sum: float = 1e4,
    zero_value: float = -10.0,
    test_fraction: float = 0.2,
    seed: int = 0,
    max_cells: int | None = None,
) -> PreparedData:
    """Validate, subsample, QC, split, select genes on train cells, and log-normalise.

    Steps, in order: validate labels and counts; optionally subsample to ``max_cells`` keeping
    label proportions; QC (cells with < ``min_genes_per_cell`` detected genes, then genes in
    < ``min_cells_per_gene`` of the kept cells); stratified train/test split on the joint label
    combination; gene selection fitted on the training cells only; log-normalisation with the
    library size summed over all genes (the same as :meth:`PreprocessingRecord.transform`).

    Parameters
    ----------
    adata : AnnData, shape [n_cells, n_vars]
        Raw counts and labels in ``obs``.
    label_keys : sequence of str
        Label columns (conditions of the model, strata of the split); may be empty.
    counts : {"auto", "X", "layers/counts", "raw"}
        Where the counts are (see :func:`cellsynth.data.extract_counts`).
    gene_selection : {"seurat", "variance", "cv"}
        Gene score (see :func:`cellsynth.data.select_genes`).
    n_top_genes : int
        Genes to keep, G.
    min_detection_rate : float
        Detection guard for "cv".
    min_genes_per_cell, min_cells_per_gene : int
        QC thresholds.
    target_sum : float
        Normalisation target.
    zero_value : float
        Zero-negation value recorded for training (the matrices returned are not negated).
    test_fraction : float
        Held-out fraction in [0, 1).
    seed : int
        Seed of the subsample and of the split.
    max_cells : int, optional
        Subsample to this many cells first.

    Returns
    -------
    PreparedData

    Raises
    ------
    DataError
        On invalid labels or counts, if QC leaves no cells or genes, or too few genes are
        eligible for selection.
    """
    keys = [label_keys] if isinstance(label_keys, str) else list(label_keys)
    _check_options(gene_selection, n_top_genes, target_sum, zero_value, max_cells)
    validate_labels(adata.obs, keys)
    x, genes, source = extract_counts(adata, counts)
    input_var = _input_var(adata, source)
    cells = adata.obs_names
    obs = adata.obs[keys]
    n_input = x.shape[0]

    if max_cells is not None and max_cells < n_input:
        codes, _ = _label_codes(obs, keys)
        keep = stratified_subsample(codes, max_cells, seed)
        x, cells, obs = x[keep], cells[keep], obs.iloc[keep]

    # QC runs before the split (cells must be dropped before they are assigned). Gene QC thus
    # sees test cells, but it only drops genes detected in a handful of cells; the ranking of
    # informative genes below sees training cells only.
    cell_mask, gene_mask = _qc(x, min_genes_per_cell, min_cells_per_gene)
    x, cells, obs = x[cell_mask], cells[cell_mask], obs.iloc[np.flatnonzero(cell_mask)]
    # Vocabularies from the cells that remain, so every class has cells behind it.
    codes, vocabularies = _label_codes(obs, keys)
    train, test = stratified_split(codes, test_fraction, seed)

    # Library size over all genes (not only QC-passing ones), exactly as transform() does, so
    # that transform() on the training data reproduces x_train bit for bit.
    lognorm = log1p_normalize(x, target_sum)
    qc_genes = np.flatnonzero(gene_mask)
    picked, scores = rank_genes(
        x[train][:, qc_genes],
        lognorm[train][:, qc_genes],
        gene_selection,
        n_top_genes,
        min_detection_rate,
    )
    chosen = qc_genes[picked]
    dense = lognorm[:, chosen].toarray()
    chosen_counts = sp.csr_matrix(x[:, chosen], dtype=np.float32)
    var = gene_metadata(  # sparse: expm1 touches only the non-zeros
        input_var.iloc[chosen], chosen_counts[train], lognorm[train][:, chosen], scores[picked]
    )
    totals = library_sizes(x)

    record = PreprocessingRecord(
        counts_source=source,
        min_genes_per_cell=int(min_genes_per_cell),
        min_cells_per_gene=int(min_cells_per_gene),
        target_sum=float(target_sum),
        log1p=True,
        gene_selection=GeneSelection(gene_selection, int(n_top_genes), float(min_detection_rate)),
        genes=[str(g) for g in genes[chosen]],
        zero_value=float(zero_value),
        split=SplitInfo(
            float(test_fraction), int(seed), list(keys), int(train.size), int(test.size)
        ),
        max_cells=None if max_cells is None else int(max_cells),
        subsample_seed=int(seed),
        n_cells_input=int(n_input),
        n_cells_after_qc=int(x.shape[0]),
        library_size=LibrarySize.from_totals(library_sizes(x[train])),
    )

    def labels_frame(idx: np.ndarray) -> pd.DataFrame:
        return _labels_frame(codes[idx], keys, vocabularies, cells[idx], adata.obs_names.name)

    return PreparedData(
        record=record,
        label_keys=keys,
        vocabularies=vocabularies,
        x_train=dense[train],
        x_test=dense[test],
        y_train=codes[train],
        y_test=codes[test],
        obs_train=labels_frame(train),
        obs_test=labels_frame(test),
        counts_train=chosen_counts[train],
        counts_test=chosen_counts[test],
        library_train=totals[train],
        library_test=totals[test],
        var=var,
    )


def _qc(x: sp.csr_matrix, min_genes_per_cell: int, min_cells_per_gene: int):
    """(cells kept, genes kept) by scanpy's filter_cells / filter_genes thresholds; a DataError
    when QC would keep nothing."""
    cell_mask, gene_mask = qc_masks(x, min_genes_per_cell, min_cells_per_gene)
    if not cell_mask.any():
        raise DataError(
            f"QC removed every cell: none has >= {min_genes_per_cell} detected genes. "
            "Lower min_genes_per_cell."
        )
    if not gene_mask.any():
        raise DataError(
            f"QC removed every gene: none is detected in >= {min_cells_per_gene} cells. "
            "Lower min_cells_per_gene."
        )
    return cell_mask, gene_mask


def _labels_frame(codes: np.ndarray, keys, vocabularies, cells, index_name) -> pd.DataFrame:
    """One categorical column per label key, indexed by the cells' names."""
    return pd.DataFrame(
        {
            k: pd.Categorical.from_codes(codes[:, j], categories=vocabularies[k])
            for j, k in enumerate(keys)
        },
        index=pd.Index(cells, name=index_name),
    )
