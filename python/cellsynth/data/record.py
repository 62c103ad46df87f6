"""The preprocessing record: everything needed to re-apply preprocessing to new data."""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd

from cellsynth.data.io import extract_counts
from cellsynth.data.normalize import log1p_normalize, normalize_total
from cellsynth.errors import DataError, GeneMismatchError

RECORD_VERSION = 1

# Quantiles of the training cells' log library sizes kept in the record.
LIBRARY_QUANTILES: tuple[float, ...] = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)


@dataclass
class GeneSelection:
    """How the genes were chosen (see :func:`cellsynth.data.select_genes`)."""

    method: str
    n_top_genes: int
    min_detection_rate: float


@dataclass
class SplitInfo:
    """How cells were split into train and test."""

    test_fraction: float
    seed: int
    stratify: list[str]
    n_train: int
    n_test: int


@dataclass
class LibrarySize:
    """Library sizes (total counts over all genes) of the training cells.

    Used to turn generated expression back into counts: draw a log library size from
    Normal(mean_log, sd_log) or from the empirical quantiles. Logs are natural.
    """

    mean_log: float
    sd_log: float
    quantiles_log: dict[str, float] = field(default_factory=dict)  # "0.05" -> log total

    @classmethod
    def from_totals(cls, totals: np.ndarray) -> LibrarySize:
        """Statistics of totals, shape [n_cells], all > 0."""
        logs = np.log(np.asarray(totals, dtype=np.float64))
        qs = np.quantile(logs, LIBRARY_QUANTILES)
        return cls(
            mean_log=float(logs.mean()),
            sd_log=float(logs.std(ddof=1)) if logs.size > 1 else 0.0,
            quantiles_log={f"{q:g}": float(v) for q, v in zip(LIBRARY_QUANTILES, qs, strict=True)},
        )


