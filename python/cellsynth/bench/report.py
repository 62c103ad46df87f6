"""``cellsynth bench``'s report: a terminal table, bench.json, bench.md and three PNGs.

- ``latency.png``: p50 latency of one batch against the acceleration rate (T / steps), one line
  per engine, precision and scheduler, at the largest batch size;
- ``throughput.png``: cells/s against batch size, one line per engine and precision, at the first
  scheduler setting;
- ``quality.png`` (with fidelity): kNN AUC against cells/s, one point per scheduler setting.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cellsynth.files import atomic_path

COLUMNS = (
    ("engine", "engine", "{}"),
    ("precision", "precision", "{}"),
    ("scheduler", "scheduler", "{}"),
    ("steps", "steps", "{}"),
    ("batch_size", "batch", "{}"),
    ("device", "device", "{}"),
    ("latency_p50_s", "p50 ms", "ms"),
    ("latency_p95_s", "p95 ms", "ms"),
    ("latency_p99_s", "p99 ms", "ms"),
    ("cells_per_s", "cells/s", "{:.4g}"),
    ("model_ms_per_step", "model ms/step", "{:.3g}"),
    ("scheduler_ms_per_step", "sched ms/step", "{:.3g}"),
    ("first_cell_s", "first cell s", "{:.3g}"),
    ("peak_rss_mb", "peak MB", "{:.0f}"),
)


def _cell(row: Mapping[str, Any], key: str, fmt: str) -> str:
    value = row.get(key)
    if value is None:
        return "-"
    if fmt == "ms":
        return f"{1e3 * value:.3g}"
    return fmt.format(value)


def table(result: Mapping[str, Any]) -> str:
    """The rows as a fixed-width text table, skipped ones with their reason."""
    head = [label for _, label, _ in COLUMNS] + ["note"]
    body = []
    for row in result["rows"]:
        cells = [_cell(row, k, f) if _measured(row) or i < 5 else "-"
                 for i, (k, _, f) in enumerate(COLUMNS)]  # fmt: skip
        body.append([*cells, note(row)])
    widths = [max(len(r[i]) for r in [head, *body]) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
             for r in [head, *body]]  # fmt: skip
    return "\n".join(lines)


def note(row: Mapping[str, Any]) -> str:
    if "skipped" in row:
        return f"skipped: {row['skipped']}"
    if "failed" in row:
        return f"FAILED: {row['failed']}"
    if row.get("extrapolated"):
        return f"extrapolated from {row['timed_steps']} of {row['steps']} steps"
    return f"{row['repeats']} runs"


def markdown(result: Mapping[str, Any]) -> str:
    m = result["machine"]
    versions = ", ".join(f"{k} {v}" for k, v in m["versions"].items())
    lines = [
        f"# cellsynth bench: {result['bundle_name']}",
        "",
        f"Measured {result['date']} on {m['cpu']} ({m['cores']} cores"
        + (f", GPU {m['gpu']}" if m.get("gpu") else ", no GPU")
        + f"); threads {result['threads'] or 'all'}; {versions}; load average at the start "
        f"{m['load_average_1_5_15_min']}. Bundle {result['bundle']} (config hash "
        f"{result['bundle_hash'][:12]}). Latency: one whole batch from noise to cells, "
        f"percentiles over {result['repeats']} runs after a warm-up step; configurations whose "
        f"runs would exceed {result['budget_s']} s were timed over their first steps and "
        "extrapolated (said in the note). Took "
        f"{result['seconds']} s.",
        "",
        "| " + " | ".join(label for _, label, _ in COLUMNS) + " | note |",
        "|" + "---|" * (len(COLUMNS) + 1),
    ]
    for row in result["rows"]:
        cells = [_cell(row, k, f) if _measured(row) or i < 5 else "-"
                 for i, (k, _, f) in enumerate(COLUMNS)]  # fmt: skip
        lines.append("| " + " | ".join([*cells, note(row)]) + " |")
    if result.get("fidelity"):
        lines += [
            "",
            "## Fidelity against real cells",
            "",
            "| scheduler | steps | precision | cells | kNN AUC (floor) | PCA-MMD² (floor) "
            "| r gene means |",
            "|---|---:|---|---:|---:|---:|---:|",
        ]
        for f in result["fidelity"]:
            met = f["metrics"]
            lines.append(
                f"| {f['scheduler']} | {f['steps']} | {f['precision']} | {f['cells']} | "
                f"{_pair(met.get('knn_auc'))} | {_pair(met.get('mmd2_rbf_pca'))} | "
                f"{_num(met.get('gene_mean_pearson', {}).get('value'))} |"
            )
    return "\n".join(lines) + "\n"


def _measured(row: Mapping[str, Any]) -> bool:
    return "skipped" not in row and "failed" not in row


def _num(v: Any) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3g}"


def _pair(metric: Mapping[str, Any] | None) -> str:
    metric = metric or {}
    return f"{_num(metric.get('value'))} ({_num(metric.get('floor'))})"


def write_report(result: Mapping[str, Any], out: Path) -> dict[str, Path]:
    """Write bench.json, bench.md and the PNGs into ``out``, each through a temporary name."""
    from cellsynth.files import strict_json

    out.mkdir(parents=True, exist_ok=True)
    files = {"json": out / "bench.json", "markdown": out / "bench.md"}
    with atomic_path(files["json"]) as tmp:
        Path(tmp).write_text(json.dumps(strict_json(result), indent=1) + "\n")
    with atomic_path(files["markdown"]) as tmp:
        Path(tmp).write_text(markdown(result))
    files.update(plots(result, out))
    return files


def plots(result: Mapping[str, Any], out: Path) -> dict[str, Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in result["rows"] if _measured(r)]
    files: dict[str, Path] = {}
    if not rows:
        return files
    title = f"{result['bundle_name']}, {result['machine']['cpu']}, threads {result['threads']}"

    biggest = max(r["batch_size"] for r in rows)
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for key, group in _groups(rows, ("engine", "precision", "scheduler"), biggest).items():
        group.sort(key=lambda r: r["rate"])
        ax.plot([r["rate"] for r in group], [r["latency_p50_s"] for r in group], "o-",
                label=" ".join(key))  # fmt: skip
    _finish(ax, "acceleration rate (T / steps)", f"p50 latency of a batch of {biggest} (s)",
            title, log=True)  # fmt: skip
    files["latency_png"] = _save(fig, plt, out / "latency.png")

    first = (rows[0]["scheduler"], rows[0]["steps"])
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    at_first = [r for r in rows if (r["scheduler"], r["steps"]) == first]
    for key, group in _groups(at_first, ("engine", "precision"), None).items():
        group.sort(key=lambda r: r["batch_size"])
        ax.plot([r["batch_size"] for r in group], [r["cells_per_s"] for r in group], "o-",
                label=" ".join(key))  # fmt: skip
    _finish(ax, "batch size", f"cells/s ({first[0]} {first[1]} steps)", title, log=True)
    files["throughput_png"] = _save(fig, plt, out / "throughput.png")

    if result.get("fidelity"):
        fig, ax = plt.subplots(figsize=(6.5, 4.5))
        for f in result["fidelity"]:
            speed = max(
                (r["cells_per_s"] for r in rows
                 if (r["scheduler"], r["steps"], r["precision"])
                 == (f["scheduler"], f["steps"], f["precision"])),
                default=None,
            )  # fmt: skip
            auc = f["metrics"].get("knn_auc", {}).get("value")
            if speed is None or auc is None:
                continue
            ax.scatter(speed, auc)
            ax.annotate(f"{f['scheduler']} {f['steps']} {f['precision']}", (speed, auc),
                        fontsize=8, xytext=(3, 3), textcoords="offset points")  # fmt: skip
        floor = result["fidelity"][0]["metrics"].get("knn_auc", {}).get("floor")
        if floor is not None:
            ax.axhline(floor, color="grey", ls="--", lw=1, label="real vs real")
        ax.set_xscale("log")
        ylabel = "kNN AUC, real vs synthetic (0.5 = indistinguishable)"
        _finish(ax, "cells/s (fastest configuration of the setting)", ylabel, title, log=False)
        files["quality_png"] = _save(fig, plt, out / "quality.png")
    return files


def _groups(rows, keys, batch):
    out: dict[tuple[str, ...], list] = {}
    for r in rows:
        if batch is None or r["batch_size"] == batch:
            out.setdefault(tuple(str(r[k]) for k in keys), []).append(r)
    return out


def _finish(ax, xlabel, ylabel, title, log):
    if log:
        ax.set_xscale("log")
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)


def _save(fig, plt, path: Path) -> Path:
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
    return path
