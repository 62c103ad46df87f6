"""Both sides of an evaluation as they are compared: one representation, the synthetic genes,
the held-out real cells where the bundle is known, the same label mix, one scale.

:func:`compared_cells` does it for :func:`cellsynth.evaluate`; the rules are in that module's
docstring.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from cellsynth._version import __version__
from cellsynth.errors import CellsynthError, DataError, GeneMismatchError

DEFAULT_TARGET_SUM = 1e4
# Below this many matched cells a side a label-matched comparison says too little: compute_metrics
# splits the real side in three (PCA, floor, compared), so 90 leave 30 scored a side, its own
# per-class minimum. Every cell is compared instead, with a note.
MIN_MATCHED_CELLS = 90

# ------------------------------------------------------------------------------ loading


def _representation(
    adata: ad.AnnData, role: str, target_sum: float, log1p: bool
) -> tuple[sp.csr_matrix, pd.Index, str]:
    """Expression [n, G_file] (CSR float32), its gene names and a sentence saying what was done.

    See the module docstring for the rule.
    """
    from cellsynth.data import extract_counts, log1p_normalize, normalize_total

    prov = adata.uns.get("cellsynth")
    # Generated and distilled cells hold log-normalised X; a subsample holds the source's data.
    if isinstance(prov, dict) and prov.get("command", "sample") in ("sample", "distill"):
        x = sp.csr_matrix(adata.X, dtype=np.float32)
        _check_finite(x, role)
        return x, pd.Index(adata.var_names.astype(str)), "log-normalised X of a cellsynth file"
    try:
        counts, genes, source = extract_counts(adata, "auto")
    except DataError as err:
        x = sp.csr_matrix(adata.X, dtype=np.float32)
        if x.nnz and (not np.isfinite(x.data).all() or x.data.min() < 0):
            raise DataError(
                f"the {role} data holds neither raw counts nor log-normalised expression in X "
                f"(negative or non-finite values; scaled data cannot be compared): {err}"
            ) from err
        return x, pd.Index(adata.var_names.astype(str)), "X taken as log-normalised (no counts)"
    x = log1p_normalize(counts, target_sum) if log1p else normalize_total(counts, target_sum)
    how = f"counts from {source}, normalised to {target_sum:g} per cell" + (
        " + log1p" if log1p else ""
    )
    return x, genes, how


def _check_finite(x: sp.csr_matrix, role: str) -> None:
    if x.nnz and not np.isfinite(x.data).all():
        raise DataError(f"the {role} expression contains NaN or infinite values")


def _gene_columns(real_genes: pd.Index, syn_genes: pd.Index) -> tuple[np.ndarray, list[str]]:
    """Column of each synthetic gene in the real data [G_syn] (first occurrence of a duplicate).

    Raises
    ------
    GeneMismatchError
        If synthetic genes are missing from the real data (the first 20 and the count).
    """
    if not syn_genes.is_unique:
        dup = syn_genes[syn_genes.duplicated()].unique()
        raise DataError(
            f"the synthetic data has {len(dup)} duplicated gene name(s), e.g. "
            f"{', '.join(map(str, dup[:5]))}; make them unique first"
        )
    notes = []
    if not real_genes.is_unique:
        n_dup = int(real_genes.duplicated().sum())
        notes.append(f"{n_dup} duplicated gene names in the real data: the first one is used")
    first = pd.Series(np.arange(len(real_genes)), index=real_genes)
    first = first[~real_genes.duplicated()]
    position = first.reindex(syn_genes).to_numpy()
    missing = [g for g, p in zip(syn_genes, position, strict=True) if np.isnan(p)]
    if missing:
        listing = ", ".join(missing[:20]) + (" ..." if len(missing) > 20 else "")
        raise GeneMismatchError(
            f"{len(missing)} of the {len(syn_genes)} synthetic genes are not in the real data: "
            f"{listing}. Compare against real data measured on the same genes (gene names must "
            "match exactly)."
        )
    return position.astype(np.int64), notes


def _held_out(
    bundle: Any, real: ad.AnnData, syn_genes: pd.Index, keys: list[str], label_key: str | None
) -> tuple[np.ndarray, pd.DataFrame] | str:
    """(held-out expression [n_test, G_syn], their ``keys`` labels) or why they are not used.

    Keys the held-out cells cannot be given are left out of the frame, except ``label_key``,
    without which the held-out cells are not used.
    """
    from cellsynth.bundle.heldout import held_out_cells

    record = bundle.preprocessing
    if real.n_obs != record.n_cells_input:  # cheap test first: prepare() takes seconds
        return (
            f"the real data has {real.n_obs} cells, the bundle's training data "
            f"{record.n_cells_input}"
        )
    position = pd.Index(bundle.genes).get_indexer(syn_genes)
    if (position < 0).any():
        return "the synthetic genes are not all genes of the bundle"
    try:
        x, obs = held_out_cells(bundle, real)
    except (CellsynthError, ValueError, KeyError) as err:
        return f"it is not the bundle's training data ({' '.join(str(err).split())})"
    labels = pd.DataFrame(index=obs.index)
    for key in keys:
        if key in obs:
            labels[key] = obs[key].astype(str).to_numpy()
        elif key in real.obs and real.obs_names.is_unique:
            labels[key] = real.obs.loc[obs.index, key].astype(str).to_numpy()
        elif key == label_key:
            return f"its held-out cells cannot be matched to {label_key!r} (cell names repeat)"
    return np.ascontiguousarray(x[:, position], dtype=np.float32), labels


def _label_keys(label_key: str | None, bundle: Any, synthetic: ad.AnnData) -> list[str]:
    """The synthetic file's label columns worth reading from the real side: ``label_key`` and
    the labels of the bundle that made it."""
    keys = ([label_key] if label_key else []) + (list(bundle.labels.keys) if bundle else [])
    return [k for k in dict.fromkeys(keys) if k in synthetic.obs]


def _match(
    real_obs: pd.DataFrame, syn_obs: pd.DataFrame, keys: list[str], seed: int
) -> tuple[Any, str]:
    """The label-mix match of both sides (None when it cannot be made) and a note saying so."""
    from cellsynth.metrics.label_mix import match_label_mix

    keys = [k for k in keys if k in real_obs.columns]
    if not keys:
        return None, (
            "Label mix not matched: no label column is in both files, so every cell is compared "
            "whatever the mix of each side."
        )
    match = match_label_mix(real_obs, syn_obs, keys, seed)
    if len(match.real_rows) < MIN_MATCHED_CELLS:
        return None, (
            f"Label mix not matched: only {len(match.real_rows)} cells a side would share the mix "
            f"of {' x '.join(keys)} (fewer than {MIN_MATCHED_CELLS}), so every cell is compared; "
            "the numbers then also measure the difference in label mix."
        )
    return match, match.describe(len(real_obs), len(syn_obs))


# ------------------------------------------------------------------------------ evaluate


@dataclass
class ComparedCells:
    """The two sides as they are compared: dense [n, G] on one scale, labels, and what was done."""

    real: np.ndarray
    synthetic: np.ndarray
    real_labels: np.ndarray | None
    synthetic_labels: np.ndarray | None
    genes: Any  # the synthetic genes, in column order
    real_genes_in_file: int
    real_how: str
    synthetic_how: str
    held_out: bool
    cells_note: str
    notes: list[str]
    match: Any  # a LabelMatch, or None when every cell is compared
    match_note: str | None
    before: tuple[int, int]  # real, synthetic cells before matching

    def record(self, real_ad, syn_ad, real_name, syn_name, bundle, label_key, seed) -> dict:
        """The ``evaluation`` block of the result: sources, representations, notes."""
        match = self.match
        return {
            "cellsynth_version": __version__,
            "real": {
                "source": real_name,
                "representation": self.real_how,
                "n_cells_in_file": int(real_ad.n_obs),
                "n_genes_in_file": int(self.real_genes_in_file),
            },
            "synthetic": {
                "source": syn_name,
                "representation": self.synthetic_how,
                "n_cells": int(syn_ad.n_obs),
                "bundle": None if bundle is None else str(bundle.path),
            },
            "held_out": self.held_out,
            "cells_note": self.cells_note,
            "label_match_note": self.match_note,
            "label_match": None
            if match is None
            else {
                "keys": match.keys,
                "combinations": match.combinations,
                "cells_per_side": int(len(match.real_rows)),
                "real_cells_before": self.before[0],
                "synthetic_cells_before": self.before[1],
                "synthetic_cells_without_real": match.dropped_synthetic,
            },
            "label_key": label_key,
            "n_genes": int(len(self.genes)),
            "real_genes_dropped": int(self.real_genes_in_file - len(self.genes)),
            "notes": self.notes,
            "seed": int(seed),
        }


def compared_cells(
    real_ad: ad.AnnData,
    syn_ad: ad.AnnData,
    bundle: Any,
    label_key: str | None,
    seed: int,
    match_labels: bool,
) -> ComparedCells:
    """Both sides in one representation over the synthetic genes, label-matched, on one scale."""
    from cellsynth.data import renormalize_log1p

    record = bundle.preprocessing if bundle is not None else None
    target_sum = record.target_sum if record is not None else DEFAULT_TARGET_SUM
    log1p = record.log1p if record is not None else True
    syn_x, syn_genes, syn_how = _representation(syn_ad, "synthetic", target_sum, log1p)
    real_x, real_genes, real_how = _representation(real_ad, "real", target_sum, log1p)
    columns, notes = _gene_columns(real_genes, syn_genes)
    syn_dense = syn_x.toarray()
    keys = _label_keys(label_key, bundle, syn_ad)
    syn_obs = syn_ad.obs[keys].astype(str)
    held = _held_out(bundle, real_ad, syn_genes, keys, label_key) if bundle is not None else None
    if isinstance(held, tuple):
        real_dense, real_obs = held
        real_how = f"held-out cells of bundle {bundle.name}, in its preprocessing"
        cells_note = (
            f"Real cells: the {len(real_dense)} held-out cells of bundle {bundle.name} "
            "(its training data was recognised); the model never saw them."
        )
    else:
        real_dense = real_x[:, columns].toarray()
        real_obs = real_ad.obs[[k for k in keys if k in real_ad.obs]].astype(str)
        cells_note = (
            "Real cells: every cell of the real data. If the model was trained on some of "
            "them, the numbers may look better than on unseen cells."
            + (f" (Held-out split not used: {held}.)" if isinstance(held, str) else "")
        )
    before = (len(real_dense), len(syn_dense))
    match, match_note = None, None
    if match_labels:
        match, match_note = _match(real_obs, syn_obs, keys, seed)
        notes.append(match_note)
        if match is not None:
            real_dense, real_obs = real_dense[match.real_rows], real_obs.iloc[match.real_rows]
            syn_dense = syn_dense[match.synthetic_rows]
            syn_obs = syn_obs.iloc[match.synthetic_rows]
    if log1p:  # one scale: the compared genes' own totals (module docstring)
        real_dense = renormalize_log1p(real_dense, target_sum)
        syn_dense = renormalize_log1p(syn_dense, target_sum)
        notes.append(
            f"Both sides renormalised over the {syn_dense.shape[1]} compared genes "
            f"(log1p of expression per {target_sum:g} of these genes)."
        )
    return ComparedCells(
        real=real_dense,
        synthetic=syn_dense,
        real_labels=real_obs[label_key].to_numpy() if label_key else None,
        synthetic_labels=syn_obs[label_key].to_numpy() if label_key else None,
        genes=syn_genes,
        real_genes_in_file=len(real_genes),
        real_how=real_how,
        synthetic_how=syn_how,
        held_out=isinstance(held, tuple),
        cells_note=cells_note,
        notes=notes,
        match=match,
        match_note=match_note,
        before=before,
    )
