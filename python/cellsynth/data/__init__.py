"""Data preparation: counts in, train/test log-normalised matrices and labels out.

Pipeline (:func:`prepare`): validate -> optional stratified subsample -> QC -> stratified split
-> gene selection on training cells -> log-normalisation. The :class:`PreprocessingRecord` it
returns re-applies the same normalisation and gene order to new data.
"""

from cellsynth.data.genes import GENE_SELECTION_METHODS, select_genes
from cellsynth.data.io import COUNTS_SOURCES, extract_counts, read_h5ad
from cellsynth.data.normalize import (
    library_sizes,
    log1p_normalize,
    normalize_total,
    qc_masks,
    renormalize_log1p,
)
from cellsynth.data.prepare import (
    DEFAULT_MIN_CELLS_PER_GENE,
    DEFAULT_MIN_GENES_PER_CELL,
    PreparedData,
    prepare,
)
from cellsynth.data.record import (
    RECORD_VERSION,
    GeneSelection,
    LibrarySize,
    PreprocessingRecord,
    SplitInfo,
)
from cellsynth.data.split import stratified_split, stratified_subsample
from cellsynth.data.validate import validate_counts, validate_labels
from cellsynth.data.zero_negation import inverse_zero_negate, zero_negate

__all__ = [
    "COUNTS_SOURCES",
    "DEFAULT_MIN_CELLS_PER_GENE",
    "DEFAULT_MIN_GENES_PER_CELL",
    "GENE_SELECTION_METHODS",
    "RECORD_VERSION",
    "GeneSelection",
    "LibrarySize",
    "PreparedData",
    "PreprocessingRecord",
    "SplitInfo",
    "extract_counts",
    "inverse_zero_negate",
    "library_sizes",
    "log1p_normalize",
    "normalize_total",
    "renormalize_log1p",
    "prepare",
    "qc_masks",
    "read_h5ad",
    "select_genes",
    "stratified_split",
    "stratified_subsample",
    "validate_counts",
    "validate_labels",
    "zero_negate",
]