@dataclass
class PreprocessingRecord:
    """Everything needed to re-apply the preprocessing of a training run.

    Attributes
    ----------
    counts_source : str
        Where the counts were found ("X", "layers/counts" or "raw").
    min_genes_per_cell, min_cells_per_gene : int
        QC thresholds.
    target_sum : float
        Library-size normalisation target (counts per ``target_sum``).
    log1p : bool
        Whether log1p followed normalisation (natural log).
    gene_selection : GeneSelection
        Method and parameters of gene selection.
    genes : list of str
        The selected genes in model order (the model's input columns).
    zero_value : float
        The zero-negation value used for training (not applied by :meth:`transform`).
    split : SplitInfo
        The train/test split.
    max_cells : int or None
        Subsample size, if the input was subsampled; ``subsample_seed`` is its seed.
    subsample_seed : int
    n_cells_input, n_cells_after_qc : int
        Cells in the input, and after subsampling + QC.
    library_size : LibrarySize
        Library-size statistics of the training cells.
    """

    counts_source: str
    min_genes_per_cell: int
    min_cells_per_gene: int
    target_sum: float
    log1p: bool
    gene_selection: GeneSelection
    genes: list[str]
    zero_value: float
    split: SplitInfo
    max_cells: int | None
    subsample_seed: int
    n_cells_input: int
    n_cells_after_qc: int
    library_size: LibrarySize

    def __post_init__(self) -> None:
        if not self.genes:
            raise DataError("A preprocessing record needs at least one gene.")
        if len(set(self.genes)) != len(self.genes):
            raise DataError("The genes of a preprocessing record must be unique.")
        if not self.target_sum > 0:
            raise DataError(f"target_sum must be positive, got {self.target_sum}.")
        if not self.zero_value < 0:
            raise DataError(f"zero_value must be negative, got {self.zero_value}.")

    @property
    def n_genes(self) -> int:
        """Number of model genes G."""
        return len(self.genes)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (plain Python types), with ``record_version``."""
        return {"record_version": RECORD_VERSION, **asdict(self)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PreprocessingRecord:
        """Rebuild a record from :meth:`to_dict` output (e.g. after a JSON round trip).

        Raises
        ------
        DataError
            On a missing or unknown ``record_version``, missing or unknown keys.
        """
        if not isinstance(d, dict):
            raise DataError(f"A preprocessing record must be a dict, got {type(d).__name__}.")
        version = d.get("record_version")
        if version != RECORD_VERSION:
            raise DataError(
                f"Unsupported preprocessing record_version {version!r}; this cellsynth reads "
                f"version {RECORD_VERSION}. Re-create the model with this version or upgrade."
            )
        body = {k: v for k, v in d.items() if k != "record_version"}
        nested = {"gene_selection": GeneSelection, "split": SplitInfo, "library_size": LibrarySize}
        try:
            _check_keys("preprocessing record", body, cls)
            for key, sub in nested.items():
                _check_keys(f"preprocessing record '{key}'", body[key], sub)
                body[key] = sub(**body[key])
            body["genes"] = [str(g) for g in body["genes"]]
            body["split"].stratify = list(body["split"].stratify)
            return cls(**body)
        except (TypeError, AttributeError) as err:
            raise DataError(f"Malformed preprocessing record: {err}") from err

    def transform(
        self, adata: ad.AnnData, source: str = "auto", allow_missing_genes: bool = False
    ) -> np.ndarray:
        """Apply the recorded normalisation to new data and align its genes to the model.

        The library size is the total over all genes of the new data (as in training), then
        counts are scaled to ``target_sum``, log1p'd, and the model genes picked by name. No QC
        filtering and no zero-negation are applied.

        Parameters
        ----------
        adata : AnnData, shape [n_cells, n_vars]
            Raw counts (see :func:`cellsynth.data.extract_counts` for ``source``).
        source : {"auto", "X", "layers/counts", "raw"}
            Where the counts are.
        allow_missing_genes : bool
            If True, model genes absent from ``adata`` are filled with zeros (with a warning)
            instead of raising.

        Returns
        -------
        np.ndarray, float32, shape [n_cells, G]
            Log-normalised expression, columns in the order of ``genes``.

        Raises
        ------
        GeneMismatchError
            If model genes are missing and ``allow_missing_genes`` is False; the message lists
            the first 20 and the count.
        """
        counts, names, _ = extract_counts(adata, source)
        norm = (
            log1p_normalize(counts, self.target_sum)
            if self.log1p
            else normalize_total(counts, self.target_sum)
        )
        position = pd.Index(names).get_indexer(pd.Index(self.genes))
        missing = [g for g, p in zip(self.genes, position, strict=True) if p < 0]
        if missing:
            listing = ", ".join(missing[:20]) + (" ..." if len(missing) > 20 else "")
            text = (
                f"{len(missing)} of the model's {self.n_genes} genes are missing from the data: "
                f"{listing}"
            )
            if not allow_missing_genes:
                raise GeneMismatchError(
                    text + ". Pass allow_missing_genes=True to fill them with zeros."
                )
            warnings.warn(text + "; filling them with zeros.", UserWarning, stacklevel=2)
        out = np.zeros((counts.shape[0], self.n_genes), dtype=np.float32)
        present = np.flatnonzero(position >= 0)
        out[:, present] = norm[:, position[present]].toarray()
        return out


def _check_keys(what: str, d: Any, cls: type) -> None:
    """Raise DataError unless ``d`` is a dict with exactly the fields of dataclass ``cls``."""
    if not isinstance(d, dict):
        raise DataError(f"The {what} must be a dict, got {type(d).__name__}.")
    expected = {f.name for f in dataclasses.fields(cls)}
    missing, unknown = sorted(expected - d.keys()), sorted(d.keys() - expected)
    if missing:
        raise DataError(f"The {what} lacks key(s): {', '.join(missing)}.")
    if unknown:
        raise DataError(f"The {what} has unknown key(s): {', '.join(unknown)}.")
