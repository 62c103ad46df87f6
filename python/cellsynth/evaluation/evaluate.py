"""``cellsynth evaluate``: how close synthetic cells are to real ones, as numbers and figures.

:func:`evaluate` puts real and synthetic cells into one representation, aligns their genes, runs
:func:`cellsynth.metrics.compute_metrics` (every metric beside its real-vs-real floor, per label
on request) and writes, under ``out/``:

    metrics.json         everything computed, strict JSON (NaN -> null)
    report.md            the metrics table (value, floor, ratio, direction), what each metric
                         means, the per-label table and the figures
    pca.png              PCA fitted on real cells: real and synthetic by source and by label
    umap.png             the same on a UMAP of real cells (only with ``umap=True``)
    gene_means.png       per-gene mean, real (x) against synthetic (y)
    gene_zero_fractions.png   per-gene fraction of zeros, real against synthetic
    violins.png          per-cell zero proportion and per-gene CV, real against synthetic
    matrixplot.png       top marker genes per class (found in real cells), class means in real
                         and synthetic cells side by side (only with a label key)

Representation rule (the same for both sides, decided per file):

1. cells generated or distilled by cellsynth (``uns['cellsynth']``, command 'sample' or
   'distill') hold log-normalised X: used as is;
2. otherwise raw counts are looked for (``layers['counts']``, then X, then ``.raw`` when they
   hold non-negative whole numbers) and log-normalised: library size = total over every gene of
   that file, scaled to the target sum, then log1p. Target sum and log1p come from the
   preprocessing record of the bundle the synthetic file names (when it loads), else 1e4 + log1p,
   the usual default;
3. otherwise X is taken as already log-normalised (it must be finite and non-negative), and the
   report says so.

Then, with log1p (the default), both sides are renormalised over the genes they share
(:func:`cellsynth.data.renormalize_log1p`): each cell's expression is re-expressed per target sum
of those genes alone. Files normalised over different gene sets become comparable, and a
generator whose per-cell totals over the modelled genes are off is seen in every gene (the
training validation and ``benchmarks/fidelity_peers.py`` compare the same way).

Real cells: when the synthetic file names a bundle that loads and the real data is the data that
bundle was trained on (:func:`cellsynth.bundle.heldout.held_out_cells` rebuilds its split), only the
held-out cells, which the model never saw, are compared, in the bundle's own preprocessing.
Otherwise every real cell is used, and the report warns that training cells may flatter the
numbers.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
from tqdm.auto import tqdm

from cellsynth._version import __version__
from cellsynth.errors import CellsynthError, DataError, GeneMismatchError
from cellsynth.files import atomic_path
from cellsynth.metrics import METRICS, compute_metrics

DEFAULT_TARGET_SUM = 1e4
# Below this many matched cells a side a label-matched comparison says too little: compute_metrics
# splits the real side in three (PCA, floor, compared), so 90 leave 30 scored a side, its own
# per-class minimum. Every cell is compared instead, with a note.
MIN_MATCHED_CELLS = 90

#: Plain-language meaning of each metric family, for the report.
EXPLANATIONS: dict[str, str] = {
    "paper_kl_softmax": "KL divergence between the softmax of each real cell and of the "
    "synthetic cell in the same row (the scRDiT paper's definition; pairs by row order, so it "
    "mostly measures the overall expression profile).",
    "paper_wasserstein_values": "distance between the distributions of every expression value "
    "pooled over cells and genes (ignores which gene a value belongs to).",
    "paper_wasserstein_gene_means": "distance between the distributions of per-gene means.",
    "paper_mmd_multikernel": "the paper's multi-kernel Gaussian MMD on expression, averaged over "
    "gene chunks (biased estimate: never 0, even for two real samples).",
    "mmd2_rbf_pca": "unbiased squared maximum mean discrepancy on the real-fitted PCA: 0 when "
    "both samples come from one distribution; sensitive to any difference in cell states.",
    "w2_pca": "optimal-transport (earth mover's) distance between the cells in PCA space: how far "
    "cells must move to turn one set into the other.",
    "sliced_w2_pca": "the same averaged over random 1-D projections, using every cell.",
    "knn_auc": "a nearest-neighbour classifier tries to tell real from synthetic cells; 0.5 means "
    "it cannot (ideal), 1.0 means every synthetic cell is recognisable.",
    "gene_mean": "per-gene mean expression: Pearson r (1 = same ranking and scale) and RMSE "
    "between real and synthetic.",
    "gene_var": "per-gene variance: Pearson r and RMSE.",
    "gene_zero_fraction": "per-gene fraction of cells where the gene is silent: Pearson r and "
    "RMSE (dropout structure).",
    "gene_cv": "per-gene coefficient of variation (sd / mean): Pearson r and RMSE "
    "(over-dispersion).",
    "corr_agreement": "do the same genes rise and fall together within a class? Pearson r "
    "between real and synthetic gene-gene correlations of the most variable genes, each cell "
    "taken relative to its class mean (0: genes drawn independently).",
    "label_transfer": "a logistic regression trained on synthetic cells (on the PCA) and tested "
    "on real ones: are the labels where they are in real data? The floor trains on real cells.",
}

#: The few metrics printed by the CLI and shown per label.
KEY_METRICS = (
    "mmd2_rbf_pca",
    "sliced_w2_pca",
    "knn_auc",
    "gene_mean_pearson",
    "gene_zero_fraction_pearson",
)


# ------------------------------------------------------------------------------ loading


def _load(data: Any, role: str) -> tuple[ad.AnnData, str]:
    """(in-memory AnnData, description of where it came from)."""
    if isinstance(data, ad.AnnData):
        name = "an AnnData object"
    else:
        from cellsynth.data import datasets

        name = str(data)
        data = datasets.load(data)
    if data.isbacked:  # generate(out=...) returns the file opened in backed mode
        data = data.to_memory()
    if data.n_obs == 0 or data.n_vars == 0:
        raise DataError(f"the {role} data ({name}) is empty: {data.n_obs} cells x {data.n_vars}")
    return data, name


def _provenance_bundle(synthetic: ad.AnnData) -> tuple[Any, str | None]:
    """(the bundle the synthetic file was generated with, or None; why it was not used)."""
    prov = synthetic.uns.get("cellsynth")
    if not isinstance(prov, dict) or "bundle" not in prov:
        return None, None
    from cellsynth.bundle.load import load_bundle

    path = str(prov["bundle"])
    # The recorded path is absolute on the generating machine; a shipped bundle is also found
    # by its name elsewhere.
    for candidate in dict.fromkeys([path, Path(path).name]):
        try:
            bundle = load_bundle(candidate, verify_weights=False)
        except CellsynthError:
            continue
        if prov.get("bundle_hash") not in (None, bundle.hash):
            return None, f"bundle {candidate} has changed since the cells were generated"
        return bundle, None
    return None, f"bundle {path} named by the synthetic file does not load here"


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


def _labels(real: ad.AnnData, syn: ad.AnnData, key: str, real_name: str, syn_name: str) -> None:
    """Check that both files carry ``key`` and that synthetic classes all exist in real cells."""
    for adata, role, name in ((real, "real", real_name), (syn, "synthetic", syn_name)):
        if key not in adata.obs:
            have = ", ".join(map(str, adata.obs.columns[:15])) or "none"
            raise DataError(f"the {role} data ({name}) has no obs column {key!r} (columns: {have})")
        missing = adata.obs[key].isna().to_numpy()
        if missing.any():  # astype(str) would make them a class 'nan'
            first = adata.obs.index[int(np.flatnonzero(missing)[0])]
            raise DataError(
                f"the {role} data ({name}) has {int(missing.sum())} cell(s) without a {key!r} "
                f"label (NaN), first {first!r}; label them or drop them"
            )
    unseen = sorted(set(syn.obs[key].astype(str)) - set(real.obs[key].astype(str)))
    if unseen:
        raise DataError(
            f"{len(unseen)} synthetic value(s) of {key!r} do not occur in the real data: "
            f"{', '.join(unseen[:20])}"
        )


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


def evaluate(
    real: Any,
    synthetic: Any,
    label_key: str | None = None,
    out: str | os.PathLike | None = None,
    seed: int = 0,
    progress: bool = True,
    *,
    umap: bool = False,
    match_labels: bool = True,
    **metric_options: Any,
) -> dict[str, Any]:
    """Compare synthetic cells with real ones; optionally write the report to ``out``.

    Parameters
    ----------
    real : AnnData, .h5ad path or built-in data set name ('kang', 'pbmc3k', 'wu2020').
        Raw counts or log-normalised expression of real cells [n, G_real].
    synthetic : AnnData or .h5ad path, [m, G]; every one of its G genes must be in ``real``.
    label_key : obs column present in both; adds the per-label breakdown and the label plots.
    out : directory for metrics.json, report.md and the PNGs (created; files in it replaced
        one by one through temporary names). None: compute only.
    seed : seeds every random choice (splits, subsamples, PCA, plots' subsamples).
    progress : show a progress bar of the stages on stderr.
    umap : also draw a UMAP of real cells with synthetic cells embedded (needs umap-learn; slow).
    match_labels : compare like with like (the default): both sides keep the same number of
        cells of every label combination (the labels of ``label_key`` and of the bundle that made
        the synthetic cells, where both files have them; see
        :mod:`cellsynth.metrics.label_mix`). False compares every cell whatever the label mix.
    **metric_options : passed to :func:`cellsynth.metrics.compute_metrics`.

    Returns
    -------
    dict
        The content of metrics.json (``metrics``, ``by_label`` ... as from ``compute_metrics``,
        plus ``evaluation``: data sources, representations, held-out use, notes, timing), with
        NaN kept as float NaN, and ``files`` {name: path} when ``out`` is given.

    Raises
    ------
    GeneMismatchError
        If synthetic genes are missing from the real data.
    DataError
        If a file lacks ``label_key``, synthetic classes are absent from the real data, or the
        expression cannot be used.
    """
    from cellsynth.data import renormalize_log1p

    started = time.perf_counter()
    bar = tqdm(total=4, desc="evaluate", unit="stage", disable=not progress, file=sys.stderr)
    try:
        bar.set_postfix_str("reading")
        real_ad, real_name = _load(real, "real")
        syn_ad, syn_name = _load(synthetic, "synthetic")
        if label_key is not None:
            _labels(real_ad, syn_ad, label_key, real_name, syn_name)
        bundle, bundle_note = _provenance_bundle(syn_ad)
        notes = [bundle_note] if bundle_note else []
        record = bundle.preprocessing if bundle is not None else None
        target_sum = record.target_sum if record is not None else DEFAULT_TARGET_SUM
        log1p = record.log1p if record is not None else True
        bar.update()

        bar.set_postfix_str("preprocessing")
        syn_x, syn_genes, syn_how = _representation(syn_ad, "synthetic", target_sum, log1p)
        real_x, real_genes, real_how = _representation(real_ad, "real", target_sum, log1p)
        columns, gene_notes = _gene_columns(real_genes, syn_genes)
        notes += gene_notes
        syn_dense = syn_x.toarray()
        keys = _label_keys(label_key, bundle, syn_ad)
        syn_obs = syn_ad.obs[keys].astype(str)
        held = (
            _held_out(bundle, real_ad, syn_genes, keys, label_key) if bundle is not None else None
        )
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
        n_real_cells, n_syn_cells = len(real_dense), len(syn_dense)
        match, match_note = None, None
        if match_labels:
            match, match_note = _match(real_obs, syn_obs, keys, seed)
            notes.append(match_note)
            if match is not None:
                real_dense, real_obs = real_dense[match.real_rows], real_obs.iloc[match.real_rows]
                syn_dense, syn_obs = (
                    syn_dense[match.synthetic_rows],
                    syn_obs.iloc[match.synthetic_rows],
                )
        real_labels = real_obs[label_key].to_numpy() if label_key else None
        syn_labels = syn_obs[label_key].to_numpy() if label_key else None
        if log1p:  # one scale: the compared genes' own totals (module docstring)
            real_dense = renormalize_log1p(real_dense, target_sum)
            syn_dense = renormalize_log1p(syn_dense, target_sum)
            notes.append(
                f"Both sides renormalised over the {syn_dense.shape[1]} compared genes "
                f"(log1p of expression per {target_sum:g} of these genes)."
            )
        bar.update()

        bar.set_postfix_str("metrics")
        result = compute_metrics(
            real_dense,
            syn_dense,
            real_labels,
            syn_labels,
            label_key=label_key,
            seed=seed,
            **metric_options,
        )
        bar.update()
        result = {
            "evaluation": {
                "cellsynth_version": __version__,
                "real": {
                    "source": real_name,
                    "representation": real_how,
                    "n_cells_in_file": int(real_ad.n_obs),
                    "n_genes_in_file": int(len(real_genes)),
                },
                "synthetic": {
                    "source": syn_name,
                    "representation": syn_how,
                    "n_cells": int(syn_ad.n_obs),
                    "bundle": None if bundle is None else str(bundle.path),
                },
                "held_out": isinstance(held, tuple),
                "cells_note": cells_note,
                "label_match_note": match_note,
                "label_match": None
                if match is None
                else {
                    "keys": match.keys,
                    "combinations": match.combinations,
                    "cells_per_side": int(len(match.real_rows)),
                    "real_cells_before": n_real_cells,
                    "synthetic_cells_before": n_syn_cells,
                    "synthetic_cells_without_real": match.dropped_synthetic,
                },
                "label_key": label_key,
                "n_genes": int(len(syn_genes)),
                "real_genes_dropped": int(len(real_genes) - len(syn_genes)),
                "notes": notes,
                "seed": int(seed),
            },
            **result,
        }

        if out is not None:
            bar.set_postfix_str("writing")
            result["files"] = _write(
                Path(out),
                result,
                real_dense,
                syn_dense,
                real_labels,
                syn_labels,
                np.asarray(syn_genes),
                seed,
                umap,
            )
        bar.update()
        result["evaluation"]["seconds"] = round(time.perf_counter() - started, 2)
        if out is not None:  # rewrite with the final time (cheap; metrics.json is small)
            _write_json(Path(out) / "metrics.json", result)
        return result
    finally:
        bar.close()


# ------------------------------------------------------------------------------ writing


def strict_json(obj: Any) -> Any:
    """obj with NaN / inf -> None and numpy scalars / arrays / paths as plain Python."""
    if isinstance(obj, dict):
        return {str(k): strict_json(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [strict_json(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return strict_json(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def _write_json(path: Path, result: dict[str, Any]) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(strict_json(result), indent=1, allow_nan=False) + "\n")


def _write(
    out: Path,
    result: dict[str, Any],
    real: np.ndarray,
    syn: np.ndarray,
    real_labels: np.ndarray | None,
    syn_labels: np.ndarray | None,
    genes: np.ndarray,
    seed: int,
    umap: bool,
) -> dict[str, str]:
    """Write the figures, report.md and metrics.json; {name: path}."""
    from cellsynth.evaluation import plots

    out.mkdir(parents=True, exist_ok=True)
    key = result["evaluation"]["label_key"]
    import warnings

    with warnings.catch_warnings():
        # A class whose cells all share one value makes matplotlib warn about a zero-width
        # axis; the figure is still right, and the warning means nothing to a reader.
        warnings.filterwarnings(
            "ignore", message="Attempting to set identical", module="matplotlib"
        )
        figures, fig_notes = plots.write_all(
            out, real, syn, real_labels, syn_labels, key, genes, seed, umap
        )
    result["evaluation"]["notes"] += fig_notes
    files = {name: str(path) for name, path in figures.items()}
    files["metrics.json"] = str(out / "metrics.json")
    files["report.md"] = str(out / "report.md")
    result["files"] = files
    _write_json(out / "metrics.json", result)
    with atomic_path(out / "report.md") as tmp:
        tmp.write_text(markdown_report(result))
    return files


def _fmt(v: Any) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    return f"{v:.4g}"


def ratio_to_floor(name: str, value: float, floor: float) -> float:
    """value / floor, NaN where it cannot be read (a lower-is-better floor <= 0, NaN inputs)."""
    direction = METRICS.get(name, ("lower", ""))[0]
    if not (math.isfinite(value) and math.isfinite(floor)) or floor == 0:
        return float("nan")
    if direction == "lower" and floor < 0:  # unbiased MMD^2 of two real halves can dip below 0
        return float("nan")
    return value / floor


def _better(name: str) -> str:
    d = METRICS.get(name, ("lower", ""))[0]
    return "closer to 0.5" if d == "0.5" else d


def markdown_report(result: dict[str, Any]) -> str:
    """The Markdown report of an :func:`evaluate` result."""
    ev, metrics = result["evaluation"], result["metrics"]
    lines = [
        "# cellsynth evaluation",
        "",
        f"- Real: `{ev['real']['source']}` ({ev['real']['representation']}).",
        f"- Synthetic: `{ev['synthetic']['source']}`, {ev['synthetic']['n_cells']} cells "
        f"({ev['synthetic']['representation']}).",
        f"- Genes: {ev['n_genes']} (the synthetic genes; {ev['real_genes_dropped']} real genes "
        "not in the synthetic set were dropped).",
        f"- Compared: {result['n_compared']} real vs {result['n_compared']} synthetic cells per "
        f"metric; the floor compares two disjoint sets of {result['n_compared']} real cells; the "
        f"PCA is fitted on {result['n_pca']} other real cells. Seed {ev['seed']}.",
        f"- {ev['cells_note']}",
        *[f"- Note: {n}" for n in ev["notes"]],
        "",
        "## Metrics",
        "",
        "The **floor** is the same metric between two halves of the real data: what a perfect "
        "generator would score. A ratio to the floor near 1 is as good as real data.",
        "",
        "| metric | value | real-vs-real floor | ratio to floor | better |",
        "|---|---:|---:|---:|---|",
    ]
    for name, m in metrics.items():
        ratio = ratio_to_floor(name, m["value"], m["floor"])
        lines.append(
            f"| `{name}` | {_fmt(m['value'])} | {_fmt(m['floor'])} | {_fmt(ratio)} | "
            f"{_better(name)} |"
        )
    transfer = result.get("label_transfer", {})
    if transfer:
        lines += [
            "",
            "| label transfer: accuracy on real cells | trained on synthetic | trained on real |",
            "|---|---:|---:|",
        ]
        for key, vf in transfer.items():
            lines.append(f"| `{key}` | {_fmt(vf['value'])} | {_fmt(vf['floor'])} |")
    lines += ["", "### What the metrics mean", ""]
    for stem, text in EXPLANATIONS.items():
        lines.append(f"- `{stem}`: {text}")
    lines += _label_section(result)
    lines += ["", "## Figures", ""]
    for name in result.get("files", {}):
        if name.endswith(".png"):
            lines += [f"![{name}]({name})", ""]
    return "\n".join(lines) + "\n"


def _label_section(result: dict[str, Any]) -> list[str]:
    """Per-label table: one row per class, the key metrics as 'value (floor)'."""
    lines: list[str] = []
    for key, block in result.get("by_label", {}).items():
        lines += [
            "",
            f"## Per label: `{key}`",
            "",
            "Each cell: value (real-vs-real floor), within the class.",
            "",
            "| class | real cells | synthetic cells | compared | "
            + " | ".join(f"`{k}`" for k in KEY_METRICS)
            + " |",
            "|---|---:|---:|---:|" + "---:|" * len(KEY_METRICS),
        ]
        for c, info in block["classes"].items():
            cells = [
                f"{_fmt(info['metrics'][k]['value'])} ({_fmt(info['metrics'][k]['floor'])})"
                for k in KEY_METRICS
            ]
            lines.append(
                f"| {c} | {info['n_real']} | {info['n_synthetic']} | {info['n_compared']} | "
                + " | ".join(cells)
                + " |"
            )
        for c, why in block["skipped"].items():
            lines.append(f"\nSkipped `{c}`: {why}.")
    return lines
