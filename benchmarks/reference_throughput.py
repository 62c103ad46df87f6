"""Throughput of the PyTorch path on this machine: preparation, training and reference sampling.

This is the baseline the C++ scheduler and the ONNX/TensorRT engines are measured against later.
Every timing is the median of --repeats runs; results go to JSON and a Markdown table.

    python benchmarks/reference_throughput.py --out benchmarks/results
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import time
from pathlib import Path

import _tests_path  # noqa: F401  (tests/ on sys.path for reference_sampler)
import torch
from _machine import machine
from reference_sampler import sample

import cellsynth
from cellsynth.data import prepare, zero_negate
from cellsynth.scheduler.schedules import NoiseSchedule
from cellsynth.training.dit import build_dit
from cellsynth.training.trainer import TrainConfig, train


def median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _rate(value: float) -> str:
    return f"{value:.0f}" if value >= 100 else f"{value:.3g}"


def markdown(result: dict) -> str:
    """The Markdown table of a result dict (also used to re-render a saved JSON)."""
    m, args = result["machine"], result["args"]
    lines = [
        f"Measured {result['date']} on {m['cpu']} ({m['cores']} cores, torch {m['torch']}, "
        f"{m['torch_threads']} threads); median of {args['repeats']} runs.",
        "",
        "| task | config | parameters | seconds | cells/s |",
        "|---|---|---:|---:|---:|",
    ]
    for r in result["rows"]:
        params = f"{r['params'] / 1e6:.2f} M" if "params" in r else "-"
        lines.append(
            f"| {r['task']} | {r['config']} | {params} | {r['seconds']:.2f} | "
            f"{_rate(r['cells_per_s'])} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=2000, help="training cells (Kang subsample)")
    parser.add_argument("--sample-cells", type=int, default=256)
    # The paper model (34M parameters, 200 tokens) costs ~2 TFLOP per step at 256 cells: too
    # slow for 2 CPU cores, so it is timed on fewer cells.
    parser.add_argument("--paper-sample-cells", type=int, default=32)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args()

    rows: list[dict[str, object]] = []
    adata = cellsynth.datasets.kang()
    t_prep = median_seconds(
        lambda: prepare(adata, ["cell_type", "stim"], max_cells=args.cells), args.repeats
    )
    prepared = prepare(adata, ["cell_type", "stim"], max_cells=args.cells)
    x = zero_negate(prepared.x_train)
    labels = prepared.y_train
    sizes = [len(prepared.vocabularies[k]) for k in prepared.label_keys]
    n_genes = x.shape[1]
    rows.append(
        {
            "task": f"prepare Kang ({args.cells} cells, 2000 HVG)",
            "config": "-",
            "seconds": t_prep,
            "cells_per_s": args.cells / t_prep,
        }
    )

    schedule = NoiseSchedule()
    for name in ("small", "paper"):
        model = build_dit(name, n_genes=n_genes, label_sizes=sizes)
        n_params = sum(p.numel() for p in model.parameters())
        if name == "small":
            cfg = TrainConfig(epochs=1, progress=False, seed=0)
            t_train = median_seconds(
                lambda m=model, c=cfg: train(m, x, labels, schedule, c), args.repeats
            )
            rows.append(
                {
                    "task": f"train 1 epoch ({len(x)} cells, batch {cfg.batch_size})",
                    "config": name,
                    "params": n_params,
                    "seconds": t_train,
                    "cells_per_s": len(x) / t_train,
                }
            )
        model.eval()
        n_sample = args.sample_cells if name == "small" else args.paper_sample_cells
        lab = torch.from_numpy(labels[:n_sample])
        reps = args.repeats if name == "small" else 1

        def run(model=model, lab=lab) -> None:
            sample(
                model,
                schedule.alphas_cumprod,
                lab,
                steps=args.steps,
                generator=torch.Generator().manual_seed(0),
            )

        t_sample = median_seconds(run, reps)
        rows.append(
            {
                "task": f"sample {len(lab)} cells, DDIM {args.steps} steps",
                "config": name,
                "params": n_params,
                "seconds": t_sample,
                "cells_per_s": len(lab) / t_sample,
            }
        )

    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d")
    result = {"date": stamp, "machine": machine(), "args": vars(args), "rows": rows}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "reference_throughput.json").write_text(json.dumps(result, indent=1) + "\n")
    table = markdown(result)
    (out / "reference_throughput.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
