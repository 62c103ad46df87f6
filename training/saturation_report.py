"""Writing a learning-saturation result: curve.json, curve.md and curve.png."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from cellsynth.training.distill_eval import CLASSIFIER_NAMES, plus_minus, write_result_files

FILES = ("curve.json", "curve.md", "curve.png")
COLORS = {"random": "tab:gray", "reweight": "tab:blue", "geosketch": "tab:green",
          "kmeans": "tab:orange", "distill": "tab:red"}  # fmt: skip


def markdown_report(result: Mapping[str, Any]) -> str:
    """curve.md: accuracy and diversity of every strategy at every budget, then the
    saturation points."""
    t, kinds = result["task"], result["classifiers"]
    names = [CLASSIFIER_NAMES.get(k, k) for k in kinds]
    lines = [
        f"# Learning saturation: {t['label']}",
        "",
        f"Bundle `{t['bundle']}`; {t['n_train']} training and {t['n_test']} held-out real cells "
        f"of {len(t['classes'])} classes, {t['n_genes']} genes. Accuracy on the held-out cells, "
        f"mean ± sd over seeds {result['seeds']}; diversity of the training set (Shannon and "
        "Gini-Simpson of its classes, Vendi of its cells, cosine kernel on 50 PCs of the "
        "training cells).",
        "",
        *_measured_lines(result),
        "| strategy | budget | cells | "
        + " | ".join(f"{n} acc" for n in names)
        + " | Shannon | Gini-Simpson | Vendi |",
        "|---|---|---:|" + "---:|" * (len(kinds) + 3),
    ]
    for strategy in result["strategies"]:
        for b in result["budgets"]:
            p = result["curves"][strategy][b["name"]]
            if p["status"] != "ok":
                row = f"| {strategy} | {b['name']} | - | skipped: {p.get('reason', '')} |"
                lines.append(row + " |" * (len(kinds) + 2))
                continue
            accs = [plus_minus(p["accuracy"][k]) for k in kinds]
            d = p["diversity"]
            divs = [
                plus_minus(d["shannon"], 2),
                plus_minus(d["gini_simpson"], 2),
                plus_minus(d["vendi"], 1),
            ]
            row = f"| {strategy} | {b['name']} | {p['n_cells']:.0f} | "
            lines.append(row + " | ".join(accs + divs) + " |")
    share = int(round(100 * result["saturation_share"]))
    lines += [
        "",
        f"Saturation point: the smallest budget whose mean accuracy reaches {share}% of the "
        "best mean accuracy on the same curve (budget, cells, best accuracy).",
        "",
        "| strategy | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(kinds),
    ]
    for strategy in result["strategies"]:
        cells = []
        for k in kinds:
            s = result["saturation"][strategy][k]
            point = None if s is None else f"{s['budget']} ({s['n_cells']:.0f}; "
            cells.append("n/a" if s is None else f"{point}{s['best_accuracy']:.3f})")
        lines.append(f"| {strategy} | " + " | ".join(cells) + " |")
    skipped = sorted(
        {
            f"- {s} {b['name']}: {result['curves'][s][b['name']]['reason']}"
            for s in result["strategies"]
            for b in result["budgets"]
            if result["curves"][s][b["name"]]["status"] != "ok"
        }
    )
    if skipped:
        lines += ["", "Skipped:", "", *skipped]
    return "\n".join(lines) + "\n"


def curve_figure(result: Mapping[str, Any], path: Path) -> Path:
    """One panel per classifier (accuracy against cells, log scale, saturation points ringed)
    and one of the Vendi score against cells."""
    from cellsynth.evaluation.plots import pyplot, save_figure

    plt = pyplot()
    kinds = result["classifiers"]
    fig, axes = plt.subplots(1, len(kinds) + 1, figsize=(3.6 * (len(kinds) + 1), 3.6))
    for strategy in result["strategies"]:
        points = [
            (result["curves"][strategy][b["name"]], b)
            for b in result["budgets"]
            if result["curves"][strategy][b["name"]]["status"] == "ok"
        ]
        if not points:
            continue
        n = np.array([p["n_cells"] for p, _ in points])
        color = COLORS.get(strategy)
        for ax, kind in zip(axes, kinds, strict=False):
            acc = np.array([p["accuracy"][kind]["mean"] for p, _ in points])
            sd = np.array([p["accuracy"][kind]["sd"] for p, _ in points])
            ax.errorbar(n, acc, yerr=sd, marker="o", ms=3, lw=1.2, capsize=2, color=color,
                        label=strategy)  # fmt: skip
            sat = result["saturation"][strategy][kind]
            if sat is not None:  # ring the saturation point
                at = [b["name"] for _, b in points].index(sat["budget"])
                ax.plot(n[at], acc[at], "o", ms=10, mfc="none", color=color)
        vendi = [p["diversity"]["vendi"]["mean"] for p, _ in points]
        axes[-1].plot(n, vendi, marker="o", ms=3, lw=1.2, color=color, label=strategy)
    for ax, kind in zip(axes, kinds, strict=False):
        ax.set_xscale("log")
        ax.set_xlabel("training cells")
        ax.set_ylabel("accuracy on held-out real cells")
        ax.set_title(CLASSIFIER_NAMES.get(kind, kind), fontsize=10)
        ax.grid(alpha=0.3)
    axes[-1].set_xscale("log")
    axes[-1].set_xlabel("training cells")
    axes[-1].set_ylabel("Vendi score (cosine, 50 PCs)")
    axes[-1].set_title("diversity", fontsize=10)
    axes[-1].grid(alpha=0.3)
    axes[0].legend(fontsize=7, loc="lower right")
    fig.suptitle(f"{result['task']['label']}: learning saturation (rings: saturation points)",
                 fontsize=10)  # fmt: skip
    fig.tight_layout()
    return save_figure(fig, path)


def remeasured_runs(result: Mapping[str, Any]) -> dict[str, Any]:
    """The strategies measured by another run than most of them (after merge_curves), with
    that run's record; empty when one run measured them all."""
    runs = result.get("measured", {})
    keys = {s: json.dumps(run, sort_keys=True) for s, run in runs.items()}
    if len(set(keys.values())) < 2:
        return {}
    most = max(set(keys.values()), key=list(keys.values()).count)
    return {s: runs[s] for s, k in keys.items() if k != most}


def _measured_lines(result: Mapping[str, Any]) -> list[str]:
    """When strategies were measured by different runs (merge_curves): which, when, how."""
    if not remeasured_runs(result):
        return []
    runs = result["measured"]
    lines = ["Measured by separate runs:", ""]
    for strategy, r in runs.items():
        settings = r.get("distill_settings") or "defaults"
        extra = f", distillation settings {settings}" if strategy == "distill" else ""
        lines.append(
            f"- {strategy}: {r.get('date')}, cellsynth {r.get('cellsynth_version')}{extra}"
        )
    return lines + [""]


def write_report(result: Mapping[str, Any], out_dir: str | os.PathLike) -> dict[str, str]:
    """Write curve.json (strict JSON), curve.md and curve.png into ``out_dir``."""
    return write_result_files(result, out_dir, FILES, markdown_report, curve_figure)
