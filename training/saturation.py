"""Learning saturation: classifier accuracy against the size of its training set, per strategy.

How many cells does a classifier need? The downsampling study of single-cell atlases answers it
with a *learning-saturation curve*: accuracy on real held-out cells against the budget, for each
way of choosing the training cells. This module draws those curves for cellsynth's own
strategies, on the train/test split of a bundle (the same split distillation uses):

==========  ===================================================================================
random      ``n`` training cells uniformly (keeps the composition; can miss a rare class)
reweight    ``n`` cells spread equally over the classes (water-filling for small classes)
geosketch   ``n`` cells by geometric sketching of the training cells' PCA features
kmeans      per class, as many k-means centroids as ``reweight`` gives it cells (k-means on the
            PCA features; each centroid is the mean expression of its cluster's cells)
distill     ``cellsynth distill`` with ``n / C`` synthetic cells per class
==========  ===================================================================================

Budgets are cells per class (SPC, ``n = SPC x C``) and fractions of the training set. At 100 %
every selection strategy is the whole training set: it is fitted once and shared. The k-means of
this study runs on PCA features, not on the 2,000-gene expression of distill-eval's ``kmeans``
baseline, because at the larger budgets (thousands of centroids) expression-space k-means costs
hours; the centroids are still cells in expression space (their cluster's mean). Distillation is
run up to ``max_distill_spc`` cells per class and only where every class has that many training
cells; above that a "distilled" set is no condensation and its k-means start alone takes longer
than training on the real cells, so those points are reported as skipped, with the reason.

Every set is also described by its diversity: Shannon and Gini-Simpson indices of its classes and
the Vendi score (cosine kernel) of its cells in the PCA space of the training cells.

The saturation point of a strategy and classifier is the smallest budget whose mean accuracy
reaches ``SATURATION_SHARE`` (95 %) of the best mean accuracy on that curve.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from cellsynth._version import __version__
from cellsynth.errors import DataError
from cellsynth.training.classifiers import CLASSIFIERS, make_classifier
from cellsynth.training.distill import SETTINGS, DistillConfig, distill
from cellsynth.training.distill_data import Task, load_task
from cellsynth.training.distill_eval import check_choice, mean_sd, synthetic_matrix

STRATEGIES: tuple[str, ...] = ("random", "reweight", "geosketch", "kmeans", "distill")
DEFAULT_SPC: tuple[int, ...] = (1, 2, 5, 10, 20, 50)
DEFAULT_FRACTIONS: tuple[float, ...] = (0.01, 0.1, 0.25, 0.5, 1.0)
MAX_DISTILL_SPC = 50
SATURATION_SHARE = 0.95
PCA_COMPONENTS = 50
DISTILL_SETTINGS = SETTINGS  # the names distill() takes beside the budget and the seed


@dataclass(frozen=True)
class Budget:
    """One point of the curve: ``n_cells`` training cells, named by how it was asked for."""

    name: str  # "SPC 5" or "10%"
    n_cells: int
    spc: int | None = None
    fraction: float | None = None


def make_budgets(
    n_train: int, n_classes: int, spcs: Sequence[int], fractions: Sequence[float]
) -> list[Budget]:
    """The budgets in increasing size (an SPC above the training set is refused).

    A fraction is rounded to whole cells, at least one per class.
    """
    out = []
    for s in spcs:
        if int(s) < 1 or int(s) * n_classes > n_train:
            raise DataError(
                f"SPC {s} needs {int(s) * n_classes} cells; the training set has {n_train}"
            )
        out.append(Budget(f"SPC {int(s)}", int(s) * n_classes, spc=int(s)))
    for f in fractions:
        if not 0 < float(f) <= 1:
            raise DataError(f"a fraction of the training set must be in (0, 1], got {f}")
        n = max(n_classes, int(round(float(f) * n_train)))
        out.append(Budget(f"{100 * float(f):g}%", n, fraction=float(f)))
    names = [b.name for b in out]
    if len(set(names)) != len(names):
        raise DataError(f"a budget is named twice: {names}")
    return sorted(out, key=lambda b: (b.n_cells, b.spc is None))


class Skipped(Exception):
    """A strategy that does not apply at a budget; the message says why."""


class SetBuilder:
    """Builds the training set of a strategy at a budget for a seed (see the module docstring)."""

    def __init__(
        self,
        task: Task,
        data: Any,
        distill_settings: Mapping[str, Any],
        max_distill_spc: int,
        progress: bool = False,
    ) -> None:
        from cellsynth.metrics.sound import fit_pca_randomized

        self.task, self.data, self.progress = task, data, progress
        self.distill_settings = dict(distill_settings)
        self.max_distill_spc = int(max_distill_spc)
        self.sizes = np.bincount(task.y_train, minlength=len(task.classes))
        self.pca_mean, self.pca_components = fit_pca_randomized(task.x_train, PCA_COMPONENTS)
        self.features = self.project(task.x_train)  # [n_train, 50]

    def project(self, x: np.ndarray) -> np.ndarray:
        """PCA scores [n, 50] of expression rows x in the training cells' space."""
        return (np.asarray(x, dtype=np.float64) - self.pca_mean) @ self.pca_components.T

    def allocation(self, n: int) -> np.ndarray:
        """Cells per class [C] for an equal share of ``n`` (water-filling)."""
        from cellsynth.subsample.strategies import reweight_allocation

        names = [str(c) for c in range(len(self.sizes))]
        alloc = reweight_allocation(dict(zip(names, self.sizes.tolist(), strict=True)), n)
        return np.array([alloc[c] for c in names], dtype=np.int64)

    def build(self, strategy: str, budget: Budget, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """(x [n, G], y [n]) of ``strategy`` at ``budget``; raises :class:`Skipped`."""
        from cellsynth.subsample import strategies

        task, n = self.task, budget.n_cells
        if strategy == "random":
            idx = strategies.random_indices(len(task.y_train), n, seed)
        elif strategy == "reweight":
            idx = strategies.reweight_indices(task.y_train.astype(str), n, seed)
        elif strategy == "geosketch":
            idx = strategies.geosketch_indices(self.features, n, seed)
        elif strategy == "kmeans":
            return self.kmeans(self.allocation(n), seed)
        elif strategy == "distill":
            return self.distill(budget, seed)
        else:
            raise DataError(f"unknown strategy {strategy!r}; choose from {', '.join(STRATEGIES)}")
        return task.x_train[idx], task.y_train[idx]

    def kmeans(self, per_class: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """Per class, ``per_class[c]`` clusters of its PCA features; their mean expression."""
        from sklearn.cluster import KMeans

        xs, ys = [], []
        for c, k in enumerate(per_class.tolist()):
            idx = self.task.class_indices(c)
            x = self.task.x_train[idx]
            if k >= len(idx):  # as many centroids as cells: the cells themselves
                xs.append(x)
            elif k == 1:
                xs.append(x.mean(axis=0, keepdims=True))
            else:
                km = KMeans(n_clusters=k, n_init=3, random_state=seed).fit(self.features[idx])
                sums = np.zeros((k, x.shape[1]))
                np.add.at(sums, km.labels_, x)
                counts = np.bincount(km.labels_, minlength=k)
                # An empty cluster (duplicated cells) keeps the centroid's nearest cell.
                empty = np.flatnonzero(counts == 0)
                for j in empty:
                    near = np.argmin(((self.features[idx] - km.cluster_centers_[j]) ** 2).sum(1))
                    sums[j], counts[j] = x[near], 1
                xs.append(sums / counts[:, None])
            ys.append(np.full(len(xs[-1]), c, dtype=np.int64))
        return np.concatenate(xs).astype(np.float32), np.concatenate(ys)

    def distill(self, budget: Budget, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """``cellsynth distill`` at n / C cells per class (skipped where it does not apply)."""
        spc = budget.spc or max(1, int(round(budget.n_cells / len(self.sizes))))
        if budget.n_cells >= len(self.task.y_train):
            raise Skipped("the whole training set: nothing to condense")
        if spc > self.max_distill_spc:
            raise Skipped(
                f"SPC {spc} is above max_distill_spc {self.max_distill_spc}: no condensation, "
                "and slower than training on the real cells"
            )
        if spc > self.sizes.min():
            raise Skipped(f"SPC {spc} exceeds the smallest class ({self.sizes.min()} cells)")
        out = distill(
            self.task.bundle, self.data, self.task.label, spc, seed=seed, task=self.task,
            progress=self.progress, **self.distill_settings,
        )  # fmt: skip
        return synthetic_matrix(out, self.task, self.task.label)


def set_diversity(builder: SetBuilder, x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Shannon, Gini-Simpson (of the classes) and Vendi (cosine, PCA space) of one set."""
    from cellsynth.subsample.diversity import diversity

    d = diversity(builder.project(x), labels=np.asarray(builder.task.classes)[y], method="dual")
    return {k: float(d[k]) for k in ("shannon", "gini_simpson", "vendi")}


def saturation_points(
    curves: Mapping[str, Mapping[str, Any]],
    budgets: Sequence[Budget],
    classifiers: Sequence[str],
    share: float = SATURATION_SHARE,
) -> dict[str, dict[str, Any]]:
    """Per strategy and classifier: the best mean accuracy and the smallest budget reaching
    ``share`` of it (None when the strategy has no evaluated point)."""
    out: dict[str, dict[str, Any]] = {}
    for strategy, points in curves.items():
        out[strategy] = {}
        done = [(b, points[b.name]) for b in budgets if points[b.name]["status"] == "ok"]
        for kind in classifiers:
            if not done:
                out[strategy][kind] = None
                continue
            accs = [p["accuracy"][kind]["mean"] for _, p in done]
            best = max(accs)
            first = next(i for i, a in enumerate(accs) if a >= share * best)
            b = done[first][0]
            out[strategy][kind] = {
                "best_accuracy": best,
                "budget": b.name,
                "n_cells": float(done[first][1]["n_cells"]),
            }
    return out


def saturation_curve(
    bundle: Any,
    data: Any,
    label: str,
    *,
    spcs: Sequence[int] = DEFAULT_SPC,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    strategies: Sequence[str] = STRATEGIES,
    classifiers: Sequence[str] = CLASSIFIERS,
    seeds: int = 3,
    distill_settings: Mapping[str, Any] | None = None,
    max_distill_spc: int = MAX_DISTILL_SPC,
    task: Task | None = None,
    classifier_options: Mapping[str, Mapping[str, Any]] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Accuracy and diversity of every strategy at every budget, and the saturation points.

    Parameters
    ----------
    bundle : path, shipped name or Bundle
        Its split gives the training and held-out cells; distillation runs through it.
    data : path, built-in name or AnnData
        The counts the bundle was trained on (None only with ``task``).
    label : str
        obs column the classifiers predict.
    spcs, fractions : sequences
        Budgets as cells per class and as fractions of the training set.
    strategies : sequence of str
        From :data:`STRATEGIES`.
    classifiers : sequence of {'logreg', 'mlp', 'transformer'}
    seeds : int
        Draws of every set and classifier initialisations, seeds 0..seeds-1.
    distill_settings : dict, optional
        :func:`~cellsynth.training.distill.distill` options (``match``, ``iterations``, ...).
    max_distill_spc : int
        Largest SPC distilled (see the module docstring).
    task : Task, optional
        An already loaded task.
    classifier_options : dict, optional
        Per classifier kind, keyword arguments of ``make_classifier``.

    Returns
    -------
    dict
        ``task``, ``budgets``, ``strategies``, ``classifiers``, ``seeds``, ``curves[strategy]
        [budget name]`` = {``status`` 'ok' or 'skipped', ``reason``, ``n_cells``, ``accuracy``
        {kind: {mean, sd, values}}, ``diversity`` {shannon, gini_simpson, vendi: {mean, sd,
        values}}, ``seconds``}, ``saturation[strategy][kind]``, ``seconds``.
    """
    from tqdm.auto import tqdm

    started = time.perf_counter()
    strategies = check_choice(strategies, STRATEGIES, "strategy")
    classifiers = check_choice(classifiers, CLASSIFIERS, "classifier")
    if not strategies or not classifiers:
        raise DataError("name at least one strategy and one classifier")
    if int(seeds) < 1:
        raise DataError(f"seeds must be at least 1, got {seeds}")
    unknown = sorted(set(distill_settings or {}) - set(DISTILL_SETTINGS))
    if unknown:
        raise DataError(f"unknown distillation setting(s) {unknown}; known: {DISTILL_SETTINGS}")
    if task is None:
        task = load_task(bundle, data, label)
    elif task.label != label:
        raise DataError(f"the given task is for label {task.label!r}, not {label!r}")
    C = len(task.classes)
    budgets = make_budgets(len(task.y_train), C, spcs, fractions)
    builder = SetBuilder(task, data, distill_settings or {}, max_distill_spc, progress=False)
    options = dict(classifier_options or {})
    seed_list = list(range(int(seeds)))
    full: dict[tuple[str, int], float] = {}  # the 100 % point's scores, shared (see below)
    curves: dict[str, dict[str, Any]] = {s: {} for s in strategies}
    bar = tqdm(
        total=len(strategies) * len(budgets) * len(seed_list),
        desc="saturation",
        unit="set",
        disable=not progress,
        file=sys.stderr,
    )
    try:
        for strategy in strategies:
            for budget in budgets:
                curves[strategy][budget.name] = _evaluate_point(
                    builder, strategy, budget, seed_list, classifiers, options, full, bar
                )
    finally:
        bar.close()
    config = DistillConfig(**(distill_settings or {}))
    return {
        "task": task.record(data),
        "budgets": [asdict(b) for b in budgets],
        "strategies": strategies,
        "classifiers": classifiers,
        "seeds": seed_list,
        "distill_settings": dict(distill_settings or {}),
        # Every setting as it was in effect (a changed default stays visible in old reports).
        "distill_config": {k: getattr(config, k) for k in SETTINGS},
        "max_distill_spc": int(max_distill_spc),
        "saturation_share": SATURATION_SHARE,
        "curves": curves,
        "saturation": saturation_points(curves, budgets, classifiers),
        "seconds": round(time.perf_counter() - started, 2),
        "cellsynth_version": __version__,
    }


def merge_curves(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """``old`` with the strategies of ``new`` replaced by (or added from) ``new``'s curves.

    Re-measuring one strategy (after its method changed) then costs only that strategy's
    runs. Both results must be of the same task, budgets, classifiers and seeds (DataError
    otherwise; the bundle is compared by its hash, not its path, so a report moves between
    checkouts). ``measured[strategy]`` records, per strategy, the date, seconds, cellsynth
    version, machine, torch threads and effective distillation settings of the run that measured
    it (``new``'s own top-level ``date``, when it has one); the saturation points are recomputed
    over the merged curves; the top-level date, machine and seconds stay those of ``old``'s run.
    """
    for key in ("budgets", "classifiers", "seeds"):
        if list(old[key]) != list(new[key]):
            raise DataError(f"cannot merge saturation curves with different {key}")
    same = ("bundle_hash", "label", "n_train", "n_test", "classes")
    if any(old["task"].get(k) != new["task"].get(k) for k in same):
        raise DataError("cannot merge saturation curves of different tasks (or bundles)")
    if "distill" in new["strategies"] and old.get("max_distill_spc") != new.get("max_distill_spc"):
        raise DataError("cannot merge saturation curves with different max_distill_spc")

    def runs(result: Mapping[str, Any]) -> dict[str, Any]:
        if "measured" in result:
            return dict(result["measured"])
        run = {
            "date": result.get("date"),
            "seconds": result.get("seconds"),
            "cellsynth_version": result.get("cellsynth_version"),
            "distill_settings": result.get("distill_config", result.get("distill_settings", {})),
            "machine": result.get("machine"),
            "threads": result.get("threads"),
        }
        return {s: dict(run) for s in result["strategies"]}

    merged = dict(old)
    strategies = [s for s in STRATEGIES if s in set(old["strategies"]) | set(new["strategies"])]
    merged["strategies"] = strategies
    source = {s: new if s in new["strategies"] else old for s in strategies}
    merged["curves"] = {s: source[s]["curves"][s] for s in strategies}
    merged["measured"] = {**runs(old), **{s: runs(new)[s] for s in new["strategies"]}}
    budgets = [Budget(**b) for b in old["budgets"]]
    merged["saturation"] = saturation_points(merged["curves"], budgets, old["classifiers"])
    if "distill" in source:  # the distillation settings are those of the run behind its curve
        for key in ("distill_settings", "distill_config"):
            if key in source["distill"]:
                merged[key] = source["distill"][key]
    return merged


def _evaluate_point(
    builder: SetBuilder,
    strategy: str,
    budget: Budget,
    seeds: list[int],
    classifiers: list[str],
    options: dict[str, Any],
    full: dict[tuple[str, int], float],
    bar: Any,
) -> dict[str, Any]:
    """Every seed's set of one strategy at one budget, scored by every classifier."""
    task = builder.task
    whole = budget.n_cells >= len(task.y_train) and strategy != "distill"
    accs: dict[str, list[float]] = {k: [] for k in classifiers}
    div: dict[str, list[float]] = {"shannon": [], "gini_simpson": [], "vendi": []}
    n_cells, t0 = [], time.perf_counter()
    for seed in seeds:
        bar.set_postfix_str(f"{strategy} {budget.name} seed {seed}")
        try:
            x, y = (task.x_train, task.y_train) if whole else builder.build(strategy, budget, seed)
        except Skipped as why:
            bar.update(len(seeds) - seeds.index(seed))
            return {"status": "skipped", "reason": str(why), "n_cells": float(budget.n_cells)}
        n_cells.append(len(y))
        for k, v in set_diversity(builder, x, y).items():
            div[k].append(v)
        for kind in classifiers:
            key = (kind, 0 if kind == "logreg" else seed)  # logreg is convex: seed-free
            if whole and key in full:  # the whole training set: fitted once, for any strategy
                accs[kind].append(full[key])
                continue
            clf = make_classifier(kind, len(task.classes), seed, **options.get(kind, {}))
            acc = float(np.mean(clf.fit(x, y).predict(task.x_test) == task.y_test))
            if whole:
                full[key] = acc
            accs[kind].append(acc)
        bar.update(1)
    return {
        "status": "ok",
        "n_cells": float(np.mean(n_cells)),
        "accuracy": {k: mean_sd(v) for k, v in accs.items()},
        "diversity": {k: mean_sd(v) for k, v in div.items()},
        "seconds": round(time.perf_counter() - t0, 2),
    }
