"""Speed against quality across acceleration rates, for one bundle (the scRDiT paper's table+).

For each sampler setting — DDPM over all 1000 steps, DDIM at acceleration rates 10, 20, 50, 100
(100, 50, 20, 10 steps) and DPM-Solver++ at 5, 10 and 20 steps — time generation and score its
cells against the bundle's real held-out cells. A thin caller of ``cellsynth bench``
(:func:`cellsynth.bench.run.bench`): the timing is its loop (latency of one batch, median of
``--repeats``, same engine, batch and seed everywhere; settings whose runs exceed ``--budget-s``
are timed over their first steps and extrapolated, said in the row), and the fidelity is its
``fidelity`` scoring (``cellsynth evaluate``: the held-out cells in the bundle's preprocessing,
synthetic cells with their label mix) with the paper's metrics (KL, W1 of values and gene means,
multi-kernel MMD) and ours (PCA-MMD, W2, kNN AUC, gene statistics), each beside its real-vs-real
floor. Writes acceleration.json, acceleration.md and acceleration.png (speed against PCA-MMD).

Goal for the shipped default model (printed, never asserted): at 50 DDIM steps PCA-MMD within 2x
of its floor and kNN AUC <= 0.65; DPM-Solver++ at 10 steps no worse than DDIM at 50.

    python benchmarks/acceleration.py --bundle kang-dit --out benchmarks/results
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
from pathlib import Path

import numpy as np
from _machine import machine

import cellsynth
from cellsynth.bench.run import bench

# (label, scheduler, steps); DDPM runs all T steps.
SETTINGS = [
    ("DDPM 1000", "ddpm", 1000),
    ("DDIM 100 (rate 10)", "ddim", 100),
    ("DDIM 50 (rate 20)", "ddim", 50),
    ("DDIM 20 (rate 50)", "ddim", 20),
    ("DDIM 10 (rate 100)", "ddim", 10),
    ("DPM-Solver++ 20", "dpmsolver++", 20),
    ("DPM-Solver++ 10", "dpmsolver++", 10),
    ("DPM-Solver++ 5", "dpmsolver++", 5),
]
COLUMNS = [
    ("paper_kl_softmax", "KL"),
    ("paper_wasserstein_values", "W1 values"),
    ("paper_wasserstein_gene_means", "W1 gene means"),
    ("paper_mmd_multikernel", "MMD (paper)"),
    ("mmd2_rbf_pca", "PCA-MMD²"),
    ("w2_pca", "W2 (PCA)"),
    ("knn_auc", "kNN AUC"),
    ("gene_mean_pearson", "r gene means"),
    ("gene_zero_fraction_pearson", "r zero fractions"),
]


def measure(bundle, settings: list[tuple[str, str, int]], n_cells: int, data: str, args) -> list:
    """Time and score ``settings`` with ``cellsynth bench``; one row per setting."""
    result = bench(
        bundle,
        engines=[args.engine],
        schedulers=[f"{scheduler}:{steps}" for _, scheduler, steps in settings],
        batch_sizes=[args.batch_size],
        threads=args.threads,
        repeats=args.repeats,
        budget_s=args.budget_s,
        device="cpu",
        fidelity=data,
        fidelity_cells=n_cells,
        fidelity_metrics=[key for key, _ in COLUMNS],
        seed=args.seed,
    )
    scored = {(f["scheduler"], f["steps"]): f for f in result["fidelity"]}
    rows = []
    for (label, scheduler, steps), timed in zip(settings, result["rows"], strict=True):
        if "latency_p50_s" not in timed:
            raise SystemExit(f"{label}: {timed.get('skipped') or timed.get('failed')}")
        fidelity = scored[(scheduler, steps)]
        rows.append(
            {
                "setting": label,
                "scheduler": scheduler,
                "steps": steps,
                "n_cells": fidelity["cells"],
                "cells_per_s": round(timed["cells_per_s"], 1),
                "seconds_per_1000_cells": round(1000 / timed["cells_per_s"], 2),
                "latency_p50_s": timed["latency_p50_s"],
                "timed_steps": timed["timed_steps"],
                "extrapolated": timed["extrapolated"],
                "metrics": fidelity["metrics"],
            }
        )
        m = fidelity["metrics"]
        print(
            f"  {label}: {rows[-1]['cells_per_s']} cells/s; PCA-MMD² "
            f"{m['mmd2_rbf_pca']['value']:.4g} (floor {m['mmd2_rbf_pca']['floor']:.4g}); "
            f"kNN AUC {m['knn_auc']['value']:.3f}",
            flush=True,
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", default="kang-dit")
    parser.add_argument("--engine", default="onnxruntime")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3, help="timed batches per setting")
    parser.add_argument(
        "--budget-s", type=float, default=60.0, help="timing seconds per setting (not scoring)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--cells", type=int, default=2000, help="synthetic cells scored per setting"
    )
    parser.add_argument(
        "--ddpm-cells",
        type=int,
        default=None,
        help="cells for the 1000-step DDPM row (default: --cells); it costs 50x DDIM-20",
    )
    parser.add_argument("--settings", nargs="+", help="labels of SETTINGS to run (default: all)")
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args()

    bundle = cellsynth.load_bundle(args.bundle)
    data = bundle.config.get("training", {}).get("data", "kang")
    chosen = [s for s in SETTINGS if not args.settings or s[0] in args.settings]
    ddpm = [s for s in chosen if s[1] == "ddpm"]
    rest = [s for s in chosen if s[1] != "ddpm"]
    rows = []
    if ddpm:
        rows += measure(bundle, ddpm, args.ddpm_cells or args.cells, data, args)
    if rest:
        rows += measure(bundle, rest, args.cells, data, args)
    result = {
        "date": dt.date.today().isoformat(),
        "machine": machine(),
        "bundle": str(bundle.path),
        "bundle_hash": bundle.hash,
        "engine": args.engine,
        "threads": args.threads,
        "batch_size": args.batch_size,
        "repeats": args.repeats,
        "budget_s": args.budget_s,
        "real_cells": f"held-out cells of {data} (cellsynth evaluate, renormalised)",
        "rows": rows,
        "goals": goals(rows),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "acceleration.json").write_text(json.dumps(result, indent=1, default=_json) + "\n")
    (out / "acceleration.md").write_text(markdown(result))
    plot(rows, out / "acceleration.png")
    print(markdown(result))


def _json(v):
    return None if isinstance(v, float) and math.isnan(v) else str(v)


def goals(rows: list[dict]) -> list[str]:
    """The issue's goals for the default model, as met / missed lines."""
    by = {r["setting"]: r["metrics"] for r in rows}
    out = []
    ddim50 = by.get("DDIM 50 (rate 20)")
    if ddim50:
        mmd, floor = ddim50["mmd2_rbf_pca"]["value"], ddim50["mmd2_rbf_pca"]["floor"]
        ratio = mmd / floor if floor > 0 else float("inf")
        auc = ddim50["knn_auc"]["value"]
        out.append(
            f"DDIM 50: PCA-MMD² {mmd:.4g} = {ratio:.2f}x its floor {floor:.4g} (goal <= 2x): "
            f"{'met' if ratio <= 2 else 'missed'}"
        )
        verdict = "met" if auc <= 0.65 else "missed"
        out.append(f"DDIM 50: kNN AUC {auc:.3f} (goal <= 0.65): {verdict}")
    dpm10 = by.get("DPM-Solver++ 10")
    if ddim50 and dpm10:
        a, b = dpm10["mmd2_rbf_pca"]["value"], ddim50["mmd2_rbf_pca"]["value"]
        out.append(
            f"DPM-Solver++ 10 PCA-MMD² {a:.4g} vs DDIM 50 {b:.4g} (goal: no worse): "
            f"{'met' if a <= b * 1.05 else 'missed'} (5% tolerance for sampling noise)"
        )
    return out


