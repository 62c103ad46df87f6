"""Judge a distilled set: fresh classifiers trained on it, tested on real held-out cells.

A distilled set (``cellsynth distill``) is only as good as the classifiers it trains, and only
worth its cost if it beats what the same budget buys without distillation. So every classifier
of :mod:`cellsynth.training.classifiers` is trained on the synthetic cells and, beside them, on
same-budget baselines built from the real training cells (SPC = cells per class of the
synthetic set, C classes):

==============  ================================================================================
random          SPC random real cells per class (the classic dataset-distillation baseline)
class_mean      the mean training cell of every class (one per class; strong: 0.94 on Kang)
kmeans          SPC k-means centroids per class (scikit-learn's KMeans, seeded)
geosketch       SPC x C cells chosen by geometric sketching of PCA features of all training cells
reweight        SPC x C cells, equally many per class where the class has enough (re-weighting)
dm_data         distribution matching directly in expression space (``generator='none'``)
dc_data         gradient matching directly in expression space (``generator='none'``)
decoder         the synthetic set's matching through the decoder only (no SCDG)
scdd            distribution matching through SCDG and the decoder, the scDD paper's method
                (SCDG bundles only; left out of the default list for an autoencoder bundle)
full            the whole training set: the ceiling
==============  ================================================================================

``reweight`` draws exactly the cells of ``random`` (in another row order, from the same
seed) whenever every class has at least SPC training cells; it differs only when a class is
smaller than its share, where ``random`` stops with an error and ``reweight`` spreads the rest.

Everything is tested on the held-out split of the bundle the set was distilled with (cells no
model saw), by accuracy and macro-F1. Seeds 0..S-1 vary each baseline's draw (and distillation)
and each classifier's initialisation; the synthetic set itself is fixed. A fixed training set
(the synthetic set, class means, the full set) with logistic regression, which is convex and
seed-free, is fitted once and its value repeated. The full set is fitted ``full_runs`` times per
classifier (default once): it is the reference, it costs the most and varies least.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import anndata
import numpy as np
import scipy.sparse as sp

from cellsynth._version import __version__
from cellsynth.bundle.load import load_bundle
from cellsynth.errors import BundleError, DataError, GeneMismatchError
from cellsynth.training.classifiers import CLASSIFIERS, make_classifier
from cellsynth.training.distill_data import Task, load_task

PROVENANCE_KEY = "cellsynth"
LEGACY_PROVENANCE_KEY = "cellsynth_distill"  # files written before one key served every command
BASELINES: tuple[str, ...] = (
    "random",
    "class_mean",
    "kmeans",
    "geosketch",
    "reweight",
    "dm_data",
    "dc_data",
    "decoder",
    "scdd",
    "full",
)
DESCRIPTIONS = {
    "distilled": "the distilled set",
    "random": "SPC random real cells per class",
    "class_mean": "one mean cell per class",
    "kmeans": "SPC k-means centroids per class",
    "geosketch": "geometric sketch of SPC x C cells",
    "reweight": "SPC x C cells re-weighted to equal classes",
    "dm_data": "distribution matching in expression space",
    "dc_data": "gradient matching in expression space",
    "decoder": "the same matching through the decoder only",
    "scdd": "distribution matching through SCDG (scDD)",
    "full": "the whole training set",
}
CLASSIFIER_NAMES = {"logreg": "LR", "mlp": "MLP", "transformer": "Transformer"}


def applicable_baselines(bundle: Any) -> tuple[str, ...]:
    """The :data:`BASELINES` that can run on ``bundle``: ``scdd`` distils through SCDG, which an
    autoencoder bundle does not have."""
    return tuple(b for b in BASELINES if b != "scdd" or bundle.kind == "latent_diffusion")


PCA_COMPONENTS = 50


# ---------------------------------------------------------------------------------------------
# Reading and checking the synthetic set


def distill_record(synthetic: anndata.AnnData) -> dict[str, Any]:
    """The distillation provenance of a set ({} when there is none)."""
    record = synthetic.uns.get(PROVENANCE_KEY)
    if not (isinstance(record, dict) and record.get("command") == "distill"):
        record = synthetic.uns.get(LEGACY_PROVENANCE_KEY)
    return dict(record) if isinstance(record, dict) else {}


def read_synthetic(synthetic: anndata.AnnData | str | os.PathLike) -> anndata.AnnData:
    """The synthetic set, with its distillation record checked to be there.

    Raises
    ------
    DataError
        Not an .h5ad, or without ``uns['cellsynth']`` of command 'distill' (not written by
        ``cellsynth distill``) or with a record lacking the bundle or label.
    """
    name = "the synthetic set"
    if not isinstance(synthetic, anndata.AnnData):
        path = Path(synthetic)
        name = str(path)
        if not path.is_file():
            raise FileNotFoundError(f"synthetic set {path} not found")
        try:
            synthetic = anndata.read_h5ad(path)
        except Exception as exc:  # noqa: BLE001 - h5py/anndata raise many kinds
            raise DataError(f"{path} is not a readable .h5ad file ({exc})") from exc
    record = distill_record(synthetic)
    if not record:
        raise DataError(
            f"{name} has no distillation record (uns[{PROVENANCE_KEY!r}]), so the bundle and "
            "split it came from are unknown; evaluate a file written by `cellsynth distill`"
        )
    missing = [k for k in ("bundle", "bundle_hash", "label") if k not in record]
    if missing:
        raise DataError(f"the distillation record of {name} lacks {', '.join(missing)}")
    return synthetic


def _check_bundle(record: dict[str, Any], task: Task | None) -> Any:
    """The bundle the set was distilled with, unchanged since (BundleError otherwise)."""
    where = record["bundle"]
    if task is not None:
        bundle = task.bundle
    else:
        try:
            bundle = load_bundle(where)
        except BundleError as exc:
            raise BundleError(
                f"the synthetic set was distilled with the bundle {where}, which cannot be "
                f"opened: {exc}"
            ) from exc
    recorded = str(record["bundle_hash"])
    if bundle.hash != recorded:
        raise BundleError(
            f"the bundle at {bundle.path} is not the one the synthetic set was distilled with "
            f"(config.json SHA-256 {bundle.hash[:12]}..., recorded {recorded[:12]}...); its "
            "split and genes may differ, so distil again with this bundle"
        )
    return bundle


def synthetic_matrix(syn: anndata.AnnData, task: Task, label: str) -> tuple[np.ndarray, np.ndarray]:
    """(x [n, G] in the task's gene order, y [n] class codes) of the synthetic set."""
    genes = [str(g) for g in syn.var_names]
    if genes != task.genes:
        missing = [g for g in task.genes if g not in set(genes)]
        extra = len(set(genes) - set(task.genes))
        if missing or extra or len(genes) != len(task.genes):
            shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
            raise GeneMismatchError(
                f"the synthetic set's {len(genes)} genes are not the bundle's {len(task.genes)}: "
                f"{len(missing)} missing ({shown or 'none'}), {extra} extra; it was not "
                "distilled with this bundle, or its genes were edited"
            )
        syn = syn[:, task.genes]  # same genes, other order
    if label not in syn.obs.columns:
        raise DataError(
            f"the synthetic set has no obs column {label!r}; available: {list(syn.obs.columns)}"
        )
    x = syn.X.toarray() if sp.issparse(syn.X) else np.asarray(syn.X)
    x = x.astype(np.float32)
    if not np.isfinite(x).all():
        raise DataError("the synthetic set's expression contains NaN or infinite values")
    names = syn.obs[label].astype(str).to_numpy()
    index = {c: i for i, c in enumerate(task.classes)}
    unknown = sorted(set(names.tolist()) - set(index))
    if unknown:
        raise DataError(
            f"synthetic classes {unknown} of {label!r} are not among the training classes "
            f"{task.classes}"
        )
    y = np.array([index[v] for v in names], dtype=np.int64)
    absent = [task.classes[c] for c in range(len(task.classes)) if not (y == c).any()]
    if absent:
        raise DataError(f"the synthetic set has no cells of class(es) {absent} of {label!r}")
    return x, y


# ---------------------------------------------------------------------------------------------
# Baselines


def kmeans_centroids(x: np.ndarray, k: int, seed: int = 0, max_iter: int = 300) -> np.ndarray:
    """``k`` k-means centroids of the rows of x: scikit-learn's ``KMeans`` (k-means++, 3 starts).

    The same k-means, with the same settings, as the distillation's k-means start
    (:func:`cellsynth.training.distill.kmeans_start`), so a distilled set is compared with the
    centroids it started from.

    Parameters
    ----------
    x : np.ndarray, shape [n, G]
    k : int
        1 <= k <= n.
    seed : int
        Seeds the k-means++ draws.

    Returns
    -------
    np.ndarray, float32, shape [k, G]
    """
    from cellsynth.training.distill import fit_kmeans

    x = np.asarray(x, dtype=np.float64)
    n = len(x)
    if not 1 <= k <= n:
        raise DataError(f"cannot make {k} centroids from {n} cells")
    if k == 1:
        return x.mean(axis=0, keepdims=True).astype(np.float32)
    return fit_kmeans(x, k, seed, max_iter).cluster_centers_.astype(np.float32)


class _Baselines:
    """Builds the same-budget training sets of one task (see the module docstring)."""

    def __init__(
        self,
        task: Task,
        data: Any,
        per_class: np.ndarray,
        record: dict[str, Any],
        iterations: int | None,
        progress: bool,
    ) -> None:
        self.task, self.data, self.per_class = task, data, per_class
        self.record, self.progress = record, progress
        self.iterations = iterations if iterations is not None else record.get("iterations")
        self._features: np.ndarray | None = None

    @property
    def spc(self) -> int:
        return int(self.record.get("spc", int(round(self.per_class.mean()))))

    def build(self, name: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """(x [n, G], y [n]) of baseline ``name`` for ``seed``."""
        task = self.task
        C = len(task.classes)
        if name == "full":
            return task.x_train, task.y_train
        if name == "class_mean":
            x = np.stack([task.x_train[task.class_indices(c)].mean(axis=0) for c in range(C)])
            return x.astype(np.float32), np.arange(C, dtype=np.int64)
        if name in ("random", "kmeans"):
            rng = np.random.default_rng(seed)
            xs, ys = [], []
            for c in range(C):
                idx, k = task.class_indices(c), int(self.per_class[c])
                if k > len(idx):
                    raise DataError(
                        f"class {task.classes[c]!r} has {len(idx)} training cells, fewer than "
                        f"the {k} per class of the synthetic set"
                    )
                if name == "random":
                    xs.append(task.x_train[np.sort(rng.choice(idx, size=k, replace=False))])
                else:
                    xs.append(kmeans_centroids(task.x_train[idx], k, seed=seed))
                ys.append(np.full(k, c, dtype=np.int64))
            return np.concatenate(xs), np.concatenate(ys)
        total = int(self.per_class.sum())
        if name in ("geosketch", "reweight"):
            from cellsynth.subsample.strategies import geosketch_indices, reweight_indices

            if total > len(task.y_train):
                raise DataError(f"budget {total} exceeds the {len(task.y_train)} training cells")
            if name == "reweight":
                idx = reweight_indices(np.asarray(task.classes)[task.y_train], total, seed)
            else:
                idx = geosketch_indices(self.features(), total, seed)
            return task.x_train[idx], task.y_train[idx]
        if name in ("dm_data", "dc_data", "decoder", "scdd"):
            from cellsynth.training.distill import ADDITIONS, SETTINGS, DistillConfig, distill

            if name == "decoder":
                match, generator = str(self.record.get("match", "dm")), "decoder"
            elif name == "scdd":
                match, generator = "dm", "scdg"
            else:
                match, generator = name[:2], "none"
            # the set's own settings, so a baseline differs from it only in what its name says;
            # never the networks' term, which is cellsynth's addition, not the baselines' method,
            # and the published methods (DM, DC, scDD) without cellsynth's other additions
            own = ("match", "generator", "iterations")  # set here, by the baseline
            options = {k: self.record[k] for k in SETTINGS if k not in own and k in self.record}
            # decoder: the set's own objective through the decoder, less the networks' term
            reset = ("network_weight",) if name == "decoder" else ADDITIONS
            defaults = DistillConfig()
            options.update({k: getattr(defaults, k) for k in reset})
            out = distill(
                task.bundle, self.data, task.label, self.spc, match=match, generator=generator,
                iterations=self.iterations, seed=seed, progress=self.progress, task=task,
                **options,
            )  # fmt: skip
            x, y = synthetic_matrix(out, task, task.label)
            return x, y
        raise DataError(f"unknown baseline {name!r}; choose from {', '.join(BASELINES)}")

    def features(self) -> np.ndarray:
        """PCA scores [n_train, 50] of the training cells (computed once), for geosketch."""
        if self._features is None:
            from cellsynth.subsample.features import pca

            self._features = pca(self.task.x_train, PCA_COMPONENTS)
        return self._features


# ---------------------------------------------------------------------------------------------
# Scoring


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Unweighted mean F1 over the classes in y_true or y_pred (scikit-learn's 'macro')."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    labels = np.union1d(y_true, y_pred)
    scores = []
    for c in labels:
        tp = float(np.sum((y_true == c) & (y_pred == c)))
        fp = float(np.sum((y_true != c) & (y_pred == c)))
        fn = float(np.sum((y_true == c) & (y_pred != c)))
        scores.append(2 * tp / (2 * tp + fp + fn) if tp > 0 else 0.0)
    return float(np.mean(scores)) if scores else float("nan")


def mean_sd(values: Sequence[float]) -> dict[str, Any]:
    """Mean, sample sd (0 for one value) and the values themselves."""
    v = np.asarray(values, dtype=np.float64)
    sd = float(v.std(ddof=1)) if len(v) > 1 else 0.0
    return {"mean": float(v.mean()), "sd": sd, "values": [float(a) for a in v]}


def check_choice(given: Sequence[str], allowed: Sequence[str], what: str) -> list[str]:
    """``given`` without repeats, in its order; a name outside ``allowed`` is a DataError."""
    given = [given] if isinstance(given, str) else list(given)
    unknown = [g for g in given if g not in allowed]
    if unknown:
        raise DataError(f"unknown {what} {unknown}; choose from {', '.join(allowed)}")
    return list(dict.fromkeys(given))


def evaluate_distilled(
    synthetic: anndata.AnnData | str | os.PathLike,
    data: str | os.PathLike | anndata.AnnData | None,
    label: str,
    seeds: int = 5,
    classifiers: Sequence[str] = CLASSIFIERS,
    baselines: Sequence[str] | None = None,
    iterations: int | None = None,
    progress: bool = True,
    task: Task | None = None,
    full_runs: int = 1,
    classifier_options: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """Accuracy and macro-F1 of classifiers trained on the synthetic set and on baselines.

    Parameters
    ----------
    synthetic : AnnData or path
        Written by ``cellsynth distill``: X [n, G] log-normalised, ``obs[label]``, and
        ``uns['cellsynth']`` (command 'distill') naming the bundle (whose split the test cells
        come from).
    data : path, built-in name or AnnData
        The counts the bundle was trained on (None only with ``task``).
    label : str
        The label the set was distilled for.
    seeds : int
        Runs per method and classifier, seeds 0..seeds-1.
    classifiers : sequence of {'logreg', 'mlp', 'transformer'}
    baselines : sequence of str, optional
        Any of :data:`BASELINES`, in the order to report them (default: all of them, less
        ``scdd`` when the bundle has no SCDG).
    iterations : int, optional
        Optimiser steps of the distillation baselines (default: the synthetic set's own).
    progress : bool
        Show progress bars.
    task : Task, optional
        The already loaded task (skips re-preparing the data).
    full_runs : int
        Fits of the full training set per classifier (seeds 0..full_runs-1).
    classifier_options : dict, optional
        Per classifier kind, keyword arguments of
        :func:`~cellsynth.training.classifiers.make_classifier` (e.g. a smaller ``budget``).

    Returns
    -------
    dict
        ``task``, ``synthetic`` (its record, without the loss history), ``spc``, ``seeds``,
        ``classifiers``, ``methods`` (order) and ``results[method]`` = {``description``,
        ``n_cells``, ``classifiers``: {kind: {``accuracy``, ``macro_f1``: {mean, sd, values},
        ``runs``, ``seconds``}}}; sd is the sample standard deviation (0 for one run).

    Raises
    ------
    DataError
        Unknown classifier or baseline, a label other than the distilled one, a synthetic set
        without distillation record, other genes or classes than the bundle's task.
    BundleError
        The bundle of the record is gone or has changed.
    """
    from tqdm.auto import tqdm

    started = time.perf_counter()
    classifiers = check_choice(classifiers, CLASSIFIERS, "classifier(s)")
    defaulted = baselines is None
    baselines = check_choice(BASELINES if defaulted else baselines, BASELINES, "baseline(s)")
    options = dict(classifier_options or {})
    if not classifiers:
        raise DataError("no classifier to train; name at least one")
    if int(seeds) < 1 or int(full_runs) < 1:
        raise DataError(f"seeds and full_runs must be at least 1, got {seeds} and {full_runs}")
    syn = read_synthetic(synthetic)
    record = distill_record(syn)
    if str(record["label"]) != label:
        raise DataError(
            f"the synthetic set was distilled for label {record['label']!r}, not {label!r}; "
            f"evaluate it with --label {record['label']}"
        )
    bundle = _check_bundle(record, task)
    if task is None:
        if data is None:
            raise DataError("pass the data the bundle was trained on")
        task = load_task(bundle, data, label)
    elif task.label != label:
        raise DataError(f"the given task is for label {task.label!r}, not {label!r}")
    usable = applicable_baselines(task.bundle)
    if not set(baselines) <= set(usable):
        if not defaulted:
            raise DataError(
                f"baseline scdd distils through SCDG, and {task.bundle.path} has none (an "
                "autoencoder bundle); leave scdd out"
            )
        baselines = [b for b in baselines if b in usable]
    x_syn, y_syn = synthetic_matrix(syn, task, label)
    C = len(task.classes)
    per_class = np.bincount(y_syn, minlength=C)
    builder = _Baselines(task, data, per_class, record, iterations, progress)

    methods = ["distilled", *baselines]
    fixed = {"distilled", "class_mean", "full"}  # training sets that do not depend on the seed
    seed_list = list(range(int(seeds)))
    runs = {m: (list(range(int(full_runs))) if m == "full" else seed_list) for m in methods}
    results: dict[str, Any] = {}
    bar = tqdm(
        total=sum(len(runs[m]) for m in methods) * len(classifiers),
        desc="distill-eval",
        unit="fit",
        disable=not progress,
        file=sys.stderr,
    )
    try:
        for method in methods:
            scores = {k: {"accuracy": [], "macro_f1": [], "seconds": 0.0} for k in classifiers}
            n_cells = []
            fixed_set: tuple[np.ndarray, np.ndarray] | None = None
            for seed in runs[method]:
                bar.set_postfix_str(f"{method} seed {seed}")
                if method == "distilled":
                    x, y = x_syn, y_syn
                elif method in fixed:
                    fixed_set = fixed_set or builder.build(method, seed)  # built once
                    x, y = fixed_set
                else:
                    x, y = builder.build(method, seed)
                n_cells.append(len(y))
                for kind in classifiers:
                    s = scores[kind]
                    if kind == "logreg" and method in fixed and seed != runs[method][0]:
                        s["accuracy"].append(s["accuracy"][0])  # convex and seed-free: same fit
                        s["macro_f1"].append(s["macro_f1"][0])
                    else:
                        t = time.perf_counter()
                        clf = make_classifier(kind, C, seed, **options.get(kind, {}))
                        pred = clf.fit(x, y).predict(task.x_test)
                        s["seconds"] += time.perf_counter() - t
                        s["accuracy"].append(float(np.mean(pred == task.y_test)))
                        s["macro_f1"].append(macro_f1(task.y_test, pred))
                    bar.update(1)
            results[method] = {
                "description": DESCRIPTIONS[method],
                "n_cells": float(np.mean(n_cells)),
                "classifiers": {
                    kind: {
                        "accuracy": mean_sd(s["accuracy"]),
                        "macro_f1": mean_sd(s["macro_f1"]),
                        "runs": len(s["accuracy"]),
                        "seconds": round(s["seconds"], 3),
                    }
                    for kind, s in scores.items()
                },
            }
    finally:
        bar.close()
    synthetic_info = {
        k: v for k, v in record.items() if k not in ("loss_history", "network_loss_history")
    }
    synthetic_info["n_cells"] = int(len(y_syn))
    if not isinstance(synthetic, anndata.AnnData):
        synthetic_info["path"] = str(synthetic)
    return {
        "task": task.record(data),
        "synthetic": synthetic_info,
        "spc": builder.spc,
        "cells_per_class": {c: int(n) for c, n in zip(task.classes, per_class, strict=True)},
        "seeds": seed_list,
        "full_runs": int(full_runs),
        "classifiers": classifiers,
        "methods": methods,
        "results": results,
        "seconds": round(time.perf_counter() - started, 2),
        "cellsynth_version": __version__,
    }


# ---------------------------------------------------------------------------------------------
# Writing


def plus_minus(s: Mapping[str, Any] | None, digits: int = 3) -> str:
    """'mean ± sd' of a :func:`mean_sd` summary, 'n/a' when there is none or it is not finite."""
    if not s or s.get("mean") is None or not math.isfinite(s["mean"]):
        return "n/a"
    return f"{s['mean']:.{digits}f} ± {s['sd']:.{digits}f}"


def markdown_report(result: dict[str, Any]) -> str:
    """report.md: one row per method, accuracy then macro-F1 (mean ± sd) per classifier."""
    t, syn = result["task"], result["synthetic"]
    kinds = result["classifiers"]
    names = [CLASSIFIER_NAMES.get(k, k) for k in kinds]
    lines = [
        f"# Distilled set evaluation: {t['label']}",
        "",
        f"Synthetic set: {syn['n_cells']} cells, SPC={result['spc']} "
        f"(match {syn.get('match', '?')}, generator {syn.get('generator', '?')}, "
        f"{syn.get('iterations', '?')} iterations, seed {syn.get('seed', '?')}"
        + (
            f", networks' term {syn['network_weight']} ({syn.get('networks', '?')})"
            if syn.get("network_weight")
            else ""
        )
        + "), "
        f"bundle `{t['bundle']}`.",
        f"Tested on {t['n_test']} held-out real cells of {len(t['classes'])} classes "
        f"({t['n_genes']} genes); trained on {t['n_train']} real cells for `full`.",
        f"Mean ± sd over seeds {result['seeds']} (full: {result['full_runs']} run(s)); "
        "logistic regression on a fixed set is fitted once (it is convex and seed-free).",
        "",
        "| method | cells | "
        + " | ".join(f"{n} acc" for n in names)
        + " | "
        + " | ".join(f"{n} macro F1" for n in names)
        + " |",
        "|---|---:|" + "---:|" * (2 * len(kinds)),
    ]
    for method in result["methods"]:
        r = result["results"][method]
        accs = [plus_minus(r["classifiers"][k]["accuracy"]) for k in kinds]
        f1s = [plus_minus(r["classifiers"][k]["macro_f1"]) for k in kinds]
        name = f"**{method}**" if method == "distilled" else method
        lines.append(f"| {name} | {r['n_cells']:.0f} | " + " | ".join(accs + f1s) + " |")
    lines += ["", "Methods:", ""]
    lines += [f"- `{m}`: {result['results'][m]['description']}" for m in result["methods"]]
    return "\n".join(lines) + "\n"


def accuracy_figure(result: dict[str, Any], path: Path) -> Path:
    """Grouped bars: accuracy (mean ± sd) of every method, one bar per classifier."""
    from cellsynth.evaluation.plots import pyplot, save_figure

    plt = pyplot()
    methods, kinds = result["methods"], result["classifiers"]
    width = 0.8 / len(kinds)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(methods) + 2), 4.2))
    pos = np.arange(len(methods))
    for j, kind in enumerate(kinds):
        s = [result["results"][m]["classifiers"][kind]["accuracy"] for m in methods]
        ax.bar(
            pos + (j - (len(kinds) - 1) / 2) * width,
            [v["mean"] for v in s],
            width,
            yerr=[v["sd"] for v in s],
            capsize=2,
            label=CLASSIFIER_NAMES.get(kind, kind),
        )
    ax.set_xticks(pos, methods, rotation=30, ha="right")
    ax.set_ylim(0, 1.0)
    ax.set_ylabel("accuracy on held-out real cells")
    ax.set_title(f"{result['task']['label']}, SPC={result['spc']}")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, path)


def write_result_files(
    result: Mapping[str, Any],
    out_dir: str | os.PathLike,
    names: tuple[str, str, str],
    markdown: Callable[[Mapping[str, Any]], str],
    figure: Callable[[Mapping[str, Any], Path], Path],
) -> dict[str, str]:
    """Write ``result`` as strict JSON, its Markdown and its figure into ``out_dir``, each
    atomically, under ``names`` (json, md, png).

    Returns
    -------
    dict of str to str
        File name -> path written.
    """
    from cellsynth.files import write_json, write_text

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_name, md_name, png_name = names
    write_json(out / json_name, result)
    write_text(out / md_name, markdown(result))
    figure(result, out / png_name)
    return {name: str(out / name) for name in names}


def write_report(result: dict[str, Any], out_dir: str | os.PathLike) -> dict[str, str]:
    """Write report.json (strict JSON), report.md and accuracy.png into ``out_dir``."""
    return write_result_files(
        result, out_dir, ("report.json", "report.md", "accuracy.png"), markdown_report,
        accuracy_figure,
    )  # fmt: skip
