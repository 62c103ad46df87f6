"""Speed against quality across acceleration rates, for one bundle (the scRDiT paper's table+).

For each sampler setting — DDPM over all 1000 steps, DDIM at acceleration rates 10, 20, 50, 100
(100, 50, 20, 10 steps) and DPM-Solver++ at 5, 10 and 20 steps — generate cells with the label mix
of the bundle's real held-out cells, time it (seconds per 1000 cells, cells/s; same engine, batch
and seed everywhere), and score the cells against those held-out cells with
:func:`cellsynth.metrics.compute_metrics`: the paper's metrics (KL, W1 of values and gene means,
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
import time
from pathlib import Path

import anndata
import numpy as np
from _machine import machine

import cellsynth
from cellsynth.bundle.heldout import held_out_cells
from cellsynth.metrics import compute_metrics

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


def run_setting(bundle, scheduler: str, steps: int, composition, n_cells: int, args) -> dict:
    """Generate ``n_cells`` with one sampler setting; return the cells and the timing."""
    started = time.perf_counter()
    adata = cellsynth.generate(
        bundle,
        n_cells=n_cells,
        steps=steps,
        scheduler=scheduler,
        seed=args.seed,
        composition=composition,
        engine=args.engine,
        device="cpu",
        threads=args.threads,
        batch_size=args.batch_size,
        progress=False,
    )
    seconds = time.perf_counter() - started
    return {"adata": adata, "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", default="kang-dit")
    parser.add_argument("--engine", default="onnxruntime")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--cells", type=int, default=None, help="cells per setting (default: as many as held out)"
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
    real_x, real_obs = held_out_cells(bundle, cellsynth.datasets.load(data))
    keys = bundle.labels.keys
    composition = anndata.AnnData(obs=real_obs[keys].copy())
    n_default = args.cells or len(real_x)
    rows = []
    for label, scheduler, steps in SETTINGS:
        if args.settings and label not in args.settings:
            continue
        n = args.ddpm_cells if (scheduler == "ddpm" and args.ddpm_cells) else n_default
        print(f"{label}: {n} cells ...", flush=True)
        run = run_setting(bundle, scheduler, steps, composition, n, args)
        syn = run["adata"]
        metrics = compute_metrics(
            real_x,
            syn.X,
            {k: real_obs[k].to_numpy() for k in keys},
            {k: syn.obs[k].to_numpy() for k in keys},
            label_key=keys[0],
            seed=args.seed,
        )
        rows.append(
            {
                "setting": label,
                "scheduler": scheduler,
                "steps": steps,
                "n_cells": n,
                "seconds": round(run["seconds"], 2),
                "seconds_per_1000_cells": round(run["seconds"] / n * 1000, 2),
                "cells_per_s": round(n / run["seconds"], 1),
                "metrics": metrics["metrics"],
                "n_compared": metrics.get("n_compared"),
            }
        )
        m = metrics["metrics"]
        print(
            f"  {rows[-1]['cells_per_s']} cells/s; PCA-MMD² {m['mmd2_rbf_pca']['value']:.4g} "
            f"(floor {m['mmd2_rbf_pca']['floor']:.4g}); kNN AUC {m['knn_auc']['value']:.3f}",
            flush=True,
        )
    result = {
        "date": dt.date.today().isoformat(),
        "machine": machine(),
        "bundle": str(bundle.path),
        "bundle_hash": bundle.hash,
        "engine": args.engine,
        "batch_size": args.batch_size,
        "real_cells": f"{len(real_x)} held-out cells of {data}",
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
        f"Measured {result['date']} on {m['cpu']} ({m['cores']} cores, torch threads "
        f"{m['torch_threads']}); bundle {Path(result['bundle']).name}, engine {result['engine']}, "
        f"batch {result['batch_size']}; real: {result['real_cells']}; each metric as value "
        "(real-vs-real floor).",
        "",
        "| sampler | cells | s / 1000 cells | cells/s | "
        + " | ".join(name for _, name in COLUMNS)
        + " |",
        "|---|---:|---:|---:|" + "---:|" * len(COLUMNS),
    ]
    for r in result["rows"]:
        cells = []
        for key, _ in COLUMNS:
            v = r["metrics"][key]
            cells.append(f"{v['value']:.3g} ({v['floor']:.3g})")
        lines.append(
            f"| {r['setting']} | {r['n_cells']} | {r['seconds_per_1000_cells']} | "
            f"{r['cells_per_s']} | " + " | ".join(cells) + " |"
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