def markdown(result: dict) -> str:
    m = result["machine"]
    lines = [
        f"Measured {result['date']} on {m['cpu']} ({m['cores']} cores, {result['threads']} "
        f"threads) with `cellsynth bench`'s loop; bundle {Path(result['bundle']).name}, engine "
        f"{result['engine']}, batch {result['batch_size']} (cells/s from the median latency of "
        f"{result['repeats']} batches; * = timed over the first steps and extrapolated); real: "
        f"{result['real_cells']}; each metric as value (real-vs-real floor).",
        "",
        "| sampler | cells scored | s / 1000 cells | cells/s | "
        + " | ".join(name for _, name in COLUMNS)
        + " |",
        "|---|---:|---:|---:|" + "---:|" * len(COLUMNS),
    ]
    for r in result["rows"]:
        cells = []
        for key, _ in COLUMNS:
            v = r["metrics"][key]
            cells.append(f"{v['value']:.3g} ({v['floor']:.3g})")
        star = "*" if r["extrapolated"] else ""
        lines.append(
            f"| {r['setting']} | {r['n_cells']} | {r['seconds_per_1000_cells']}{star} | "
            f"{r['cells_per_s']}{star} | " + " | ".join(cells) + " |"
        )
    lines += ["", "Goals (default model):", *[f"- {g}" for g in result["goals"]], ""]
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5))
    for r in rows:
        v = r["metrics"]["mmd2_rbf_pca"]
        ax.scatter(r["cells_per_s"], v["value"], s=30)
        ax.annotate(r["setting"], (r["cells_per_s"], v["value"]), fontsize=7, xytext=(4, 2),
                    textcoords="offset points")  # fmt: skip
    floors = [r["metrics"]["mmd2_rbf_pca"]["floor"] for r in rows]
    if floors:
        ax.axhline(float(np.median(floors)), color="0.5", ls="--", lw=1, label="real-vs-real floor")
        ax.legend(fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("cells / s (log)")
    ax.set_ylabel("PCA-MMD² to real held-out cells")
    ax.set_title("speed against fidelity")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
