"""What ``cellsynth evaluate`` writes: metrics.json (strict JSON), report.md and the figures.

:func:`markdown_report` turns an :func:`~cellsynth.evaluation.evaluate.evaluate` result into the
report a biologist reads: every metric beside its real-vs-real floor, what it means, and the
key metrics per label.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from cellsynth.files import write_json, write_text
from cellsynth.metrics import METRICS

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


def write_report_files(
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
    write_json(out / "metrics.json", result)
    write_text(out / "report.md", markdown_report(result))
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
