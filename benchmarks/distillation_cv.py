"""Distillation against its bars over K cross-validation folds, not one held-out split.

Why: the distillation benchmark (benchmarks/distillation.py) tests on the bundle's one held-out
split, and its bars are the accuracy of logistic regression on one class-mean cell per class and
on k-means centroids on that split. On a small test split a bar can sit above its own average by
more than the margin the goal asks for (PBMC 3k: 540 test cells, one cell is 0.002, and the
bar's 0.961 on the split is 0.017 above the distilled set's 0.944). Here the
bundle's training and held-out cells are pooled and split into K stratified folds
(scikit-learn's ``StratifiedKFold``, seeded); each fold is held out once while the other K - 1
are distilled (``cellsynth distill``'s default) and the same rows as the goals name (class means,
k-means centroids, the full training folds) are trained, so every bar and the distilled set are
measured on the same K test folds and their spread over folds is known.

Pooling the held-out cells into training folds is sound only for a distillation that does not
go through the bundle's models (which saw the training split): the generator is always
``none`` (expression space, the default); ``--match`` and ``--option KEY=VALUE`` (as in
benchmarks/distillation.py) choose the objective.

    python benchmarks/distillation_cv.py --out benchmarks/results
    python benchmarks/distillation_cv.py --bundle runs/saturation/pbmc3k-latent --data pbmc3k \
        --labels celltype --prefix distillation_cv_pbmc3k --out benchmarks/results
    python benchmarks/distillation_cv.py --bundle runs/saturation/pbmc3k-latent --data pbmc3k \
        --labels celltype --match mmd --option features=random \
        --prefix distillation_cv_mmd_random_pbmc3k --out benchmarks/results
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import time
from pathlib import Path

import numpy as np
import torch
from _machine import machine
from distillation import add_option_argument, option_words, parse_options

from cellsynth.files import atomic_path
from cellsynth.training.distill import distill
from cellsynth.training.distill_data import Task, load_task
from cellsynth.training.distill_eval import CLASSIFIER_NAMES, evaluate_distilled, mean_sd

MARGIN = 0.01  # the goal: distilled >= max(class_mean, kmeans) + MARGIN, logistic regression
ROWS = ("distilled", "class_mean", "kmeans", "full")


def fold_tasks(task: Task, folds: int, seed: int = 0) -> list[Task]:
    """The task's training and held-out cells pooled and cut into ``folds`` stratified folds.

    Fold k's task trains on the other folds and tests on fold k. Its SCDG label codes are zeros:
    only a distillation through SCDG reads them, and a pooled split must not use one (module
    docstring). Held-out cells are named ``heldout-<i>`` (a Task keeps no test-cell names).
    """
    from sklearn.model_selection import StratifiedKFold

    x = np.vstack([task.x_train, task.x_test])
    y = np.concatenate([task.y_train, task.y_test])
    names = np.concatenate(
        [task.cell_names, np.array([f"heldout-{i}" for i in range(len(task.y_test))], dtype=object)]
    )
    smallest = int(np.bincount(y, minlength=len(task.classes)).min())
    if smallest < folds:
        raise ValueError(f"the smallest class has {smallest} cells, fewer than {folds} folds")
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    out = []
    for train, test in splitter.split(x, y):
        out.append(
            dataclasses.replace(
                task,
                x_train=x[train],
                x_test=x[test],
                y_train=y[train],
                y_test=y[test],
                cond_train=np.zeros((len(train), task.cond_train.shape[1]), dtype=np.int64),
                cell_names=names[train],
            )
        )
    return out


def run(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    tasks = []
    for label in args.labels:
        task = load_task(args.bundle, args.data, label)
        folds = []
        for k, fold in enumerate(fold_tasks(task, args.folds, args.fold_seed)):
            full = None  # does not depend on SPC: fitted once per fold
            per_spc = {}  # keyed by str(spc): the same in memory as in the JSON
            for spc in args.spc:
                started = time.perf_counter()
                synthetic = distill(
                    args.bundle, args.data, label, spc, match=args.match, generator="none",
                    seed=0, task=fold, progress=False, **args.options,
                )  # fmt: skip
                seconds = time.perf_counter() - started
                baselines = ["class_mean", "kmeans"] + (["full"] if full is None else [])
                result = evaluate_distilled(
                    synthetic, None, label, seeds=args.seeds, classifiers=args.classifiers,
                    baselines=baselines, task=fold, progress=False,
                )  # fmt: skip
                rows = {
                    m: {c: r["classifiers"][c]["accuracy"]["mean"] for c in args.classifiers}
                    for m, r in result["results"].items()
                }
                full = full or rows["full"]
                rows["full"] = full
                per_spc[str(spc)] = {"rows": rows, "distill_seconds": round(seconds, 1)}
                print(
                    f"{label} fold {k} SPC={spc}: distilled in {seconds:.0f} s; "
                    + ", ".join(f"{m} {v['logreg']:.3f}" for m, v in rows.items())
                )
            folds.append({"n_train": int(len(fold.y_train)), "n_test": int(len(fold.y_test)),
                          "spc": per_spc})  # fmt: skip
        tasks.append({"label": label, "classes": task.classes, "folds": folds})
    return {
        "date": dt.date.today().isoformat(),
        "machine": machine(),
        "settings": {k: v for k, v in vars(args).items() if k not in ("out", "prefix", "option")},
        "tasks": tasks,
        "summary": summarise(tasks, args.spc, args.classifiers),
    }


def summarise(tasks: list[dict], spcs: list[int], classifiers: list[str]) -> list[dict]:
    """Per task and SPC: each row's accuracy over folds, and the goal's margin fold by fold."""
    out = []
    for t in tasks:
        for spc in spcs:
            runs = [f["spc"][str(spc)]["rows"] for f in t["folds"]]
            rows = {
                m: {c: mean_sd([r[m][c] for r in runs]) for c in classifiers}
                for m in ROWS
                if all(m in r for r in runs)
            }
            margins = [
                r["distilled"]["logreg"] - max(r["class_mean"]["logreg"], r["kmeans"]["logreg"])
                for r in runs
            ]
            out.append({
                "label": t["label"], "spc": spc, "rows": rows,
                "margin": mean_sd(margins),
                "folds_meeting_goal": int(sum(m >= MARGIN - 1e-12 for m in margins)),
                "folds": len(runs),
                "distilled_minus_full": mean_sd(
                    [r["distilled"]["logreg"] - r["full"]["logreg"] for r in runs]
                ),
            })  # fmt: skip
    return out


def markdown(res: dict) -> str:
    s, m = res["settings"], res["machine"]
    kinds = s["classifiers"]
    lines = [
        f"# Distillation over {s['folds']} cross-validation folds: {s['data']}",
        "",
        f"{res['date']}, {m['cpu']} ({m['cores']} cores, {s['threads']} torch threads). Bundle "
        f"`{s['bundle']}`: its training and held-out cells pooled, {s['folds']} stratified folds "
        f"(seed {s['fold_seed']}); each fold tested once, trained on the others; "
        f"distilled in expression space, match {s.get('match', 'lr')}{option_words(s)}. "
        f"Accuracy mean ± sd over the folds ({s['seeds']} classifier seed(s) per fold).",
        "",
        "| task | SPC | method | " + " | ".join(CLASSIFIER_NAMES[k] for k in kinds) + " |",
        "|---|---:|---|" + "---:|" * len(kinds),
    ]
    for row in res["summary"]:
        for method, accs in row["rows"].items():
            name = f"**{method}**" if method == "distilled" else method
            cells = [f"{accs[k]['mean']:.3f} ± {accs[k]['sd']:.3f}" for k in kinds]
            lines.append(f"| {row['label']} | {row['spc']} | {name} | " + " | ".join(cells) + " |")
    lines += ["", "Goal, fold by fold (LR distilled - max(class_mean, kmeans) >= +0.01):", ""]
    for row in res["summary"]:
        mg, full = row["margin"], row["distilled_minus_full"]
        lines.append(
            f"- {row['label']} SPC={row['spc']}: margin {mg['mean']:+.3f} ± {mg['sd']:.3f}, met "
            f"in {row['folds_meeting_goal']} of {row['folds']} folds; distilled - full training "
            f"folds {full['mean']:+.3f} ± {full['sd']:.3f}"
        )
    for t in res["tasks"]:
        times = [f["spc"][str(v)]["distill_seconds"] for f in t["folds"] for v in s["spc"]]
        lines.append(
            f"- {t['label']}: distillation {min(times)}-{max(times)} s per set; test folds of "
            f"{min(f['n_test'] for f in t['folds'])}-{max(f['n_test'] for f in t['folds'])} cells"
        )
    return "\n".join(lines) + "\n"


def figure(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [t["label"] for t in res["tasks"]]
    fig, axes = plt.subplots(1, len(labels), figsize=(4.2 * len(labels), 3.6), squeeze=False)
    for ax, label in zip(axes[0], labels, strict=True):
        rows = [r for r in res["summary"] if r["label"] == label]
        spcs = [r["spc"] for r in rows]
        for i, method in enumerate(ROWS):
            mean = [r["rows"][method]["logreg"]["mean"] for r in rows]
            sd = [r["rows"][method]["logreg"]["sd"] for r in rows]
            shift = 1 + 0.04 * (i - (len(ROWS) - 1) / 2)  # side by side, not on top of each other
            ax.errorbar([v * shift for v in spcs], mean, yerr=sd, marker="o", capsize=3,
                        label=method, linestyle="--" if method == "full" else "-")  # fmt: skip
        ax.set_xscale("log")
        ax.set_xticks(spcs, [str(v) for v in spcs])
        ax.set_xlabel("cells per class")
        ax.set_ylabel("LR accuracy, mean ± sd over folds")
        ax.set_title(label, fontsize=10)
        ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", default="kang-scdg")
    parser.add_argument("--data", default="kang")
    parser.add_argument("--labels", nargs="+", default=["cell_type", "stim"])
    parser.add_argument("--spc", nargs="+", type=int, default=[1, 5, 10])
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--fold-seed", type=int, default=0)
    parser.add_argument(
        "--classifiers", nargs="+", choices=list(CLASSIFIER_NAMES), default=["logreg"]
    )
    parser.add_argument("--seeds", type=int, default=1, help="classifier seeds per fold")
    parser.add_argument("--match", default="lr", choices=["lr", "dm", "dc", "krr", "mmd"])
    add_option_argument(parser)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--prefix", default="distillation_cv", help="name of the output files")
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args()
    args.options = parse_options(args.option)
    res = run(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for suffix, text in (("json", json.dumps(res, indent=1) + "\n"), ("md", markdown(res))):
        with atomic_path(out / f"{args.prefix}.{suffix}") as tmp:
            Path(tmp).write_text(text)
    figure(res, out / f"{args.prefix}.png")
    print(markdown(res))


if __name__ == "__main__":
    main()
