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

import os
import sys
import time
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
from tqdm.auto import tqdm

from cellsynth.errors import CellsynthError, DataError
from cellsynth.evaluation.compare import compared_cells
from cellsynth.evaluation.report import write_report_files
from cellsynth.files import write_json
from cellsynth.metrics import compute_metrics


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
    started = time.perf_counter()
    bar = tqdm(total=4, desc="evaluate", unit="stage", disable=not progress, file=sys.stderr)
    try:
        bar.set_postfix_str("reading")
        real_ad, real_name = _load(real, "real")
        syn_ad, syn_name = _load(synthetic, "synthetic")
        if label_key is not None:
            _labels(real_ad, syn_ad, label_key, real_name, syn_name)
        bundle, bundle_note = _provenance_bundle(syn_ad)
        bar.update()

        bar.set_postfix_str("preprocessing")
        cells = compared_cells(real_ad, syn_ad, bundle, label_key, seed, match_labels)
        if bundle_note:
            cells.notes.insert(0, bundle_note)
        bar.update()

        bar.set_postfix_str("metrics")
        result = compute_metrics(
            cells.real,
            cells.synthetic,
            cells.real_labels,
            cells.synthetic_labels,
            label_key=label_key,
            seed=seed,
            **metric_options,
        )
        bar.update()
        record = cells.record(real_ad, syn_ad, real_name, syn_name, bundle, label_key, seed)
        result = {"evaluation": record, **result}

        if out is not None:
            bar.set_postfix_str("writing")
            result["files"] = write_report_files(
                Path(out),
                result,
                cells.real,
                cells.synthetic,
                cells.real_labels,
                cells.synthetic_labels,
                np.asarray(cells.genes),
                seed,
                umap,
            )
        bar.update()
        result["evaluation"]["seconds"] = round(time.perf_counter() - started, 2)
        if out is not None:  # rewrite with the final time (cheap; metrics.json is small)
            write_json(Path(out) / "metrics.json", result)
        return result
    finally:
        bar.close()
